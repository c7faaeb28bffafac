"""A loaded trace: header facts, events as a DataFrame, exit names, duration."""

from __future__ import annotations

import os
from functools import cached_property

import pandas as pd

from .analysis.summary import Summary, summarize
from .exits import ExitNames
from .tracefile import TraceData, read_trace


class Trace:
    """A kvmtrace trace file, read once. ``load(path)`` makes one."""

    def __init__(self, data: TraceData):
        self.data = data

    @property
    def header(self) -> dict:
        return self.data.header

    @property
    def path(self):
        return self.data.path

    @property
    def complete(self) -> bool:
        return self.data.complete

    @property
    def lost_events(self) -> int:
        return self.data.lost_events

    @property
    def values_captured(self) -> bool:
        return bool(self.header.get("values_captured", False))

    @property
    def domains(self) -> list[dict]:
        return self.header.get("domains", [])

    @cached_property
    def events(self) -> pd.DataFrame:
        """Every event, one row each, in file order (see kvmtrace.events)."""
        df = self.data.table.to_pandas()
        df.index.name = "event"
        return df

    @cached_property
    def names(self) -> ExitNames:
        """Exit names, from the trace's own tracepoint formats where recorded."""
        formats = self.header.get("tracepoint_formats", {})
        return ExitNames.from_formats(formats.get("kvm_exit"), formats.get("kvm_userspace_exit"))

    @cached_property
    def duration_s(self) -> float:
        """Recording time: start to stop, or to the last progress mark of a cut-short file."""
        src = self.data.trailer or self.data.progress
        start, end = src.get("start_time_ns"), src.get("end_time_ns", src.get("t_ns"))
        if start is not None and end is not None and end > start:
            return (end - start) / 1e9
        ts = self.data.table.column("ts_ns")
        if len(ts) > 1:
            return (pd.Series(ts).max() - pd.Series(ts).min()) / 1e9
        return 0.0

    def df_lifecycle(self) -> pd.DataFrame:
        """The VMM's creation and end of the guest (see analysis.lifecycle.lifecycle)."""
        from .analysis.lifecycle import lifecycle

        return lifecycle(self.events, self.header, self.data.trailer)

    def df_memslots(self) -> pd.DataFrame:
        """The guest's KVM memory slots (see analysis.lifecycle.memory_slots)."""
        from .analysis.lifecycle import memory_slots

        return memory_slots(self.events)

    @property
    def launched(self) -> bool:
        """Recorded from before KVM_CREATE_VM (kvmtrace launch / record --start)."""
        return "launch" in self.header

    @cached_property
    def summary(self) -> Summary:
        return summarize(self.events, self.names, self.duration_s)


def load(path: str | os.PathLike) -> Trace:
    """Read a trace file written by ``kvmtrace record``."""
    return Trace(read_trace(path))
