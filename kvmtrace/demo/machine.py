"""The demo guest's machine: the ROM as a bare QEMU's BIOS (:func:`qemu_argv`)
or as a libvirt domain (:func:`domain_xml`, from ``domain.xml`` beside this
file), with its interrupt controllers where the caller puts them
(:data:`kvmtrace.demo.guest.IRQCHIPS`). Only the standard library is used."""

from __future__ import annotations

import os
import string
import uuid as _uuid
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape as _xml_escape

from kvmtrace.demo.guest import (DEBUG_EXIT_PORT, DEFAULT_DOMAIN_NAME, IRQCHIPS, MAX_VCPUS, Workload, _resource,
                                 build_rom)

__all__ = ["QEMU_XML_NS", "domain_xml", "qemu_argv"]

QEMU_XML_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
_DEBUG_EXIT_DEVICE = f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=1"


def qemu_argv(
    rom_path: str | os.PathLike[str],
    *,
    memory_mib: int = 16,
    debug_exit: bool = True,
    paused: bool = False,
    qemu: str = "qemu-system-x86_64",
    vcpus: int = 1,
    irqchip: str = "kernel",
) -> list[str]:
    """Argument list that runs the ROM in a bare QEMU (no libvirt), under KVM.

    ``irqchip="off"``: QEMU emulates the PIC, PIT, IOAPIC and local APIC
    (``kernel_irqchip=off``; QEMU 7.2 warns that this is deprecated);
    ``"split"``: the PIC, PIT and IOAPIC (``kernel_irqchip=split``)."""
    machine = "pc" + ("" if irqchip == "kernel" else f",kernel_irqchip={irqchip}")
    argv = [
        qemu, "-enable-kvm", "-machine", machine, "-m", str(memory_mib), "-smp", str(vcpus),
        "-bios", os.fspath(rom_path), "-display", "none", "-nodefaults", "-no-reboot",
    ]
    if debug_exit:
        argv += ["-device", _DEBUG_EXIT_DEVICE]
    if paused:
        argv.append("-S")
    return argv


def domain_xml(
    name: str = DEFAULT_DOMAIN_NAME,
    rom_path: str | os.PathLike[str] | None = None,
    memory_mib: int = 16,
    debug_exit: bool = True,
    uuid: str | _uuid.UUID | None = None,
    vcpus: int = 1,
    irqchip: str = "kernel",
) -> str:
    """libvirt domain XML that runs the ROM at *rom_path* as the whole guest.

    ``type='kvm'``, *vcpus* vCPUs, *memory_mib* MiB, machine ``pc``, no disks, no
    display, no balloon or USB controller.  With *debug_exit* the domain gets
    QEMU's isa-debug-exit device (through ``<qemu:commandline>``, which makes
    libvirt log "tainted: custom-argv"), so a finite ROM ends its own domain.
    Without *rom_path*, the default :class:`Workload`'s ROM is built first
    with :func:`build_rom`. ``irqchip="off"`` adds ``-machine
    kernel_irqchip=off`` (QEMU's interrupt controllers) to the command line.
    """
    if not isinstance(name, str) or not name or "/" in name or name != name.strip():
        raise ValueError(f"bad domain name {name!r}")
    if not isinstance(memory_mib, int) or isinstance(memory_mib, bool) or memory_mib < 1:
        raise ValueError(f"memory_mib must be a positive int, not {memory_mib!r}")
    if rom_path is None:
        rom_path = build_rom(Workload())
    rom = os.path.abspath(os.fspath(rom_path))

    uuid_xml = ""
    if uuid is not None:
        uuid_xml = f"\n  <uuid>{_uuid.UUID(str(uuid))}</uuid>"
    if irqchip not in IRQCHIPS:
        raise ValueError(f"irqchip must be one of {', '.join(IRQCHIPS)}, not {irqchip!r}")
    if not isinstance(vcpus, int) or isinstance(vcpus, bool) or not 1 <= vcpus <= MAX_VCPUS:
        raise ValueError(f"vcpus must be in 1 .. {MAX_VCPUS}, not {vcpus!r}")
    args = []
    if debug_exit:
        args += ["-device", _DEBUG_EXIT_DEVICE]
    if irqchip != "kernel":  # libvirt has no element for off; QEMU merges -machine options
        args += ["-machine", f"kernel_irqchip={irqchip}"]
    commandline = ""
    if args:
        commandline = ("\n  <qemu:commandline>" + "".join(f"\n    <qemu:arg value='{a}'/>" for a in args)
                       + "\n  </qemu:commandline>")
    template_text = _resource("domain.xml").read_text(encoding="utf-8")
    if template_text.startswith("<!--"):  # the template's own comment: not for libvirt
        template_text = template_text.split("-->", 1)[1].lstrip()
    template = string.Template(template_text)
    text = template.substitute(
        name=_xml_escape(name),
        uuid=uuid_xml,
        memory_mib=memory_mib,
        vcpus=vcpus,
        rom_path=_xml_escape(rom),
        qemu_commandline=commandline,
    )
    ET.fromstring(text)  # well-formed, or a bug here: fail before libvirt does
    return text
