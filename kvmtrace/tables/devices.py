"""Device names for port I/O and MMIO addresses.

A ``kvm_pio`` event carries a port and a ``kvm_mmio`` event a guest-physical
address; this module says which device sits there, and whether the kernel
emulates it (no userspace exit) or the VMM does.

Two sources, best first:

1. QEMU's own flat memory map, the HMP command ``info mtree -f``
   (:data:`MTREE_COMMAND`), which the recorder stores in the trace header
   (``domains[i]["memory_map_text"]``).  It names every range of *this* guest
   as QEMU's memory core dispatches it, e.g.::

     FlatView #1
      AS "memory", root: system
      AS "cpu-memory-0", root: system
      Root memory region: system
       0000000000000000-00000000000bffff (prio 0, ram): pc.ram KVM
       00000000000e0000-00000000000effff (prio 0, ram): pc.ram @00000000000e0000 KVM
       00000000fec00000-00000000fec00fff (prio 0, i/o): kvm-ioapic
       00000000fed00000-00000000fed003ff (prio 0, i/o): hpet

   Each line is ``START-END (prio P, KIND): NAME [@OFFSET] [owner...] [KVM]``
   (``system/memory.c:mtree_print_flatview``).  The block whose ``AS`` lines
   include ``"memory"`` is the MMIO space, the one with ``"I/O"`` the port
   space.  Ranges named after the block's root region (``io @...`` in the I/O
   space) are the root's "unassigned" fill: no device, and left out here.
2. A built-in table of the fixed PC ranges (:data:`BUILTIN_RANGES`), used only
   for an address space the trace has no map for.  Its names are the region
   names QEMU 7.2 uses with KVM's default ``kernel-irqchip=on``, so reports
   read the same whichever source named a range.

Names starting with ``kvm-`` (``kvm-pic``, ``kvm-pit``, ``kvm-elcr``,
``kvm-ioapic``, ``kvm-apic-msi``) are QEMU's stubs for devices emulated in the
kernel: :attr:`Region.in_kernel`.  (``kvmvapic``, without the dash, is QEMU's
userspace VAPIC option-ROM port.)

Typical use::

    dm = DeviceMap.from_header(trace.header)
    dm.port(0x71)                 # Region(start=0x71, end=0x71, name='rtc', ...)
    df["device"] = dm.name_ports(df["port"].to_numpy())

Pure Python, numpy and pandas: no libvirt, no QEMU, nothing at import time.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kvmtrace.errors import KvmtraceError

__all__ = [
    "BUILTIN_RANGES",
    "DESCRIPTIONS",
    "MTREE_COMMAND",
    "SPACES",
    "UNKNOWN",
    "DeviceMap",
    "MemoryMapError",
    "MemoryMapWarning",
    "Region",
    "capture_command",
    "is_in_kernel",
    "parse_mtree",
]

MTREE_COMMAND = "info mtree -f"
"""The QEMU HMP command whose output :meth:`DeviceMap.from_mtree` reads
(through libvirt: ``virsh qemu-monitor-command --hmp DOMAIN 'info mtree -f'``)."""

UNKNOWN = "unknown"
"""The name the vectorised lookups give an address no region covers."""

SPACES = ("memory", "io")
"""Address spaces: guest-physical memory (MMIO) and x86 port I/O."""

_PORT_MAX = 0xFFFF
_GPA_MAX = 0xFFFF_FFFF_FFFF_FFFF


def capture_command() -> str:
    """The HMP command that prints the map :meth:`DeviceMap.from_mtree` reads."""
    return MTREE_COMMAND


def is_in_kernel(name: str) -> bool:
    """Whether QEMU's region *name* is a stub for a device KVM emulates in the kernel."""
    return name.startswith("kvm-")


class MemoryMapError(KvmtraceError):
    """A memory map text cannot give device names."""

    exit_code = 5


class MemoryMapWarning(UserWarning):
    """A trace's stored memory map was unusable: the built-in table was used."""


@dataclass(frozen=True)
class Region:
    """One range of an address space and the device behind it.

    ``start`` and ``end`` are inclusive (QEMU prints them so).  ``space`` is
    "memory" (guest-physical addresses) or "io" (ports).  ``kind`` is QEMU's
    region type: "i/o" (a device model: accesses exit), "ram", "rom", "romd",
    "ramd", ...  ``in_kernel`` is True for ranges KVM emulates without a
    userspace exit.  ``source`` is "mtree" (QEMU's map of the traced guest) or
    "builtin" (:data:`BUILTIN_RANGES`).  ``priority`` and ``offset`` (the
    range's offset inside QEMU's region, ``@OFFSET``) are as QEMU printed them;
    ``kvm_slot`` marks ranges backed by a KVM memory slot (``KVM``): RAM the
    guest reaches without exits (a ROM slot still exits on writes).
    """

    start: int
    end: int
    name: str
    space: str
    kind: str = "i/o"
    in_kernel: bool = False
    source: str = "builtin"
    description: str = ""
    priority: int = 0
    offset: int = 0
    kvm_slot: bool = False

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, not {self.space!r}")
        if not 0 <= self.start <= self.end <= _GPA_MAX:
            raise ValueError(f"bad range {self.start:#x}-{self.end:#x} for {self.name!r}")

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def __contains__(self, address: int) -> bool:
        return self.start <= address <= self.end

    def __str__(self) -> str:
        where = "kernel" if self.in_kernel else "VMM"
        return f"{self.start:#x}-{self.end:#x} {self.name} ({self.space}, {self.kind}, {where})"


