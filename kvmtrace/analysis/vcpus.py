"""Counts per vCPU of the guest: the report's ``vcpus``. Pure numpy/pandas.

Every vCPU the trace header lists (its domains' ``vcpu_threads``) gets a
row, idle ones included; a thread with events that the header does not list
(a vCPU added during the recording) gets one with ``vcpu`` None. Counts:
``userspace_exits`` (real ones, errno >= 0), ``pio`` (kvm_pio accesses) and
``mmio`` (kvm_mmio accesses, a VMM-answered read once). A counts-mode
recording made before PIO/MMIO were counted per thread has them per guest
only: ``pio`` and ``mmio`` are None there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kvmtrace.kernel.events import AGGREGATE, EventKind
from kvmtrace.analysis.summary import _group_sum, kinds_and_weights

__all__ = ["COUNTED", "ThreadCounts", "merge_thread_counts", "per_guest_only", "thread_counts", "vcpu_counts",
           "vcpu_rows"]


def _per_thread(pid: np.ndarray, tid: np.ndarray, mask: np.ndarray, w: np.ndarray) -> dict[tuple[int, int], int]:
    rows = np.flatnonzero(mask)
    (p, t), n = _group_sum([pid[rows], tid[rows]], w[rows])
    return {(int(a), int(b)): int(c) for a, b, c in zip(p, t, n)}


#: The counts :func:`vcpu_counts` gives per thread: (pid, tid) -> count, per name.
ThreadCounts = dict[str, dict[tuple[int, int], int]]
COUNTED = ("userspace_exits", "pio", "mmio")


def thread_counts(ev: pd.DataFrame, completions: np.ndarray | None = None) -> ThreadCounts:
    """Per (pid, tid): real userspace exits, port accesses and MMIO accesses (see
    :func:`vcpu_counts`); a thread is under a name only where it has such events.
    Counts of parts of a trace add up (:func:`merge_thread_counts`) when no part
    splits an unsatisfied read from its completion."""
    k, w = kinds_and_weights(ev)
    pid, tid = ev["pid"].to_numpy(), ev["tid"].to_numpy()
    uexit = (k == EventKind.USERSPACE_EXIT) & (ev["err"].to_numpy() >= 0)
    pio = k == EventKind.PIO
    mmio = k == EventKind.MMIO
    if completions is not None:
        mmio = mmio & ~completions
    return {name: _per_thread(pid, tid, m, w) for name, m in zip(COUNTED, (uexit, pio, mmio))}


def merge_thread_counts(into: ThreadCounts, part: ThreadCounts) -> ThreadCounts:
    """Add ``part``'s counts to ``into`` (in place; returns it)."""
    for name in COUNTED:
        d = into.setdefault(name, {})
        for key, n in part.get(name, {}).items():
            d[key] = d.get(key, 0) + n
    return into


def per_guest_only(ev: pd.DataFrame) -> bool:
    """A counts recording whose PIO/MMIO aggregates are per guest (all tid 0), not per thread."""
    k, _w = kinds_and_weights(ev)
    agg = (ev["kind"].to_numpy() & AGGREGATE) != 0
    sel = ((k == EventKind.PIO) | (k == EventKind.MMIO)) & agg
    return bool(sel.any()) and not bool((ev["tid"].to_numpy()[sel] != 0).any())


def vcpu_counts(ev: pd.DataFrame, domains: list[dict], completions: np.ndarray | None = None) -> list[dict]:
    """One dict per vCPU: domain, vcpu, tid, userspace_exits, pio, mmio (see the module doc).

    ``completions``: the events mode's mask of kvm_mmio "read" events that
    complete an unsatisfied read (analysis.summary.mmio_completions); None
    for a counts recording.
    """
    return vcpu_rows(thread_counts(ev, completions), domains, per_guest_only(ev))


def vcpu_rows(counts: ThreadCounts, domains: list[dict], per_guest: bool = False) -> list[dict]:
    """:func:`vcpu_counts` from the threads' counts (:func:`thread_counts`); ``per_guest``:
    pio and mmio are None (:func:`per_guest_only`)."""
    counts = {name: counts.get(name, {}) for name in COUNTED}
    out: list[dict] = []
    listed: set[tuple[int, int]] = set()
    for d in domains:
        p = int(d.get("pid") or 0)
        for vcpu, t in sorted(((int(v), int(t)) for v, t in (d.get("vcpu_threads") or {}).items())):
            listed.add((p, t))
            out.append(_row(d.get("name"), vcpu, p, t, counts, per_guest))
    names = {int(d.get("pid") or 0): d.get("name") for d in domains}
    seen = set().union(*(set(c) for c in counts.values())) - listed
    for p, t in sorted(seen):
        if t:  # tid 0: a counts recording's per-guest rows
            out.append(_row(names.get(p), None, p, t, counts, per_guest))
    return out


def _row(domain, vcpu, pid: int, tid: int, counts: dict, per_guest: bool) -> dict:
    key = (pid, tid)
    return {"domain": domain, "vcpu": vcpu, "tid": tid,
            "userspace_exits": counts["userspace_exits"].get(key, 0),
            "pio": None if per_guest else counts["pio"].get(key, 0),
            "mmio": None if per_guest else counts["mmio"].get(key, 0)}
