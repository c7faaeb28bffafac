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

Events mode: :func:`segments` builds the timeline from the events; counts
mode holds the kernel's own per-state nanoseconds (VCPU_TIME aggregate rows,
kernel/bpf/vcpu_time.bpf.h): :func:`vcpu_time` and :func:`vcpu_time_intervals`
read either. Pure numpy/pandas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kvmtrace.kernel.events import AGGREGATE, NO_VCPU, EventFlag, EventKind, SchedOp, ThreadSched, VcpuState

__all__ = ["DIMENSION", "STATES", "Timeline", "has_vcpu_time", "rate_rows", "segments", "state_of", "trace_inputs",
           "vcpu_time", "vcpu_time_intervals", "with_rate_rows"]

#: compare's and trend's dimension for the states: key "vcpu N STATE", count
#: the milliseconds the vCPU spent in it, so its rate (ms per second of the
#: run) / 10 is the state's share in percent.
DIMENSION = "vcpu_time"

#: The states' names, in VcpuState order: the JSON's ``<state>_s`` and the frames' columns.
STATES = tuple(s.name.lower() for s in VcpuState)
_COLUMNS = [f"{s}_s" for s in STATES]

_RUN, _UEXIT = int(EventKind.RUN), int(EventKind.USERSPACE_EXIT)
_SWITCH, _WAKEUP = int(EventKind.SCHED_SWITCH), int(EventKind.WAKEUP)
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

    def frame(self, merge: bool = True) -> pd.DataFrame:
        """One row per segment (pid, tid, start_ns, end_ns, state); ``merge``
        joins neighbours of the same state (what a timeline draws)."""
        thread = np.repeat(np.arange(len(self.tid)), np.diff(self.bounds))
        keep = self.end > self.start  # an instant between two edges at the same time is no segment
        start, end, state, thread = self.start[keep], self.end[keep], self.state[keep], thread[keep]
        if merge and len(state):
            change = np.ones(len(state), dtype=bool)
            change[1:] = (state[1:] != state[:-1]) | (thread[1:] != thread[:-1])
            first = np.flatnonzero(change)
            last = np.r_[first[1:], len(state)] - 1
            start, end, state, thread = start[first], end[last], state[first], thread[first]
        df = pd.DataFrame({"pid": self.pid[thread].astype(np.uint32), "tid": self.tid[thread].astype(np.uint32),
                           "start_ns": start.astype(np.int64), "end_ns": end.astype(np.int64),
                           "state": pd.Categorical.from_codes(state, categories=list(STATES))})
        df.index.name = "segment"
        return df

    def totals_ns(self) -> np.ndarray:
        """ns per thread (rows) and state (columns, VcpuState order)."""
        out = np.zeros((len(self.tid), len(STATES)), dtype=np.int64)
        thread = np.repeat(np.arange(len(self.tid)), np.diff(self.bounds))
        np.add.at(out, (thread, self.state.astype(np.int64)), self.end - self.start)
        return out

    def in_windows(self, edges: np.ndarray) -> np.ndarray:
        """ns per window [edges[k], edges[k+1]), thread and state: shape (windows, threads, states)."""
        out = np.zeros((max(len(edges) - 1, 0), len(self.tid), len(STATES)), dtype=np.int64)
        for i in range(len(self.tid)):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            start, end, state = self.start[lo:hi], self.end[lo:hi], self.state[lo:hi].astype(np.int64)
            for s in range(len(STATES)):
                mine = state == s
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


