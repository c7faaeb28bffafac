"""The values of each userspace exit's kvm_run member, grouped: what `report` shows as ``details``.

An IO or MMIO exit's member (kvm_run.io / .mmio) is in the event's own
columns (port, size, count, op; gpa, size, op). Any other member's first
bytes come as union words (EventFlag.RUN_UNION): an events recording keeps
40 bytes in rip, info1, info2, gpa, value; a counts recording keys its
aggregates by the first 16 (gpa, then port | size << 32). The words are
decoded by kvmtrace.tables.exits.runfields. Pure numpy/pandas.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kvmtrace.kernel.events import AGGREGATE, RUN_UNION_BYTES, RUN_UNION_COLUMNS, EventFlag, EventKind, MmioOp
from kvmtrace.tables.exits import KvmExit
from kvmtrace.tables.exits.runfields import decode, describe
from kvmtrace.analysis.summary import _group_sum, kinds_and_weights

__all__ = ["COUNTS_UNION_BYTES", "DetailGroups", "detail_groups", "details_of", "exit_details", "merge_detail_groups",
           "union_words"]

#: Bytes of the union a counts-mode aggregate keeps (its key's gpa, port and size).
COUNTS_UNION_BYTES = 16


def union_words(ev: pd.DataFrame, rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The five union words (uint64 arrays) of events ``rows`` and how many bytes each row carries."""
    agg = (ev["kind"].to_numpy()[rows] & AGGREGATE) != 0
    zero = np.zeros(len(rows), dtype=np.uint64)
    words = []
    for i, col in enumerate(RUN_UNION_COLUMNS):
        w = ev[col].to_numpy()[rows].astype(np.uint64) if col in ev.columns else zero.copy()
        if agg.any():
            if i == 0:
                w = np.where(agg, ev["gpa"].to_numpy()[rows].astype(np.uint64), w)
            elif i == 1:
                low = ev["port"].to_numpy()[rows].astype(np.uint64)
                high = ev["size"].to_numpy()[rows].astype(np.uint64) << np.uint64(32)
                w = np.where(agg, low | high, w)
            else:
                w = np.where(agg, np.uint64(0), w)
        words.append(w)
    return words, np.where(agg, COUNTS_UNION_BYTES, RUN_UNION_BYTES)


def _io_rows(keys: list[np.ndarray], n: np.ndarray) -> list[dict]:
    # kvm_run.io.count (rep ins/outs) is left out: a counts recording's keys do not hold it.
    d, size, port = keys
    return [{"direction": int(a), "direction_name": "OUT" if a == 1 else "IN", "size": int(b), "port": int(c),
             "count": int(k)} for a, b, c, k in zip(d, size, port, n)]


def _mmio_rows(keys: list[np.ndarray], n: np.ndarray) -> list[dict]:
    gpa, length, wr = keys
    return [{"phys_addr": int(a), "len": int(b), "is_write": int(c), "count": int(k)}
            for a, b, c, k in zip(gpa, length, wr, n)]


#: A detail table: distinct key tuples (sorted, as analysis.summary._group_sum gives
#: them) and the exits of each. Keys: "io" (direction, size, port), "mmio" (phys_addr,
#: len, is_write), "union" (KVM_EXIT_* code, bytes carried, the five union words).
DetailGroups = dict[str, tuple[list[np.ndarray], np.ndarray]]


def detail_groups(ev: pd.DataFrame) -> DetailGroups:
    """The userspace exits of ``ev`` counted per member value (see :func:`exit_details`), as
    tables that add up: :func:`merge_detail_groups` of two parts' tables is the whole's."""
    k, w = kinds_and_weights(ev)
    flags = ev["flags"].to_numpy()
    uexit = (k == EventKind.USERSPACE_EXIT) & (ev["err"].to_numpy() >= 0)
    reason = ev["reason"].to_numpy()
    out: DetailGroups = {}
    fields = uexit & ((flags & int(EventFlag.RUN_FIELDS)) != 0)
    rows = np.flatnonzero(fields & (reason == KvmExit.IO))
    if len(rows):
        out["io"] = _group_sum([ev["op"].to_numpy()[rows], ev["size"].to_numpy()[rows],
                                ev["port"].to_numpy()[rows]], w[rows])
    rows = np.flatnonzero(fields & (reason == KvmExit.MMIO))
    if len(rows):
        write = (ev["op"].to_numpy()[rows] == MmioOp.WRITE).astype(np.uint8)
        out["mmio"] = _group_sum([ev["gpa"].to_numpy()[rows], ev["size"].to_numpy()[rows], write], w[rows])
    rows = np.flatnonzero(uexit & ((flags & int(EventFlag.RUN_UNION)) != 0))
    if len(rows):
        words, nbytes = union_words(ev, rows)
        out["union"] = _group_sum([reason[rows], nbytes.astype(np.int64), *words], w[rows])
    return out


def merge_detail_groups(parts: list[DetailGroups]) -> DetailGroups:
    """The detail tables of the concatenation of the parts' events."""
    out: DetailGroups = {}
    for name in ("io", "mmio", "union"):
        tables = [p[name] for p in parts if name in p]
        if len(tables) == 1:
            out[name] = tables[0]
        elif tables:
            keys = [np.concatenate([t[0][i] for t in tables]) for i in range(len(tables[0][0]))]
            out[name] = _group_sum(keys, np.concatenate([t[1] for t in tables]))
    return out


def details_of(groups: DetailGroups) -> dict[int, list[dict]]:
    """:func:`exit_details` from the detail tables (:func:`detail_groups`)."""
    out: dict[int, list[dict]] = {}
    for code, name, fn in ((KvmExit.IO, "io", _io_rows), (KvmExit.MMIO, "mmio", _mmio_rows)):
        if name in groups:
            out[int(code)] = sorted(fn(*groups[name]), key=lambda r: -r["count"])
    if "union" not in groups:
        return out
    keys, counts = groups["union"]
    for code, nb, *ws, n in zip(*keys, counts):
        member, values = decode(int(code), [int(x) for x in ws], int(nb))
        out.setdefault(int(code), []).append({"member": member, **values, "text": describe(values),
                                              "bytes": int(nb), "count": int(n)})
    for rows_ in out.values():
        rows_.sort(key=lambda r: -r["count"])
    return out


def exit_details(ev: pd.DataFrame) -> dict[int, list[dict]]:
    """KVM_EXIT_* code -> its exits grouped by their member's values, most frequent first.

    Each group: the member's fields as decoded (``member`` names the member
    or variant, e.g. ``emulation_failure``; ``text`` says it in one line;
    named values have a ``<field>_name``), ``bytes`` (how much of the union
    was carried) and ``count``. IO exits give direction, size and port;
    MMIO exits phys_addr, len, is_write.
    Exits whose member was not read (imported traces, no kvm_run address)
    are in no group. (:func:`detail_groups` and :func:`details_of`: the same
    in two steps, for a trace read batch by batch.)
    """
    return details_of(detail_groups(ev))
