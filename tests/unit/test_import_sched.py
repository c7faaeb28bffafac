"""`kvmtrace import` of the scheduler's lines and kvm_fpu: the rows the live sched
probes write, for vCPU threads only, and the vCPU time they give.

The three fixtures tests/data/import/sched-*.txt tell one story in three text
shapes (README there); every row and every second below is worked out by hand
from it:

    t (µs)  thread 4242 (vCPU 0)         thread 4243 (vCPU 1)
    0       KVM_RUN entered (RUN)
    200     switched out, S (asleep)     switched in
    300                                  switched out, R+ (preempted)
    400     woken
    500                                  switched in (from 4240, not a vCPU thread)
    600     switched in (from idle)
    830                                  KVM_RUN returned (userspace exit)
    900                                  switched out, D|K (asleep)
    1000    (last event)

4242: guest 0-200 and 600-1000 (600), halted 200-400 (200), preempted 400-600 (200).
4243: preempted 0-200 (its first switch is in: it was runnable) and 300-500 (400),
guest 200-300 and 500-830 (430), vmm 830-900 (70), vmm_waiting 900-1000 (100).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from kvmtrace.analysis.vcpu_time import has_vcpu_time
from kvmtrace.importer import convert as importer
from kvmtrace.importer.sched import STATE_BITS, prev_state
from kvmtrace.kernel.events import NO_VCPU, EventFlag, EventKind, SchedOp

from ..support import paths
from ..support.cli import run as cli
from ..support.importing import kind, run

DATA = paths.DATA / "import"
T0 = 100_000_000_000  # 100.000000 s, the fixtures' first line
US = 1000

# (ts, tid, cpu, op, reason, flags) of every SCHED_SWITCH row, in the text's order.
SWITCHES = [
    (T0 + 200 * US, 4242, 3, SchedOp.OUT, 0x1, 0),  # S: TASK_INTERRUPTIBLE
    (T0 + 200 * US, 4243, 3, SchedOp.IN, 0, 0),
    (T0 + 300 * US, 4243, 3, SchedOp.OUT, 0, int(EventFlag.PREEMPT)),  # R+
    (T0 + 500 * US, 4243, 3, SchedOp.IN, 0, 0),
    (T0 + 600 * US, 4242, 5, SchedOp.IN, 0, 0),
    (T0 + 900 * US, 4243, 3, SchedOp.OUT, 0x102, 0),  # D|K: TASK_UNINTERRUPTIBLE | TASK_WAKEKILL
]
# seconds per state: guest, halted, vmm, vmm_waiting, preempted
VCPU_TIME = {4242: (600e-6, 200e-6, 0.0, 0.0, 200e-6), 4243: (430e-6, 0.0, 70e-6, 100e-6, 400e-6)}
SCHED = {"lines": {"sched_switch": 5, "sched_wakeup": 1, "sched_wakeup_new": 1},
         "kept": {"sched_switch": 6, "sched_wakeup": 1},
         # 4240's two sides and the wakeup_new of 4250; the idle task's sides are never rows.
         "other_threads": {"sched_switch": 2, "sched_wakeup_new": 1}, "out_of_sequence": 0}
UNLOAD = "kvm_fpu unload (KVM_RUN returning: kvm_userspace_exit is the edge)"

SHAPES = {
    # fixture: (format, pid of 4242 and 4243's rows, RUN from, folded, skipped, lines)
    "sched-ftrace.txt": ("ftrace", {4242: 4242, 4243: 4243}, {"kvm_fpu": 1}, {UNLOAD: 1}, {}, 28),
    "sched-trace-cmd.txt": ("trace-cmd", {4242: 4242, 4243: 4243}, {"sys_enter_ioctl": 1},
                            {"kvm_fpu load inside a KVM_RUN ioctl (its sys_enter_ioctl is the edge)": 1,
                             "kvm_fpu load outside KVM_RUN (another vCPU ioctl)": 1, UNLOAD: 1},
                            {"sys_enter_ioctl": 1, "sys_exit_ioctl": 2}, 22),
    "sched-perf-script.txt": ("perf", {4242: 4240, 4243: 4240}, {"kvm_fpu": 1}, {UNLOAD: 1}, {}, 16),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_sched_rows_in_every_shape(tmp_path, name):
    fmt, pid, run_from, folded, skipped, lines = SHAPES[name]
    res, trace, ev = run(tmp_path, src=DATA / name)
    assert res.format == fmt and res.unknown_lines == 0 and not res.truncated_last_line
    assert res.lines == lines and res.skipped_by_event == skipped
    assert res.sched == SCHED and res.run_edges == run_from and res.folded == folded
    assert res.events_by_probe == {"kvm_exit": 3, "kvm_entry": 2, "kvm_pio": 1, "kvm_userspace_exit": 1,
                                   **run_from, "sched_switch": 6, "sched_wakeup": 1}
    assert res.events == 15 == len(ev)

    sw = kind(ev, EventKind.SCHED_SWITCH)
    got = [(int(r.ts_ns), int(r.tid), int(r.cpu), int(r.op), int(r.reason), int(r.flags)) for r in sw.itertuples()]
    assert got == [(ts, tid, cpu, int(op), reason, flags) for ts, tid, cpu, op, reason, flags in SWITCHES]
    assert list(sw["pid"]) == [pid[t] for t in sw["tid"]] and (sw["vcpu"] == NO_VCPU).all()
    w = kind(ev, EventKind.WAKEUP)
    assert [(int(r.ts_ns), int(r.tid), int(r.pid), int(r.cpu), int(r.op)) for r in w.itertuples()] == [
        (T0 + 400 * US, 4242, pid[4242], 3, 0)]
    r = kind(ev, EventKind.RUN)
    assert [(int(x.ts_ns), int(x.tid), int(x.pid)) for x in r.itertuples()] == [(T0, 4242, pid[4242])]
    # The file keeps the text's order; the trace spans the kept events only.
    assert list(ev["ts_ns"]) == sorted(ev["ts_ns"])
    assert (trace.start_ns, trace.end_ns) == (T0, T0 + 1000 * US)

    assert "sched_switch" in trace.header["probes"] and has_vcpu_time(trace.header, ev)
    vt = trace.df_vcpu_time()
    assert list(vt["tid"]) == [4242, 4243] and list(vt["pid"]) == [pid[4242], pid[4243]]
    for row in vt.itertuples():
        want = VCPU_TIME[row.tid]
        have = (row.guest_s, row.halted_s, row.vmm_s, row.vmm_waiting_s, row.preempted_s)
        assert np.allclose(have, want, rtol=0, atol=1e-12), (row.tid, have)
        assert row.total_s == pytest.approx(1000e-6, abs=1e-12)


def test_message_and_report_say_which_sched_events_were_read(tmp_path):
    res, _, _ = run(tmp_path, src=DATA / "sched-trace-cmd.txt")
    msg = res.message()
    assert ("scheduler: read 5 sched_switch, 1 sched_wakeup, 1 sched_wakeup_new lines; kept 7 events of vCPU "
            "threads (6 sched_switch, 1 sched_wakeup), left out 3 of other threads") in msg
    assert "KVM_RUN entered (RUN): 1 from sys_enter_ioctl KVM_RUN" in msg
    assert "1 kvm_fpu load outside KVM_RUN (another vCPU ioctl)" in msg
    d = json.loads(cli("report", str(tmp_path / "out.kvmtrace"), "--format", "json").stdout)
    rows = {r["tid"]: r for r in d["vcpu_time"]}
    assert set(rows) == {4242, 4243}
    assert rows[4243]["preempted_s"] == 0.0004 and rows[4242]["halted_s"] == 0.0002


def test_no_sched_line_of_a_vcpu_thread_means_no_vcpu_time(tmp_path):
    """Sched lines of other threads only: read, left out, and the trace says it cannot tell vCPU time."""
    text = ("cpus=2\n"
            " qemu-system-x86-4242 [001] 1.000001: kvm_exit: reason HLT rip 0x10 info 0 0\n"
            "          <idle>-0     [001] 1.000002: sched_switch: swapper/1:0 [120] R ==> bash:77 [120]\n"
            "             bash-77   [001] 1.000003: sched_wakeup: sshd:78 [120] CPU:001\n"
            " qemu-system-x86-4242 [001] 1.000004: kvm_entry: vcpu 0\n")
    res, trace, ev = run(tmp_path, text)
    assert res.sched == {"lines": {"sched_switch": 1, "sched_wakeup": 1}, "kept": {},
                         "other_threads": {"sched_switch": 1, "sched_wakeup": 1}, "out_of_sequence": 0}
    assert "no sched_switch of a vCPU thread, so no vCPU time" in res.message()
    assert res.events == 2 and res.events_by_probe == {"kvm_exit": 1, "kvm_entry": 1}
    assert "sched_switch" not in trace.header["probes"] and not has_vcpu_time(trace.header, ev)
    assert (trace.start_ns, trace.end_ns) == (1_000_001_000, 1_000_004_000)
    assert trace.domains == [{"name": "qemu-system-x86", "pid": 4242, "vcpus": [0], "tids": [4242],
                              "vcpu_threads": {"0": 4242}}]
    d = json.loads(cli("report", str(tmp_path / "out.kvmtrace"), "--format", "json").stdout)
    assert "vcpu_time" not in d


def test_switches_before_the_threads_first_kvm_line_and_across_batches(tmp_path, monkeypatch):
    """The vCPU threads are known only at the end: sched rows spilled in earlier batches are kept too."""
    monkeypatch.setattr(importer, "BATCH_EVENTS", 2)
    sw = "          <idle>-0     [001] 1.{:06d}: sched_switch: swapper/1:0 [120] R ==> CPU 0/KVM:{} [120]\n"
    out = "       CPU 0/KVM-{1} [001] 1.{0:06d}: sched_switch: CPU 0/KVM:{1} [120] S ==> swapper/1:0 [120]\n"
    text = ("cpus=2\n" + sw.format(1, 50) + out.format(2, 50) + sw.format(3, 60) + out.format(4, 60)
            + sw.format(5, 50) + "       CPU 0/KVM-50 [001] 1.000006: kvm_exit: reason HLT rip 0x10 info 0 0\n"
            + out.format(7, 50))
    res, trace, ev = run(tmp_path, text)
    s = kind(ev, EventKind.SCHED_SWITCH)
    assert list(zip(s["ts_ns"], s["tid"], s["pid"], s["op"], s["reason"])) == [
        (1_000_001_000, 50, 50, SchedOp.IN, 0), (1_000_002_000, 50, 50, SchedOp.OUT, 1),
        (1_000_005_000, 50, 50, SchedOp.IN, 0), (1_000_007_000, 50, 50, SchedOp.OUT, 1)]
    assert res.sched["other_threads"] == {"sched_switch": 2} and res.events == 5 == len(ev)
    assert (trace.start_ns, trace.end_ns) == (1_000_001_000, 1_000_007_000)
    assert [d["pid"] for d in trace.domains] == [50]


def test_switches_out_of_sequence_are_counted_and_said(tmp_path):
    """In after in (the out between them is not in the text) and out after out: 2 breaks of 50's;
    the other thread's (77) are not counted."""
    line = "       task-{0} [001] 1.{1:06d}: sched_switch: CPU 0/KVM:{2} [120] {3} ==> CPU 0/KVM:{4} [120]\n"
    text = ("cpus=2\n"
            "       CPU 0/KVM-50 [001] 1.000001: kvm_exit: reason HLT rip 0x10 info 0 0\n"
            + line.format(0, 2, 0, "R", 50)  # in
            + line.format(0, 3, 77, "R", 50)  # in again: break 1 (77: out)
            + line.format(50, 4, 50, "S", 0)  # out
            + line.format(50, 5, 50, "S", 77)  # out again: break 2 (77: in)
            + line.format(77, 6, 77, "S", 0))  # 77 out: in sequence
    res, _, ev = run(tmp_path, text)
    assert res.sched["out_of_sequence"] == 2 and res.sched["kept"] == {"sched_switch": 4}
    assert "2 switches of vCPU threads out of sequence (in after in, or out after out)" in res.message()


