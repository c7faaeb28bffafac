"""A frame's events in thread order, as the run-loop pairings read them.

:class:`ThreadView` sorts the events by thread (pid, tid), then time, then
file order (the trace's summary.ThreadOrder, when given) and reads columns at
sorted positions; :class:`UexitRun` pairs each userspace exit with the
KVM_RUN that answers it. Used by :mod:`kvmtrace.analysis.runloop`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from kvmtrace.kernel.events import NO_VCPU, EventKind
from kvmtrace.analysis.summary import ThreadOrder

__all__ = ["Rows", "ThreadView", "UexitRun"]

_EXIT = int(EventKind.EXIT)
_ENTRY = int(EventKind.ENTRY)
_UEXIT = int(EventKind.USERSPACE_EXIT)
_RUN = int(EventKind.RUN)


class ThreadView:
    """The events of a frame sorted by thread (pid, tid), then time, then file order.

    ``threads`` is that order (summary.ThreadOrder: the trace's own, when
    given); ``order`` maps sorted positions to frame positions; ``at(name,
    pos)`` gives a column at sorted positions; ``thr`` numbers each sorted
    event's thread; ``thread_pid`` / ``thread_tid`` give each thread
    number's ids.
    """

    def __init__(self, ev: pd.DataFrame, threads: ThreadOrder | None = None):
        self.ev = ev
        self._cols: dict[str, np.ndarray] = {}  # frame columns as numpy, frame order
        self.threads = threads if threads is not None else ThreadOrder.of(ev)
        self.n = len(ev)
        self.order = self.threads.positions()
        self.thread_pid = self.threads.thread_pid
        self.thread_tid = self.threads.thread_tid
        thread = self.threads.thread
        self.thr = np.zeros(self.n, dtype=np.int64) if thread is None else thread[self.order].astype(np.int64)

    def column(self, name: str) -> np.ndarray:
        """Column ``name`` of the frame as numpy, in frame order."""
        a = self._cols.get(name)
        if a is None:
            a = self._cols[name] = self.ev[name].to_numpy()
        return a

    def rows(self, pos: np.ndarray) -> Rows:
        """The events at sorted positions ``pos`` (-1: none), to read several columns of."""
        return Rows(self, pos)

    def at(self, name: str, pos: np.ndarray, missing=None) -> np.ndarray:
        """Column ``name`` at sorted positions ``pos``; where pos is -1, ``missing`` (if given)."""
        return Rows(self, pos).get(name, missing)

    @cached_property
    def kind(self) -> np.ndarray:
        return self.ev["kind"].to_numpy()[self.order]

    def ts(self, pos: np.ndarray) -> np.ndarray:
        """ts_ns (int64) at sorted positions ``pos``, -1 where pos is -1."""
        return Rows(self, pos).ts()

    @cached_property
    def real_uexits(self) -> np.ndarray:
        """Sorted positions of the userspace exits with errno >= 0 (real exits, not restarts)."""
        pos = np.flatnonzero(self.kind == _UEXIT)
        return pos[self.at("err", pos) >= 0]

    @cached_property
    def thread_vcpu(self) -> np.ndarray:
        """vCPU of each thread from its first kvm_exit/kvm_entry naming one, else NO_VCPU."""
        out = np.full(len(self.thread_pid), NO_VCPU, dtype=np.uint32)
        k = self.kind
        pos = np.flatnonzero((k == _EXIT) | (k == _ENTRY))
        if len(pos):
            vc = self.at("vcpu", pos)
            named = vc != NO_VCPU
            pos, vc = pos[named], vc[named]
            thr = self.thr[pos]
            first = np.ones(len(pos), dtype=bool)
            first[1:] = thr[1:] != thr[:-1]
            out[thr[first]] = vc[first]
        return out

    @cached_property
    def uexit_run(self) -> UexitRun:
        k = self.kind
        ur = np.flatnonzero((k == _UEXIT) | (k == _RUN))
        th = self.thr[ur]
        same = np.zeros(len(ur), dtype=bool)
        same[:-1] = th[1:] == th[:-1]
        return UexitRun.of(ur, k[ur], same)


class Rows:
    """Some events of a :class:`ThreadView`, by sorted position (-1 for none)."""

    def __init__(self, s: ThreadView, pos: np.ndarray):
        self.s = s
        self.none = pos < 0
        # -1 reads the last event; those values are overwritten with ``missing``.
        self.fpos = s.order[pos] if len(s.order) else np.zeros(len(pos), dtype=np.int64)

    def get(self, name: str, missing=None) -> np.ndarray:
        a = self.s.column(name)
        if not len(a):
            return np.full(len(self.fpos), 0 if missing is None else missing, dtype=a.dtype)
        out = a[self.fpos]
        if missing is not None:
            out[self.none] = missing
        return out

    def ts(self) -> np.ndarray:
        """ts_ns as int64, -1 for none."""
        out = self.get("ts_ns").astype(np.int64)
        out[self.none] = -1
        return out


@dataclass
class UexitRun:
    """Userspace exits and KVM_RUN calls (positions ``ur``, in thread order) and their pairing.

    A KVM_RUN pairs with the userspace exit right before it on its thread; a
    userspace exit followed by another one (or by nothing) has no KVM_RUN.
    """

    ur: np.ndarray
    kind: np.ndarray
    pair: np.ndarray  # pair[i]: ur[i] is a userspace exit answered by the KVM_RUN ur[i + 1]

    @classmethod
    def of(cls, ur: np.ndarray, kind: np.ndarray, next_same: np.ndarray) -> UexitRun:
        """From the events' kinds and whether the next one is on the same thread."""
        pair = next_same.copy()
        pair[:-1] &= (kind[:-1] == _UEXIT) & (kind[1:] == _RUN)
        return cls(ur, kind, pair)

    def run_of(self, pos: np.ndarray) -> np.ndarray:
        """Sorted position of the KVM_RUN answering each userspace exit in ``pos``, -1 if none."""
        i = np.searchsorted(self.ur, pos)
        has = self.pair[i]
        return np.where(has, self.ur[np.minimum(i + 1, len(self.ur) - 1)], -1)

    def run_without_uexit(self) -> int:
        is_run = self.kind == _RUN
        paired = np.zeros(len(self.ur), dtype=bool)
        paired[1:] = self.pair[:-1]
        return int((is_run & ~paired).sum())