# --------------------------------------------------------------------------
# The built-in table.
#
# Names and ranges were checked against QEMU 7.2's own `info mtree -f` on this
# project's machines (tests/data/mtree/*.txt: pc and q35, before and after
# SeaBIOS ran, with serial, parallel, VGA, isa-debugcon, pvpanic and
# isa-debug-exit added) and against QEMU's source, file named per row.
# Firmware-programmed ranges (ACPI PM and SMBus bases, PCI BARs) are where
# SeaBIOS puts them; OVMF may choose others, which only the guest's own map
# (DeviceMap.from_mtree) can tell.

DESCRIPTIONS: dict[str, str] = {
    # port I/O
    "dma-chan": "8237 DMA controller: channel address/count registers",
    "dma-cont": "8237 DMA controller: command/status/mask registers",
    "dma-page": "DMA page registers (74LS612)",
    "kvm-pic": "8259 PIC, emulated in the kernel (QEMU's 'pic' with kernel-irqchip=off/split)",
    "pic": "8259 PIC, emulated by QEMU",
    "kvm-pit": "8254 PIT, emulated in the kernel (QEMU's 'pit' with kernel-irqchip=off/split)",
    "pit": "8254 PIT, emulated by QEMU",
    "i8042-data": "i8042 keyboard controller: data port",
    "i8042-cmd": "i8042 keyboard controller: command/status port",
    "pcspk": "PC speaker / NMI status and control (port 0x61)",
    "rtc-index": "MC146818 RTC/CMOS: index port (coalesced in QEMU)",
    "rtc": "MC146818 RTC/CMOS: data port",
    "kvmvapic": "QEMU's VAPIC option-ROM interface (userspace, despite the name)",
    "ioport80": "POST code / I/O delay port 0x80 (a no-op in QEMU)",
    "port92": "System control port A: fast A20 gate and fast reset",
    "apm-io": "APM control and status (SMI command port 0xb2)",
    "ioportF0": "Math coprocessor error reset (port 0xf0)",
    "isa-debugcon": "QEMU debug console (SeaBIOS/OVMF log port 0x402; Bochs port 0xe9)",
    "isa-debug-exit": "QEMU isa-debug-exit: a write ends QEMU with status (value << 1) | 1",
    "ide": "ISA/PIIX IDE: command block (0x1f0/0x170) or control (0x3f6/0x376)",
    "vbe": "Bochs VBE display interface (index 0x1ce, data 0x1cf)",
    "serial": "16550A UART",
    "parallel": "Parallel port",
    "vga": "VGA registers",
    "fdc": "Floppy disk controller",
    "kvm-elcr": "PIC edge/level control registers, emulated in the kernel",
    "elcr": "PIC edge/level control registers, emulated by QEMU",
    "pvpanic": "pvpanic: the guest reports a panic",
    "fwcfg": "QEMU firmware configuration (selector 0x510, data 0x511)",
    "fwcfg.dma": "QEMU firmware configuration DMA address",
    "acpi-evt": "ACPI PM1a event block (status/enable)",
    "acpi-cnt": "ACPI PM1a control block (sleep, SCI_EN)",
    "acpi-tmr": "ACPI PM timer (3.579545 MHz)",
    "acpi-gpe0": "ACPI general-purpose event block 0",
    "acpi-smi": "ICH9 SMI enable/status",
    "sm-tco": "ICH9 TCO watchdog",
    "pm-smbus": "SMBus host controller",
    "acpi-pci-hotplug": "QEMU ACPI PCI hotplug registers",
    "acpi-cpu-hotplug": "QEMU ACPI CPU hotplug registers",
    "pci-conf-idx": "PCI configuration address (CONFIG_ADDRESS, 0xcf8)",
    "pci-conf-data": "PCI configuration data (CONFIG_DATA, 0xcfc)",
    "reset-control": "Reset control register 0xcf9 (QEMU: piix3-/lpc-reset-control)",
    "piix3-reset-control": "PIIX3 reset control register (0xcf9)",
    "lpc-reset-control": "ICH9 LPC reset control register (0xcf9)",
    "vmport": "VMware backdoor port",
    "piix-bmdma": "PIIX IDE bus-master DMA (PCI BAR 4)",
    "bmdma": "IDE bus-master DMA PRD table address",
    "ahci-idp": "AHCI index/data pair (PCI BAR 4)",
    # memory
    "pc.ram": "Guest RAM (no exit; a kvm_mmio here is unexpected)",
    "pc.rom": "Option ROM area (read-only slot: writes exit)",
    "pc.bios": "Firmware ROM (read-only slot: writes exit)",
    "vga-lowmem": "Legacy VGA window (RAM when there is no VGA device)",
    "vga.vram": "VGA framebuffer (PCI BAR 0)",
    "vga.mmio": "Bochs/std VGA MMIO registers (PCI BAR 2)",
    "edid": "std VGA EDID blob",
    "vga ioports remapped": "std VGA: VGA ports via MMIO",
    "bochs dispi interface": "std VGA: Bochs VBE registers via MMIO",
    "qemu extended regs": "std VGA: QEMU extension registers",
    "ahci": "ICH9 AHCI controller registers (ABAR)",
    "pcie-mmcfg-mmio": "PCIe ECAM / MMCONFIG window (Q35, set by firmware)",
    "kvm-ioapic": "IOAPIC, emulated in the kernel (QEMU's 'ioapic' with kernel-irqchip=off/split)",
    "ioapic": "IOAPIC, emulated by QEMU",
    "hpet": "HPET timer block",
    "lpc-rcrb-mmio": "ICH9 root complex register block (RCBA)",
    "tpm-tis-mmio": "TPM TIS interface (QEMU's tpm-crb uses 0xfed40000 too)",
    "kvm-apic-msi": "Local APIC page 0xfee00000-0xfee00fff (the kernel's LAPIC) and the MSI window",
    "apic-msi": "Local APIC page and MSI window, emulated by QEMU",
    "system.flash0": "pflash firmware code (OVMF)",
    "system.flash1": "pflash firmware variables (OVMF)",
}
"""QEMU region name -> what it is.  Used for both sources."""

