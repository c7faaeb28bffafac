"""Device names that follow the guest: every version of QEMU's memory map a recording read, with its time.

Firmware moves devices after a recording starts: SeaBIOS assigns PCI BARs
(virtio-net's legacy I/O BAR at 0xc000) once the guest runs, so a map read at
the start does not name them. The recorder reads the map again when an access
hits an address it does not name, and once at the end, and keeps each version
with its CLOCK_MONOTONIC time (:mod:`kvmtrace.tracefile`, ``memory_maps``).

An access at time ``ts`` is named by the newest version read at or before
``ts``; where that version does not name its address, by the first later
version that does (the map that was read because of it, or at the end). A
version that could not be read (the monitor busy, the domain gone) changes
nothing: the names stay those of the versions before it, and
:attr:`DeviceTimeline.failures` says so.

Pure Python, numpy and pandas; importing this module has no side effects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kvmtrace.errors import MemoryMapError
from kvmtrace.tables.devices.devicemap import UNKNOWN, DeviceMap

__all__ = ["DeviceTimeline", "MapVersion"]

_START = np.iinfo(np.int64).min  # the header's map: in effect from the start


@dataclass
class MapVersion:
    """One read of one guest's map: when, why, and the map (None if it could not be read)."""

    pid: int
    t_ns: int
    reason: str
    devices: DeviceMap | None
    error: str = ""


@dataclass
class _Guest:
    versions: list[MapVersion] = field(default_factory=list)  # readable ones, by time

    def times(self) -> np.ndarray:
        return np.array([v.t_ns for v in self.versions], dtype=np.int64)


