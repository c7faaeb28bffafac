"""Start the demo guest (kvmtrace.demo.guest) as a libvirt domain.

Used by `kvmtrace demo` and by the tests that check kvmtrace's numbers
against the guest's programmed exits.
"""

from __future__ import annotations

# The demo's life goes through record.domain, the one module that speaks libvirt;
# resume and wait_stopped are re-exported for the demo's callers.
from kvmtrace.record.domain import connect, create, destroy, find, resume, wait_stopped  # noqa: F401
from kvmtrace.errors import LibvirtError
from kvmtrace.demo.guest import DEFAULT_DOMAIN_NAME, Workload, build_rom
from kvmtrace.demo.machine import domain_xml


def _owned_by_us(dom) -> bool:
    return "kvmtrace-demo-" in dom.XMLDesc(0)


def start_demo(workload: Workload, uri: str, name: str = DEFAULT_DOMAIN_NAME, paused: bool = False,
               replace: bool = True, irqchip: str = "kernel", debug_exit: bool = True):
    """Create the demo domain from its XML through libvirt (virDomainCreateXML).

    A running domain of the same name that is a kvmtrace demo guest is
    destroyed first (when ``replace``); any other domain of that name is left
    alone and reported. The ROM is built first: without nasm nothing is
    touched. Without ``debug_exit`` a finite ROM does not end its domain:
    it stays in its final ``cli; hlt`` for ever (see :data:`HALT`).
    """
    rom = build_rom(workload)
    conn = connect(uri)
    old = find(conn, name)
    if old is not None and old.isActive():
        if not (replace and _owned_by_us(old)):
            raise LibvirtError(
                f"a domain named {name!r} is already running and is not a kvmtrace demo guest",
                "stop it or give the demo another name",
            )
        old.destroy()
    try:
        dom = create(conn, domain_xml(name=name, rom_path=str(rom), vcpus=workload.vcpus, irqchip=irqchip,
                                      debug_exit=debug_exit), paused=paused)
    except LibvirtError as e:
        raise LibvirtError(str(e).replace("the domain", "the demo guest")) from e
    return conn, dom


def stop_demo(dom) -> None:
    """Destroy the demo domain if it still runs."""
    destroy(dom)
