"""The vCPU state machine (analysis.vcpu_time) on hand-built event sequences:
every segment's state, the states covering the recorded time exactly, the
state at attach from the header and its correction by the first edges, and
the per-interval split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kvmtrace.analysis.vcpu_time import STATES, segments, state_of, vcpu_time, vcpu_time_intervals
from kvmtrace.kernel.events import AGGREGATE, EventKind, ThreadSched, VcpuState

from ..support.evbuild import Ev

START = 1_000


def header(in_run=True, sched="on_cpu", tid=100):
    return {"vcpu_states": {str(tid): {"vcpu": 0, "pid": 100, "tid": tid, "in_run": in_run, "sched": sched}}}


def totals(ev: Ev, hdr: dict, end: int) -> dict[str, int]:
    """ns per state of thread 100 from START to ``end``."""
    tl = segments(ev.frame(), hdr, START, end)
    return dict(zip(STATES, tl.totals_ns()[0].tolist()))


def test_state_table():
    in_run = np.array([1, 0, 1, 0, 1, 0])
    sched = np.array([ThreadSched.ON_CPU, ThreadSched.ON_CPU, ThreadSched.ASLEEP, ThreadSched.ASLEEP,
                      ThreadSched.RUNNABLE, ThreadSched.RUNNABLE])
    assert [VcpuState(s).name for s in state_of(in_run, sched)] == [
        "GUEST", "VMM", "HALTED", "VMM_WAITING", "PREEMPTED", "PREEMPTED"]


def test_run_loop_on_a_cpu_splits_guest_and_vmm():
    ev = Ev()  # t = 2000: KVM_RUN returns; 5000: the VMM re-enters; 11000: returns again
    ev.uexit(2, dt=1000).run(dt=3000).uexit(2, dt=6000)
    got = totals(ev, header(), 20_000)
    # inside 1000..2000 and 5000..11000; outside 2000..5000 and 11000..20000
    assert got == {"guest": 7000, "halted": 0, "vmm": 12000, "vmm_waiting": 0, "preempted": 0}


def test_switches_and_wakeups():
    ev = Ev()
    ev.switch_out(prev_state=1, dt=1000)      # 2000: asleep inside KVM_RUN (halted)
    ev.wakeup(dt=4000)                        # 6000: runnable
    ev.switch_in(dt=500)                      # 6500: on a CPU
    ev.switch_out(prev_state=0, dt=1500)      # 8000: preempted (TASK_RUNNING)
    ev.switch_in(dt=1000)                     # 9000
    ev.switch_out(prev_state=1, preempt=True, dt=1000)  # 10000: preempted (flag), state not yet running
    ev.switch_in(dt=2000)                     # 12000
    ev.uexit(2, dt=1000)                      # 13000: out of KVM_RUN
    ev.switch_out(prev_state=2, dt=1000)      # 14000: asleep in the VMM
    ev.wakeup(dt=3000).switch_in(dt=0)        # 17000
    got = totals(ev, header(), 20_000)
    assert got == {"guest": 1000 + 1500 + 1000 + 1000, "halted": 4000, "vmm": 1000 + 3000,
                   "vmm_waiting": 3000, "preempted": 500 + 1000 + 2000}
    assert sum(got.values()) == 20_000 - START


def test_a_wakeup_of_a_thread_on_its_cpu_changes_nothing():
    ev = Ev()
    ev.wakeup(dt=1000).switch_out(prev_state=1, dt=1000).wakeup(dt=1000).switch_in(dt=1000)
    got = totals(ev, header(), 6000)
    assert got == {"guest": 2000 + 1000, "halted": 1000, "vmm": 0, "vmm_waiting": 0, "preempted": 1000}


def test_no_event_at_all_keeps_the_state_at_attach():
    for in_run, sched, state in ((True, "asleep", "halted"), (False, "asleep", "vmm_waiting"),
                                 (True, "on_cpu", "guest")):
        got = totals(Ev(), header(in_run, sched), 9000)
        assert got[state] == 8000 and sum(got.values()) == 8000


def test_the_first_edges_correct_the_state_at_attach():
    # /proc said asleep outside KVM_RUN; the first switch is OUT (so it was on a
    # CPU) and the first run edge a return from KVM_RUN (so it was inside).
    ev = Ev()
    ev.uexit(2, dt=1000).switch_out(prev_state=1, dt=1000)
    got = totals(ev, header(in_run=False, sched="asleep"), 4000)
    assert got == {"guest": 1000, "halted": 0, "vmm": 1000, "vmm_waiting": 1000, "preempted": 0}
    # A first switch IN: it was runnable.
    ev = Ev()
    ev.switch_in(dt=1000)
    got = totals(ev, header(in_run=True, sched="asleep"), 4000)
    assert got == {"guest": 2000, "halted": 0, "vmm": 0, "vmm_waiting": 0, "preempted": 1000}


def test_events_before_the_start_count_from_the_start():
    ev = Ev()
    ev.t = 0
    ev.switch_out(prev_state=1, dt=500)  # at 500, before START
    got = totals(ev, header(), 3000)
    assert got == {"guest": 0, "halted": 2000, "vmm": 0, "vmm_waiting": 0, "preempted": 0}


def test_threads_are_separate_and_named_by_the_header():
    ev = Ev()
    ev.switch_out(prev_state=1, tid=100, dt=1000).uexit(2, tid=200, dt=1000)
    hdr = header()
    hdr["vcpu_states"]["200"] = {"vcpu": 1, "pid": 100, "tid": 200, "in_run": True, "sched": "on_cpu"}
    df = vcpu_time(ev.frame(), hdr, START, 5000, {100: 0, 200: 1})
    assert df["vcpu"].tolist() == [0, 1] and df["tid"].tolist() == [100, 200]
    assert df["halted_s"].tolist() == [3000 / 1e9, 0.0]
    assert df["guest_s"].tolist() == [1000 / 1e9, 2000 / 1e9]
    assert df["vmm_s"].tolist() == [0.0, 2000 / 1e9]
    assert (df["total_s"] == 4000 / 1e9).all()
    assert df.index.name == "thread" and str(df["vcpu"].dtype) == "uint32"


def test_intervals_split_the_segments_at_the_window_edges():
    ev = Ev()
    ev.switch_out(prev_state=1, dt=1500)  # 2500: halted
    df = vcpu_time_intervals(ev.frame(), header(), START, 4000, {100: 0}, 1e-6)  # 1000 ns windows
    assert df["t_s"].tolist() == pytest.approx([0, 1e-6, 2e-6])
    assert (df["guest_s"] * 1e9).round().tolist() == [1000, 500, 0]
    assert (df["halted_s"] * 1e9).round().tolist() == [0, 500, 1000]
    assert (df["total_s"] * 1e9).round().tolist() == [1000, 1000, 1000]


def test_counts_mode_reads_the_kernels_nanoseconds():
    rows = Ev()
    for state, ns in ((VcpuState.GUEST, 700), (VcpuState.PREEMPTED, 300)):
        rows.add(EventKind.VCPU_TIME | AGGREGATE, op=int(state), value=ns, dt=0)
    rows.add(EventKind.VCPU_TIME | AGGREGATE, op=int(VcpuState.GUEST), value=1000, dt=1000)
    df = vcpu_time(rows.frame(), header(), START, 3000, {100: 0}, counts_mode=True)
    assert (df[["guest_s", "preempted_s", "total_s"]].iloc[0] * 1e9).round().tolist() == [1700, 300, 2000]


def test_the_timeline_frame_merges_equal_neighbours():
    ev = Ev()
    ev.uexit(2, dt=1000).run(dt=0).switch_out(prev_state=1, dt=1000)
    tl = segments(ev.frame(), header(), START, 4000)
    df = tl.frame()
    assert df["state"].astype(str).tolist() == ["guest", "halted"]
    assert df[["start_ns", "end_ns"]].values.tolist() == [[1000, 3000], [3000, 4000]]
    assert isinstance(df["state"].dtype, pd.CategoricalDtype)


def _rates(label, preempted_ms, guest_ms, duration_s=4.0):
    from kvmtrace.analysis.compare import RunRates

    counts = pd.DataFrame({"dimension": ["vcpu_time", "vcpu_time", "port"],
                           "key": ["vcpu 0 preempted", "vcpu 0 guest", "0x0080 write"],
                           "count": [preempted_ms, guest_ms, 40_000]})
    return RunRates(label=label, counts=counts, duration_s=duration_s, exits=40_000)


def test_compare_sees_preempted_rise_from_2_to_30_percent():
    from kvmtrace.analysis.compare import compare, describe_cause, regression_causes

    df = compare(_rates("base", 80, 3000), _rates("new", 1200, 2000))
    causes = regression_causes(df)
    assert [describe_cause(r) for r in causes.to_dict("records")] == [
        "vcpu_time vcpu 0 preempted rose from 2% to 30%"]


def test_a_rise_of_a_few_points_is_no_vcpu_time_regression():
    from kvmtrace.analysis.compare import compare

    df = compare(_rates("base", 4, 3000), _rates("new", 40, 3000))  # 0.1 % -> 1 %: +900 %, significant
    row = df[df["key"] == "vcpu 0 preempted"].iloc[0]
    assert row["significant"] and not row["regression"]


def test_rate_rows_are_milliseconds_per_state():
    from kvmtrace.analysis.vcpu_time import rate_rows

    df = pd.DataFrame({"vcpu": np.array([0], np.uint32), "pid": np.array([1], np.uint32),
                       "tid": np.array([2], np.uint32), "total_s": [2.0], "guest_s": [1.5], "halted_s": [0.0],
                       "vmm_s": [0.25], "vmm_waiting_s": [0.0], "preempted_s": [0.25]})
    rows = rate_rows(df)
    assert rows.to_dict("list") == {"dimension": ["vcpu_time"] * 5,
                                    "key": [f"vcpu 0 {s}" for s in STATES], "count": [1500, 0, 250, 0, 250]}


def test_compare_leaves_vcpu_time_out_when_one_run_lacks_it():
    from kvmtrace.analysis.compare import RunRates, compare

    old = RunRates(label="old", counts=pd.DataFrame({"dimension": ["port"], "key": ["0x0080 write"],
                                                     "count": [40_000]}), duration_s=4.0, exits=40_000)
    df = compare(old, _rates("new", 1200, 2000))
    assert "vcpu_time" not in set(df["dimension"].astype(str)) and not df["regression"].any()
