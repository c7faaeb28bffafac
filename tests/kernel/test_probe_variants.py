"""Both probe variants for real on this host: the plan a 6.18 kernel gets
(raw kvm_pio/kvm_mmio/kvm_userspace_exit, RUN from kvm_fpu) and the one a 5.4
kernel gets (raw kvm_entry too, RUN from sys_enter_ioctl) each compile,
attach and count the demo ROM exactly, and every KVM_RUN gives one RUN."""

from __future__ import annotations


import numpy as np
import pytest

from kvmtrace.demo.guest import Workload, expected
from kvmtrace.kernel.events import EventKind, MmioOp
from kvmtrace.kernel.layouts import plan_probes

from ..support.kernel import probe_a_paused_demo
from ..unit.test_layouts import fixture_fields

WORKLOAD = Workload(port_writes=23, rtc_reads=29, pit_writes=31, pit_reads=37, hpet_writes=41, hpet_reads=43,
                    ioapic_writes=47)


@pytest.mark.parametrize("stored,release", [("linux-5.4", "5.4.0"), ("linux-6.18", "6.18.44")])
def test_the_plan_of_each_stored_kernel_counts_exactly_here(kernel, domain_name, stored, release):
    plan = plan_probes(fixture_fields(stored), release)
    truth = expected(WORKLOAD)

    def register(probes, guest):
        for vcpu, tid in guest.vcpu_threads.items():
            probes.add_vcpu(guest.pid, tid, guest.kvm_run.get(vcpu, 0))

    # Compiled against this kernel's formats, attached as the stored kernel's plan says.
    ev, counters = probe_a_paused_demo(WORKLOAD, domain_name, register, plan=plan)
    assert counters.lost_total == 0 and sum(counters.matched.values()) == len(ev)
    kind = ev["kind"]
    pio = ev[kind == EventKind.PIO]
    got = {}
    for port, op, size in zip(pio["port"], pio["op"], pio["size"]):
        key = (int(port), "write" if op else "read", int(size))
        got[key] = got.get(key, 0) + 1
    want = {}
    for (port, direction, size, _user), n in truth["pio"].items():
        want[(port, direction, size)] = want.get((port, direction, size), 0) + n
    assert got == want
    mmio = ev[kind == EventKind.MMIO]
    assert (mmio["op"] != MmioOp.READ).sum() == sum(truth["mmio"].values())  # a VMM-answered read once
    uexit = ev[kind == EventKind.USERSPACE_EXIT]
    assert (uexit["err"] >= 0).sum() == sum(truth["userspace_exits"].values())
    # Every KVM_RUN returns with one kvm_userspace_exit: as many RUN events, from either edge.
    assert (kind == EventKind.RUN).sum() == len(uexit)
    # Each exit but the last (QEMU ends on it) is followed by its thread's RUN.
    order = np.argsort(ev["ts_ns"], kind="stable")
    seq = kind[order][np.isin(kind[order], [EventKind.USERSPACE_EXIT, EventKind.RUN])]
    assert seq[0] == EventKind.RUN and (seq[1::2] == EventKind.USERSPACE_EXIT).all() and \
        (seq[::2] == EventKind.RUN).all()
