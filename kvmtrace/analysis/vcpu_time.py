"""Where each vCPU thread's time goes: guest, halted, vmm, vmm_waiting, preempted.

Two facts make a vCPU thread's state (kernel.events.VcpuState): whether it
is inside KVM_RUN (RUN and USERSPACE_EXIT events: KVM_RUN entered and
returned) and where the scheduler has it (SCHED_SWITCH out and in, WAKEUP):

    =============  ============  ============
    scheduler      in KVM_RUN    outside
    =============  ============  ============
    on a CPU       guest         vmm
    asleep         halted        vmm_waiting
    runnable       preempted     preempted
    =============  ============  ============

A switch out with ``prev_state`` 0 (TASK_RUNNING) or the PREEMPT flag leaves
the thread runnable; any other state, asleep. A wakeup makes an asleep
thread runnable and leaves one still on its CPU alone. The state before a
thread's first event is the one the header recorded at attach
(``vcpu_states``, from /proc), corrected by the first edges: a switch out
says it was on a CPU, a switch in that it was runnable, KVM_RUN entered that
it was outside, KVM_RUN returning that it was inside. The five states cover
each thread's recorded time, start to stop, exactly.

On VMX/SVM hosts ``guest`` splits in two by kvm_exit and kvm_entry (EXIT and
ENTRY events): ``in_guest`` (after a kvm_entry, until the kvm_exit) and
``exit_handling`` (the rest of ``guest``: KVM handling an exit, or inside
KVM_RUN on a CPU before its next kvm_entry); the two sum to ``guest``
exactly. A third fact makes it, in_guest: a kvm_entry sets it, a kvm_exit,
a switch out, KVM_RUN returning and KVM_RUN entered clear it (a thread
switched out or outside KVM_RUN cannot be in the guest). Before a thread's
first kvm_exit/kvm_entry the first one says what held (a kvm_exit: in the
guest; a kvm_entry: not), until one of those clearing events. The split
exists only for threads with a kvm_exit or kvm_entry (hosts where they do
not fire, such as a nested PVM host, have none: the columns are absent or
NaN, never zero). Both edges also mean the thread is inside KVM_RUN: a
trace without KVM_RUN edges (an import of kvm_exit/kvm_entry alone) counts
the thread inside from its first kvm_exit/kvm_entry (and, with no header,
from the start, as the header's default says). Counts mode books the same
in the kernel (kt_guest_edge(), vcpu_time.bpf.h) as VCPU_TIME rows with op
VCPU_TIME_IN_GUEST, only for threads whose edge it saw.

Events mode: :func:`segments` builds the timeline from the events; counts
mode holds the kernel's own per-state nanoseconds (VCPU_TIME aggregate rows,
kernel/bpf/vcpu_time.bpf.h): :func:`vcpu_time` and :func:`vcpu_time_intervals`
read either. Pure numpy/pandas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kvmtrace.kernel.events import (AGGREGATE, NO_VCPU, VCPU_TIME_IN_GUEST, EventFlag, EventKind, SchedOp,
                                    ThreadSched, VcpuState)

__all__ = ["DIMENSION", "GUEST_PARTS", "STATES", "Timeline", "has_vcpu_time", "rate_rows", "segments", "state_of", "trace_inputs",
           "vcpu_time", "vcpu_time_intervals", "with_rate_rows"]

#: compare's and trend's dimension for the states: key "vcpu N STATE", count
#: the milliseconds the vCPU spent in it, so its rate (ms per second of the
#: run) / 10 is the state's share in percent.
DIMENSION = "vcpu_time"

#: The states' names, in VcpuState order: the JSON's ``<state>_s`` and the frames' columns.
STATES = tuple(s.name.lower() for s in VcpuState)
_COLUMNS = [f"{s}_s" for s in STATES]
#: The two parts of ``guest`` on VMX/SVM hosts: the JSON's and frames' ``<part>_s``.
GUEST_PARTS = ("in_guest", "exit_handling")
#: Column of the per-thread ns arrays (after the states) holding the in-guest ns.
_IN_GUEST = len(STATES)

_RUN, _UEXIT = int(EventKind.RUN), int(EventKind.USERSPACE_EXIT)
_SWITCH, _WAKEUP = int(EventKind.SCHED_SWITCH), int(EventKind.WAKEUP)
_EXIT, _ENTRY = int(EventKind.EXIT), int(EventKind.ENTRY)
_ON, _RUNNABLE, _ASLEEP = int(ThreadSched.ON_CPU), int(ThreadSched.RUNNABLE), int(ThreadSched.ASLEEP)


def state_of(in_run, sched) -> np.ndarray:
    """VcpuState codes for arrays of in_run (0/1) and ThreadSched codes."""
    in_run, sched = np.asarray(in_run), np.asarray(sched)
    on = np.where(in_run != 0, VcpuState.GUEST, VcpuState.VMM)
    asleep = np.where(in_run != 0, VcpuState.HALTED, VcpuState.VMM_WAITING)
    return np.where(sched == _RUNNABLE, VcpuState.PREEMPTED, np.where(sched == _ASLEEP, asleep, on)).astype(np.int8)


def has_vcpu_time(header: dict, events: pd.DataFrame) -> bool:
    """Whether the recording can say where its vCPUs' time went: it attached
    the sched probes (its header's probes say so), or, where the header does
    not list probes, has vcpu_states or holds their events or counts."""
    if "probes" in header:  # a recording says what it attached
        return "sched_switch" in header["probes"]
    if header.get("vcpu_states"):
        return True
    kind = events["kind"].to_numpy() if "kind" in events.columns else np.zeros(0, np.uint8)
    base = kind & ~np.uint8(AGGREGATE)
    return bool(((base == _SWITCH) | (base == EventKind.VCPU_TIME)).any())


@dataclass
class Timeline:
    """The state segments of every thread: thread i's are rows bounds[i]:bounds[i+1]."""

    pid: np.ndarray  # per thread
    tid: np.ndarray
    bounds: np.ndarray
    start: np.ndarray  # per segment, ns
    end: np.ndarray
    state: np.ndarray  # VcpuState code
    in_run: np.ndarray  # per segment: inside KVM_RUN (which side of it a preempted segment is on)
    in_guest: np.ndarray | None = None  # per segment: a guest segment in the guest (after kvm_entry)
    guest_seen: np.ndarray | None = None  # per thread: it had a kvm_exit or kvm_entry (the split exists)

    def __post_init__(self):
        if self.in_guest is None:
            self.in_guest = np.zeros(len(self.state), dtype=bool)
        if self.guest_seen is None:
            self.guest_seen = np.zeros(len(self.tid), dtype=bool)

    @property
    def has_guest_split(self) -> bool:
        """Whether any thread's guest time splits into in_guest and exit_handling."""
        return bool(self.guest_seen.any())

    def frame(self, merge: bool = True) -> pd.DataFrame:
        """One row per segment (pid, tid, start_ns, end_ns, state); ``merge``
        joins neighbours of the same state (what a timeline draws). Where a
        thread had kvm_exit/kvm_entry (has_guest_split) a bool column
        ``in_guest`` follows (nullable boolean: True for a guest segment
        after kvm_entry, NA on the threads without the edges; merging then
        keeps in-guest and exit-handling guest segments apart)."""
        thread = np.repeat(np.arange(len(self.tid)), np.diff(self.bounds))
        keep = self.end > self.start  # an instant between two edges at the same time is no segment
        split = self.has_guest_split
        in_guest = self.in_guest & (self.state == VcpuState.GUEST)
        start, end, state, thread, in_guest = (self.start[keep], self.end[keep], self.state[keep], thread[keep],
                                               in_guest[keep])
        if merge and len(state):
            change = np.ones(len(state), dtype=bool)
            change[1:] = (state[1:] != state[:-1]) | (thread[1:] != thread[:-1])
            if split:
                change[1:] |= in_guest[1:] != in_guest[:-1]
            first = np.flatnonzero(change)
            last = np.r_[first[1:], len(state)] - 1
            start, end, state, thread, in_guest = start[first], end[last], state[first], thread[first], in_guest[first]
        df = pd.DataFrame({"pid": self.pid[thread].astype(np.uint32), "tid": self.tid[thread].astype(np.uint32),
                           "start_ns": start.astype(np.int64), "end_ns": end.astype(np.int64),
                           "state": pd.Categorical.from_codes(state, categories=list(STATES))})
        if split:
            df["in_guest"] = pd.array(in_guest.astype(bool), dtype="boolean")
            df.loc[~self.guest_seen[thread], "in_guest"] = pd.NA
        df.index.name = "segment"
        return df

    def totals_ns(self) -> np.ndarray:
        """ns per thread (rows) and state (columns, VcpuState order), then one
        more column: the in-guest part of guest (0 where guest_seen is False)."""
        out = np.zeros((len(self.tid), len(STATES) + 1), dtype=np.int64)
        thread = np.repeat(np.arange(len(self.tid)), np.diff(self.bounds))
        np.add.at(out, (thread, self.state.astype(np.int64)), self.end - self.start)
        g = self.in_guest & (self.state == VcpuState.GUEST)
        np.add.at(out[:, _IN_GUEST], thread[g], (self.end - self.start)[g])
        return out

    def in_windows(self, edges: np.ndarray) -> np.ndarray:
        """ns per window [edges[k], edges[k+1]), thread and state (then the
        in-guest column, as totals_ns): shape (windows, threads, states + 1)."""
        out = np.zeros((max(len(edges) - 1, 0), len(self.tid), len(STATES) + 1), dtype=np.int64)
        for i in range(len(self.tid)):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            start, end, state = self.start[lo:hi], self.end[lo:hi], self.state[lo:hi].astype(np.int64)
            in_guest = self.in_guest[lo:hi] & (state == VcpuState.GUEST)
            for s in range(len(STATES) + 1):
                mine = in_guest if s == _IN_GUEST else state == s
                # F(T): time in state s before T, from the segments' cumulative sums.
                cum = np.r_[0, np.cumsum(np.where(mine, end - start, 0))]
                j = np.searchsorted(start, edges, side="right") - 1
                inside = np.clip(edges - start[np.maximum(j, 0)], 0, None)
                seg_len = (end - start)[np.maximum(j, 0)]
                partial = np.where((j >= 0) & mine[np.maximum(j, 0)], np.minimum(inside, seg_len), 0)
                f = cum[np.maximum(j, 0)] * (j >= 0) + partial
                out[:, i, s] = np.diff(f)
        return out


def _initial(header: dict) -> dict[int, dict]:
    return {int(tid): st for tid, st in (header.get("vcpu_states") or {}).items()}


def segments(events: pd.DataFrame, header: dict, start_ns: int, end_ns: int, correct: bool = True) -> Timeline:
    """Every vCPU thread's state timeline from ``start_ns`` to ``end_ns`` (an events-mode trace).

    The threads are those the header recorded at attach (``vcpu_states``)
    and any other with sched events. ``correct=False`` takes each thread's
    ``vcpu_states`` entry (in_run, sched, and in_guest) as exact, with no
    correction by the first edges: what a stretch continuing a known state
    needs (analysis.vcpu_stream, the report batch by batch).
    """
    kind = events["kind"].to_numpy()
    sel = np.flatnonzero((kind == _RUN) | (kind == _UEXIT) | (kind == _SWITCH) | (kind == _WAKEUP)
                         | (kind == _EXIT) | (kind == _ENTRY))
    tid = events["tid"].to_numpy()[sel].astype(np.int64)
    ts = events["ts_ns"].to_numpy()[sel].astype(np.int64)
    order = np.lexsort((sel, ts, tid))
    sel, tid, ts = sel[order], tid[order], ts[order]
    k = kind[sel].astype(np.int64)
    op = events["op"].to_numpy()[sel]
    reason = events["reason"].to_numpy()[sel]
    flags = events["flags"].to_numpy()[sel]
    pid_col = events["pid"].to_numpy()[sel]
    init = _initial(header)
    sched_tids = np.unique(tid[(k == _SWITCH) | (k == _WAKEUP)])
    threads = sorted(set(init) | set(sched_tids.tolist()))
    pids, starts, ends, states, runs, guests, seen, bounds = [], [], [], [], [], [], [], [0]
    for t in threads:
        lo, hi = np.searchsorted(tid, [t, t + 1])
        st = init.get(t, {})
        pid = int(st.get("pid", pid_col[lo] if hi > lo else 0))
        tk, tts = k[lo:hi], np.clip(ts[lo:hi], start_ns, end_ns)
        in_run = _in_run_after(tk, bool(st.get("in_run", True)), correct)
        sched = _sched_after(tk, op[lo:hi], reason[lo:hi], flags[lo:hi], st.get("sched", "on_cpu"), correct)
        in_guest = _in_guest_after(tk, op[lo:hi], None if correct else bool(st.get("in_guest", False)))
        # The state before the first event, then after each event.
        code = state_of(in_run, sched)
        seg_start = np.r_[start_ns, tts]
        seg_end = np.r_[tts, end_ns]
        pids.append(pid)
        starts.append(seg_start)
        ends.append(seg_end)
        states.append(code)
        runs.append(in_run)
        guests.append(in_guest)
        seen.append(bool(((tk == _EXIT) | (tk == _ENTRY)).any()))
        bounds.append(bounds[-1] + len(code))
    cat = (lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt))
    return Timeline(np.array(pids, dtype=np.int64), np.array(threads, dtype=np.int64), np.array(bounds),
                    cat(starts, np.int64), cat(ends, np.int64), cat(states, np.int8), cat(runs, bool),
                    cat(guests, bool), np.array(seen, dtype=bool))


