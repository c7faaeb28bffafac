"""Where each vCPU thread's time went, batch by batch: :mod:`kvmtrace.analysis.vcpu_time`
in memory bounded by a chunk, not by the trace (what `kvmtrace report` reads).

:func:`~kvmtrace.analysis.vcpu_time.segments` over the whole trace gives a
thread's state after each of its events from the state before its first
event and the events themselves. Cut the thread's events at a time ``T``
and the part after ``T`` continues from the state the part before left:
the totals of the parts are the totals of the whole. Two things make the
cut safe:

* **Time order.** Events arrive in file order, a thread's maybe out of time
  order (a thread moving between CPUs). With ``future_min``, the earliest
  time of every batch still to come, the events at or before it are a
  prefix of every thread's time order, ties (which keep file order)
  included, exactly as :mod:`kvmtrace.analysis.batchwise` cuts.
* **The first edges.** The state before a thread's first event is the one
  the header recorded at attach, *corrected by the thread's first edges*:
  its first KVM_RUN entered or returning, its first sched_switch or wakeup,
  its first kvm_exit or kvm_entry say what held before them, however late
  they come. So a thread's events are held back until each of the three
  has been seen (the kvm_exit/kvm_entry one only in a trace that has any),
  and only then analysed from the recording's start; after that, each
  stretch continues from the state the last one left, with no correction
  (``segments(..., correct=False)``). A thread that never resolves (no
  KVM_RUN edge, or never switched) is analysed whole at the end: such a
  thread has few events.

Threads are those of the whole-trace analysis: the header's ``vcpu_states``
and any thread with a sched event. Events of a thread not (yet) known are
held back too, and dropped at the end if it never had a sched event.
Counts mode has no timeline: use :func:`vcpu_time.vcpu_time` on its few
VCPU_TIME rows. Pure numpy/pandas.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from kvmtrace.analysis.vcpu_time import STATES, Timeline, _frame, _initial, intervals_frame, segments
from kvmtrace.kernel.events import EventKind, VcpuState

__all__ = ["VcpuTimeStream"]

_KINDS = (EventKind.RUN, EventKind.USERSPACE_EXIT, EventKind.SCHED_SWITCH, EventKind.WAKEUP, EventKind.EXIT,
          EventKind.ENTRY)
_COLUMNS = ("ts_ns", "kind", "tid", "pid", "op", "reason", "flags")
_SCHED = {VcpuState.GUEST: "on_cpu", VcpuState.VMM: "on_cpu", VcpuState.HALTED: "asleep",
          VcpuState.VMM_WAITING: "asleep", VcpuState.PREEMPTED: "runnable"}


class VcpuTimeStream:
    """Feed it every batch of an events-mode trace (:meth:`add`), then :meth:`frame`.

    ``has_guest_edges``: whether the trace holds any kvm_exit/kvm_entry (the
    file's scan says; without any, no thread waits for one). ``end_ns``:
    the recording's end, or None for "its last event" (a file with no
    trailer or progress mark). ``window_edges``: also sum each window
    [edges[k], edges[k+1]) (as Timeline.in_windows), for the per-interval
    frame.
    """

    def __init__(self, header: dict, start_ns: int, end_ns: int | None, has_guest_edges: bool,
                 window_edges: np.ndarray | None = None):
        self.header, self.start_ns, self.end_ns = header, int(start_ns), end_ns
        self.need_guest = has_guest_edges
        self.init = _initial(header)
        self.known: set[int] = set(self.init)  # header threads, and threads with a sched event
        self.resolved: dict[int, dict] = {}  # tid -> its state after the last stretch analysed
        self.firsts: dict[int, set[str]] = {}  # tid -> which first edges were seen: run, sched, guest
        self.held: list[pd.DataFrame] = []  # events of unresolved threads, in file order
        self.pending: list[pd.DataFrame] = []  # events of the current chunk (resolved threads), file order
        self.done_to = int(start_ns)  # the analysed stretches end here (clipped to the recording)
        self.ns: dict[int, np.ndarray] = {}  # tid -> ns per state, then in-guest
        self.pid: dict[int, int] = {}
        self.seen: dict[int, bool] = {}
        self.edges = window_edges
        self.win: dict[int, np.ndarray] = {}
        self.max_ts: int | None = None

    # -------------------------------------------------------------- feeding

    def add(self, cols: Mapping[str, np.ndarray], future_min: int | None) -> None:
        """One batch (arrays by column, file order); ``future_min``: the earliest time of any later batch
        (None: this is the last)."""
        kind = np.asarray(cols["kind"])
        keep = np.isin(kind, np.array(_KINDS, dtype=kind.dtype))
        ev = pd.DataFrame({c: np.asarray(cols[c])[keep] for c in _COLUMNS})
        if len(cols["ts_ns"]):
            top = int(np.max(cols["ts_ns"]))
            self.max_ts = top if self.max_ts is None else max(self.max_ts, top)
        self.held.append(ev)
        if future_min is not None:
            self._advance(int(future_min))

    def _note_firsts(self, ev: pd.DataFrame) -> None:
        k = ev["kind"].to_numpy()
        tid = ev["tid"].to_numpy()
        for what, mask in (("run", (k == EventKind.RUN) | (k == EventKind.USERSPACE_EXIT)),
                           ("sched", (k == EventKind.SCHED_SWITCH) | (k == EventKind.WAKEUP)),
                           ("guest", (k == EventKind.EXIT) | (k == EventKind.ENTRY))):
            for t in np.unique(tid[mask]).tolist():
                self.firsts.setdefault(t, set()).add(what)
                if what == "sched":
                    self.known.add(t)

    def _ready(self, t: int) -> bool:
        got = self.firsts.get(t, set())
        return t in self.known and {"run", "sched"} <= got and ("guest" in got or not self.need_guest)

    def _clip(self, t: int) -> int:
        t = max(t, self.start_ns)
        return t if self.end_ns is None else min(t, int(self.end_ns))

    def _advance(self, future_min: int) -> None:
        """Analyse what no later batch can precede: events at or before ``future_min``."""
        ev = pd.concat(self.held, ignore_index=True) if len(self.held) > 1 else self.held[0]
        cut = self._clip(future_min)
        tid = ev["tid"].to_numpy()
        # Each thread's first edges in time order are among these (a later batch's events come at or
        # after future_min, and a tie keeps file order): a thread resolves on what is done.
        self._note_firsts(ev[ev["ts_ns"].to_numpy() <= future_min])
        newly = [t for t in self.known - set(self.resolved) if self._ready(t)]
        # Threads resolving now: everything held of them, from the recording's start, as the whole would.
        if newly:
            mine = np.isin(tid, newly) & (ev["ts_ns"].to_numpy() <= future_min)
            hdr = {**self.header, "vcpu_states": {t: self.init.get(t, {}) for t in newly}}
            self._book(segments(ev[mine], hdr, self.start_ns, cut), newly, first=True)
        # Threads already resolved: their stretch since the last cut, from the state it left.
        old = [t for t in self.resolved if t not in newly]
        if old:
            mine = np.isin(tid, old) & (ev["ts_ns"].to_numpy() <= future_min)
            self._book(segments(ev[mine], {**self.header, "vcpu_states": {t: self.resolved[t] for t in old}},
                                self.done_to, cut, correct=False), old, first=False)
        done = np.isin(tid, list(self.resolved)) & (ev["ts_ns"].to_numpy() <= future_min)
        self.held = [ev[~done].reset_index(drop=True)] if (~done).any() else []
        self.done_to = cut

    def _book(self, tl: Timeline, threads: list[int], first: bool) -> None:
        totals = tl.totals_ns()
        windows = tl.in_windows(self.edges) if self.edges is not None else None
        for i, t in enumerate(tl.tid.tolist()):
            if t not in threads:
                continue
            self.ns[t] = self.ns.get(t, 0) + totals[i]
            if windows is not None:
                self.win[t] = self.win.get(t, 0) + windows[:, i, :]
            if first or t not in self.pid:
                self.pid[t] = int(tl.pid[i])
            self.seen[t] = self.seen.get(t, False) or bool(tl.guest_seen[i])
            last = tl.bounds[i + 1] - 1  # the state the stretch left
            self.resolved[t] = {"pid": self.pid[t], "in_run": bool(tl.in_run[last]),
                                "sched": _SCHED[VcpuState(int(tl.state[last]))],
                                "in_guest": bool(tl.in_guest[last])}

    # -------------------------------------------------------------- results

    def finish(self) -> "VcpuTimeStream":
        """Analyse the rest: the resolved threads' last stretch, and every thread never resolved, whole."""
        if self.end_ns is None:
            self.end_ns = self.max_ts if self.max_ts is not None else self.start_ns
        end = self._clip(int(self.end_ns))
        ev = pd.concat(self.held, ignore_index=True) if self.held else pd.DataFrame({c: [] for c in _COLUMNS})
        tid = ev["tid"].to_numpy()
        self._note_firsts(ev)  # threads whose first sched event came last
        old = list(self.resolved)
        if old:
            self._book(segments(ev[np.isin(tid, old)], {**self.header, "vcpu_states":
                                                         {t: self.resolved[t] for t in old}},
                                self.done_to, end, correct=False), old, first=False)
        rest = sorted(self.known - set(old))
        if rest:
            hdr = {**self.header, "vcpu_states": {t: self.init.get(t, {}) for t in rest}}
            self._book(segments(ev[np.isin(tid, rest)], hdr, self.start_ns, end), rest, first=True)
        self.held = []
        return self

    def _tids(self, pid: int | None) -> list[int]:
        return [t for t in sorted(self.ns) if pid is None or self.pid[t] == pid]

    def frame(self, vcpu_by_tid: dict[int, int], pid: int | None = None) -> pd.DataFrame:
        """As :func:`kvmtrace.analysis.vcpu_time.vcpu_time` of the whole trace (after :meth:`finish`);
        ``pid``: only that VMM's threads."""
        tids = self._tids(pid)
        ns = np.array([self.ns[t] for t in tids], dtype=np.int64).reshape(len(tids), len(STATES) + 1)
        df = _frame([self.pid[t] for t in tids], tids, ns, vcpu_by_tid, np.array([self.seen[t] for t in tids]))
        df = df.sort_values(["vcpu", "tid"], kind="stable").reset_index(drop=True)
        df.index.name = "thread"
        return df

    def intervals(self, vcpu_by_tid: dict[int, int], window_s: float, pid: int | None = None) -> pd.DataFrame:
        """As :func:`kvmtrace.analysis.vcpu_time.vcpu_time_intervals` with the windows this stream was made with."""
        tids = self._tids(pid)
        ns = np.zeros((len(self.edges) - 1, len(tids), len(STATES) + 1), dtype=np.int64)
        for i, t in enumerate(tids):
            if t in self.win:
                ns[:, i, :] = self.win[t]
        return intervals_frame([self.pid[t] for t in tids], tids, ns, np.array([self.seen[t] for t in tids]),
                               vcpu_by_tid, window_s)