def segments(events: pd.DataFrame, header: dict, start_ns: int, end_ns: int) -> Timeline:
    """Every vCPU thread's state timeline from ``start_ns`` to ``end_ns`` (an events-mode trace).

    The threads are those the header recorded at attach (``vcpu_states``)
    and any other with sched events.
    """
    kind = events["kind"].to_numpy()
    sel = np.flatnonzero((kind == _RUN) | (kind == _UEXIT) | (kind == _SWITCH) | (kind == _WAKEUP))
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
    pids, starts, ends, states, runs, bounds = [], [], [], [], [], [0]
    for t in threads:
        lo, hi = np.searchsorted(tid, [t, t + 1])
        st = init.get(t, {})
        pid = int(st.get("pid", pid_col[lo] if hi > lo else 0))
        tk, tts = k[lo:hi], np.clip(ts[lo:hi], start_ns, end_ns)
        in_run = _in_run_after(tk, bool(st.get("in_run", True)))
        sched = _sched_after(tk, op[lo:hi], reason[lo:hi], flags[lo:hi], st.get("sched", "on_cpu"))
        # The state before the first event, then after each event.
        code = state_of(in_run, sched)
        seg_start = np.r_[start_ns, tts]
        seg_end = np.r_[tts, end_ns]
        pids.append(pid)
        starts.append(seg_start)
        ends.append(seg_end)
        states.append(code)
        runs.append(in_run)
        bounds.append(bounds[-1] + len(code))
    cat = (lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt))
    return Timeline(np.array(pids, dtype=np.int64), np.array(threads, dtype=np.int64), np.array(bounds),
                    cat(starts, np.int64), cat(ends, np.int64), cat(states, np.int8), cat(runs, bool))


def _in_run_after(kind: np.ndarray, recorded: bool) -> np.ndarray:
    """in_run before the first event (index 0) and after each event (1..n)."""
    edge = np.where(kind == _RUN, 1, np.where(kind == _UEXIT, 0, -1))
    edges = np.flatnonzero(edge >= 0)
    first = (1 - edge[edges[0]]) if len(edges) else int(recorded)
    vals = np.r_[first, edge]
    idx = np.where(vals >= 0, np.arange(len(vals)), 0)
    np.maximum.accumulate(idx, out=idx)
    return vals[idx]


def _sched_after(kind, op, reason, flags, recorded: str) -> np.ndarray:
    """ThreadSched before the first event (index 0) and after each event (1..n)."""
    out = np.empty(len(kind) + 1, dtype=np.int64)
    pos = np.flatnonzero((kind == _SWITCH) | (kind == _WAKEUP))
    cur = {"on_cpu": _ON, "runnable": _RUNNABLE}.get(recorded, _ASLEEP)
    if len(pos) and kind[pos[0]] == _SWITCH:  # what the first switch says held before it
        cur = _ON if op[pos[0]] == SchedOp.OUT else _RUNNABLE
    out[0] = cur
    last = 0
    for p in pos.tolist():
        out[last + 1:p + 1] = cur
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
    return out


def _frame(pid, tid, ns: np.ndarray, vcpu_by_tid: dict[int, int]) -> pd.DataFrame:
    vcpu = np.array([vcpu_by_tid.get(int(t), NO_VCPU) for t in tid], dtype=np.uint32)
    df = pd.DataFrame({"vcpu": vcpu, "pid": np.asarray(pid, dtype=np.uint32), "tid": np.asarray(tid, dtype=np.uint32)})
    secs = ns / 1e9
    df["total_s"] = secs.sum(axis=1) if len(secs) else np.zeros(0)
    for i, c in enumerate(_COLUMNS):
        df[c] = secs[:, i] if len(secs) else np.zeros(0)
    return df


def _counts_rows(events: pd.DataFrame) -> pd.DataFrame:
    kind = events["kind"].to_numpy()
    return events[kind == (EventKind.VCPU_TIME | AGGREGATE)]