def _carry(first: int, edge: np.ndarray) -> np.ndarray:
    """``first`` before the first event, then each event's edge value (-1: no
    change) carried forward: the fact before (index 0) and after each event."""
    vals = np.r_[first, edge]
    idx = np.where(vals >= 0, np.arange(len(vals)), 0)
    np.maximum.accumulate(idx, out=idx)
    return vals[idx]


def _in_run_after(kind: np.ndarray, recorded: bool, correct: bool = True) -> np.ndarray:
    """in_run before the first event (index 0) and after each event (1..n).

    KVM_RUN entered or returning sets it, and the first of them says what
    held before; a kvm_exit or kvm_entry happens inside KVM_RUN, so sets it
    too (what a trace without KVM_RUN edges has), but says nothing of before.
    """
    edge = np.where((kind == _RUN) | (kind == _EXIT) | (kind == _ENTRY), 1, np.where(kind == _UEXIT, 0, -1))
    edges = np.flatnonzero((kind == _RUN) | (kind == _UEXIT))
    first = (1 - edge[edges[0]]) if len(edges) and correct else int(recorded)
    return _carry(first, edge)


def _in_guest_after(kind: np.ndarray, op: np.ndarray, known: bool | None = None) -> np.ndarray:
    """in_guest before the first event (index 0) and after each event (1..n).

    kvm_entry sets it; kvm_exit, a switch out, KVM_RUN returning or entered
    clear it. Before the thread's first kvm_exit/kvm_entry it is what that
    edge says held (kvm_exit: 1; kvm_entry or none: 0) until a clearing
    event (kernel/bpf/vcpu_time.bpf.h's kt_guest_edge() books the same).
    """
    out_ = (kind == _EXIT) | (kind == _UEXIT) | (kind == _RUN) | ((kind == _SWITCH) & (op == SchedOp.OUT))
    edge = np.where(kind == _ENTRY, 1, np.where(out_, 0, -1))
    edges = np.flatnonzero((kind == _EXIT) | (kind == _ENTRY))
    if known is not None:  # the state before is known (not inferred from the first edge)
        first = int(known)
    else:
        first = int(kind[edges[0]] == _EXIT) if len(edges) else 0
    return _carry(first, edge).astype(bool)