class DeviceTimeline:
    """Every readable version of each recorded guest's memory map, by pid and time.

    ``names(space, addresses, ts, pids)`` names each access by the map in
    effect when it happened (see the module's docstring); ``region(space,
    address)`` is the scalar form over the whole recording (the first version
    that names the address). A trace without re-reads has one version per
    guest, the header's, and names as :class:`DeviceMap` does.
    """

    def __init__(self, versions: list[MapVersion], default: DeviceMap | None = None):
        self.default = default if default is not None else DeviceMap.builtin()
        self.failures = [v for v in versions if v.devices is None]
        self._guests: dict[int, _Guest] = {}
        for v in sorted((v for v in versions if v.devices is not None), key=lambda v: v.t_ns):
            self._guests.setdefault(v.pid, _Guest()).versions.append(v)

    @classmethod
    def from_trace(cls, header: Mapping, memory_maps: list[dict] | None = None) -> DeviceTimeline:
        """From a trace's header (each domain's start map) and its ``memory_maps`` re-reads."""
        default = DeviceMap.from_header(header)
        versions: list[MapVersion] = []
        for d in header.get("domains") or []:
            if isinstance(d, Mapping) and d.get("memory_map_text") and "pid" in d:
                versions.append(MapVersion(int(d["pid"]), _START, "start", _parse(d["memory_map_text"]) or default))
        previous: dict[int, DeviceMap] = {}
        for m in memory_maps or []:
            pid, t = int(m.get("pid", 0)), int(m.get("t_ns", 0))
            if m.get("text"):
                dm = _parse(m["text"])
                error = "" if dm is not None else "the map read holds no flat view"
            elif m.get("unchanged"):
                continue  # the same map as the version before: it changes no name
            else:
                dm, error = None, str(m.get("error") or "not read")
            if dm is not None:
                previous[pid] = dm
            versions.append(MapVersion(pid, t, str(m.get("reason", "")), dm, error))
        return cls(versions, default)

    @property
    def versions(self) -> list[MapVersion]:
        """Every readable version, by pid then time."""
        return [v for g in self._guests.values() for v in g.versions]

    def pids(self) -> list[int]:
        return list(self._guests)

    def last(self, pid: int | None = None) -> DeviceMap:
        """The newest readable map of ``pid`` (or of the only guest); the default map otherwise."""
        g = self._guests.get(pid) if pid is not None else (
            next(iter(self._guests.values())) if len(self._guests) == 1 else None)
        return g.versions[-1].devices if g else self.default

    def merged(self, pid: int | None = None) -> DeviceMap:
        """One map for the whole recording: each address named by the first version that names it.

        For lookups without a time (a row that sums accesses, a live view):
        a device the firmware mapped after the start is named, and a name the
        start map gave is never replaced.
        """
        g = self._guests.get(pid) if pid is not None else (
            next(iter(self._guests.values())) if self._guests else None)
        if g is None:
            return self.default
        if len(g.versions) == 1:
            return g.versions[0].devices
        taken: list[tuple[int, int, str]] = []  # (start, end, space) accepted so far
        regions = []
        for v in g.versions:
            for r in v.devices.regions():
                for lo, hi in _uncovered(r.start, r.end, [(a, b) for a, b, s in taken if s == r.space]):
                    regions.append(dataclasses.replace(r, start=lo, end=hi, offset=r.offset + (lo - r.start)))
            taken += [(r.start, r.end, r.space) for r in v.devices.regions()]
        sources = dict(g.versions[0].devices.sources)
        return DeviceMap(regions, sources)

    def region(self, space: str, address: int, pid: int | None = None):
        """The region at ``address`` in the first version of the guest's map that names it, or None."""
        guests = [self._guests[pid]] if pid in self._guests else list(self._guests.values())
        for g in guests:
            for v in g.versions:
                r = v.devices.lookup(space, address)
                if r is not None:
                    return r
        return self.default.lookup(space, address) if not guests else None

    def epochs(self, ts, pids) -> np.ndarray | None:
        """Per access: the index of its guest's map version in effect at ``ts`` (int64);
        None when no guest has more than one version (then time names nothing)."""
        if all(len(g.versions) <= 1 for g in self._guests.values()):
            return None
        ts = np.asarray(ts).astype(np.int64, copy=False)
        pids = np.asarray(pids)
        out = np.zeros(len(ts), dtype=np.int64)
        for pid, g in self._guests.items():
            rows = slice(None) if len(self._guests) == 1 else pids == pid
            out[rows] = np.searchsorted(g.times(), ts[rows], side="right") - 1
        return np.clip(out, 0, None)

    def names(self, space: str, addresses, ts=None, pids=None) -> tuple[pd.Categorical, np.ndarray, np.ndarray]:
        """Per access: device name (Categorical, "unknown" where none), offset into its
        QEMU region (int64, -1 where none) and whether the kernel emulates it (bool).

        ``ts`` (int64 ns) and ``pids`` per access; without ``ts`` every access is
        named by the first version that names its address.
        """
        addresses = np.asarray(addresses, dtype=np.uint64)
        n = len(addresses)
        ts = np.full(n, _START, dtype=np.int64) if ts is None else np.asarray(ts).astype(np.int64)
        pids = np.zeros(n, dtype=np.int64) if pids is None else np.asarray(pids).astype(np.int64)
        cats: dict[str, int] = {UNKNOWN: 0}
        code = np.zeros(n, dtype=np.int32)
        offset = np.full(n, -1, dtype=np.int64)
        in_kernel = np.zeros(n, dtype=bool)
        known = set(self._guests)
        present = pd.unique(pids) if n else []
        # one guest (the usual trace): every row, without a mask to copy through
        groups = [(present[0], slice(None))] if len(present) == 1 else [(p, pids == p) for p in present]
        for pid, rows in groups:
            g = self._guests.get(int(pid))
            if g is None and len(known) == 1 and not (pids[rows] != 0).all():
                g = next(iter(self._guests.values()))  # a frame without pids: the one guest
            maps = [v.devices for v in g.versions] if g else [self.default]
            times = g.times() if g else np.array([_START], dtype=np.int64)
            addr_rows = addresses[rows]
            u, uniq = pd.factorize(addr_rows)  # hashed: no sort of every row
            uniq = np.asarray(uniq, dtype=np.uint64)
            # per version, per distinct address: region index (-1: none)
            idx = np.stack([dm.index(space, uniq) for dm in maps])
            # from version k on: the first version >= k naming the address
            pick = np.full(idx.shape, -1, dtype=np.int64)
            pick_v = np.full(idx.shape, -1, dtype=np.int64)
            for k in range(len(maps) - 1, -1, -1):
                have = idx[k] >= 0
                nxt_i = pick[k + 1] if k + 1 < len(maps) else np.full(len(uniq), -1)
                nxt_v = pick_v[k + 1] if k + 1 < len(maps) else np.full(len(uniq), -1)
                pick[k] = np.where(have, idx[k], nxt_i)
                pick_v[k] = np.where(have, k, nxt_v)
            if len(maps) == 1:
                at = np.zeros(len(u), dtype=np.int64)
            else:
                at = np.clip(np.searchsorted(times, ts[rows], side="right") - 1, 0, len(maps) - 1)
            ri, vi = pick[at, u], pick_v[at, u]
            out = np.zeros(len(u), dtype=np.int32)
            off = np.full(len(u), -1, dtype=np.int64)
            ker = np.zeros(len(u), dtype=bool)
            for v in np.unique(vi[vi >= 0]):
                regs = maps[int(v)].regions(space)
                name_code = np.array([cats.setdefault(r.name, len(cats)) for r in regs], dtype=np.int32)
                base = np.array([r.offset - r.start for r in regs], dtype=np.int64)
                kernel = np.array([r.in_kernel for r in regs], dtype=bool)
                sel = np.flatnonzero(vi == v)
                r_sel = ri[sel]
                out[sel] = name_code[r_sel]
                off[sel] = addr_rows[sel].astype(np.int64) + base[r_sel]
                ker[sel] = kernel[r_sel]
            code[rows], offset[rows], in_kernel[rows] = out, off, ker
        return pd.Categorical.from_codes(code, categories=list(cats)), offset, in_kernel


def _uncovered(lo: int, hi: int, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of [lo, hi] no interval of ``taken`` covers."""
    parts = [(lo, hi)]
    for a, b in taken:
        nxt = []
        for x, y in parts:
            if b < x or a > y:
                nxt.append((x, y))
                continue
            if x < a:
                nxt.append((x, a - 1))
            if b < y:
                nxt.append((b + 1, y))
        parts = nxt
        if not parts:
            break
    return parts


def _parse(text: str) -> DeviceMap | None:
    try:
        dm = DeviceMap.from_mtree(text, fallback=True)
    except (MemoryMapError, TypeError):
        return None
    return dm if "mtree" in dm.sources.values() else None
