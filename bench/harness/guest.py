"""The storm guest: the demo ROM writing N times to port 0x80, then ending QEMU.

Each write is one kvm_pio event, one userspace exit (KVM_EXIT_IO) and one
KVM_RUN ioctl: ``ground_truth`` says what every tracer must have seen.
kvmtrace, libvirt and the demo are imported when used, not with this module.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

DOMAIN = "kvmtrace-bench"
URI = "qemu:///system"
KVM_RUN = 0xAE80
KVM_EXIT_IO = 2


@dataclass
class Guest:
    name: str
    pid: int
    vcpu_tids: list[int]


def storm_workload(writes: int):
    """Workload(port_writes=N, every other access kind 0, steady=False): only port 0x80 writes."""
    import dataclasses

    from kvmtrace.demo.guest import Workload

    # The access counts only: not vcpus (1 .. 8) nor the pacing fields (0 already).
    zero = {f.name: 0 for f in dataclasses.fields(Workload)
            if f.type in (int, "int") and f.name not in ("port_writes", "vcpus")}
    return Workload(**{**zero, "port_writes": writes, "steady": False})


def ground_truth(workload) -> dict:
    """What the kernel must report for one run, from kvmtrace.demo.guest.expected()."""
    from kvmtrace.demo.guest import expected

    truth = expected(workload)
    pio = sum(truth["pio"].values())  # N writes to 0x80 + the final write to 0xf4
    mmio = sum(truth["mmio"].values())
    uexit_io = truth["userspace_exits"].get("IO", 0)
    return {
        "pio": pio,
        "mmio": mmio,
        "uexit_io": uexit_io,
        # KVM_RUN: the first one after resume, then one after every userspace
        # return except the last (the write to 0xf4 ends QEMU inside it), i.e.
        # uexit_io, plus one per non-exit return (uexit_other, checked per run).
        "run": uexit_io,
        "expected_by_tool": "pio + uexit_io (+ run for tools tracing KVM_RUN); kvm_exit/kvm_entry "
                            "add at least one pair per port write on VMX/SVM hosts (none fire here)",
    }


def vcpu_cpu_ns(guest: Guest) -> int | None:
    """CPU time the guest's vCPU threads have used (ns, /proc/PID/task/TID/schedstat),
    None once one has exited. The BPF programs run on these threads."""
    total = 0
    for tid in guest.vcpu_tids:
        try:
            with open(f"/proc/{guest.pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return None
    return total


@contextlib.contextmanager
def storm_guest(workload, name: str = DOMAIN):
    """The demo guest running ``workload``, created paused: yields (libvirt
    domain, its kvmtrace.record.domain.GuestProcess, a pidfd of QEMU), and destroys
    it on the way out, whatever happened."""
    from kvmtrace.demo.run import start_demo, stop_demo
    from kvmtrace.record.domain import resolve

    conn = dom = pidfd = None
    try:
        conn, dom = start_demo(workload, URI, name=name, paused=True)
        g = resolve(conn, name)
        pidfd = os.pidfd_open(g.pid)
        yield dom, g, pidfd
    finally:
        if pidfd is not None:
            os.close(pidfd)
        if dom is not None:
            stop_demo(dom)
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