def _sched_after(kind, op, reason, flags, recorded: str, correct: bool = True) -> np.ndarray:
    """ThreadSched before the first event (index 0) and after each event (1..n).

    A run-loop edge (KVM_RUN entered or returning, kvm_exit, kvm_entry) fires
    in the thread itself: it is on a CPU there, whatever the last sched event
    said (a switch in the kernel did not deliver; vcpu_time.bpf.h does the
    same), until its next sched event.
    """
    n = len(kind)
    out = np.empty(n + 1, dtype=np.int64)
    is_sched = (kind == _SWITCH) | (kind == _WAKEUP)
    own = (kind == _RUN) | (kind == _UEXIT) | (kind == _EXIT) | (kind == _ENTRY)
    pos = np.flatnonzero(is_sched)
    own_before = np.r_[0, np.cumsum(own)]  # own_before[j]: run-loop edges among events 0..j-1
    cur = {"on_cpu": _ON, "runnable": _RUNNABLE}.get(recorded, _ASLEEP)
    if correct and len(pos) and kind[pos[0]] == _SWITCH:  # what the first switch says held before it
        cur = _ON if op[pos[0]] == SchedOp.OUT else _RUNNABLE
    out[0] = cur
    last = 0
    for p in pos.tolist():
        out[last + 1:p + 1] = cur  # (after a run-loop edge among them: on a CPU, set below)
        if own_before[p] > own_before[last]:
            cur = _ON
        if kind[p] == _WAKEUP:
            if cur != _ON:
                cur = _RUNNABLE
        elif op[p] == SchedOp.IN:
            cur = _ON
        elif reason[p] == 0 or flags[p] & EventFlag.PREEMPT:
            cur = _RUNNABLE
        else:
            cur = _ASLEEP
        last = p + 1
        out[p + 1] = cur
    out[last + 1:] = cur
    if own.any():  # after a run-loop edge, until the next sched event: on a CPU
        setter = np.where(is_sched | own, np.arange(n), -1)
        np.maximum.accumulate(setter, out=setter)
        out[1:][(setter >= 0) & own[np.maximum(setter, 0)]] = _ON
    return out


