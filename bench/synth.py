"""Longer traces for the report benchmark (scale.py --synthesize), made from a recording.

A recording's batches are written again and again with shifted timestamps
(:func:`synthesize`), optionally

* on several vCPUs: the copies of one round run side by side, each on its
  own threads (tids moved by ``TID_STEP``), written batch by batch in turn so
  that the file stays roughly in time order, as a recorder on several CPUs
  writes it; the header's domains list every copy's vCPU threads;
* with userspace exits other than IO/MMIO (:func:`with_union_exits`): after
  every ``union_every``-th KVM_RUN of a batch, a SYSTEM_EVENT, HYPERCALL or
  INTERNAL_ERROR exit carrying kvm_run union words (EventFlag.RUN_UNION, as
  the events recorder writes them) and the KVM_RUN that resumes it, both at
  that KVM_RUN's time and thread. Their member values come from a few fixed
  variants (:data:`UNION_VARIANTS`), as a guest's few kinds of such exits do.

Pure numpy on kernel.events.EVENT_DTYPE arrays; writes with
tracefile.TraceWriter, the recorder's own writer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kvmtrace.kernel.events import EVENT_DTYPE, RUN_UNION_COLUMNS, EventFlag, EventKind
from kvmtrace.tables.exits import KvmExit

#: How far each vCPU copy's thread ids are moved from the recording's.
TID_STEP = 1_000_000


def _words(*w: int) -> tuple[int, ...]:
    return tuple(w) + (0,) * (len(RUN_UNION_COLUMNS) - len(w))


#: (KVM_EXIT_* code, the five union words rip, info1, info2, gpa, value): each
#: a member value the report's details table shows as its own row.
UNION_VARIANTS: list[tuple[int, tuple[int, ...]]] = [
    (int(KvmExit.SYSTEM_EVENT), _words(2 | 1 << 32, 0)),        # type RESET, ndata 1, data[0] 0
    (int(KvmExit.HYPERCALL), _words(12, 0x100000, 4, 0x11, 0)),  # nr 12 (MAP_GPA_RANGE), args
    (int(KvmExit.SYSTEM_EVENT), _words(1, 0)),                   # type SHUTDOWN, ndata 0
    (int(KvmExit.INTERNAL_ERROR), _words(3 | 2 << 32, 0x80000b0e, 0x31)),  # DELIVERY_EV, ndata 2
    (int(KvmExit.HYPERCALL), _words(12, 0x200000, 8, 0x11, 0)),
    (int(KvmExit.INTERNAL_ERROR), _words(1 | 8 << 32, 1, 0x0fcc << 8 | 2)),  # EMULATION, flags 1, 2 bytes
]


def with_union_exits(ev: np.ndarray, every: int, start: int = 0) -> np.ndarray:
    """``ev`` with a userspace exit carrying union words and its KVM_RUN after every
    ``every``-th KVM_RUN event (file order); variants in turn from ``start``."""
    runs = np.flatnonzero(ev["kind"] == EventKind.RUN)[every - 1::every]
    if not len(runs):
        return ev
    add = np.repeat(ev[runs], 2)  # an exit and a KVM_RUN, each at its KVM_RUN's time and thread
    exits = add[0::2]
    exits["kind"] = EventKind.USERSPACE_EXIT
    exits["err"] = 0
    exits["flags"] = int(EventFlag.RUN_FIELDS | EventFlag.RUN_UNION)
    for c in ("op", "port", "size", "count"):
        exits[c] = 0
    pick = (start + np.arange(len(runs))) % len(UNION_VARIANTS)
    codes = np.array([c for c, _ in UNION_VARIANTS], dtype=exits["reason"].dtype)
    words = np.array([w for _, w in UNION_VARIANTS], dtype=np.uint64)
    exits["reason"] = codes[pick]
    for i, c in enumerate(RUN_UNION_COLUMNS):
        exits[c] = words[pick, i]
    add[0::2] = exits
    return np.insert(ev, np.repeat(runs + 1, 2), add)


def _domains(domains: list[dict], vcpus: int) -> list[dict]:
    """The header's domains with every copy's vCPU threads (vCPU numbers after the recording's)."""
    out = []
    for d in domains:
        vt = {int(v): int(t) for v, t in (d.get("vcpu_threads") or {}).items()}
        n = max(vt, default=-1) + 1
        threads = {str(v + c * n): t + c * TID_STEP for c in range(vcpus) for v, t in sorted(vt.items())}
        out.append({**d, "vcpu_threads": threads})
    return out


def synthesize(src: Path, target_events: float, dst: Path, vcpus: int = 1, union_every: int = 0) -> int:
    """Write ``dst``: ``src``'s batches again and again, each round shifted to follow the
    last and run on ``vcpus`` vCPUs side by side (``union_every``: add union-word exits, see
    the module doc), until it holds at least ``target_events``; returns its events."""
    from kvmtrace.tracefile import COLUMNS, TraceBatches, TraceWriter

    tb = TraceBatches(src)
    header = {k: v for k, v in tb.header.items() if k != "format_version"}
    batches = []
    for i, b in enumerate(x for x in tb if x.num_rows):
        ev = np.zeros(b.num_rows, dtype=EVENT_DTYPE)
        for c in COLUMNS:
            ev[c] = b.column(c).to_numpy()
        batches.append(with_union_exits(ev, union_every, i) if union_every else ev)
    trailer = dict(tb.trailer or tb.progress)
    first = min(int(b["ts_ns"].min()) for b in batches)
    last = max(int(b["ts_ns"].max()) for b in batches)
    span = last - first + 1000
    per_round = sum(len(b) for b in batches) * vcpus
    rounds = max(1, -(-int(target_events) // per_round))
    if vcpus > 1:
        header["domains"] = _domains(header.get("domains", []), vcpus)
    w = TraceWriter(dst, header)
    for k in range(rounds):
        for b in batches:
            for v in range(vcpus):
                ev = b.copy()
                ev["ts_ns"] += np.uint64(k * span)
                ev["tid"] += np.uint32(v * TID_STEP)
                w.write(ev, {"lost_events": 0})
    start = trailer.get("start_time_ns", first)
    trailer.pop("events_written", None)
    w.close({**trailer, "start_time_ns": start, "end_time_ns": start + rounds * span, "lost_events": 0})
    return w.events_written


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.synth SRC EVENTS DST [--vcpus N] [--union-every N]``: prints the events written.
    (scale.py runs it as a child, so that its own resident set stays small: a report
    started from a big parent would inherit the parent's peak in wait4's ru_maxrss.)"""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("events", type=float)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--union-every", type=int, default=0)
    a = ap.parse_args(argv)
    print(synthesize(a.src, a.events, a.dst, a.vcpus, a.union_every))


if __name__ == "__main__":
    main()
