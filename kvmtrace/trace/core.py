"""A loaded trace: header facts, events as a DataFrame, exit names, duration."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from kvmtrace.analysis.summary import Summary, summarize
from kvmtrace.tables.exits import ExitNames
from kvmtrace.tracefile import TraceData


def _name_codes(codes: np.ndarray, name) -> pd.Categorical:
    """A categorical of name(code) per row, naming each distinct code once.

    Codes are KVM_EXIT_* numbers: small integers, so a table indexed by code
    replaces a sort of millions of rows.
    """
    codes = codes.astype(np.int64)
    if len(codes) == 0:
        return pd.Categorical([], categories=[])
    if codes.min() >= 0 and codes.max() < 1 << 16:
        present = np.flatnonzero(np.bincount(codes))
        labels = [name(int(c)) for c in present]
        cats = list(dict.fromkeys(labels))
        table = np.zeros(int(codes.max()) + 1, dtype=np.int32)
        table[present] = [cats.index(x) for x in labels]
        return pd.Categorical.from_codes(table[codes], categories=cats)
    uniq, inverse = np.unique(codes, return_inverse=True)
    labels = [name(int(c)) for c in uniq]
    cats = list(dict.fromkeys(labels))
    return pd.Categorical.from_codes(np.array([cats.index(x) for x in labels])[inverse], categories=cats)


class Trace:
    """A kvmtrace trace file, read once. ``load(path)`` makes one."""

    def __init__(self, data: TraceData, events: pd.DataFrame | None = None):
        self.data = data
        self._events = events
        self._domains: list[dict] | None = None

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
        return self._domains if self._domains is not None else self.header.get("domains", [])

    @cached_property
    def events(self) -> pd.DataFrame:
        """Every event, one row each, in file order (see kvmtrace.kernel.events)."""
        if self._events is not None:
            return self._events
        # The file was read straight into numpy arrays (read_trace(arrays=True)):
        # the frame holds them as they are, without a copy.
        cols, self.data.arrays = self.data.arrays, None
        df = pd.DataFrame(cols, copy=False)
        df.index.name = "event"
        return df

    @property
    def event_count(self) -> int:
        """How many events the trace (or this domain's part of it) holds."""
        return len(self.events)

    def _domain(self, name: str) -> dict:
        from kvmtrace.errors import UsageError

        for d in self.domains:
            if name in (d.get("name"), d.get("uuid"), str(d.get("pid"))):
                return d
        known = ", ".join(str(d.get("name")) for d in self.domains) or "none"
        raise UsageError(f"{self.path} holds no domain {name!r} (it holds: {known})", "name one of those")

    def for_domain(self, name: str) -> "Trace":
        """This trace restricted to one recorded domain (by name, UUID or pid)."""
        d = self._domain(name)
        sub = Trace(self.data, events=self.events[self.events["pid"] == d["pid"]])
        sub._domains = [d]
        return sub

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
        lo, hi = self._ts_range()
        return (hi - lo) / 1e9 if self.event_count > 1 else 0.0

    def _ts_range(self) -> tuple[int, int]:
        """The first and last event times (0, 0 without events)."""
        ts = self.events["ts_ns"]
        return (int(ts.min()), int(ts.max())) if len(ts) else (0, 0)

    def df_events(self) -> pd.DataFrame:
        """Every event, typed: kind as a category of names (EXIT, PIO, ...), ts_ns int64.

        Columns: ts_ns (int64 ns, CLOCK_MONOTONIC), kind (category), pid, tid,
        cpu, vcpu (uint32; kernel.events.NO_VCPU = unknown), reason, isa (uint32), err
        (int32), port, size, count (uint32), op, flags (uint8), gpa, rip,
        info1, info2, value (uint64). Meaning per kind: kvmtrace.kernel.events.
        Index "event".
        """
        from kvmtrace.kernel.events import AGGREGATE, EventKind

        ev = self.events.copy()
        kinds = {int(k): k.name for k in EventKind}
        kinds.update({int(k) | AGGREGATE: f"{k.name}_COUNT" for k in EventKind})
        ev["kind"] = pd.Categorical.from_codes(
            pd.Index(sorted(kinds)).get_indexer(ev["kind"].to_numpy()), categories=[kinds[k] for k in sorted(kinds)])
        ev["ts_ns"] = ev["ts_ns"].astype("int64")
        return ev

    def _vcpu(self, ev: pd.DataFrame) -> np.ndarray:
        from kvmtrace.analysis.rates import vcpu_of
        from kvmtrace.kernel.events import NO_VCPU

        v = vcpu_of(ev, self.vcpu_by_tid)
        return np.where(v < 0, NO_VCPU, v).astype(np.uint32)

    def df_pio(self) -> pd.DataFrame:
        """Every port access (kvm_pio), with its device and whether it went to the VMM.

        Columns: ts_ns (int64), pid, tid, vcpu (uint32), port (uint32),
        direction (category read/write), size (uint8, bytes), count (uint32,
        rep count), device (category: the device QEMU's map named at the
        port when it was accessed), userspace (bool: returned to the VMM as
        KVM_EXIT_IO, paired by its kvm_run fields), handled_by (category
        kernel/ioeventfd/coalesced/vmm: see analysis.handlers), value (uint64;
        0 unless recorded with --values). Index "access".
        """
        from kvmtrace.kernel.events import EventKind, PioOp

        self._need_events("df_pio")
        ev = self.events
        sel = (ev["kind"] == EventKind.PIO).to_numpy()
        p = ev[sel]
        df = pd.DataFrame({
            "ts_ns": p["ts_ns"].to_numpy(np.int64), "pid": p["pid"].to_numpy(np.uint32),
            "tid": p["tid"].to_numpy(np.uint32), "vcpu": self._vcpu(p), "port": p["port"].to_numpy(np.uint32),
            "direction": pd.Categorical(np.where(p["op"] == PioOp.WRITE, "write", "read"), categories=["read", "write"]),
            "size": p["size"].to_numpy(np.uint8), "count": p["count"].to_numpy(np.uint32),
            **self._access_labels(sel, "io"),
            "userspace": self._pairing.to_vmm[sel], "value": p["value"].to_numpy(np.uint64),
        })
        df.insert(len(df.columns) - 1, "handled_by", df.pop("handled_by"))
        df.index.name = "access"
        return df

    def df_mmio(self) -> pd.DataFrame:
        """Every MMIO access (kvm_mmio; a VMM-answered read once), with device and handler.

        Columns: ts_ns (int64), pid, tid, vcpu (uint32), gpa (uint64),
        direction (category read/write), len (uint8, bytes), device (category,
        as QEMU's map named the address when it was accessed), userspace
        (bool: returned to the VMM as KVM_EXIT_MMIO), handled_by (category
        kernel/ioeventfd/coalesced/vmm: see analysis.handlers), value (uint64;
        for a VMM-answered read, the answer; 0 unless recorded with --values).
        Index "access".
        """
        from kvmtrace.kernel.events import EventKind, MmioOp

        self._need_events("df_mmio")
        ev = self.events
        comp = self._completions
        sel = (ev["kind"] == EventKind.MMIO).to_numpy() & ~comp
        m = ev[sel]
        value = m["value"].to_numpy(np.uint64).copy()
        if self.values_captured and comp.any():
            # the answer arrives with the completing "read": carry it back to its access
            order = ev[(ev["kind"] == EventKind.MMIO)].sort_values(["tid", "ts_ns"], kind="stable")
            nxt = order["value"].shift(-1)
            is_comp = pd.Series(comp, index=ev.index).reindex(order.index).shift(-1).fillna(False).astype(bool)
            answers = nxt[is_comp]
            value_s = pd.Series(value, index=m.index)
            common = answers.index.intersection(value_s.index)
            value_s.loc[common] = answers.loc[common].astype(np.uint64)
            value = value_s.to_numpy(np.uint64)
        df = pd.DataFrame({
            "ts_ns": m["ts_ns"].to_numpy(np.int64), "pid": m["pid"].to_numpy(np.uint32),
            "tid": m["tid"].to_numpy(np.uint32), "vcpu": self._vcpu(m), "gpa": m["gpa"].to_numpy(np.uint64),
            "direction": pd.Categorical(np.where(m["op"] == MmioOp.WRITE, "write", "read"),
                                        categories=["read", "write"]),
            "len": m["size"].to_numpy(np.uint8), **self._access_labels(sel, "memory"),
            "userspace": self._pairing.to_vmm[sel], "value": value,
        })
        df.insert(len(df.columns) - 1, "handled_by", df.pop("handled_by"))
        df.index.name = "access"
        return df

    def df_lifecycle(self) -> pd.DataFrame:
        """The VMM's creation and end of the guest (see analysis.lifecycle.lifecycle)."""
        from kvmtrace.analysis.lifecycle import lifecycle

        return lifecycle(self.events, self.header, self.data.trailer)

    def df_memslots(self) -> pd.DataFrame:
        """The guest's KVM memory slots (see analysis.lifecycle.memory_slots)."""
        from kvmtrace.analysis.lifecycle import memory_slots

        return memory_slots(self.events)

    @property
    def mmio_granularity(self) -> str:
        """"address" (MMIO counted per exact address: events mode, and counts mode since it
        keeps addresses) or "page" (a counts recording from before: per 4 KiB page)."""
        if self.header.get("mode") != "counts":
            return "address"
        return str(self.header.get("mmio_granularity", "page"))

    def mmio_note(self) -> str | None:
        """What the report says of MMIO counted per page, or None when every row is an address."""
        from kvmtrace.kernel.events import MAX_MMIO_ADDRESSES

        if self.mmio_granularity == "page":
            return "MMIO counted per 4 KiB page (a counts recording made before counts mode kept addresses)"
        m = self.summary.mmio
        if "per_page" in m.columns and m["per_page"].any():
            n = int(m.loc[m["per_page"], "count"].sum())
            pages = m.loc[m["per_page"], "gpa"].nunique()
            limit = self.header.get("max_mmio_addresses", MAX_MMIO_ADDRESSES)
            return (f"{n:,} MMIO accesses counted per 4 KiB page ({pages:,} pages): the in-kernel table of "
                    f"{limit:,} exact addresses was full")
        return None

    @property
    def launched(self) -> bool:
        """Recorded from before KVM_CREATE_VM (kvmtrace launch / record --start)."""
        return "launch" in self.header

    @cached_property
    def device_timeline(self):
        """Every version of the guests' QEMU memory maps the recording read, with its time
        (tables.devices.timeline.DeviceTimeline): names an access by the map of its time."""
        from kvmtrace.tables.devices.timeline import DeviceTimeline

        return DeviceTimeline.from_trace(self.header, self.data.memory_maps)

    @cached_property
    def device_map(self):
        """Device names for this trace's guest without a time: each address named by the first
        map version that names it (the recorded QEMU memory maps, else built in)."""
        return self.device_timeline.merged()

    @property
    def handled_by_method(self) -> str:
        """How handled_by was told: "ioctls" (recorded from the guest's creation) or "deduced"."""
        return "ioctls" if self.launched else "deduced"

    @cached_property
    def handler_zones(self) -> pd.DataFrame | None:
        """The ioeventfds and coalesced zones the recording saw registered (analysis.handlers.zones):
        those QEMU made while a launch watched it build the VM; None for a trace without ioctls."""
        from kvmtrace.analysis.handlers import zones

        return zones(self.events) if self.launched else None

    def _access_labels(self, sel: np.ndarray, space: str) -> dict:
        from kvmtrace.analysis.handlers import as_category, label_accesses

        labels = label_accesses(self.events, sel, space, self._pairing.to_vmm[sel], self.device_timeline,
                                self.handler_zones, deduce=True)
        return {"device": labels.device_per_access(), "handled_by": as_category(labels.handled_per_access())}

    @cached_property
    def io_tables(self) -> dict[str, pd.DataFrame]:
        """The report's port I/O and MMIO rows, split by device and handler
        (analysis.handlers.io_tables): {"pio": ..., "mmio": ...}."""
        from kvmtrace.analysis.handlers import io_tables

        counts = self.header.get("mode") == "counts"
        return io_tables(self.events, self.device_timeline, self.handler_zones,
                         summary=self.summary if counts else None,
                         pairing=None if counts else self._pairing, completions=None if counts else self._completions)

    @cached_property
    def vcpu_by_tid(self) -> dict[int, int]:
        """vCPU thread id -> vCPU index, from the recorded domains."""
        return {int(tid): int(v) for d in self.domains for v, tid in d.get("vcpu_threads", {}).items()}

    @property
    def label(self) -> str:
        """The run's label: given at record time (--label), else the file name."""
        return str(self.header.get("label") or Path(self.path).stem)

    @property
    def start_ns(self) -> int:
        src = self.data.trailer or self.data.progress
        return int(src["start_time_ns"]) if "start_time_ns" in src else self._ts_range()[0]

    @property
    def end_ns(self) -> int:
        """The recording's stop (or its last progress mark, or its last event), CLOCK_MONOTONIC ns."""
        src = self.data.trailer or self.data.progress
        end = src.get("end_time_ns", src.get("t_ns"))
        if end is not None:
            return int(end)
        ts = self.events["ts_ns"]
        return int(ts.max()) if len(ts) else self.start_ns

    def df_vcpu_time(self) -> pd.DataFrame:
        """Where each vCPU thread's time went: seconds guest, halted, vmm, vmm_waiting, preempted.

        See analysis.vcpu_time.vcpu_time for the columns (vcpu, pid, tid,
        total_s and one ``<state>_s`` per state, float64 seconds; on VMX/SVM
        hosts, where kvm_exit/kvm_entry fired, also in_guest_s and
        exit_handling_s, the two parts of guest_s, NaN on threads without
        them). Both modes; needs a recording with the sched probes.
        """
        from kvmtrace.analysis.vcpu_time import trace_inputs, vcpu_time

        return vcpu_time(*trace_inputs(self, "df_vcpu_time"), counts_mode=self.header.get("mode") == "counts")

    def df_vcpu_time_intervals(self, freq: str | float = "1s") -> pd.DataFrame:
        """df_vcpu_time per window of ``freq`` ("1s", "250ms" or seconds), with t_s
        (window start, seconds since the recording started) and the same
        columns, in_guest_s and exit_handling_s included where they exist; see
        analysis.vcpu_time.vcpu_time_intervals."""
        from kvmtrace.analysis.vcpu_time import trace_inputs, vcpu_time_intervals

        window_s = pd.Timedelta(freq).total_seconds() if isinstance(freq, str) else float(freq)
        return vcpu_time_intervals(*trace_inputs(self, "df_vcpu_time_intervals"), window_s,
                                   counts_mode=self.header.get("mode") == "counts")

    def vcpu_timeline(self):
        """Events mode: every vCPU thread's state segments (analysis.vcpu_time.Timeline),
        with the in-guest flag per segment where kvm_exit/kvm_entry fired."""
        from kvmtrace.analysis.vcpu_time import segments, trace_inputs

        self._need_events("vcpu_timeline")
        return segments(*trace_inputs(self, "vcpu_timeline")[:4])

    @cached_property
    def keyed(self) -> pd.DataFrame:
        """Every exit keyed by dimension (see analysis.rates.keyed)."""
        from kvmtrace.analysis.rates import keyed

        return keyed(self.events, self.names, self.device_map, self.vcpu_by_tid)

    def run_rates(self, window_s: float | None = None, mmio: str | None = None):
        """This run as compare/trend consume it (analysis.compare.RunRates).

        ``mmio="page"`` keys MMIO by 4 KiB page, as a counts recording that
        kept no addresses does (``mmio_granularity``), so the two compare.
        """
        from kvmtrace.analysis.compare import RunRates
        from kvmtrace.analysis.rates import counts, keyed, windows
        from kvmtrace.analysis.vcpu_time import with_rate_rows

        s = self.summary
        exits = int(s.userspace_exits["count"].sum() + (s.exits["count"].sum() if len(s.exits) else 0))
        k = self.keyed
        granularity = self.mmio_granularity
        if mmio == "page" and granularity != "page":
            k = keyed(self.events, self.names, self.device_map, self.vcpu_by_tid, mmio_page=True)
            granularity = "page"
        table, wins = with_rate_rows(self, counts(k), windows(k, self.start_ns, window_s) if window_s else None,
                                     window_s)
        return RunRates(label=self.label, counts=table, duration_s=self.duration_s, exits=exits,
                        windows=wins, window_s=window_s, mmio_granularity=granularity,
                        dimensions=self._dimensions())

    def _dimensions(self) -> tuple[str, ...] | None:
        """The rate dimensions this trace could count: hardware exits only where kvm_exit was probed
        (None: every one, as compare then decides for vcpu_time itself)."""
        from kvmtrace.analysis.rates import DIMENSIONS

        probes = self.header.get("probes")
        if probes is None or "kvm_exit" in probes or "import" in self.header:
            return None
        return tuple(d for d in DIMENSIONS if d != "exit")

    def compare(self, new: "Trace", threshold_pct: float = 10.0, alpha: float = 0.01, method: str = "poisson",
                window_s: float = 0.25) -> pd.DataFrame:
        """This run (the base) against ``new``, as ``kvmtrace compare`` does: one row per
        (dimension, key) with both rates, the change and its significance (the columns of
        :func:`kvmtrace.analysis.compare.compare`). ``attrs["regression"]``: whether any
        row is a significant increase above ``threshold_pct``. ``window_s``: the windows of
        ``method="bootstrap"``."""
        from kvmtrace.analysis.compare import compare, has_regression

        w = window_s if method == "bootstrap" else None
        df = compare(self.run_rates(w), new.run_rates(w), threshold_pct=threshold_pct, alpha=alpha, method=method)
        df.attrs["regression"] = has_regression(df)
        return df

    def df_rates(self, freq: str | float = "1s", by: str = "device") -> pd.DataFrame:
        """Exits per second over time, one column per key of ``by``.

        ``by``: "userspace_exit", "exit", "port", "mmio", "device" or "vcpu";
        ``freq``: window length ("1s", "250ms", or seconds). Index "t_s"
        (float64, window start in seconds since the recording started);
        values float64 events/s; a key absent in a window is 0.
        """
        from kvmtrace.analysis.rates import DIMENSIONS, windows

        if by not in DIMENSIONS:
            raise ValueError(f"by must be one of {', '.join(DIMENSIONS)}, not {by!r}")
        window_s = pd.Timedelta(freq).total_seconds() if isinstance(freq, str) else float(freq)
        k = self.keyed[self.keyed["dimension"] == by]
        w = windows(k, self.start_ns, window_s)
        table = w.pivot_table(index="window", columns="key", values="count", aggfunc="sum", fill_value=0,
                              observed=True)
        n = int(max(self.duration_s // window_s, (table.index.max() + 1) if len(table) else 0))
        table = table.reindex(range(n), fill_value=0) / window_s
        table.index = pd.Index(table.index.to_numpy() * window_s, name="t_s", dtype="float64")
        table.columns = pd.CategoricalIndex(table.columns.astype(str), name=by)
        return table.astype("float64")

    def _need_events(self, analysis: str) -> None:
        """Refuse a counts-mode recording (see analysis.requirements)."""
        from kvmtrace.analysis.requirements import require_events

        require_events(self, (), analysis)

    @cached_property
    def _userspace_runs(self) -> pd.DataFrame:
        from kvmtrace.analysis.runloop import userspace_runs

        return self._label_exits(userspace_runs(self.events, domains=self.domains, order=self._order))

    def _label_exits(self, runs: pd.DataFrame) -> pd.DataFrame:
        """Add device (the port's or address's device, "" for other exits) and reason names.

        device is a category of the names present, sorted (as pd.Categorical
        of the names would give); each distinct port or address is named once.
        """
        from kvmtrace.analysis.summary import dense_codes
        from kvmtrace.tables.exits import KvmExit

        code = runs["code"].to_numpy()
        labels = [""]  # label of each label number; 0 for exits that are neither IO nor MMIO
        label = np.zeros(len(runs), dtype=np.int64)
        for kvm_exit, column, name in ((KvmExit.IO, "port", self.device_map.name_ports),
                                       (KvmExit.MMIO, "gpa", self.device_map.name_gpas)):
            rows = np.flatnonzero(code == kvm_exit)
            if len(rows):
                c, addresses = dense_codes(runs[column].to_numpy()[rows])
                label[rows] = c + len(labels)
                labels.extend(np.asarray(name(addresses)).tolist())
        cats = sorted({labels[i] for i in np.flatnonzero(np.bincount(label, minlength=len(labels)))})
        at = {x: i for i, x in enumerate(cats)}
        table = np.array([at.get(x, -1) for x in labels], dtype=np.int32)  # -1: "" when no row has it
        runs["device"] = pd.Categorical.from_codes(table[label], categories=pd.Index(cats))
        runs["reason"] = _name_codes(code, self.names.kvm_exit)
        return runs

    @cached_property
    def _service_frame(self) -> pd.DataFrame:
        """Userspace exits with service time, device and reason: what the
        latency tables need, built on numpy (analysis.summary.service_times)."""
        from kvmtrace.analysis.summary import service_times

        return self._label_exits(service_times(self.events, self._order))

    def _with_vcpu(self, runs: pd.DataFrame) -> pd.DataFrame:
        """``runs`` (of the service frame) with vcpu: the header's vCPU of each exit's thread."""
        from kvmtrace.kernel.events import NO_VCPU

        return runs.assign(vcpu=self._vcpu(pd.DataFrame({"tid": runs["tid"], "vcpu": np.uint32(NO_VCPU)})))

    def df_userspace_exits(self) -> pd.DataFrame:
        """One row per real userspace exit with its kvm_run fields, device and VMM service time.

        Columns as analysis.runloop.userspace_runs (ts_ns, pid, tid, vcpu,
        code, fields_known, port, size, count, direction, gpa, len, run_ts_ns,
        service_ns in ns, -1 when unpaired) plus reason and device (category).
        Index "run". Needs kvm_userspace_exit events.
        """
        self._need_events("df_userspace_exits")
        return self._userspace_runs.copy()

    def df_exits(self) -> pd.DataFrame:
        """One row per hardware exit (kvm_exit), correlated through the run loop.

        See analysis.runloop.correlate for the columns. Raises
        MissingTraceEventError on traces without kvm_exit (nested PVM hosts),
        saying whether it was probed.
        """
        from kvmtrace.analysis.requirements import require_events
        from kvmtrace.analysis.runloop import WITHOUT_KVM_EXIT, correlate
        from kvmtrace.kernel.events import EventKind

        require_events(self, [EventKind.EXIT] if len(self.events) else (), "df_exits", instead=WITHOUT_KVM_EXIT)
        return correlate(self.events, self._order)

    def df_latency(self, which: str = "vmm_service", by: tuple[str, ...] = ("reason",)) -> pd.DataFrame:
        """Latency statistics (count, unpaired, min, mean, p50, p90, p99, max in ns).

        ``which``: "vmm_service" (userspace exit -> next KVM_RUN; ``by`` any
        of reason, device, port, direction, gpa, vcpu) or "exit_handling"
        (kvm_exit -> kvm_entry; ``by`` isa, reason, vcpu).
        """
        from kvmtrace.analysis.latency import exit_handling, latency_stats

        self._need_events("df_latency")
        if which == "vmm_service":
            lean = {"reason", "device", "direction", "port", "gpa", "code", "tid", "vcpu"}
            if not set(by) <= lean:
                return latency_stats(self._userspace_runs, "service_ns", list(by))
            frame = self._with_vcpu(self._service_frame) if "vcpu" in by else self._service_frame
            return latency_stats(frame, "service_ns", list(by))
        if which == "exit_handling":
            return exit_handling(self.events, self.names, by=by, order=self._order)
        raise ValueError(f"which must be 'vmm_service' or 'exit_handling', not {which!r}")

    def unpaired(self) -> dict[str, int]:
        """Events at the recording's edges that have no partner (see analysis.runloop.unpaired)."""
        from kvmtrace.analysis.runloop import unpaired

        self._need_events("unpaired")
        return unpaired(self.events, self._order)

    @cached_property
    def _order(self):
        """The events' thread order (analysis.summary.ThreadOrder), shared by every pairing."""
        from kvmtrace.analysis.summary import ThreadOrder

        return ThreadOrder.of(self.events)

    @cached_property
    def _completions(self) -> np.ndarray:
        from kvmtrace.analysis.summary import mmio_completions

        return mmio_completions(self.events, self._order)

    @cached_property
    def _pairing(self):
        from kvmtrace.analysis.summary import pair_userspace

        return pair_userspace(self.events, self._completions, self._order)

    @cached_property
    def exit_details(self) -> dict[int, list[dict]]:
        """Userspace exits grouped by their kvm_run member's values, per KVM_EXIT_* code
        (see analysis.runfields.exit_details)."""
        from kvmtrace.analysis.runfields import exit_details

        return exit_details(self.events)

    def vcpu_counts(self) -> list[dict]:
        """One dict per vCPU of the guest(s), idle ones included (see analysis.vcpus.vcpu_counts)."""
        from kvmtrace.analysis.vcpus import vcpu_counts

        aggregate = self.header.get("mode") == "counts"
        return vcpu_counts(self.events, self.domains, None if aggregate else self._completions)

    @cached_property
    def summary(self) -> Summary:
        if self.header.get("mode") == "counts":
            return summarize(self.events, self.names, self.duration_s)
        from kvmtrace.analysis.handlers import collapse

        io = (collapse(self.io_tables["pio"], ("port", "size")), collapse(self.io_tables["mmio"], ("gpa", "len")))
        return summarize(self.events, self.names, self.duration_s, self._pairing, self._completions, io)


#: The event columns every report table needs (the others, rip, info1/2,
#: cpu, intr_info and error_code, only name single exits).
REPORT_COLUMNS = ("ts_ns", "tid", "pid", "vcpu", "kind", "op", "flags", "reason", "err", "isa", "port", "size",
                  "count", "gpa", "value")
#: Of those, the ones only kvm_exit/kvm_entry events use (the hardware exit
#: table, exit handling times): not read for a trace without such events.
EXIT_COLUMNS = ("isa", "vcpu", "count")
