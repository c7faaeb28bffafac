"""Counts mode's vCPU time in the kernel (kvmtrace/kernel/bpf/vcpu_time.bpf.h),
compiled natively and replayed on the same events the events-mode analysis
(analysis.vcpu_time.segments) reads: the two must give the same nanoseconds
per state and the same in-guest part of guest, to the nanosecond.

kvm_exit and kvm_entry never fire on the development host (a nested PVM host),
so no real guest drives kt_guest_edge() here: this test is what runs it. The C
is the shipped header, built with the -D flags kvmtrace.kernel.events generates;
a tiny main() plays the part of emit_counts.bpf.h's kt_submit() (which event
kind calls which edge function, the same five lines) and prints each struct
kt_thread, which probe.py's read_vcpu_time() then reads out as the kernel's map,
through CountsDelta into the counts-mode analysis.
"""

from __future__ import annotations

import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from kvmtrace.analysis.vcpu_time import STATES, _in_run_after, _sched_after, segments, vcpu_time
from kvmtrace.kernel.events import EVENT_DTYPE, EventKind, SchedOp, bpf_defines
from kvmtrace.kernel.probe import CountsDelta, Probes, probes_dir

from ..support.evbuild import Ev
from ..support.paths import REAL_TRACES

CC = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (cc, gcc or clang) to build vcpu_time.bpf.h natively")
NATIVE = REAL_TRACES / "hip24-vmx-6.5-2vm-tracedat.native-render.txt"

HARNESS = r"""
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
typedef uint64_t u64; typedef uint32_t u32; typedef int32_t s32; typedef uint16_t u16; typedef uint8_t u8;
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#include "kvmtrace.h"
#include "vcpu_time.bpf.h"

/* stdin: "threads start", then per thread "tid pid in_run sched", then events
 * "thread kind op reason flags ts" in time order. stdout: each kt_thread. */
int main(void)
{
	int n;
	unsigned long long start;
	if (scanf("%d %llu", &n, &start) != 2)
		return 1;
	struct kt_thread *th = calloc(n, sizeof(*th));
	unsigned *tids = calloc(n, sizeof(*tids));
	for (int i = 0; i < n; i++) {
		unsigned pid, in_run, sched;
		if (scanf("%u %u %u %u", &tids[i], &pid, &in_run, &sched) != 4)
			return 1;
		th[i].pid = pid;
		th[i].in_run = in_run;
		th[i].sched = sched;
		th[i].state_ts = start;	/* probe.py's add_vcpu(at_ns=start) */
	}
	int i;
	unsigned kind, op, reason, flags;
	unsigned long long ts;
	while (scanf("%d %u %u %u %u %llu", &i, &kind, &op, &reason, &flags, &ts) == 6) {
		struct kt_event e = {0};
		struct kt_thread *t = &th[i];
		e.kind = kind; e.op = op; e.reason = reason; e.flags = flags; e.ts_ns = ts;
		/* emit_counts.bpf.h's kt_submit(), the vCPU-time part. */
		if (kind == KT_KIND_SCHED_SWITCH || kind == KT_KIND_WAKEUP)
			kt_sched_edge(t, &e);
		else if (kind == KT_KIND_USERSPACE_EXIT)
			kt_run_edge(t, ts, 0);
		else if (kind == KT_KIND_RUN)
			kt_run_edge(t, ts, 1);
		else if (kind == KT_KIND_EXIT)
			kt_guest_edge(t, ts, 0);
		else if (kind == KT_KIND_ENTRY)
			kt_guest_edge(t, ts, 1);
	}
	for (int i = 0; i < n; i++) {
		struct kt_thread *t = &th[i];
		printf("%u %u %u %u %u %u %llu %llu", tids[i], t->pid, t->in_run, t->sched, t->guest_out,
		       t->guest_seen, (unsigned long long)t->state_ts, (unsigned long long)t->guest_ns);
		for (int s = 0; s < KT_STATE_COUNT; s++)
			printf(" %llu", (unsigned long long)t->state_ns[s]);
		printf("\n");
	}
	return 0;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    if CC is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("vcpu_time_c")
    (d / "main.c").write_text(HARNESS)
    flags = bpf_defines(probes=[], fields={}, ringbuf_pages=1, counts_mode=True)
    subprocess.run([CC, "-O1", "-Wall", "-Werror", f"-I{probes_dir()}", *flags, "-o", str(d / "main"),
                    str(d / "main.c")], check=True, capture_output=True, text=True)
    return d / "main"


_KINDS = [int(k) for k in (EventKind.RUN, EventKind.USERSPACE_EXIT, EventKind.SCHED_SWITCH, EventKind.WAKEUP,
                           EventKind.EXIT, EventKind.ENTRY)]


def replay_in_c(exe, events: pd.DataFrame, header: dict, start: int, end: int) -> pd.DataFrame:
    """The kernel's per-thread result for ``events``, read out as counts mode reads it."""
    tl = segments(events, header, start, end)
    ev = events[events["kind"].isin(_KINDS)]
    order = np.lexsort((np.arange(len(ev)), ev["ts_ns"].to_numpy()))
    ev = ev.iloc[order]
    ev = ev[ev["tid"].isin(tl.tid)]
    lines = [f"{len(tl.tid)} {start}"]
    for t, pid in zip(tl.tid.tolist(), tl.pid.tolist()):
        # The state at attach: what the analysis concluded held before the thread's
        # first event (its header and first edges), as record gives the kernel /proc's.
        mine = ev[ev["tid"] == t]
        k = mine["kind"].to_numpy().astype(np.int64)
        st = (header.get("vcpu_states") or {}).get(str(t), {})
        in_run = _in_run_after(k, bool(st.get("in_run", True)))[0]
        sched = _sched_after(k, mine["op"].to_numpy(), mine["reason"].to_numpy(), mine["flags"].to_numpy(),
                             st.get("sched", "on_cpu"))[0]
        lines.append(f"{t} {pid} {int(in_run)} {int(sched)}")
    at = {t: i for i, t in enumerate(tl.tid.tolist())}
    for r in ev[["tid", "kind", "op", "reason", "flags", "ts_ns"]].itertuples(index=False):
        lines.append(f"{at[int(r.tid)]} {r.kind} {r.op} {r.reason} {r.flags} {min(max(int(r.ts_ns), start), end)}")
    out = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True)
    # The printed kt_threads as bcc's table would give them to Probes.read_vcpu_time().
    items = []
    for line in out.stdout.split("\n"):
        if not line:
            continue
        f = [int(x) for x in line.split()]
        leaf = SimpleNamespace(pid=f[1], in_run=f[2], sched=f[3], guest_out=f[4], guest_seen=f[5], state_ts=f[6],
                               guest_ns=f[7], state_ns=f[8:])
        items.append((SimpleNamespace(value=f[0]), leaf))
    fake = SimpleNamespace(bpf={b"threads": SimpleNamespace(items=lambda: items)})
    keys, totals = Probes.read_vcpu_time(fake, end)
    rows = CountsDelta().rows(keys, totals, end)
    frame = pd.DataFrame({n: rows[n] for n in EVENT_DTYPE.names if not n.startswith("pad")})
    return vcpu_time(frame, {}, start, end, {}, counts_mode=True)


