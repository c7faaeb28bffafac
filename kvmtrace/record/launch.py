"""Launch a guest under the tracer, from its first instruction.

``kvmtrace launch DOM.xml`` does what ``virsh create`` does
(virDomainCreateXML) but paused, with the probes attached and armed to take
KVM ioctls of any process, so the new QEMU's KVM_CREATE_VM, memory slots and
KVM_CREATE_VCPU are seen before its pid is known; then it traces that QEMU,
disarms, resumes the guest and records until it stops. ``record --domain
NAME --start`` does the same for a defined, inactive domain.
"""

from __future__ import annotations

import os
import sys
import time
import xml.etree.ElementTree as ET
from typing import Callable, TextIO

from kvmtrace.record.domain import connect, lookup, resolve, resume
from kvmtrace.errors import DomainXmlError, LibvirtError, OutputError
from kvmtrace.record.session import RecordOptions, RecordResult, Session, default_output

__all__ = ["DomainXmlError", "domain_name_of", "launch_xml", "start_defined"]


def domain_name_of(xml_text: str, source: str = "the domain XML") -> str:
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as e:
        raise DomainXmlError(f"{source} is not well-formed XML ({e})", "fix the XML and try again") from e
    name = root.findtext("name")
    if root.tag != "domain" or not name:
        raise DomainXmlError(f"{source} is not a libvirt domain (no <domain><name>)",
                             "give a domain XML as for virsh create")
    return name.strip()


def _check_writable(path: str) -> None:
    """Fail before anything is created or attached if ``path`` cannot be written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise OutputError(f"cannot write the trace file {path}: {e.strerror}", "choose a writable path with -o") from e
    os.close(fd)


def _launch(opts: RecordOptions, name: str, start: Callable[[object], object], log: TextIO,
            xml_text: str | None) -> RecordResult:
    import libvirt

    s = Session(opts, log)
    s.preflight(launch=True)
    conn = connect(opts.uri)
    try:
        existing = conn.lookupByName(name)
    except libvirt.libvirtError:
        existing = None
    if existing is not None and existing.isActive():
        raise LibvirtError(f"a domain named {name!r} is already running",
                           f"stop it (virsh -c {opts.uri} destroy {name}) or rename the new one")
    path = opts.output or default_output(name)
    _check_writable(path)
    try:
        s.attach()
        s.probes.arm()
        s.mark_start()
        called = time.monotonic_ns()
        try:
            dom = start(conn)
        except libvirt.libvirtError as e:
            raise LibvirtError(f"libvirt could not start {name!r}: {e.get_error_message()}",
                               "check the domain XML and libvirtd's log") from e
        returned = time.monotonic_ns()
        guest = resolve(conn, dom.UUIDString())
        s.trace(guest)
        s.probes.disarm()
        s.open_output(path, {"launch": {"xml": xml_text or guest.xml, "create_called_ns": called,
                                        "create_returned_ns": returned}})
        s.watch_maps()
        s.flush()  # the creation ioctls, kept for this QEMU only
        s.say(f"launched {guest.name} (QEMU pid {guest.pid}) paused in "
              f"{(returned - called) / 1e6:.0f} ms; resuming and recording to {path}; Ctrl-C stops")
        resumed = time.monotonic_ns()
        resume(dom)
        s.extra_trailer["launch"] = {"resumed_ns": resumed}
        s.stop_reason = s.stream()
    finally:
        result = s.finish()
    return result


def launch_xml(xml_path: str, opts: RecordOptions, log: TextIO = sys.stderr) -> RecordResult:
    """Create a transient domain from ``xml_path`` and record it from its first instruction."""
    import libvirt

    try:
        with open(xml_path) as f:
            xml_text = f.read()
    except OSError as e:
        raise DomainXmlError(f"cannot read {xml_path}: {e.strerror}", "give the path of a domain XML file") from e
    name = domain_name_of(xml_text, xml_path)
    return _launch(opts, name, lambda conn: conn.createXML(xml_text, libvirt.VIR_DOMAIN_START_PAUSED), log, xml_text)


def start_defined(opts: RecordOptions, log: TextIO = sys.stderr) -> RecordResult:
    """Start the defined, inactive domain ``opts.domain`` and record it from its first instruction."""
    import libvirt

    conn = connect(opts.uri)
    dom = lookup(conn, opts.domain)
    if dom.isActive():
        raise LibvirtError(f"domain {dom.name()!r} is already running", "record it without --start")

    def start(_conn):
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        return dom

    return _launch(opts, dom.name(), start, log, None)