def _frame(pid, tid, ns: np.ndarray, vcpu_by_tid: dict[int, int], seen: np.ndarray | None = None) -> pd.DataFrame:
    """``ns``: per thread, the states' ns and then the in-guest ns; ``seen``:
    the threads whose guest splits (the two part columns exist when any does,
    NaN on the others)."""
    vcpu = np.array([vcpu_by_tid.get(int(t), NO_VCPU) for t in tid], dtype=np.uint32)
    df = pd.DataFrame({"vcpu": vcpu, "pid": np.asarray(pid, dtype=np.uint32), "tid": np.asarray(tid, dtype=np.uint32)})
    ns = np.asarray(ns, dtype=np.int64).reshape(len(df), -1 if len(df) else len(STATES) + 1)
    secs = ns[:, :len(STATES)] / 1e9
    df["total_s"] = ns[:, :len(STATES)].sum(axis=1) / 1e9
    for i, c in enumerate(_COLUMNS):
        df[c] = secs[:, i]
    if seen is not None and np.any(seen):
        in_guest = ns[:, _IN_GUEST]
        # The two parts from the same ns, so that they sum to guest exactly.
        df["in_guest_s"] = np.where(seen, in_guest / 1e9, np.nan)
        df["exit_handling_s"] = np.where(seen, (ns[:, VcpuState.GUEST] - in_guest) / 1e9, np.nan)
    return df