def vcpu_time(events: pd.DataFrame, header: dict, start_ns: int, end_ns: int,
              vcpu_by_tid: dict[int, int], counts_mode: bool = False) -> pd.DataFrame:
    """Seconds per state of each vCPU thread over the recording.

    Columns: vcpu (uint32, NO_VCPU when the header does not name it), pid,
    tid (uint32), total_s (the recorded time the states cover), guest_s,
    halted_s, vmm_s, vmm_waiting_s, preempted_s (float64 seconds). One row
    per thread, by vcpu then tid; index "thread".
    """
    if counts_mode:
        rows = _counts_rows(events)
        tids = sorted(set(rows["tid"].astype(int)) | set(_initial(header)))
        ns = np.zeros((len(tids), len(STATES)), dtype=np.int64)
        at = {t: i for i, t in enumerate(tids)}
        pid = np.zeros(len(tids), dtype=np.int64)
        for t, st in _initial(header).items():
            pid[at[t]] = st.get("pid", 0)
        if len(rows):
            r = np.array([at[int(t)] for t in rows["tid"]])
            np.add.at(ns, (r, rows["op"].to_numpy().astype(np.int64)), rows["value"].to_numpy().astype(np.int64))
            pid[r] = rows["pid"].to_numpy()
        df = _frame(pid, tids, ns, vcpu_by_tid)
    else:
        tl = segments(events, header, start_ns, end_ns)
        df = _frame(tl.pid, tl.tid, tl.totals_ns(), vcpu_by_tid)
    df = df.sort_values(["vcpu", "tid"], kind="stable").reset_index(drop=True)
    df.index.name = "thread"
    return df


def vcpu_time_intervals(events: pd.DataFrame, header: dict, start_ns: int, end_ns: int,
                        vcpu_by_tid: dict[int, int], window_s: float, counts_mode: bool = False) -> pd.DataFrame:
    """Seconds per state of each vCPU thread in each window of ``window_s`` seconds.

    Columns: t_s (float64, window start in seconds since the recording
    started), vcpu, pid, tid (uint32), total_s and the five ``<state>_s``
    (float64 seconds; the last window may be short). Index "interval".
    Counts mode: each read-out's time goes to the window its read-out falls in
    (the read-outs come every --interval).
    """
    if window_s <= 0:
        raise ValueError(f"window must be positive, not {window_s}")
    n = max(int(np.ceil((end_ns - start_ns) / (window_s * 1e9))), 1)
    edges = np.minimum(start_ns + (np.arange(n + 1) * window_s * 1e9).astype(np.int64), end_ns)
    if counts_mode:
        rows = _counts_rows(events)
        tids = sorted(set(rows["tid"].astype(int)) | set(_initial(header)))
        at = {t: i for i, t in enumerate(tids)}
        ns = np.zeros((n, len(tids), len(STATES)), dtype=np.int64)
        pid = np.zeros(len(tids), dtype=np.int64)
        for t, st in _initial(header).items():
            pid[at[t]] = st.get("pid", 0)
        if len(rows):
            w = np.clip(((rows["ts_ns"].to_numpy().astype(np.int64) - start_ns - 1) // int(window_s * 1e9)), 0, n - 1)
            r = np.array([at[int(t)] for t in rows["tid"]])
            np.add.at(ns, (w, r, rows["op"].to_numpy().astype(np.int64)), rows["value"].to_numpy().astype(np.int64))
            pid[r] = rows["pid"].to_numpy()
    else:
        tl = segments(events, header, start_ns, end_ns)
        tids, pid, ns = tl.tid, tl.pid, tl.in_windows(edges)
    parts = []
    for w in range(n):
        f = _frame(pid, tids, ns[w], vcpu_by_tid)
        f.insert(0, "t_s", w * window_s)
        parts.append(f)
    df = pd.concat(parts, ignore_index=True) if parts else _frame([], [], np.zeros((0, len(STATES))), {})
    df = df.sort_values(["t_s", "vcpu", "tid"], kind="stable").reset_index(drop=True)
    df.index.name = "interval"
    return df


def rate_rows(df: pd.DataFrame) -> pd.DataFrame:
    """A :func:`vcpu_time` (or, with its t_s, :func:`vcpu_time_intervals`) frame as
    compare's rows: dimension "vcpu_time", key "vcpu N STATE", count (int64 ms)."""
    out = []
    for r in df.to_dict("records"):
        who = f"vcpu {r['vcpu']}" if r["vcpu"] != NO_VCPU else f"tid {r['tid']}"
        for s in STATES:
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
