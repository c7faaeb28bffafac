"""Loading a trace file: :func:`load` for notebooks, :func:`load_for_report` for the
report and compare (batch by batch, as :class:`ReportTrace`), and :func:`trend`.

Split from :mod:`kvmtrace.trace.core` (the :class:`Trace` object) so that neither
module passes 600 lines.
"""

from __future__ import annotations

import os
from functools import cached_property

import numpy as np
import pandas as pd

from kvmtrace.analysis.summary import Summary
from kvmtrace.trace.core import EXIT_COLUMNS, REPORT_COLUMNS, Trace
from kvmtrace.tracefile import TraceData, read_trace


def trend(traces, baseline: int | str | list[str] = 3, order_by: str = "label") -> pd.DataFrame:
    """Rates of every key across ``traces`` (Trace objects), with the baseline runs' band and the
    runs above it flagged, as ``kvmtrace trend`` does (the columns of
    :func:`kvmtrace.analysis.trend.trend_frame`). ``baseline``: the first N runs, or labels."""
    from kvmtrace.analysis.trend import trend_frame

    times = [(t.data.trailer or t.data.progress).get("start_wall", "") for t in traces]
    return trend_frame([t.run_rates() for t in traces], order_by=order_by, times=times, baseline=baseline)


def load(path: str | os.PathLike, columns: tuple[str, ...] | None = None) -> Trace:
    """Read a trace file written by ``kvmtrace record`` or ``import``.

    ``columns`` reads only some event columns (much faster on big traces);
    analyses that need the others then fail with a KeyError.
    """
    return Trace(read_trace(path, columns, arrays=True))


#: What a report uses per event of a chunk (analysis.batchwise.CHUNK_EVENTS
#: at a time): the columns it reads (43 bytes) and its analyses' temporaries.
REPORT_BYTES_PER_EVENT = 72


def reuse_memory(events: int = 0) -> None:
    """tracefile.reuse_memory for a report of ``events`` events: the heap of
    its largest chunk (analysis.batchwise.CHUNK_EVENTS) faulted in at once."""
    from kvmtrace.analysis.batchwise import CHUNK_EVENTS
    from kvmtrace.tracefile import reuse_memory as reuse

    reuse(min(events, CHUNK_EVENTS) * REPORT_BYTES_PER_EVENT)


def _has_union_words(cols: dict) -> bool:
    """An events recording with userspace exits whose kvm_run union words (rip, info1, ...) it keeps."""
    from kvmtrace.kernel.events import EventFlag, EventKind

    kind, flags = cols["kind"], cols["flags"]
    return bool(((kind == EventKind.USERSPACE_EXIT) & ((flags & int(EventFlag.RUN_UNION)) != 0)).any())


def _load_columns(path, columns) -> Trace:
    """load(path, columns), and for an events trace with kvm_exit or kvm_entry
    events EXIT_COLUMNS too (read after the others, only then)."""
    from kvmtrace.kernel.events import EventKind
    from kvmtrace.tracefile import COLUMNS

    t = load(path, columns)
    if _has_union_words(t.data.arrays):  # the kvm_run union words are in rip, info1, ...
        return load(path)
    kind = t.data.arrays["kind"]
    if (kind == EventKind.EXIT).any() or (kind == EventKind.ENTRY).any():
        # A trace file only grows: its first rows, read again, are the same events.
        more = read_trace(path, EXIT_COLUMNS, arrays=True).arrays
        have = t.data.arrays
        t.data.arrays = {c: have[c] if c in have else more[c][:len(kind)] for c in COLUMNS
                         if c in have or c in more}
    return t


def load_for_report(path: str | os.PathLike, chunk_events: int | None = None,
                    rates: bool = False, window_s: float | None = None) -> Trace:
    """The trace as `kvmtrace report` reads it: for a recording of single
    events, reduced batch by batch to the report's tables (a
    :class:`ReportTrace`: memory independent of the trace's length), and
    with ``rates`` to its rate tables (``run_rates(window_s)``, for compare);
    a launch or a counts-mode recording (few events) read whole, with the
    columns the report needs (all of them for a launch timeline)."""
    from kvmtrace.analysis.batchwise import CHUNK_EVENTS, ReportTables
    from kvmtrace.kernel.events import AGGREGATE, RUN_UNION_COLUMNS, EventKind
    from kvmtrace.tracefile import TraceBatches, batch_arrays, scan_batches

    scan, floors, kinds = scan_batches(path)
    header = scan.header
    if header.get("launch") is not None:
        return load(path)
    if header.get("mode") == "counts" or kinds[AGGREGATE:].any():
        return load(path, REPORT_COLUMNS)
    exits = bool(kinds[EventKind.EXIT] or kinds[EventKind.ENTRY])
    if not floors:
        return _load_columns(path, tuple(c for c in REPORT_COLUMNS if c != "value" and c not in EXIT_COLUMNS))
    # later[i]: the earliest time of the batches after the i-th (that hold events)
    later = np.minimum.accumulate(np.array(floors[1:] + [2**63 - 1], dtype=np.int64)[::-1])[::-1].tolist()
    columns = [c for c in REPORT_COLUMNS if c != "value" and (exits or rates or c not in EXIT_COLUMNS)]
    if kinds[EventKind.USERSPACE_EXIT]:  # the kvm_run union words of their details, counted batch by batch
        columns += [c for c in RUN_UNION_COLUMNS if c not in columns]
    reader = TraceBatches(path, tuple(columns))
    t = Trace(scan.data())
    from kvmtrace.analysis.handlers import LabelledIo

    tables = ReportTables(t.names, t.device_map, chunk_events or CHUNK_EVENTS, LabelledIo(t.device_timeline))
    src = t.data.trailer or t.data.progress  # as Trace.start_ns / end_ns, whose fallbacks are the events' times
    start = int(src.get("start_time_ns", min(floors)))
    end = src.get("end_time_ns", src.get("t_ns"))
    if rates:
        tables.gather_rates(t.vcpu_by_tid, start, window_s, bool(kinds[EventKind.EXIT]))
    vcpu = _vcpu_stream(header, kinds, start, None if end is None else int(end), exits, window_s if rates else None)
    i = 0
    for batch in reader:
        if batch.num_rows:
            i += 1
            cols, future = batch_arrays(batch), later[i - 1] if i < len(floors) else None
            tables.add(cols, future)
            if vcpu is not None:
                vcpu.add(cols, future)
    return ReportTrace(reader.data(), tables.finish(), vcpu_stream=vcpu.finish() if vcpu is not None else None)