def _counts_rows(events: pd.DataFrame) -> pd.DataFrame:
    kind = events["kind"].to_numpy()
    return events[kind == (EventKind.VCPU_TIME | AGGREGATE)]


def _counts_ns(events: pd.DataFrame, header: dict, window: np.ndarray | None = None, n: int = 1):
    """Counts mode: (tids, pids, ns of shape (n, threads, states + 1), seen)
    from the VCPU_TIME rows (``window``: each row's window, None: all in one)."""
    rows = _counts_rows(events)
    tids = sorted(set(rows["tid"].astype(int)) | set(_initial(header)))
    at = {t: i for i, t in enumerate(tids)}
    ns = np.zeros((n, len(tids), len(STATES) + 1), dtype=np.int64)
    pid = np.zeros(len(tids), dtype=np.int64)
    seen = np.zeros(len(tids), dtype=bool)
    for t, st in _initial(header).items():
        pid[at[t]] = st.get("pid", 0)
    if len(rows):
        r = np.array([at[int(t)] for t in rows["tid"]])
        op = rows["op"].to_numpy().astype(np.int64)
        w = np.zeros(len(rows), dtype=np.int64) if window is None else window
        np.add.at(ns, (w, r, op), rows["value"].to_numpy().astype(np.int64))
        pid[r] = rows["pid"].to_numpy()
        seen[r[op == VCPU_TIME_IN_GUEST]] = True
    return tids, pid, ns, seen