# (space, first, last, name, kind, note, source file in QEMU)
# `note` refines the name's description for one row (e.g. which COM port).
BUILTIN_RANGES: tuple[tuple[str, int, int, str, str, str, str], ...] = (
    # ---- port I/O ----
    ("io", 0x0000, 0x0007, "dma-chan", "i/o", "DMA1, channels 0-3", "hw/dma/i8257.c"),
    ("io", 0x0008, 0x000F, "dma-cont", "i/o", "DMA1", "hw/dma/i8257.c"),
    ("io", 0x0020, 0x0021, "kvm-pic", "i/o", "master", "hw/i386/kvm/i8259.c, hw/intc/i8259_common.c"),
    ("io", 0x0040, 0x0043, "kvm-pit", "i/o", "", "hw/i386/kvm/i8254.c"),
    ("io", 0x0060, 0x0060, "i8042-data", "i/o", "", "hw/input/pckbd.c"),
    ("io", 0x0061, 0x0061, "pcspk", "i/o", "", "hw/audio/pcspk.c"),
    ("io", 0x0064, 0x0064, "i8042-cmd", "i/o", "", "hw/input/pckbd.c"),
    ("io", 0x0070, 0x0070, "rtc-index", "i/o", "", "hw/rtc/mc146818rtc.c"),
    ("io", 0x0071, 0x0071, "rtc", "i/o", "", "hw/rtc/mc146818rtc.c"),
    ("io", 0x007E, 0x007F, "kvmvapic", "i/o", "", "hw/i386/kvmvapic.c"),
    ("io", 0x0080, 0x0080, "ioport80", "i/o", "", "hw/i386/pc.c"),
    ("io", 0x0081, 0x0083, "dma-page", "i/o", "channels 2, 3, 1", "hw/dma/i8257.c"),
    ("io", 0x0087, 0x0087, "dma-page", "i/o", "channel 0", "hw/dma/i8257.c"),
    ("io", 0x0089, 0x008B, "dma-page", "i/o", "channels 6, 7, 5", "hw/dma/i8257.c"),
    ("io", 0x008F, 0x008F, "dma-page", "i/o", "channel 4", "hw/dma/i8257.c"),
    ("io", 0x0092, 0x0092, "port92", "i/o", "", "hw/i386/port92.c"),
    ("io", 0x00A0, 0x00A1, "kvm-pic", "i/o", "slave", "hw/i386/kvm/i8259.c"),
    ("io", 0x00B2, 0x00B3, "apm-io", "i/o", "", "hw/isa/apm.c"),
    ("io", 0x00C0, 0x00CF, "dma-chan", "i/o", "DMA2, channels 4-7", "hw/dma/i8257.c"),
    ("io", 0x00D0, 0x00DF, "dma-cont", "i/o", "DMA2", "hw/dma/i8257.c"),
    ("io", 0x00E9, 0x00E9, "isa-debugcon", "i/o", "Bochs port e9, isa-debugcon's default iobase", "hw/char/debugcon.c"),
    ("io", 0x00F0, 0x00F0, "ioportF0", "i/o", "", "hw/i386/pc.c"),
    ("io", 0x00F4, 0x00F4, "isa-debug-exit", "i/o", "the usual iobase=0xf4,iosize=1", "hw/misc/debugexit.c"),
    ("io", 0x0170, 0x0177, "ide", "i/o", "secondary channel", "hw/ide/piix.c"),
    ("io", 0x01CE, 0x01D1, "vbe", "i/o", "", "hw/display/vga.c"),
    ("io", 0x01F0, 0x01F7, "ide", "i/o", "primary channel", "hw/ide/piix.c"),
    ("io", 0x0278, 0x027F, "parallel", "i/o", "LPT2", "hw/char/parallel.c"),
    ("io", 0x02E8, 0x02EF, "serial", "i/o", "COM4", "hw/char/serial-isa.c"),
    ("io", 0x02F8, 0x02FF, "serial", "i/o", "COM2", "hw/char/serial-isa.c"),
    ("io", 0x0376, 0x0376, "ide", "i/o", "secondary channel control", "hw/ide/piix.c"),
    ("io", 0x0378, 0x037F, "parallel", "i/o", "LPT1", "hw/char/parallel.c"),
    ("io", 0x03B4, 0x03B5, "vga", "i/o", "mono CRTC", "hw/display/vga.c"),
    ("io", 0x03BA, 0x03BA, "vga", "i/o", "mono status", "hw/display/vga.c"),
    ("io", 0x03C0, 0x03CF, "vga", "i/o", "attribute/sequencer/DAC/GC", "hw/display/vga.c"),
    ("io", 0x03D4, 0x03D5, "vga", "i/o", "colour CRTC", "hw/display/vga.c"),
    ("io", 0x03DA, 0x03DA, "vga", "i/o", "colour status", "hw/display/vga.c"),
    ("io", 0x03E8, 0x03EF, "serial", "i/o", "COM3", "hw/char/serial-isa.c"),
    # QEMU's FDC leaves 0x3f0 unassigned and gives 0x3f6 to IDE (observed).
    ("io", 0x03F1, 0x03F5, "fdc", "i/o", "", "hw/block/fdc-isa.c"),
    ("io", 0x03F6, 0x03F6, "ide", "i/o", "primary channel control", "hw/ide/piix.c"),
    ("io", 0x03F7, 0x03F7, "fdc", "i/o", "digital input register", "hw/block/fdc-isa.c"),
    ("io", 0x03F8, 0x03FF, "serial", "i/o", "COM1", "hw/char/serial-isa.c"),
    ("io", 0x0402, 0x0402, "isa-debugcon", "i/o", "", "hw/char/debugcon.c"),
    ("io", 0x04D0, 0x04D1, "kvm-elcr", "i/o", "", "hw/i386/kvm/i8259.c"),
    ("io", 0x0501, 0x0502, "isa-debug-exit", "i/o", "isa-debug-exit's default iobase", "hw/misc/debugexit.c"),
    ("io", 0x0505, 0x0505, "pvpanic", "i/o", "", "hw/misc/pvpanic-isa.c"),
    ("io", 0x0510, 0x0511, "fwcfg", "i/o", "", "hw/nvram/fw_cfg.c"),
    ("io", 0x0514, 0x051B, "fwcfg.dma", "i/o", "", "hw/nvram/fw_cfg.c"),
    # ACPI PM base 0x600 is SeaBIOS's choice (PIIX4 block 0x600-0x63f; ICH9 0x600-0x67f).
    ("io", 0x0600, 0x0603, "acpi-evt", "i/o", "", "hw/acpi/core.c"),
    ("io", 0x0604, 0x0605, "acpi-cnt", "i/o", "", "hw/acpi/core.c"),
    ("io", 0x0608, 0x060B, "acpi-tmr", "i/o", "", "hw/acpi/core.c"),
    ("io", 0x0620, 0x062F, "acpi-gpe0", "i/o", "ICH9 (Q35)", "hw/acpi/ich9.c"),
    ("io", 0x0630, 0x0637, "acpi-smi", "i/o", "ICH9 (Q35)", "hw/acpi/ich9.c"),
    ("io", 0x0660, 0x067F, "sm-tco", "i/o", "ICH9 (Q35)", "hw/acpi/tco.c"),
    ("io", 0x0700, 0x073F, "pm-smbus", "i/o", "as SeaBIOS places it", "hw/i2c/pm_smbus.c"),
    ("io", 0x0CC0, 0x0CD7, "acpi-pci-hotplug", "i/o", "ICH9 (Q35)", "hw/acpi/pcihp.c"),
    ("io", 0x0CD8, 0x0CF7, "acpi-cpu-hotplug", "i/o", "ICH9 (Q35)", "hw/acpi/cpu.c"),
    ("io", 0x0CF8, 0x0CF8, "pci-conf-idx", "i/o", "", "hw/pci-host/i440fx.c, hw/pci-host/q35.c"),
    ("io", 0x0CF9, 0x0CF9, "reset-control", "i/o", "", "hw/isa/piix.c, hw/isa/lpc_ich9.c"),
    ("io", 0x0CFA, 0x0CFB, "pci-conf-idx", "i/o", "", "hw/pci-host/i440fx.c, hw/pci-host/q35.c"),
    ("io", 0x0CFC, 0x0CFF, "pci-conf-data", "i/o", "", "hw/pci-host/i440fx.c, hw/pci-host/q35.c"),
    ("io", 0x5658, 0x5658, "vmport", "i/o", "", "hw/i386/vmport.c"),
    ("io", 0xAE00, 0xAE17, "acpi-pci-hotplug", "i/o", "PIIX4 (pc)", "hw/acpi/pcihp.c"),
    ("io", 0xAF00, 0xAF1F, "acpi-cpu-hotplug", "i/o", "PIIX4 (pc)", "hw/acpi/cpu_hotplug.c"),
    ("io", 0xAFE0, 0xAFE3, "acpi-gpe0", "i/o", "PIIX4 (pc)", "hw/acpi/piix4.c"),
    ("io", 0xB100, 0xB13F, "pm-smbus", "i/o", "PIIX4 default before firmware moves it", "hw/acpi/piix4.c"),
    # ---- memory (MMIO) ----
    ("memory", 0x000A0000, 0x000BFFFF, "vga-lowmem", "i/o", "", "hw/display/vga.c"),
    ("memory", 0x000C0000, 0x000DFFFF, "pc.rom", "rom", "", "hw/i386/pc.c"),
    ("memory", 0x000E0000, 0x000FFFFF, "pc.bios", "rom", "low alias (isa-bios)", "hw/i386/x86.c"),
    ("memory", 0xB0000000, 0xBFFFFFFF, "pcie-mmcfg-mmio", "i/o", "", "hw/pci-host/q35.c"),
    ("memory", 0xFEC00000, 0xFEC00FFF, "kvm-ioapic", "i/o", "", "hw/i386/kvm/ioapic.c"),
    ("memory", 0xFED00000, 0xFED003FF, "hpet", "i/o", "", "hw/timer/hpet.c"),
    ("memory", 0xFED1C000, 0xFED1FFFF, "lpc-rcrb-mmio", "i/o", "ICH9 (Q35)", "hw/isa/lpc_ich9.c"),
    ("memory", 0xFED40000, 0xFED44FFF, "tpm-tis-mmio", "i/o", "", "hw/tpm/tpm_tis_isa.c"),
    ("memory", 0xFEE00000, 0xFEEFFFFF, "kvm-apic-msi", "i/o", "", "hw/i386/kvm/apic.c"),
    ("memory", 0xFFFC0000, 0xFFFFFFFF, "pc.bios", "rom", "top of 4 GiB (up to 256 KiB of SeaBIOS)", "hw/i386/x86.c"),
)
"""The fixed PC ranges: (space, first, last, QEMU region name, kind, note, QEMU source)."""


