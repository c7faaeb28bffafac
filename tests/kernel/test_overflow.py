"""A stalled reader and a tiny ring buffer: every event is written or counted
lost, exactly, per kind, against the ROM's ground truth."""

from __future__ import annotations

import io
import json
import subprocess
import time

from kvmtrace.demo.run import resume, start_demo, stop_demo, wait_stopped
from kvmtrace.record.domain import resolve
from kvmtrace.kernel.events import EventFlag, EventKind
from kvmtrace.demo.guest import Workload, expected
from kvmtrace.record.session import RecordOptions, Session
from kvmtrace.trace import load

from ..support.cli import kvmtrace_cmd
from ..support.kernel import URI, kvmtrace_progs, probe_a_paused_demo


def test_lost_equals_generated_minus_written(kernel, domain_name, tmp_path):
    w = Workload(port_writes=997, rtc_reads=503, pit_writes=257, pit_reads=263,
                 hpet_writes=127, hpet_reads=131, ioapic_writes=137)
    truth = expected(w)
    pio_generated = sum(truth["pio"].values())
    out = tmp_path / "overflow.kvmtrace"
    conn, dom = start_demo(w, URI, name=domain_name, paused=True)
    s = Session(RecordOptions(domain=domain_name, ringbuf_pages=1, progress_interval=0), log=io.StringIO())
    try:
        s.preflight()
        guest = resolve(conn, domain_name)
        s.open_output(str(out), guests=[guest])
        s.attach()
        s.trace(guest)
        s.mark_start()
        resume(dom)
        assert wait_stopped(dom, 60)  # the reader stalls the whole run: one 4 KiB page fills at once
        time.sleep(0.2)
        s.stop_reason = "test"
    finally:
        s.finish()
        stop_demo(dom)
    t = load(out)
    ev = t.events
    lost = t.data.trailer["lost_by_kind"]
    written_pio = int((ev["kind"] == EventKind.PIO).sum())
    assert lost["PIO"] > 0 and written_pio > 0
    assert written_pio + lost["PIO"] == pio_generated
    uexits = sum(truth["userspace_exits"].values())
    written_uexit = int(((ev["kind"] == EventKind.USERSPACE_EXIT) & (ev["err"] >= 0)).sum())
    restarts = int(((ev["kind"] == EventKind.USERSPACE_EXIT) & (ev["err"] < 0)).sum())
    # A -EINTR restart may itself be lost; the ROM's exits never go missing unaccounted.
    assert uexits <= written_uexit + restarts + lost["USERSPACE_EXIT"] <= uexits + 1
    matched = t.data.trailer["matched_by_kind"]
    assert sum(matched.values()) == len(ev) + t.lost_events
    rep = json.loads(subprocess.run(kvmtrace_cmd("report", "--format", "json", str(out)),
                                    capture_output=True, check=True).stdout)
    assert rep["lost_events"] == t.lost_events == sum(lost.values())
    assert kvmtrace_progs() == []


def test_a_full_thread_table_loses_no_event(kernel, domain_name):
    """The probes keep one state entry per vCPU thread; when that table is
    full, a thread's events are still matched and delivered (without its
    kvm_run fields), never dropped unaccounted."""
    w = Workload(port_writes=23, rtc_reads=29, pit_writes=31, pit_reads=37, hpet_writes=41, hpet_reads=43,
                 ioapic_writes=47)
    truth = expected(w)
    # A thread that never runs takes the only entry.
    ev, counters = probe_a_paused_demo(w, domain_name, lambda probes, guest: probes.add_vcpu(guest.pid, 0x7FFFFFF0),
                                       max_vcpus=1)
    assert counters.lost_total == 0 and sum(counters.matched.values()) == len(ev)
    assert (ev["kind"] == EventKind.PIO).sum() == sum(truth["pio"].values())
    uexits = (ev["kind"] == EventKind.USERSPACE_EXIT) & (ev["err"] >= 0)
    assert uexits.sum() == sum(truth["userspace_exits"].values())
    assert not (ev["flags"][uexits] & EventFlag.RUN_FIELDS).any()  # no kvm_run: the thread has no entry
