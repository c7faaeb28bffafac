"""DeviceMap: device names for a guest's ports and guest-physical addresses, scalar and vectorised.

A map is built from QEMU's own ``info mtree -f`` (:mod:`.mtree`), from a
trace header that stored it, or from the built-in PC table (:mod:`.builtin`);
overlapping input is flattened into non-overlapping regions, which numpy
searches for whole columns of addresses at once.

Pure Python, numpy and pandas; importing this module has no side effects.
"""

from __future__ import annotations

import bisect
import dataclasses
import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from kvmtrace.tables.devices.builtin import _builtin_regions
from kvmtrace.tables.devices.mtree import MemoryMapError, parse_mtree
from kvmtrace.tables.devices.region import SPACES, Region

__all__ = ["UNKNOWN", "DeviceMap", "MemoryMapWarning"]

UNKNOWN = "unknown"
"""The name the vectorised lookups give an address no region covers."""


class MemoryMapWarning(UserWarning):
    """A trace's stored memory map was unusable: the built-in table was used."""


def _flatten(regions: Iterable[Region]) -> list[Region]:
    """Non-overlapping pieces of *regions*, sorted by start.

    QEMU's flat view never overlaps; other input might.  Where ranges
    overlap, a device ("i/o") beats RAM/ROM, then the higher priority, then
    the earlier one in the input: the winner keeps the overlap, the loser
    keeps what is left of its range.
    """
    regions = list(regions)
    order = sorted(range(len(regions)),
                   key=lambda i: (regions[i].kind != "i/o", -regions[i].priority, i))
    starts: list[int] = []  # painted intervals, sorted and disjoint
    pieces: list[Region] = []
    for i in order:
        r = regions[i]
        lo = r.start
        k = bisect.bisect_right(starts, lo) - 1
        if k >= 0 and pieces[k].end >= lo:
            lo = pieces[k].end + 1
        k += 1
        new: list[Region] = []
        while lo <= r.end:
            nxt = pieces[k].start if k < len(pieces) else None
            if nxt is None or nxt > r.end:
                new.append(_piece(r, lo, r.end))
                break
            if nxt > lo:
                new.append(_piece(r, lo, nxt - 1))
            lo = pieces[k].end + 1
            k += 1
        for p in new:
            j = bisect.bisect_left(starts, p.start)
            starts.insert(j, p.start)
            pieces.insert(j, p)
    return pieces


def _piece(r: Region, start: int, end: int) -> Region:
    if start == r.start and end == r.end:
        return r
    return dataclasses.replace(r, start=start, end=end, offset=r.offset + (start - r.start))


class _Space:
    """One address space's regions as sorted arrays for searchsorted."""

    def __init__(self, regions: list[Region]):
        self.regions = tuple(_flatten(regions))
        self.starts = np.array([r.start for r in self.regions], dtype=np.uint64)
        self.ends = np.array([r.end for r in self.regions], dtype=np.uint64)
        self._start_list = [r.start for r in self.regions]
        names = sorted({r.name for r in self.regions})
        self.categories = names + ([UNKNOWN] if UNKNOWN not in names else [])
        code_of = {name: i for i, name in enumerate(self.categories)}
        self.name_codes = np.array([code_of[r.name] for r in self.regions], dtype=np.int32)
        self.unknown_code = code_of[UNKNOWN]

    def find(self, address: int) -> Region | None:
        i = bisect.bisect_right(self._start_list, address) - 1
        if i >= 0 and address <= self.regions[i].end:
            return self.regions[i]
        return None

    def index(self, values) -> np.ndarray:
        a = np.asarray(values)
        if a.ndim > 1:
            raise ValueError(f"expected a 1-d array of addresses, got shape {a.shape}")
        a = np.atleast_1d(a)
        if a.size == 0:
            return np.zeros(0, dtype=np.int64)
        if a.dtype.kind == "u":
            u = a.astype(np.uint64, copy=False)
            bad = None
        elif a.dtype.kind == "i":
            bad = a < 0
            u = np.where(bad, 0, a).astype(np.uint64)
        else:
            raise TypeError(f"addresses must be integers, not {a.dtype}")
        idx = np.searchsorted(self.starts, u, side="right").astype(np.int64) - 1
        ok = idx >= 0
        ok[ok] = u[ok] <= self.ends[idx[ok]]
        if bad is not None:
            ok &= ~bad
        return np.where(ok, idx, -1)

    def names(self, values) -> pd.Categorical:
        idx = self.index(values)
        codes = np.full(idx.shape, self.unknown_code, dtype=np.int32)
        hit = idx >= 0
        codes[hit] = self.name_codes[idx[hit]]
        return pd.Categorical.from_codes(codes, categories=pd.Index(self.categories, dtype=object))


