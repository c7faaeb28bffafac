"""Start the demo guest (kvmtrace.demo.guest) as a libvirt domain.

Used by `kvmtrace demo` and by the tests that check kvmtrace's numbers
against the guest's programmed exits.
"""

from __future__ import annotations

import time

from kvmtrace.record.domain import connect
from kvmtrace.errors import LibvirtError
from kvmtrace.demo.guest import DEFAULT_DOMAIN_NAME, Workload, build_rom, domain_xml


def _owned_by_us(dom) -> bool:
    return "kvmtrace-demo-" in dom.XMLDesc(0)


def start_demo(workload: Workload, uri: str, name: str = DEFAULT_DOMAIN_NAME, paused: bool = False,
               replace: bool = True, irqchip: str = "kernel"):
    """Create the demo domain from its XML through libvirt (virDomainCreateXML).

    A running domain of the same name that is a kvmtrace demo guest is
    destroyed first (when ``replace``); any other domain of that name is left
    alone and reported. The ROM is built first: without nasm nothing is
    touched.
    """
    import libvirt

    rom = build_rom(workload)
    conn = connect(uri)
    try:
        old = conn.lookupByName(name)
    except libvirt.libvirtError:
        old = None
    if old is not None and old.isActive():
        if not (replace and _owned_by_us(old)):
            raise LibvirtError(
                f"a domain named {name!r} is already running and is not a kvmtrace demo guest",
                "stop it or give the demo another name",
            )
        old.destroy()
    flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
    try:
        dom = conn.createXML(domain_xml(name=name, rom_path=str(rom), vcpus=workload.vcpus, irqchip=irqchip), flags)
    except libvirt.libvirtError as e:
        raise LibvirtError(f"libvirt could not start the demo guest: {e.get_error_message()}") from e
    return conn, dom


def resume(dom) -> None:
    """Resume a paused domain; a guest that ends itself at once is not an error.

    A short finite guest can run to its end (isa-debug-exit makes QEMU exit)
    before QEMU answers libvirt's "cont", and libvirt then reports the
    monitor connection reset. If the domain is gone by then, that is what
    happened.
    """
    import libvirt

    try:
        dom.resume()
    except libvirt.libvirtError:
        # libvirt may not have noticed QEMU's exit yet: give it a moment.
        if not wait_stopped(dom, 5.0):
            raise


def stop_demo(dom) -> None:
    """Destroy the domain if it still runs (a transient domain then vanishes)."""
    import libvirt

    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError:
        pass


def wait_stopped(dom, timeout: float) -> bool:
    import libvirt

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not dom.isActive():
                return True
        except libvirt.libvirtError:
            return True
        time.sleep(0.05)
    return False