def _vcpu_stream(header: dict, kinds: np.ndarray, start: int, end: int | None, exits: bool,
                 window_s: float | None):
    """Where the recording says where its vCPUs' time went: the batch-by-batch
    analysis of it (analysis.vcpu_stream) from ``start`` to ``end`` (None: its
    last event), with compare's windows if asked."""
    from kvmtrace.analysis.vcpu_stream import VcpuTimeStream
    from kvmtrace.analysis.vcpu_time import has_vcpu_time, window_edges

    if not has_vcpu_time(header, pd.DataFrame({"kind": np.flatnonzero(kinds).astype(np.uint8)})):
        return None
    edges = window_edges(start, end, window_s) if window_s and end is not None else None
    return VcpuTimeStream(header, start, end, exits, edges)


class ReportTrace(Trace):
    """A trace reduced batch by batch to what `kvmtrace report` shows
    (analysis.batchwise.ReportTables), whole and per domain, without its
    events in memory; what else needs them reads them on first use."""

    def __init__(self, data: TraceData, tables, pid: int | None = None, vcpu_stream=None):
        super().__init__(data)
        self.tables = tables
        self._pid = pid
        self.vcpu_stream = vcpu_stream  # analysis.vcpu_stream.VcpuTimeStream, finished, or None

    def df_vcpu_time(self) -> pd.DataFrame:
        if self.vcpu_stream is None:
            return super().df_vcpu_time()
        return self.vcpu_stream.frame(self.vcpu_by_tid, self._pid)

    def df_vcpu_time_intervals(self, freq: str | float = "1s") -> pd.DataFrame:
        from kvmtrace.analysis.vcpu_time import window_edges

        window_s = pd.Timedelta(freq).total_seconds() if isinstance(freq, str) else float(freq)
        s = self.vcpu_stream
        if s is None or s.edges is None or not np.array_equal(
                s.edges, window_edges(self.start_ns, self.end_ns, window_s)):
            return super().df_vcpu_time_intervals(freq)
        return s.intervals(self.vcpu_by_tid, window_s, self._pid)

    @cached_property
    def events(self) -> pd.DataFrame:
        ev = load(self.path).events
        return ev if self._pid is None else ev[ev["pid"] == self._pid]

    @property
    def event_count(self) -> int:
        return self.tables.events(self._pid)

    def _ts_range(self) -> tuple[int, int]:
        return self.tables.ts_range(self._pid) or (0, 0)

    @cached_property
    def summary(self) -> Summary:
        return self.tables.summary(self.duration_s, self._pid)

    @cached_property
    def io_tables(self) -> dict[str, pd.DataFrame]:
        return self.tables.io_labels.tables(self._pid)

    def df_latency(self, which: str = "vmm_service", by: tuple[str, ...] = ("reason",)) -> pd.DataFrame:
        if which == "vmm_service" and tuple(by) in (("reason",), ("reason", "device", "direction")):
            return self.tables.vmm_service(tuple(by), self._pid)
        if which == "exit_handling" and tuple(by) == ("isa", "reason"):
            return self.tables.exit_handling(self._pid)
        return super().df_latency(which, by)

    def unpaired(self) -> dict[str, int]:
        return self.tables.unpaired(self._pid)

    @cached_property
    def exit_details(self) -> dict[int, list[dict]]:
        return self.tables.exit_details(self._pid)

    def vcpu_counts(self) -> list[dict]:
        return self.tables.vcpu_counts(self.domains, self._pid)

    def run_rates(self, window_s: float | None = None, mmio: str | None = None):
        if not self.tables.has_rates(window_s) or (mmio == "page" and self.mmio_granularity != "page"):
            return super().run_rates(window_s, mmio)  # MMIO by page: from the events, read whole
        from kvmtrace.analysis.compare import RunRates
        from kvmtrace.analysis.vcpu_time import with_rate_rows

        s = self.summary
        exits = int(s.userspace_exits["count"].sum() + (s.exits["count"].sum() if len(s.exits) else 0))
        counts, windows = with_rate_rows(self, *self.tables.rates(self._pid), window_s)
        return RunRates(label=self.label, counts=counts, duration_s=self.duration_s, exits=exits,
                        windows=windows, window_s=window_s, mmio_granularity=self.mmio_granularity,
                        dimensions=self._dimensions())

    def for_domain(self, name: str) -> "ReportTrace":
        d = self._domain(name)
        sub = ReportTrace(self.data, self.tables, int(d["pid"]), self.vcpu_stream)
        sub._domains = [d]
        return sub
