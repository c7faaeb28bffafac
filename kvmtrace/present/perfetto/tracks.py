"""Where a timeline draws: a track per vCPU thread, the ioctl track, and overlap lanes.

Slices on one track must nest; :meth:`_Tracks.untangle` moves a slice that
would partially overlap another to an extra lane track of its process.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from kvmtrace.kernel.events import NO_VCPU
from kvmtrace.present.perfetto.sources import _Source

#: Thread ids of tracks that are no thread (the ioctl track, overlap lanes):
#: above any Linux tid (pid_max is at most 2**22), within the uint32 the viewers read.
_SYNTHETIC_TID = 1 << 30


def _lanes(start: np.ndarray, end: np.ndarray, track: np.ndarray) -> np.ndarray:
    """Lane per slice so that slices on one (track, lane) nest; inputs sorted by (track, start, -end).

    Lane 0 takes every slice that nests with it; a slice that would
    partially overlap goes to the first lane where it nests.  A slice ending
    exactly where the next starts does not overlap it (the viewers close a
    slice at its end).
    """
    lane = np.zeros(len(start), dtype=np.int64)
    stacks: list[list[int]] = []  # per lane, the ends of the open slices
    prev_track = None
    for i, (s, e, t) in enumerate(zip(start.tolist(), end.tolist(), track.tolist())):
        if t != prev_track:
            stacks, prev_track = [], t
        for k, st in enumerate(stacks):
            while st and st[-1] <= s:
                st.pop()
            if not st or e <= st[-1]:
                st.append(e)
                lane[i] = k
                break
        else:
            stacks.append([e])
            lane[i] = len(stacks) - 1
    return lane


class _Tracks:
    """Names, sort order and thread ids of the tracks: vCPU threads, the ioctl track, overlap lanes."""

    def __init__(self, vcpu_of: dict[tuple[int, int], int]):
        self.vcpu_of = vcpu_of
        self.names: dict[tuple[int, int], tuple[str, int]] = {}  # synthetic (pid, tid) -> (name, sort)
        self._next = _SYNTHETIC_TID
        self._ioctl: dict[int, int] = {}
        self._lane: dict[tuple[int, int, int], int] = {}

    def synthetic(self, pid: int, name: str, sort: int) -> int:
        tid = self._next
        self._next += 1
        self.names[(pid, tid)] = (name, sort)
        return tid

    def name(self, pid: int, tid: int) -> tuple[str, int]:
        """(thread_name, thread_sort_index) of a track."""
        known = self.names.get((pid, tid))
        if known is not None:
            return known
        c = self.vcpu_of.get((pid, tid))
        if c is not None:
            return f"vCPU {c} (tid {tid})", 10 * c
        return f"VMM thread (tid {tid})", 1_000_000 + tid

    def ioctl(self, pid: int) -> int:
        """The guest's "VMM (KVM ioctls)" track."""
        if pid not in self._ioctl:
            self._ioctl[pid] = self.synthetic(pid, "VMM (KVM ioctls)", -10)
        return self._ioctl[pid]

    def lane(self, pid: int, tid: int, k: int) -> int:
        """Overlap lane ``k`` (>= 1) of a track."""
        key = (pid, tid, k)
        if key not in self._lane:
            base, sort = self.name(pid, tid)
            self._lane[key] = self.synthetic(pid, f"{base} [overlap {k}]", sort + k)
        return self._lane[key]

    def untangle(self, sources: list[_Source]) -> tuple[list[np.ndarray], int]:
        """Final tid per row of each source: partially overlapping slices moved to lanes; how many moved."""
        xs = [np.flatnonzero(s.keep & (s.dur >= 0)) for s in sources]  # slices only: instants always nest
        start = np.concatenate([s.start[r] for s, r in zip(sources, xs)] or [np.zeros(0, np.int64)])
        end = np.concatenate([s.start[r] + s.dur[r] for s, r in zip(sources, xs)] or [np.zeros(0, np.int64)])
        pid = np.concatenate([s.pid[r] for s, r in zip(sources, xs)] or [np.zeros(0, np.int64)])
        tid = np.concatenate([s.tid[r] for s, r in zip(sources, xs)] or [np.zeros(0, np.int64)])
        order = np.lexsort((-end, start, tid, pid))
        key = (pid[order].astype(np.uint64) << np.uint64(32)) | tid[order].astype(np.uint64)
        lane = np.empty(len(order), dtype=np.int64)
        lane[order] = _lanes(start[order], end[order], key)
        final = [s.tid.copy() for s in sources]
        off = 0
        for s, r, out in zip(sources, xs, final):
            ln = lane[off:off + len(r)]
            off += len(r)
            for j in np.flatnonzero(ln > 0).tolist():
                row = r[j]
                out[row] = self.lane(int(s.pid[row]), int(s.tid[row]), int(ln[j]))
        return final, int((lane > 0).sum())


def _vcpus(frames: Iterable[pd.DataFrame | None], domains: list[dict]) -> dict[tuple[int, int], int]:
    """(pid, tid) -> vCPU: from the events (kvm_exit/kvm_entry, userspace exits), else the header."""
    out: dict[tuple[int, int], int] = {}
    for frame in frames:
        if frame is not None and len(frame):
            v = frame[frame["vcpu"] != NO_VCPU].drop_duplicates(["pid", "tid"])
            for p, t, c in zip(v["pid"].tolist(), v["tid"].tolist(), v["vcpu"].tolist()):
                out.setdefault((int(p), int(t)), int(c))
    for d in domains:
        for c, t in (d.get("vcpu_threads") or {}).items():
            out.setdefault((int(d.get("pid") or 0), int(t)), int(c))
    return out


def _process_name(pid: int, dom_by_pid: dict[int, dict]) -> str:
    d = dom_by_pid.get(pid)
    if d is None:
        return f"VMM pid {pid}"
    if d.get("uuid") or d.get("uri"):  # a libvirt domain
        return f"domain {d.get('name', '?')} (QEMU pid {pid})"
    return f"{d.get('name', 'VMM')} (pid {pid})"  # e.g. an imported trace's task name