def _describe(name: str, note: str = "") -> str:
    text = DESCRIPTIONS.get(name, "")
    if note:
        text = f"{text} ({note})" if text else note
    return text


def _builtin_regions() -> list[Region]:
    return [
        Region(start=first, end=last, name=name, space=space, kind=kind,
               in_kernel=is_in_kernel(name), source="builtin", description=_describe(name, note))
        for space, first, last, name, kind, note, _src in BUILTIN_RANGES
    ]


# --------------------------------------------------------------------------
# The `info mtree -f` parser.

_FLATVIEW = re.compile(r"^\s*FlatView #(\d+)\s*$")
_AS = re.compile(r'^\s*AS "(?P<name>[^"]*)", root: (?P<root>.*?)\s*$')
_ROOT = re.compile(r"^\s*Root memory region: (?P<root>.*?)\s*$")
_RANGE = re.compile(
    r"^\s*(?P<start>[0-9a-fA-F]+)-(?P<end>[0-9a-fA-F]+)"
    r" \(prio (?P<prio>-?\d+), (?P<kind>[^)]*)\): (?P<rest>.*?)\s*$"
)
_TREE = re.compile(r"^\s*(address-space|memory-region): ")
# What follows the name: owner info (`-o`), then one accelerator tag per AS that
# has a slot for the range (only KVM implements has_memory).
_OWNER = re.compile(r"\s+(?:(?:owner|parent):\{[^{}]*\}|orphan)\s*$")
_ACCEL = re.compile(r"\s+KVM\s*$")
_OFFSET = re.compile(r"\s+@([0-9a-fA-F]+)\s*$")
_AS_SPACE = {"memory": "memory", "I/O": "io"}