def test_a_switch_between_two_vcpu_threads_gives_both_rows(tmp_path):
    text = ("cpus=2\n"
            "       CPU 0/KVM-50 [001] 1.000001: kvm_exit: reason HLT rip 0x10 info 0 0\n"
            "       CPU 1/KVM-51 [000] 1.000001: kvm_exit: reason HLT rip 0x10 info 0 0\n"
            "       CPU 0/KVM-50 [001] 1.000002: sched_switch: prev_comm=CPU 0/KVM prev_pid=50 prev_prio=120 "
            "prev_state=R+ ==> next_comm=CPU 1/KVM next_pid=51 next_prio=120\n")
    res, _, ev = run(tmp_path, text)
    s = kind(ev, EventKind.SCHED_SWITCH)
    assert list(zip(s["tid"], s["op"], s["reason"], s["flags"], s["cpu"])) == [
        (50, SchedOp.OUT, 0, int(EventFlag.PREEMPT), 1), (51, SchedOp.IN, 0, 0, 1)]
    assert res.sched["kept"] == {"sched_switch": 2} and res.sched["other_threads"] == {}


def test_prev_state_letters_become_the_task_bits_the_probe_records():
    assert prev_state("R") == (0, 0)
    assert prev_state("R+") == (0, int(EventFlag.PREEMPT))
    assert prev_state("S") == (1, 0) and prev_state("D") == (2, 0)
    assert prev_state("I") == (0x402, 0)  # TASK_IDLE: TASK_UNINTERRUPTIBLE | TASK_NOLOAD
    assert prev_state("D|K") == (0x102, 0) and prev_state("S|W") == (0x201, 0)
    assert prev_state("T") == (4, 0) and prev_state("t") == (8, 0) and prev_state("P") == (0x40, 0)
    assert prev_state("X") == (0x10, 0) and prev_state("Z") == (0x20, 0)
    assert prev_state("?") is None and prev_state("S|?") is None
    # Every letter is a state other than running: none reads as runnable (0).
    assert all(v != 0 for v in STATE_BITS.values())


def test_unreadable_sched_line_is_counted_not_fatal(tmp_path):
    text = ("cpus=2\n"
            "       CPU 0/KVM-50 [001] 1.000001: kvm_exit: reason HLT rip 0x10 info 0 0\n"
            "       CPU 0/KVM-50 [001] 1.000002: sched_switch: CPU 0/KVM:50 [120] Q ==> swapper/1:0 [120]\n"
            "       CPU 0/KVM-50 [001] 1.000003: sched_wakeup: garbage\n")
    res, _, ev = run(tmp_path, text)
    assert res.unknown_lines == 2 and res.unknown_examples == [3, 4] and res.events == 1
    assert kind(ev, EventKind.SCHED_SWITCH).empty
    assert res.sched == {"lines": {}, "kept": {}, "other_threads": {}, "out_of_sequence": 0}