def vcpu_time(events: pd.DataFrame, header: dict, start_ns: int, end_ns: int,
              vcpu_by_tid: dict[int, int], counts_mode: bool = False) -> pd.DataFrame:
    """Seconds per state of each vCPU thread over the recording.

    Columns: vcpu (uint32, NO_VCPU when the header does not name it), pid,
    tid (uint32), total_s (the recorded time the states cover), guest_s,
    halted_s, vmm_s, vmm_waiting_s, preempted_s (float64 seconds); where a
    thread had kvm_exit/kvm_entry (VMX/SVM hosts) also in_guest_s and
    exit_handling_s (float64 seconds, summing to guest_s; NaN for the
    threads without them; absent when none had them). One row per thread,
    by vcpu then tid; index "thread".
    """
    if counts_mode:
        tids, pid, ns, seen = _counts_ns(events, header)
        df = _frame(pid, tids, ns[0], vcpu_by_tid, seen)
    else:
        tl = segments(events, header, start_ns, end_ns)
        df = _frame(tl.pid, tl.tid, tl.totals_ns(), vcpu_by_tid, tl.guest_seen)
    df = df.sort_values(["vcpu", "tid"], kind="stable").reset_index(drop=True)
    df.index.name = "thread"
    return df


def vcpu_time_intervals(events: pd.DataFrame, header: dict, start_ns: int, end_ns: int,
                        vcpu_by_tid: dict[int, int], window_s: float, counts_mode: bool = False) -> pd.DataFrame:
    """Seconds per state of each vCPU thread in each window of ``window_s`` seconds.

    Columns: t_s (float64, window start in seconds since the recording
    started), vcpu, pid, tid (uint32), total_s and the five ``<state>_s``
    (float64 seconds; the last window may be short), and in_guest_s and
    exit_handling_s as :func:`vcpu_time` has them. Index "interval".
    Counts mode: each read-out's time goes to the window its read-out falls in
    (the read-outs come every --interval).
    """
    if window_s <= 0:
        raise ValueError(f"window must be positive, not {window_s}")
    edges = window_edges(start_ns, end_ns, window_s)
    n = len(edges) - 1
    if counts_mode:
        ts = _counts_rows(events)["ts_ns"].to_numpy().astype(np.int64)
        w = np.clip((ts - start_ns - 1) // int(window_s * 1e9), 0, n - 1)
        tids, pid, ns, seen = _counts_ns(events, header, w, n)
    else:
        tl = segments(events, header, start_ns, end_ns)
        tids, pid, ns, seen = tl.tid, tl.pid, tl.in_windows(edges), tl.guest_seen
    return intervals_frame(pid, tids, ns, seen, vcpu_by_tid, window_s)


def window_edges(start_ns: int, end_ns: int, window_s: float) -> np.ndarray:
    """The edges of windows of ``window_s`` from ``start_ns``, the last one cut at ``end_ns`` (at least one)."""
    n = max(int(np.ceil((end_ns - start_ns) / (window_s * 1e9))), 1)
    return np.minimum(start_ns + (np.arange(n + 1) * window_s * 1e9).astype(np.int64), end_ns)


def intervals_frame(pid, tids, ns: np.ndarray, seen, vcpu_by_tid: dict[int, int], window_s: float) -> pd.DataFrame:
    """:func:`vcpu_time_intervals`' frame from ns of shape (windows, threads, states + 1)."""
    parts = []
    for w in range(len(ns)):
        f = _frame(pid, tids, ns[w], vcpu_by_tid, seen)
        f.insert(0, "t_s", w * window_s)
        parts.append(f)
    df = pd.concat(parts, ignore_index=True) if parts else _frame([], [], np.zeros((0, len(STATES) + 1)), {})
    df = df.sort_values(["t_s", "vcpu", "tid"], kind="stable").reset_index(drop=True)
    df.index.name = "interval"
    return df


def rate_rows(df: pd.DataFrame) -> pd.DataFrame:
    """A :func:`vcpu_time` (or, with its t_s, :func:`vcpu_time_intervals`) frame as
    compare's rows: dimension "vcpu_time", key "vcpu N STATE" (and "vcpu N
    in_guest", "vcpu N exit_handling" where the guest time splits), count (int64 ms)."""
    out = []
    for r in df.to_dict("records"):
        who = f"vcpu {r['vcpu']}" if r["vcpu"] != NO_VCPU else f"tid {r['tid']}"
        for s in STATES + GUEST_PARTS:
            if f"{s}_s" not in r or pd.isna(r[f"{s}_s"]):  # no guest split on this thread
                continue
            out.append({**({"t_s": r["t_s"]} if "t_s" in r else {}), "dimension": DIMENSION,
                        "key": f"{who} {s}", "count": int(round(r[f"{s}_s"] * 1e3))})
    cols = (["t_s"] if "t_s" in df.columns else []) + ["dimension", "key", "count"]
    return pd.DataFrame(out, columns=cols).astype({"count": "int64"})


def trace_inputs(trace, analysis: str) -> tuple:
    """(events, header, start_ns, end_ns, vcpu_by_tid) of a Trace, or
    MissingTraceEventError naming sched_switch when it was recorded without
    the sched probes. The header answers first: a recording's events are
    read only when they are needed."""
    from kvmtrace.analysis.requirements import missing_events

    if not has_vcpu_time(trace.header, trace.events if "probes" not in trace.header else pd.DataFrame()):
        raise missing_events(trace, [EventKind.SCHED_SWITCH], analysis)
    return trace.events, trace.header, trace.start_ns, trace.end_ns, trace.vcpu_by_tid


def with_rate_rows(trace, table: pd.DataFrame, windows: pd.DataFrame | None,
                   window_s: float | None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """compare's count table (and windows) of a Trace with the vcpu_time
    dimension added, where the recording has the sched probes."""
    if not has_vcpu_time(trace.header, trace.events if "probes" not in trace.header else pd.DataFrame()):
        return table, windows
    table = pd.concat([table, rate_rows(trace.df_vcpu_time())], ignore_index=True)
    if window_s:
        w = rate_rows(trace.df_vcpu_time_intervals(window_s))
        w.insert(0, "window", np.round(w.pop("t_s") / window_s).astype("int64"))
        windows = pd.concat([windows, w], ignore_index=True)
    return table, windows