@dataclass
class _Block:
    number: int
    address_spaces: list[str] = dataclasses.field(default_factory=list)
    root: str | None = None
    ranges: list[tuple[int, int, int, str, str, int, bool]] = dataclasses.field(default_factory=list)


def _split_rest(rest: str) -> tuple[str, int, bool]:
    """``NAME [@OFFSET] [owner:{..}] [KVM]...`` -> (name, offset, kvm_slot)."""
    kvm_slot = False
    while True:
        m = _ACCEL.search(rest)
        if m:
            kvm_slot = True
            rest = rest[: m.start()]
            continue
        m = _OWNER.search(rest)
        if m:
            rest = rest[: m.start()]
            continue
        break
    offset = 0
    m = _OFFSET.search(rest)
    if m:
        offset = int(m.group(1), 16)
        rest = rest[: m.start()]
    return rest.strip(), offset, kvm_slot


def _blocks(text: str) -> tuple[list[_Block], bool]:
    blocks: list[_Block] = []
    tree = False
    for line in text.splitlines():
        m = _FLATVIEW.match(line)
        if m:
            blocks.append(_Block(int(m.group(1))))
            continue
        if _TREE.match(line):
            tree = True
            continue
        if not blocks:
            continue  # a monitor banner, an echoed command line, ...
        block = blocks[-1]
        m = _AS.match(line)
        if m:
            block.address_spaces.append(m.group("name"))
            continue
        m = _ROOT.match(line)
        if m:
            block.root = m.group("root")
            continue
        m = _RANGE.match(line)
        if m:
            start, end = int(m.group("start"), 16), int(m.group("end"), 16)
            if start > end or end > _GPA_MAX:
                continue
            name, offset, kvm_slot = _split_rest(m.group("rest"))
            kind = m.group("kind").strip()
            kind = kind[3:] if kind.startswith("nv-") else kind  # non-volatile flag
            block.ranges.append((start, end, int(m.group("prio")), kind, name, offset, kvm_slot))
    return blocks, tree