def _python(events, header, start, end) -> pd.DataFrame:
    return vcpu_time(events, header, start, end, {})


def _ns(df: pd.DataFrame, cols) -> np.ndarray:
    return np.round(df[cols].to_numpy() * 1e9).astype(np.int64)


def assert_same(py: pd.DataFrame, c: pd.DataFrame):
    cols = [f"{s}_s" for s in STATES] + ["total_s"]
    assert py["tid"].tolist() == c["tid"].tolist()
    assert (_ns(py, cols) == _ns(c, cols)).all(), (py, c)
    assert ("in_guest_s" in py.columns) == ("in_guest_s" in c.columns)
    if "in_guest_s" in py.columns:
        parts = ["in_guest_s", "exit_handling_s"]
        assert (py[parts].isna().to_numpy() == c[parts].isna().to_numpy()).all()
        seen = py["in_guest_s"].notna().to_numpy()
        assert (_ns(py[seen], parts) == _ns(c[seen], parts)).all(), (py, c)


def synthetic() -> tuple[Ev, dict]:
    """Three threads on a VMX host and one with no kvm_exit/kvm_entry (no split)."""
    ev = Ev()
    # tid 100 was in the guest at attach: its first edge is a kvm_exit.
    ev.exit(30, tid=100, dt=1000)                  # 2000
    ev.entry(tid=100, dt=300)                      # 2300
    ev.exit(12, tid=100, dt=1700)                  # 4000: HLT
    ev.switch_out(prev_state=1, tid=100, dt=100)   # 4100: halted
    ev.wakeup(tid=100, dt=2900)                    # 7000: preempted
    ev.switch_in(tid=100, dt=400)                  # 7400
    ev.entry(tid=100, dt=100)                      # 7500
    ev.exit(30, tid=100, dt=500)                   # 8000: an I/O exit to the VMM
    ev.uexit(2, tid=100, dt=200)                   # 8200: vmm
    ev.switch_out(prev_state=0, tid=100, dt=300)   # 8500: preempted in the VMM
    ev.switch_in(tid=100, dt=500)                  # 9000
    ev.run(tid=100, dt=600)                        # 9600: KVM_RUN entered (exit handling until the entry)
    ev.entry(tid=100, dt=150)                      # 9750
    ev.exit(1, tid=100, dt=1250)                   # 11000
    ev.switch_out(prev_state=0, preempt=True, tid=100, dt=10)  # 11010: preempted in exit handling
    ev.switch_in(tid=100, dt=990)                  # 12000
    ev.entry(tid=100, dt=100)                      # 12100: in the guest to the end
    # tid 200 was outside the guest at attach (first edge a kvm_entry), asleep in KVM_RUN.
    ev.t = 1000
    ev.wakeup(tid=200, dt=1500)                    # 2500
    ev.switch_in(tid=200, dt=500)                  # 3000
    ev.entry(tid=200, dt=200)                      # 3200
    ev.exit(12, tid=200, dt=2800)                  # 6000
    ev.entry(tid=200, dt=1000)                     # 7000
    ev.exit(1, tid=200, dt=4000)                   # 11000
    # tid 300: a thread of a host where kvm_exit never fires.
    ev.t = 1000
    ev.uexit(2, tid=300, dt=1000).run(tid=300, dt=500).switch_out(prev_state=1, tid=300, dt=1500)
    # tid 400: its first edge a kvm_exit, after a switch out: it was in the guest until the
    # switch out (a thread off its CPU is not in the guest), then not until its kvm_entry.
    ev.t = 1000
    ev.switch_out(prev_state=0, tid=400, dt=1000).switch_in(tid=400, dt=1000)  # 2000, 3000
    ev.exit(1, tid=400, dt=2000).entry(tid=400, dt=1000)                          # 5000, 6000
    hdr = {"vcpu_states": {str(t): {"vcpu": i, "pid": 100, "tid": t, "in_run": True, "sched": s}
                           for i, (t, s) in enumerate(((100, "on_cpu"), (200, "asleep"), (300, "on_cpu"),
                                                       (400, "on_cpu")))}}
    return ev, hdr