class DeviceMap:
    """Device names for a guest's ports and guest-physical addresses.

    Build one with :meth:`from_header` (a trace), :meth:`from_mtree` (the
    text of ``info mtree -f``) or :meth:`builtin`.  Each address space holds
    non-overlapping :class:`Region` s; :attr:`sources` says where each space's
    names came from ("mtree", "builtin" or "none").
    """

    def __init__(self, regions: Iterable[Region] = (), sources: Mapping[str, str] | None = None):
        regions = list(regions)
        for r in regions:
            if not isinstance(r, Region):
                raise TypeError(f"DeviceMap takes Region objects, not {type(r).__name__}")
        self._spaces = {space: _Space([r for r in regions if r.space == space]) for space in SPACES}
        if sources is None:
            sources = {}
            for space in SPACES:
                kinds = {r.source for r in self._spaces[space].regions}
                sources[space] = "+".join(sorted(kinds)) if kinds else "none"
        self.sources: dict[str, str] = {space: sources.get(space, "none") for space in SPACES}

    # -- constructors --------------------------------------------------------

    @classmethod
    def builtin(cls) -> DeviceMap:
        """The fixed PC ranges of :data:`BUILTIN_RANGES`."""
        return cls(_builtin_regions(), {"memory": "builtin", "io": "builtin"})

    @classmethod
    def from_mtree(cls, text: str | bytes, *, fallback: bool = True) -> DeviceMap:
        """The map QEMU printed for ``info mtree -f`` (:data:`MTREE_COMMAND`).

        An address space the text has no flat view for (empty text, an error
        message from the monitor) gets the built-in table, or no regions at
        all when *fallback* is False.  Raises :class:`MemoryMapError` for the
        nested ``info mtree`` view.
        """
        parsed = parse_mtree(text)
        regions: list[Region] = []
        sources: dict[str, str] = {}
        builtin = _builtin_regions()
        for space in SPACES:
            mine = [r for r in parsed if r.space == space]
            if mine:
                regions += mine
                sources[space] = "mtree"
            elif fallback:
                regions += [r for r in builtin if r.space == space]
                sources[space] = "builtin"
            else:
                sources[space] = "none"
        return cls(regions, sources)

    @classmethod
    def from_header(cls, header: Mapping, domain: str | int | None = None) -> DeviceMap:
        """The map stored in a trace header, else the built-in table.

        Looks for ``header["memory_map_text"]``, then for the
        ``memory_map_text`` of the domains in ``header["domains"]``: the one
        whose name, UUID or list index is *domain*, or the first that has
        one.  A stored text that gives no regions (a monitor error, the nested
        view) falls back to the built-in table with a :class:`MemoryMapWarning`.
        """
        if not isinstance(header, Mapping):
            raise TypeError(f"expected the trace header dict, not {type(header).__name__}")
        text = header.get("memory_map_text") if domain is None else None
        where = "the trace header"
        if not text:
            domains = header.get("domains") or []
            for i, d in enumerate(domains):
                if not isinstance(d, Mapping):
                    continue
                if domain is not None and domain not in (i, d.get("name"), d.get("uuid")):
                    continue
                if d.get("memory_map_text"):
                    text = d["memory_map_text"]
                    where = f"domain {d.get('name', i)!r} in the trace header"
                    break
        if not text:
            return cls.builtin()
        try:
            dm = cls.from_mtree(text)
        except (MemoryMapError, TypeError) as e:
            warnings.warn(f"{where}: {e}; using the built-in PC device table",
                          MemoryMapWarning, stacklevel=2)
            return cls.builtin()
        if "mtree" not in dm.sources.values():
            first = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
            warnings.warn(
                f"{where}: the stored memory map holds no flat view (it starts {first[:80]!r}); "
                "using the built-in PC device table", MemoryMapWarning, stacklevel=2)
        return dm

    # -- scalar lookups ------------------------------------------------------

    def port(self, port: int) -> Region | None:
        """The region answering I/O port *port*, or None."""
        return self._spaces["io"].find(int(port))

    def mmio(self, gpa: int) -> Region | None:
        """The region at guest-physical address *gpa*, or None.

        Usually a device ("i/o" kind).  A RAM or ROM region comes back too, with
        its ``kind`` saying so: a ``kvm_mmio`` on RAM should not happen, and on
        a ROM it is a write to a read-only slot.
        """
        return self._spaces["memory"].find(int(gpa))

    def lookup(self, space: str, address: int) -> Region | None:
        return self._space(space).find(int(address))

    # -- vectorised lookups --------------------------------------------------

    def name_ports(self, ports) -> pd.Categorical:
        """Device name per port (``"unknown"`` where no region is), as a Categorical.

        The categories are every name of the I/O space plus ``"unknown"``, so
        results of different calls concatenate without recoding.
        """
        return self._spaces["io"].names(ports)

    def name_gpas(self, gpas) -> pd.Categorical:
        """Device name per guest-physical address, as :meth:`name_ports` does for ports."""
        return self._spaces["memory"].names(gpas)

    def index(self, space: str, addresses) -> np.ndarray:
        """Index into ``regions(space)`` per address (int64, -1 where no region is)."""
        return self._space(space).index(addresses)

    def in_kernel(self, space: str, addresses) -> np.ndarray:
        """Per address: whether the kernel emulates it (False where unknown)."""
        sp = self._space(space)
        idx = sp.index(addresses)
        flags = np.array([r.in_kernel for r in sp.regions], dtype=bool)
        out = np.zeros(idx.shape, dtype=bool)
        out[idx >= 0] = flags[idx[idx >= 0]]
        return out

    # -- the table -----------------------------------------------------------

    def regions(self, space: str | None = None) -> tuple[Region, ...]:
        """The regions of *space* (or of both, memory first), sorted by start."""
        if space is None:
            return self._spaces["memory"].regions + self._spaces["io"].regions
        return self._space(space).regions

    def df_regions(self) -> pd.DataFrame:
        """The map as a frame, one row per region, index ``region``.

        Columns: space (category), start, end (uint64, inclusive), size
        (uint64), name, kind (category), in_kernel (bool), source, description
        (category), priority (int32), offset (uint64), kvm_slot (bool).
        """
        rows = self.regions()
        cat = lambda values: pd.Categorical(values)  # noqa: E731
        df = pd.DataFrame({
            "space": cat([r.space for r in rows]),
            "start": np.array([r.start for r in rows], dtype=np.uint64),
            "end": np.array([r.end for r in rows], dtype=np.uint64),
            "size": np.array([r.size for r in rows], dtype=np.uint64),
            "name": cat([r.name for r in rows]),
            "kind": cat([r.kind for r in rows]),
            "in_kernel": np.array([r.in_kernel for r in rows], dtype=bool),
            "source": cat([r.source for r in rows]),
            "description": cat([r.description for r in rows]),
            "priority": np.array([r.priority for r in rows], dtype=np.int32),
            "offset": np.array([r.offset for r in rows], dtype=np.uint64),
            "kvm_slot": np.array([r.kvm_slot for r in rows], dtype=bool),
        })
        df.index = pd.RangeIndex(len(df), name="region")
        return df

    def _space(self, space: str) -> _Space:
        try:
            return self._spaces[space]
        except KeyError:
            raise ValueError(f"space must be one of {SPACES}, not {space!r}") from None

    def __len__(self) -> int:
        return sum(len(s.regions) for s in self._spaces.values())

    def __repr__(self) -> str:
        parts = ", ".join(f"{space}: {len(self._spaces[space].regions)} from {self.sources[space]}"
                          for space in SPACES)
        return f"<DeviceMap {parts}>"