def parse_mtree(text: str | bytes) -> list[Region]:
    """The regions of the "memory" and "I/O" address spaces in ``info mtree -f`` output.

    Lines that are not part of a flat view (a monitor banner, an echoed
    prompt, other address spaces' blocks) are skipped; so are the root
    region's unassigned ranges.  Returns ``[]`` when the text holds no flat
    view of either space.  Raises :class:`MemoryMapError` for the nested
    ``info mtree`` view (without ``-f``), which does not say which region
    answers an address.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise TypeError(f"expected the text of `{MTREE_COMMAND}`, not {type(text).__name__}")
    blocks, tree = _blocks(text)
    regions: list[Region] = []
    seen: set[str] = set()
    for block in blocks:
        for as_name in block.address_spaces:
            space = _AS_SPACE.get(as_name)
            if space is None or space in seen:
                continue
            seen.add(space)
            for start, end, prio, kind, name, offset, kvm_slot in block.ranges:
                if not name or name == block.root:
                    continue  # the root region's own (unassigned) ops
                regions.append(Region(
                    start=start, end=end, name=name, space=space, kind=kind,
                    in_kernel=is_in_kernel(name), source="mtree",
                    description=DESCRIPTIONS.get(name, ""),
                    priority=prio, offset=offset, kvm_slot=kvm_slot,
                ))
    if not seen and tree:
        raise MemoryMapError(
            "this is QEMU's nested `info mtree` view, which does not say which region answers an address",
            f"capture the flat view with the HMP command '{MTREE_COMMAND}'",
        )
    return regions


# --------------------------------------------------------------------------
# Lookup.

def _flatten(regions: Iterable[Region]) -> list[Region]:
    """Non-overlapping pieces of *regions*, sorted by start.

    QEMU's flat view never overlaps; other input might.  Where ranges
    overlap, a device ("i/o") beats RAM/ROM, then the higher priority, then
    the earlier one in the input: the winner keeps the overlap, the loser
    keeps what is left of its range.
    """
    regions = list(regions)
    order = sorted(range(len(regions)),
                   key=lambda i: (regions[i].kind != "i/o", -regions[i].priority, i))
    starts: list[int] = []  # painted intervals, sorted and disjoint
    pieces: list[Region] = []
    for i in order:
        r = regions[i]
        lo = r.start
        k = bisect.bisect_right(starts, lo) - 1
        if k >= 0 and pieces[k].end >= lo:
            lo = pieces[k].end + 1
        k += 1
        new: list[Region] = []
        while lo <= r.end:
            nxt = pieces[k].start if k < len(pieces) else None
            if nxt is None or nxt > r.end:
                new.append(_piece(r, lo, r.end))
                break
            if nxt > lo:
                new.append(_piece(r, lo, nxt - 1))
            lo = pieces[k].end + 1
            k += 1
        for p in new:
            j = bisect.bisect_left(starts, p.start)
            starts.insert(j, p.start)
            pieces.insert(j, p)
    return pieces


def _piece(r: Region, start: int, end: int) -> Region:
    if start == r.start and end == r.end:
        return r
    return dataclasses.replace(r, start=start, end=end, offset=r.offset + (start - r.start))


class _Space:
    """One address space's regions as sorted arrays for searchsorted."""

    def __init__(self, regions: list[Region]):
        self.regions = tuple(_flatten(regions))
        self.starts = np.array([r.start for r in self.regions], dtype=np.uint64)
        self.ends = np.array([r.end for r in self.regions], dtype=np.uint64)
        self._start_list = [r.start for r in self.regions]
        names = sorted({r.name for r in self.regions})
        self.categories = names + ([UNKNOWN] if UNKNOWN not in names else [])
        code_of = {name: i for i, name in enumerate(self.categories)}
        self.name_codes = np.array([code_of[r.name] for r in self.regions], dtype=np.int32)
        self.unknown_code = code_of[UNKNOWN]

    def find(self, address: int) -> Region | None:
        i = bisect.bisect_right(self._start_list, address) - 1
        if i >= 0 and address <= self.regions[i].end:
            return self.regions[i]
        return None

    def index(self, values) -> np.ndarray:
        a = np.asarray(values)
        if a.ndim > 1:
            raise ValueError(f"expected a 1-d array of addresses, got shape {a.shape}")
        a = np.atleast_1d(a)
        if a.size == 0:
            return np.zeros(0, dtype=np.int64)
        if a.dtype.kind == "u":
            u = a.astype(np.uint64, copy=False)
            bad = None
        elif a.dtype.kind == "i":
            bad = a < 0
            u = np.where(bad, 0, a).astype(np.uint64)
        else:
            raise TypeError(f"addresses must be integers, not {a.dtype}")
        idx = np.searchsorted(self.starts, u, side="right").astype(np.int64) - 1
        ok = idx >= 0
        ok[ok] = u[ok] <= self.ends[idx[ok]]
        if bad is not None:
            ok &= ~bad
        return np.where(ok, idx, -1)

    def names(self, values) -> pd.Categorical:
        idx = self.index(values)
        codes = np.full(idx.shape, self.unknown_code, dtype=np.int32)
        hit = idx >= 0
        codes[hit] = self.name_codes[idx[hit]]
        return pd.Categorical.from_codes(codes, categories=pd.Index(self.categories, dtype=object))