def test_the_synthetic_split_is_what_the_events_say():
    ev, hdr = synthetic()
    df = vcpu_time(ev.frame(), hdr, 1000, 14_000, {100: 0, 200: 1, 300: 2, 400: 3}).set_index("tid")
    ns = (df * 1e9).round()
    # tid 100: in the guest 1000-2000, 2300-4000, 7500-8000, 9750-11000, 12100-14000.
    assert ns.loc[100, "in_guest_s"] == 1000 + 1700 + 500 + 1250 + 1900
    # exit handling: 2000-2300, 4000-4100, 7400-7500, 8000-8200, 9600-9750, 11000-11010, 12000-12100
    assert ns.loc[100, "exit_handling_s"] == 300 + 100 + 100 + 200 + 150 + 10 + 100
    assert ns.loc[100, "guest_s"] == ns.loc[100, "in_guest_s"] + ns.loc[100, "exit_handling_s"]
    assert ns.loc[100, "halted_s"] == 2900 and ns.loc[100, "preempted_s"] == 400 + 500 + 990
    # tid 200: asleep 1000-2500, runnable to 3000, exit handling 3000-3200, 6000-7000, 11000-14000.
    assert ns.loc[200, "in_guest_s"] == 2800 + 4000 and ns.loc[200, "exit_handling_s"] == 200 + 1000 + 3000
    assert ns.loc[200, "halted_s"] == 1500 and ns.loc[200, "preempted_s"] == 500
    # tid 300 had no kvm_exit/kvm_entry: its split is absent (NaN), not zero.
    assert np.isnan(df.loc[300, "in_guest_s"]) and np.isnan(df.loc[300, "exit_handling_s"])
    assert (ns.loc[400, ["in_guest_s", "exit_handling_s", "preempted_s"]] == [1000 + 8000, 3000, 1000]).all()
    assert (ns["total_s"] == 13_000).all()


@needs_cc
def test_the_kernel_c_books_what_the_analysis_computes_synthetic(harness):
    ev, hdr = synthetic()
    frame = ev.frame()
    py, c = _python(frame, hdr, 1000, 14_000), replay_in_c(harness, frame, hdr, 1000, 14_000)
    assert_same(py, c)
    assert c.set_index("tid")["in_guest_s"].notna().to_dict() == {100: True, 200: True, 300: False, 400: True}


@needs_cc
def test_without_kvm_exit_the_kernel_reports_no_split(harness):
    ev, hdr = synthetic()
    frame = ev.frame()
    frame = frame[~frame["kind"].isin([int(EventKind.EXIT), int(EventKind.ENTRY)])]
    py, c = _python(frame, hdr, 1000, 14_000), replay_in_c(harness, frame, hdr, 1000, 14_000)
    assert "in_guest_s" not in py.columns and "in_guest_s" not in c.columns
    assert_same(py, c)


