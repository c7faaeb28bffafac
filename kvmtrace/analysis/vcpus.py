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

__all__ = ["vcpu_counts"]


def _per_thread(pid: np.ndarray, tid: np.ndarray, mask: np.ndarray, w: np.ndarray) -> dict[tuple[int, int], int]:
    rows = np.flatnonzero(mask)
    (p, t), n = _group_sum([pid[rows], tid[rows]], w[rows])
    return {(int(a), int(b)): int(c) for a, b, c in zip(p, t, n)}


def vcpu_counts(ev: pd.DataFrame, domains: list[dict], completions: np.ndarray | None = None) -> list[dict]:
    """One dict per vCPU: domain, vcpu, tid, userspace_exits, pio, mmio (see the module doc).

    ``completions``: the events mode's mask of kvm_mmio "read" events that
    complete an unsatisfied read (analysis.summary.mmio_completions); None
    for a counts recording.
    """
    k, w = kinds_and_weights(ev)
    pid, tid = ev["pid"].to_numpy(), ev["tid"].to_numpy()
    uexit = (k == EventKind.USERSPACE_EXIT) & (ev["err"].to_numpy() >= 0)
    pio = k == EventKind.PIO
    mmio = k == EventKind.MMIO
    if completions is not None:
        mmio = mmio & ~completions
    agg = (ev["kind"].to_numpy() & AGGREGATE) != 0
    sel = (pio | mmio) & agg
    per_guest = bool(sel.any()) and not bool((tid[sel] != 0).any())
    counts = {name: _per_thread(pid, tid, m, w) for name, m in
              (("userspace_exits", uexit), ("pio", pio), ("mmio", mmio))}
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
