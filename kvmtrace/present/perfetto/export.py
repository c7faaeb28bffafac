"""export_perfetto: a trace's sources, cut to a time window, placed on tracks, counted and written."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kvmtrace.analysis.requirements import require_events
from kvmtrace.present.perfetto.counters import _counters
from kvmtrace.present.perfetto.sources import (
    _hardware_exits,
    _in_kernel,
    _kvm_exit_label,
    _launch,
    _Names,
    _Source,
    _userspace_exits,
)
from kvmtrace.present.perfetto.states import _vcpu_states
from kvmtrace.present.perfetto.tracks import _process_name, _Tracks, _vcpus
from kvmtrace.present.perfetto.proto import _write_proto
from kvmtrace.present.perfetto.writer import _write

__all__ = ["FORMATS", "ExportResult", "export_perfetto"]

#: Output formats :func:`export_perfetto` writes: Chrome trace-event JSON, Perfetto's protobuf.
FORMATS = ("json", "proto")


@dataclass
class ExportResult:
    """What :func:`export_perfetto` wrote.

    ``events`` counts the trace events per kind of slice ("hardware_exits",
    "userspace_exits", "in_kernel_accesses", "vcpu_states", "ioctls",
    "lifecycle", "counters"); ``metadata`` the process/thread naming events.
    ``window_s`` is the exported time range in seconds since the recording
    started; ``truncated`` says ``max_events`` cut it short (it then ends at
    the first event left out).
    """

    path: Path
    format: str
    bytes: int
    seconds: float
    events: dict[str, int]
    metadata: int
    tracks: int
    overlap_moved: int
    truncated: bool
    window_s: tuple[float, float]

    @property
    def total_events(self) -> int:
        return sum(self.events.values())


def _load(trace):
    from kvmtrace.trace import Trace, load

    return trace if isinstance(trace, Trace) else load(trace)


def _select(sources: list[_Source], lo: int, hi: int | None, max_events: int | None) -> tuple[int | None, bool]:
    """Keep the rows starting in [lo, hi), then the earliest ``max_events``; the new hi, and whether cut."""
    for s in sources:
        s.keep = s.start >= lo
        if hi is not None:
            s.keep &= s.start < hi
    kept = np.concatenate([s.start[s.keep] for s in sources] or [np.zeros(0, np.int64)])
    if max_events is None or len(kept) <= max_events:
        return hi, False
    cut = int(np.partition(kept, max_events)[max_events])  # the first start left out
    for s in sources:
        s.keep &= s.start < cut
    return (cut if hi is None else min(hi, cut)), True


def export_perfetto(trace, out_path: str | os.PathLike, *, format: str = "json",
                    start_s: float | None = None, end_s: float | None = None,
                    max_events: int | None = None, counter_window_ms: float = 10.0,
                    in_kernel: bool = True) -> ExportResult:
    """Write ``trace`` (a :class:`~kvmtrace.trace.Trace` or a trace file path) as a timeline.

    ``format``: "json" (Chrome Trace Event Format: ui.perfetto.dev and
    chrome://tracing open it) or "proto" (Perfetto's native protobuf trace,
    see :mod:`.proto`: ui.perfetto.dev and trace_processor).  ``out_path``
    ending in ``.gz`` is gzip-compressed.  ``start_s`` / ``end_s`` keep the events that start in
    that window (seconds since the recording started); ``max_events`` then
    keeps the earliest that many slices and instants (counters and track
    names are not counted), cutting the timeline at the first one left out.
    ``counter_window_ms`` is the counters' window; ``in_kernel=False``
    leaves out the instants of accesses the kernel answered.  Needs the
    per-event records of ``record --mode events``; draws what the trace has
    (see the module docstring for the layout).

    Raises MissingTraceEventError for a counts-mode recording, OutputError
    when ``out_path`` cannot be written, ValueError for bad arguments.
    """
    t0 = time.perf_counter()
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r} "
                         "(json: Chrome trace-event JSON; proto: Perfetto's protobuf trace)")
    if max_events is not None and max_events < 0:
        raise ValueError(f"max_events must be >= 0, not {max_events}")
    if counter_window_ms <= 0:
        raise ValueError(f"counter_window_ms must be > 0, not {counter_window_ms}")
    if start_s is not None and end_s is not None and end_s < start_s:
        raise ValueError(f"end_s ({end_s}) is before start_s ({start_s})")
    trace = _load(trace)
    require_events(trace, (), "export_perfetto")  # draws what the trace has, but single events only
    q = _Names()
    domains = [d for d in trace.domains if isinstance(d, dict)]
    dom_by_pid = {int(d["pid"]): d for d in domains if d.get("pid")}
    launch_pid = int(domains[0]["pid"]) if domains and domains[0].get("pid") else None
    ev_pids = pd.unique(trace.events["pid"].to_numpy())

    def guest_pid(pid: int) -> int:
        """The process a launch step belongs to: its VMM's, else the launched guest's (-1: none given)."""
        if pid >= 0 and (pid in dom_by_pid or launch_pid is None):
            return pid
        if launch_pid is not None:
            return launch_pid
        return int(ev_pids[0]) if len(ev_pids) else 0

    # -- what to draw ------------------------------------------------------------
    hw, x = _hardware_exits(trace, q)
    uexits, runs = _userspace_exits(trace, q)
    sources = ([hw] if hw is not None else []) + [uexits]
    if in_kernel:
        sources += _in_kernel(trace, q)
    states = _vcpu_states(trace, q)
    if states is not None:
        sources.append(states)
    launch = _launch(trace, q, guest_pid)
    sources += launch

    # -- when ----------------------------------------------------------------------
    rec_start = trace.start_ns
    origin = min([rec_start] + [int(s.start.min()) for s in sources if len(s.start)])
    lo = rec_start + int(round(start_s * 1e9)) if start_s is not None else origin
    hi, truncated = _select(sources, lo, rec_start + int(round(end_s * 1e9)) if end_s is not None else None,
                            max_events)
    if hi is None:
        last = max((int((s.start[s.keep] + np.maximum(s.dur[s.keep], 0)).max())
                    for s in sources if s.keep.any()), default=lo)
        hi = max(last + 1, rec_start + int(trace.duration_s * 1e9))
    lo = max(lo, origin)

    # -- where ---------------------------------------------------------------------
    tracks = _Tracks(_vcpus((runs, x), domains))
    for s in launch:
        s.tid = np.array([tracks.ioctl(int(p)) for p in s.pid.tolist()], dtype=np.int64)
    tids, overlap_moved = tracks.untangle(sources)
    counts: dict[str, int] = {}
    used: set[tuple[int, int]] = set()
    for s, tid in zip(sources, tids):
        counts[s.key] = counts.get(s.key, 0) + int(s.keep.sum())
        used.update(zip(s.pid[s.keep].tolist(), tid[s.keep].tolist()))
    pids = sorted({p for p, _ in used} | {int(p) for p in runs["pid"].unique()}
                  | ({int(p) for p in x["pid"].unique()} if x is not None else set()))
    meta: list[str] = []
    for i, pid in enumerate(pids):
        pname = q(_process_name(pid, dom_by_pid))
        meta.append(f'{{"ph":"M","pid":{pid},"name":"process_name","args":{{"name":{pname}}}}}')
        meta.append(f'{{"ph":"M","pid":{pid},"name":"process_sort_index","args":{{"sort_index":{i}}}}}')
    for pid, tid in sorted(used):
        name, sort = tracks.name(pid, tid)
        meta.append(f'{{"ph":"M","pid":{pid},"tid":{tid},"name":"thread_name","args":{{"name":{q(name)}}}}}')
        meta.append(f'{{"ph":"M","pid":{pid},"tid":{tid},"name":"thread_sort_index",'
                    f'"args":{{"sort_index":{sort}}}}}')

    # -- how many ------------------------------------------------------------------
    window_ns = max(int(round(counter_window_ms * 1e6)), 1)
    per = f"per {counter_window_ms:g} ms"
    names = trace.names
    counters = _counters([
        (runs, f"userspace exits {per}",
         lambda f: np.asarray([_kvm_exit_label(names, c) for c in f["code"].tolist()], dtype=object)),
        (x, f"hardware exits {per}", lambda f: np.full(len(f), "kvm_exit", dtype=object)),
    ], origin, lo, hi, window_ns, q)
    counts["counters"] = len(counters)

    out_path = Path(out_path)
    window_s = ((lo - rec_start) / 1e9, (hi - rec_start) / 1e9)
    other = {
        "source": "kvmtrace", "kvmtrace_version": trace.header.get("kvmtrace_version"),
        "trace": str(trace.path), "label": trace.label,
        "recording_start_ns": int(rec_start), "origin_ns": int(origin),
        "timestamps": "microseconds since origin_ns (the recording start, or an earlier event)",
        "window_start_s": round(window_s[0], 9), "window_end_s": round(window_s[1], 9),
        "truncated_by_max_events": truncated, "events": counts, "overlap_moved": overlap_moved,
        "lost_events": int(trace.lost_events), "complete": bool(trace.complete),
        "kernel_release": (trace.header.get("host") or {}).get("kernel_release"),
    }
    if format == "proto":
        _write_proto(out_path, meta, sources, tids, origin, counters, other, tracks)
    else:
        _write(out_path, meta, sources, tids, origin, counters, other)
    return ExportResult(
        path=out_path, format=format, bytes=out_path.stat().st_size, seconds=time.perf_counter() - t0,
        events=counts, metadata=len(meta), tracks=len(used), overlap_moved=overlap_moved,
        truncated=truncated, window_s=window_s,
    )