def with_sched(events: pd.DataFrame) -> pd.DataFrame:
    """The imported kvm_exit/kvm_entry of a real trace with sched_switch/wakeup
    added in its gaps, deterministically: a gap of over 1 ms after a HLT exit
    sleeps (switch out, wakeup, switch in) and every 7th other gap of at least
    4 ns is a preemption."""
    ev = events[events["kind"].isin([int(EventKind.EXIT), int(EventKind.ENTRY)])].sort_values(
        ["tid", "ts_ns"], kind="stable")
    add = []
    hlt = 12  # VMX EXIT_REASON_HLT
    for tid, g in ev.groupby("tid"):
        k, ts, reason, pid = (g[c].to_numpy().astype(np.int64) for c in ("kind", "ts_ns", "reason", "pid"))
        n = 0
        for j in np.flatnonzero((k[:-1] == EventKind.EXIT) & (k[1:] == EventKind.ENTRY)).tolist():
            gap = ts[j + 1] - ts[j]
            base = {"tid": tid, "pid": pid[j], "flags": 0, "reason": 0}
            if reason[j] == hlt and gap > 1_000_000:
                add += [{**base, "ts_ns": ts[j] + gap // 10, "kind": int(EventKind.SCHED_SWITCH),
                         "op": int(SchedOp.OUT), "reason": 1},
                        {**base, "ts_ns": ts[j + 1] - gap // 5, "kind": int(EventKind.WAKEUP), "op": 0},
                        {**base, "ts_ns": ts[j + 1] - gap // 10, "kind": int(EventKind.SCHED_SWITCH),
                         "op": int(SchedOp.IN)}]
            elif gap >= 4:
                n += 1
                if n % 7 == 0:
                    add += [{**base, "ts_ns": ts[j] + gap // 4, "kind": int(EventKind.SCHED_SWITCH),
                             "op": int(SchedOp.OUT)},
                            {**base, "ts_ns": ts[j + 1] - gap // 4, "kind": int(EventKind.SCHED_SWITCH),
                             "op": int(SchedOp.IN)}]
    extra = pd.DataFrame(add).astype({c: events[c].dtype for c in ("tid", "pid", "flags", "reason", "kind", "op",
                                                                    "ts_ns")})
    out = pd.concat([events, extra], ignore_index=True).fillna(0)
    return out.astype({c: events[c].dtype for c in events.columns})


@pytest.fixture(scope="module")
def real_trace(tmp_path_factory):
    if not NATIVE.exists():
        pytest.skip(f"the real Intel traces are absent ({REAL_TRACES})")
    from kvmtrace.importer import import_text
    from kvmtrace.trace import load

    out = tmp_path_factory.mktemp("real") / "native.kvmtrace"
    import_text(NATIVE, out)
    return load(out)


def _in_guest_by_hand(events: pd.DataFrame) -> dict[int, int]:
    """ns from each kvm_entry to the thread's next kvm_exit or switch out (a
    second kvm_entry before either, where the trace lost an exit, changes nothing)."""
    out = {}
    for tid, g in events.sort_values(["tid", "ts_ns"], kind="stable").groupby("tid"):
        total, since = 0, None
        for k, op, ts in zip(g["kind"], g["op"], g["ts_ns"]):
            if k == EventKind.ENTRY:
                since = ts if since is None else since
            elif since is not None and (k == EventKind.EXIT or (k == EventKind.SCHED_SWITCH and op == SchedOp.OUT)):
                total += int(ts) - int(since)
                since = None
        out[int(tid)] = total, since
    return out


@needs_cc
def test_the_kernel_c_books_what_the_analysis_computes_on_a_real_vmx_trace(harness, real_trace):
    events = with_sched(real_trace.events)
    start, end = real_trace.start_ns, real_trace.end_ns
    sched = events["kind"].isin([int(EventKind.SCHED_SWITCH), int(EventKind.WAKEUP)])
    assert sched.sum() > 100  # the trace gives the state machine work
    py, c = _python(events, {}, start, end), replay_in_c(harness, events, {}, start, end)
    assert len(py) == 3 and py["in_guest_s"].notna().all()
    assert_same(py, c)
    ns = _ns(py, ["guest_s", "in_guest_s", "exit_handling_s", "halted_s", "preempted_s"])
    assert (ns[:, 0] == ns[:, 1] + ns[:, 2]).all() and (ns[:, 3] > 0).all() and (ns[:, 4] > 0).all()
    # The in-guest time, counted independently: each kvm_entry to the next kvm_exit.
    by_hand = _in_guest_by_hand(events)
    for tid, got in zip(py["tid"].tolist(), ns[:, 1].tolist()):
        total, open_since = by_hand[tid]
        first = events[(events["tid"] == tid) & events["kind"].isin([1, 2])].sort_values("ts_ns", kind="stable")
        if open_since is not None:  # in the guest at the end
            total += end - open_since
        if int(first["kind"].iloc[0]) == EventKind.EXIT:  # in the guest at the start
            total += int(first["ts_ns"].iloc[0]) - start
        assert got == total, tid