class DeviceMap:
    """Device names for a guest's ports and guest-physical addresses.

    Build one with :meth:`from_header` (a trace), :meth:`from_mtree` (the
    text of ``info mtree -f``) or :meth:`builtin`.  Each address space holds
    non-overlapping :class:`Region` s; :attr:`sources` says where each space's
    names came from ("mtree", "builtin" or "none").
    """

    def __init__(self, regions: Iterable[Region] = (), sources: Mapping[str, str] | None = None):
        regions = list(regions)
        for r in regions:
            if not isinstance(r, Region):
                raise TypeError(f"DeviceMap takes Region objects, not {type(r).__name__}")
        self._spaces = {space: _Space([r for r in regions if r.space == space]) for space in SPACES}
        if sources is None:
            sources = {}
            for space in SPACES:
                kinds = {r.source for r in self._spaces[space].regions}
                sources[space] = "+".join(sorted(kinds)) if kinds else "none"
        self.sources: dict[str, str] = {space: sources.get(space, "none") for space in SPACES}

    # -- constructors --------------------------------------------------------

    @classmethod
    def builtin(cls) -> DeviceMap:
        """The fixed PC ranges of :data:`BUILTIN_RANGES`."""
        return cls(_builtin_regions(), {"memory": "builtin", "io": "builtin"})

    @classmethod
    def from_mtree(cls, text: str | bytes, *, fallback: bool = True) -> DeviceMap:
        """The map QEMU printed for ``info mtree -f`` (:data:`MTREE_COMMAND`).

        An address space the text has no flat view for (empty text, an error
        message from the monitor) gets the built-in table, or no regions at
        all when *fallback* is False.  Raises :class:`MemoryMapError` for the
        nested ``info mtree`` view.
        """
        parsed = parse_mtree(text)
        regions: list[Region] = []
        sources: dict[str, str] = {}
        builtin = _builtin_regions()
        for space in SPACES:
            mine = [r for r in parsed if r.space == space]
            if mine:
                regions += mine
                sources[space] = "mtree"
            elif fallback:
                regions += [r for r in builtin if r.space == space]
                sources[space] = "builtin"
            else:
                sources[space] = "none"
        return cls(regions, sources)

    @classmethod
    def from_header(cls, header: Mapping, domain: str | int | None = None) -> DeviceMap:
        """The map stored in a trace header, else the built-in table.

        Looks for ``header["memory_map_text"]``, then for the
        ``memory_map_text`` of the domains in ``header["domains"]``: the one
        whose name, UUID or list index is *domain*, or the first that has
        one.  A stored text that gives no regions (a monitor error, the nested
        view) falls back to the built-in table with a :class:`MemoryMapWarning`.
        """
        if not isinstance(header, Mapping):
            raise TypeError(f"expected the trace header dict, not {type(header).__name__}")
        text = header.get("memory_map_text") if domain is None else None
        where = "the trace header"
        if not text:
            domains = header.get("domains") or []
            for i, d in enumerate(domains):
                if not isinstance(d, Mapping):
                    continue
                if domain is not None and domain not in (i, d.get("name"), d.get("uuid")):
                    continue
                if d.get("memory_map_text"):
                    text = d["memory_map_text"]
                    where = f"domain {d.get('name', i)!r} in the trace header"
                    break
        if not text:
            return cls.builtin()
        try:
            dm = cls.from_mtree(text)
        except (MemoryMapError, TypeError) as e:
            warnings.warn(f"{where}: {e}; using the built-in PC device table",
                          MemoryMapWarning, stacklevel=2)
            return cls.builtin()
        if "mtree" not in dm.sources.values():
            first = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
            warnings.warn(
                f"{where}: the stored memory map holds no flat view (it starts {first[:80]!r}); "
                "using the built-in PC device table", MemoryMapWarning, stacklevel=2)
        return dm

    # -- scalar lookups ------------------------------------------------------

    def port(self, port: int) -> Region | None:
        """The region answering I/O port *port*, or None."""
        return self._spaces["io"].find(int(port))

    def mmio(self, gpa: int) -> Region | None:
        """The region at guest-physical address *gpa*, or None.

        Usually a device ("i/o" kind).  A RAM or ROM region comes back too, with
        its ``kind`` saying so: a ``kvm_mmio`` on RAM should not happen, and on
        a ROM it is a write to a read-only slot.
        """
        return self._spaces["memory"].find(int(gpa))

    def lookup(self, space: str, address: int) -> Region | None:
        return self._space(space).find(int(address))

    # -- vectorised lookups --------------------------------------------------

    def name_ports(self, ports) -> pd.Categorical:
        """Device name per port (``"unknown"`` where no region is), as a Categorical.

        The categories are every name of the I/O space plus ``"unknown"``, so
        results of different calls concatenate without recoding.
        """
        return self._spaces["io"].names(ports)

    def name_gpas(self, gpas) -> pd.Categorical:
        """Device name per guest-physical address, as :meth:`name_ports` does for ports."""
        return self._spaces["memory"].names(gpas)

    def index(self, space: str, addresses) -> np.ndarray:
        """Index into ``regions(space)`` per address (int64, -1 where no region is)."""
        return self._space(space).index(addresses)

    def in_kernel(self, space: str, addresses) -> np.ndarray:
        """Per address: whether the kernel emulates it (False where unknown)."""
        sp = self._space(space)
        idx = sp.index(addresses)
        flags = np.array([r.in_kernel for r in sp.regions], dtype=bool)
        out = np.zeros(idx.shape, dtype=bool)
        out[idx >= 0] = flags[idx[idx >= 0]]
        return out

    # -- the table -----------------------------------------------------------

    def regions(self, space: str | None = None) -> tuple[Region, ...]:
        """The regions of *space* (or of both, memory first), sorted by start."""
        if space is None:
            return self._spaces["memory"].regions + self._spaces["io"].regions
        return self._space(space).regions

    def df_regions(self) -> pd.DataFrame:
        """The map as a frame, one row per region, index ``region``.

        Columns: space (category), start, end (uint64, inclusive), size
        (uint64), name, kind (category), in_kernel (bool), source, description
        (category), priority (int32), offset (uint64), kvm_slot (bool).
        """
        rows = self.regions()
        cat = lambda values: pd.Categorical(values)  # noqa: E731
        df = pd.DataFrame({
            "space": cat([r.space for r in rows]),
            "start": np.array([r.start for r in rows], dtype=np.uint64),
            "end": np.array([r.end for r in rows], dtype=np.uint64),
            "size": np.array([r.size for r in rows], dtype=np.uint64),
            "name": cat([r.name for r in rows]),
            "kind": cat([r.kind for r in rows]),
            "in_kernel": np.array([r.in_kernel for r in rows], dtype=bool),
            "source": cat([r.source for r in rows]),
            "description": cat([r.description for r in rows]),
            "priority": np.array([r.priority for r in rows], dtype=np.int32),
            "offset": np.array([r.offset for r in rows], dtype=np.uint64),
            "kvm_slot": np.array([r.kvm_slot for r in rows], dtype=bool),
        })
        df.index = pd.RangeIndex(len(df), name="region")
        return df

    def _space(self, space: str) -> _Space:
        try:
            return self._spaces[space]
        except KeyError:
            raise ValueError(f"space must be one of {SPACES}, not {space!r}") from None

    def __len__(self) -> int:
        return sum(len(s.regions) for s in self._spaces.values())

    def __repr__(self) -> str:
        parts = ", ".join(f"{space}: {len(self._spaces[space].regions)} from {self.sources[space]}"
                          for space in SPACES)
        return f"<DeviceMap {parts}>"
