"""A trace as a timeline for the Perfetto UI (ui.perfetto.dev) and chrome://tracing.

:func:`export_perfetto` writes the Chrome Trace Event Format, JSON object
form (``{"traceEvents": [...], "otherData": {...}}``), which both viewers
open; a path ending in ``.gz`` is gzip-compressed (Perfetto opens
``.json.gz``).  Layout:

* one process per guest: pid = the VMM's pid, named
  ``domain NAME (QEMU pid N)``; one thread track per vCPU thread, named
  ``vCPU N (tid T)``, sorted by vCPU;
* hardware exits (traces with ``kvm_exit``): an ``X`` slice from kvm_exit
  to kvm_entry named by the exit reason (``IO_INSTRUCTION``), args the
  decoded fields (exit code, ISA, rip, info1/info2, intr_info, error_code,
  the access, kernel/userspace, the KVM_EXIT_* it went to userspace with,
  handling and service time); an exit with no kvm_entry is a 0-length slice;
* userspace exits (every trace): an ``X`` slice from kvm_userspace_exit to
  the thread's next KVM_RUN named ``VMM: KVM_EXIT_IO port 0x71 read (rtc)``,
  args the kvm_run member and its fields, the device and the VMM's service
  time; where a hardware exit was traced the slice lies inside it, on the
  same track, so the run loop reads exit -> VMM -> entry;
* accesses the kernel handled (kvm_pio / kvm_mmio not returned to the VMM):
  thread-scoped instant events named ``kvm-pit 0x43 write``;
* the launch (traces of ``kvmtrace launch``, see
  :func:`kvmtrace.analysis.lifecycle.lifecycle`): a ``VMM (KVM ioctls)``
  track in the guest's process with every KVM ioctl the VMM issued as a
  slice (``KVM_CREATE_VM``, ``KVM_SET_USER_MEMORY_REGION`` with its slot,
  address and size, ...), inside the ``virDomainCreateXML`` call, and the
  other steps (resume, first KVM_RUN, ...) as instants;
* counters per guest: userspace exits per window (10 ms by default), one
  series per KVM_EXIT_* reason, and hardware exits per window where traced.

Timestamps are microseconds (3 decimals: nanoseconds kept) since the
recording started.  The file is written as it is formatted, a chunk of
events at a time, and renamed into place when complete.

Slices on one track must nest (a child inside its parent, never a partial
overlap) or the viewers misdraw them.  The run loop's order guarantees it;
where lost events break it, the offending slice moves to an extra track
``... [overlap 1]`` of the same process (counted in
:attr:`ExportResult.overlap_moved`) rather than being clipped or dropped.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kvmtrace.errors import MissingTraceEventError, OutputError
from kvmtrace.kernel.events import AGGREGATE, NO_VCPU, EventFlag, EventKind
from kvmtrace.tables.exits import KvmExit, kvm_exit_info
from kvmtrace.tables.ioctls import KvmIoctl, ioctl_name

__all__ = ["FORMATS", "ExportResult", "export_perfetto"]

#: Output formats :func:`export_perfetto` writes.
FORMATS = ("json",)

#: Thread ids of tracks that are no thread (the ioctl track, overlap lanes):
#: above any Linux tid (pid_max is at most 2**22), within the uint32 the viewers read.
_SYNTHETIC_TID = 1 << 30
_CHUNK = 50_000  # events formatted per write

_MEM_REGION = (int(KvmIoctl.SET_USER_MEMORY_REGION), int(KvmIoctl.SET_USER_MEMORY_REGION2))
_NO_MEMBER = '"none"'  # kvm_run member of an exit that fills none (HLT, SHUTDOWN, ...)


@dataclass
class ExportResult:
    """What :func:`export_perfetto` wrote.

    ``events`` counts the trace events per kind of slice ("hardware_exits",
    "userspace_exits", "in_kernel_accesses", "ioctls", "lifecycle",
    "counters"); ``metadata`` the process/thread naming events.
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


@dataclass
class _Source:
    """Rows of one kind of event to draw: absolute times, track, and how to write the rest.

    ``dur`` is -1 for an instant.  ``body(rows)`` gives, for row numbers
    ``rows``, the JSON members after pid/tid: ``"name":..,"cat":..,"args":{..}``.
    """

    key: str
    start: np.ndarray  # int64 ns, CLOCK_MONOTONIC
    dur: np.ndarray  # int64 ns, -1: instant
    pid: np.ndarray  # int64
    tid: np.ndarray  # int64, before overlap lanes
    body: Callable[[np.ndarray], list[str]]
    keep: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if self.keep is None:
            self.keep = np.ones(len(self.start), dtype=bool)


class _Names:
    """JSON-encoded strings, each encoded once."""

    def __init__(self):
        self._cache: dict[str, str] = {}

    def __call__(self, s: str) -> str:
        out = self._cache.get(s)
        if out is None:
            # Raw UTF-8, no \\u escapes: older Perfetto importers reject them.
            out = self._cache[s] = json.dumps(s, ensure_ascii=False)
        return out


def _kvm_exit_label(names, code: int) -> str:
    name = names.kvm.get(int(code))
    return f"KVM_EXIT_{name}" if name else f"KVM_EXIT code {int(code)}"


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------


def _hardware_exits(trace, q: _Names) -> tuple[_Source | None, pd.DataFrame | None]:
    ev = trace.events
    kind = ev["kind"].to_numpy()
    is_exit = kind == EventKind.EXIT
    if not is_exit.any():
        return None, None
    x = trace.df_exits()
    raw = ev[is_exit]
    # correlate's rows and the kvm_exit events, both in (pid, tid, ts, file order):
    # the raw fields correlate does not carry (rip, info1, ...) come from the events.
    r_order = np.lexsort((np.arange(len(raw)), raw["ts_ns"].to_numpy(), raw["tid"].to_numpy(),
                          raw["pid"].to_numpy()))
    x_order = np.lexsort((np.arange(len(x)), x["ts_ns"].to_numpy(), x["tid"].to_numpy(), x["pid"].to_numpy()))
    if not np.array_equal(raw["ts_ns"].to_numpy(np.int64)[r_order], x["ts_ns"].to_numpy(np.int64)[x_order]):
        raise AssertionError("correlate's exits do not match the trace's kvm_exit events")  # pragma: no cover

    def from_raw(col: str) -> np.ndarray:
        out = np.empty(len(x), dtype=raw[col].dtype)
        out[x_order] = raw[col].to_numpy()[r_order]
        return out

    raw_reason, raw_isa = from_raw("reason"), from_raw("isa")
    rip, info1, info2 = from_raw("rip"), from_raw("info1"), from_raw("info2")
    intr, errc = from_raw("intr_info"), from_raw("error_code")
    ts = x["ts_ns"].to_numpy(np.int64)
    entry = x["entry_ts_ns"].to_numpy(np.int64)
    dur = np.where(entry >= 0, entry - ts, 0)
    access = x["access"].astype(str).to_numpy()
    device = np.full(len(x), "", dtype=object)
    pio, mmio = access == "pio", access == "mmio"
    if pio.any():
        device[pio] = np.asarray(trace.device_map.name_ports(x["port"].to_numpy()[pio]), dtype=object)
    if mmio.any():
        device[mmio] = np.asarray(trace.device_map.name_gpas(x["gpa"].to_numpy()[mmio]), dtype=object)
    names = trace.names
    hw_name: dict[tuple[int, int], str] = {}
    cols = {c: x[c].to_numpy() for c in ("vcpu", "port", "size", "count", "gpa", "len", "handling_ns",
                                         "service_ns", "userspace_reason", "failed_vmentry")}
    isa_s = x["isa"].astype(str).to_numpy()
    handled = x["handled"].astype(str).to_numpy()
    direction = x["direction"].astype(str).to_numpy()

    def body(rows: np.ndarray) -> list[str]:
        out = []
        for i in rows.tolist():
            key = (int(raw_isa[i]), int(raw_reason[i]))
            nm = hw_name.get(key)
            if nm is None:
                nm = hw_name[key] = q(names.hw(key[0], key[1]))
            a = [f'"exit_code":"{key[1]:#x}","isa":"{isa_s[i]}","rip":"{int(rip[i]):#x}",'
                 f'"info1":"{int(info1[i]):#x}","info2":"{int(info2[i]):#x}",'
                 f'"intr_info":"{int(intr[i]):#x}","error_code":"{int(errc[i]):#x}"']
            if cols["vcpu"][i] != NO_VCPU:
                a.append(f'"vcpu":{int(cols["vcpu"][i])}')
            a.append(f'"handled":"{handled[i]}"')
            if cols["failed_vmentry"][i]:
                a.append('"failed_vmentry":true')
            if entry[i] >= 0:
                a.append(f'"handling_ns":{int(cols["handling_ns"][i])}')
            else:
                a.append('"kvm_entry":"none traced (recording ended, event lost, or not recorded)"')
            if pio[i]:
                a.append(f'"access":"pio","port":"{int(cols["port"][i]):#x}","size":{int(cols["size"][i])},'
                         f'"count":{int(cols["count"][i])},"direction":"{direction[i]}","device":{q(device[i])}')
            elif mmio[i]:
                a.append(f'"access":"mmio","gpa":"{int(cols["gpa"][i]):#x}","len":{int(cols["len"][i])},'
                         f'"direction":"{direction[i]}","device":{q(device[i])}')
            if handled[i] == "userspace":
                a.append(f'"userspace_reason":{q(_kvm_exit_label(names, cols["userspace_reason"][i]))}')
                if cols["service_ns"][i] >= 0:
                    a.append(f'"service_ns":{int(cols["service_ns"][i])}')
            out.append(f'"name":{nm},"cat":"kvm_exit","args":{{{",".join(a)}}}')
        return out

    src = _Source("hardware_exits", ts, dur.astype(np.int64), x["pid"].to_numpy(np.int64),
                  x["tid"].to_numpy(np.int64), body)
    return src, x


def _union_words(trace) -> dict[tuple[int, int, int], tuple[int, int, int]]:
    """(pid, tid, ts) -> the first three u64 words of kvm_run's union, for exits other than IO/MMIO."""
    ev = trace.events
    sel = ((ev["kind"] == EventKind.USERSPACE_EXIT) & (ev["err"] >= 0)
           & ((ev["flags"] & int(EventFlag.RUN_FIELDS)) != 0)
           & ~ev["reason"].isin([int(KvmExit.IO), int(KvmExit.MMIO)])).to_numpy()
    if not sel.any():
        return {}
    u = ev[sel]
    return {(int(p), int(t), int(s)): (int(a), int(b), int(c))
            for p, t, s, a, b, c in zip(u["pid"], u["tid"], u["ts_ns"], u["info1"], u["info2"], u["gpa"])}


def _userspace_exits(trace, q: _Names) -> tuple[_Source, pd.DataFrame]:
    r = trace.df_userspace_exits()
    ts = r["ts_ns"].to_numpy(np.int64)
    run = r["run_ts_ns"].to_numpy(np.int64)
    dur = np.where(run >= 0, run - ts, 0)
    names = trace.names
    code = r["code"].to_numpy()
    known = r["fields_known"].to_numpy()
    port, size, count = r["port"].to_numpy(), r["size"].to_numpy(), r["count"].to_numpy()
    gpa, length = r["gpa"].to_numpy(), r["len"].to_numpy()
    service = r["service_ns"].to_numpy()
    direction = r["direction"].astype(str).to_numpy()
    device = r["device"].astype(str).to_numpy()
    pid, tid = r["pid"].to_numpy(np.int64), r["tid"].to_numpy(np.int64)
    words = _union_words(trace)
    name_cache: dict[tuple, str] = {}
    io, mm = int(KvmExit.IO), int(KvmExit.MMIO)

    def name_of(i: int) -> str:
        c, k = int(code[i]), bool(known[i])
        key = (c, k, int(port[i]) if c == io else int(gpa[i]) if c == mm else 0, direction[i], device[i])
        nm = name_cache.get(key)
        if nm is None:
            label = f"VMM: {_kvm_exit_label(names, c)}"
            if k and c == io:
                label += f" port {key[2]:#x} {direction[i]} ({device[i]})"
            elif k and c == mm:
                label += f" {key[2]:#x} {direction[i]} ({device[i]})"
            nm = name_cache[key] = q(label)
        return nm

    def body(rows: np.ndarray) -> list[str]:
        out = []
        for i in rows.tolist():
            c = int(code[i])
            member = kvm_exit_info(c).member
            a = [f'"kvm_run":{q(member) if member else _NO_MEMBER}']
            if not known[i]:
                if member:
                    a.append('"fields":"not recorded"')
            elif c == io:
                a.append(f'"direction":"{"out" if direction[i] == "write" else "in"}","size":{int(size[i])},'
                         f'"port":"{int(port[i]):#x}","count":{int(count[i])},"device":{q(device[i])}')
            elif c == mm:
                a.append(f'"phys_addr":"{int(gpa[i]):#x}","len":{int(length[i])},'
                         f'"is_write":{"true" if direction[i] == "write" else "false"},"device":{q(device[i])}')
            else:
                w = words.get((int(pid[i]), int(tid[i]), int(ts[i])))
                if w is not None:
                    a.append(f'"union_u64_0":"{w[0]:#x}","union_u64_1":"{w[1]:#x}","union_u64_2":"{w[2]:#x}"')
            if service[i] >= 0:
                a.append(f'"service_ns":{int(service[i])}')
            else:
                a.append('"next_KVM_RUN":"none traced (recording ended or event lost)"')
            out.append(f'"name":{name_of(i)},"cat":"userspace_exit","args":{{{",".join(a)}}}')
        return out

    return _Source("userspace_exits", ts, dur.astype(np.int64), pid, tid, body), r


def _in_kernel(trace, q: _Names) -> list[_Source]:
    """kvm_pio / kvm_mmio accesses the kernel answered, as instants."""
    values = trace.values_captured
    out = []
    for space, df in (("pio", trace.df_pio()), ("mmio", trace.df_mmio())):
        d = df[~df["userspace"].to_numpy()]
        if d.empty:
            continue
        addr = (d["port"] if space == "pio" else d["gpa"]).to_numpy()
        size = (d["size"] if space == "pio" else d["len"]).to_numpy()
        count = d["count"].to_numpy() if space == "pio" else None
        device = d["device"].astype(str).to_numpy()
        direction = d["direction"].astype(str).to_numpy()
        value = d["value"].to_numpy()
        cache: dict[tuple, str] = {}

        def body(rows: np.ndarray, addr=addr, size=size, count=count, device=device, direction=direction,
                 value=value, cache=cache, space=space) -> list[str]:
            res = []
            for i in rows.tolist():
                key = (device[i], int(addr[i]), direction[i])
                nm = cache.get(key)
                if nm is None:
                    nm = cache[key] = q(f"{key[0]} {key[1]:#x} {key[2]}")
                if space == "pio":
                    a = f'"port":"{key[1]:#x}","size":{int(size[i])},"count":{int(count[i])}'
                else:
                    a = f'"gpa":"{key[1]:#x}","len":{int(size[i])}'
                a += f',"direction":"{key[2]}","device":{q(key[0])},"handled":"kernel"'
                if values:
                    a += f',"value":"{int(value[i]):#x}"'
                res.append(f'"name":{nm},"cat":"kvm_{space}","args":{{{a}}}')
            return res

        out.append(_Source("in_kernel_accesses", d["ts_ns"].to_numpy(np.int64), np.full(len(d), -1, np.int64),
                           d["pid"].to_numpy(np.int64), d["tid"].to_numpy(np.int64), body))
    return out


def _launch(trace, q: _Names, guest_pid: Callable[[int], int]) -> list[_Source]:
    """The VMM's KVM ioctls and the launch steps, on one track per guest (tid set later)."""
    ev = trace.events
    io = ev[(ev["kind"] == EventKind.IOCTL).to_numpy()]
    if io.empty and not trace.launched:
        return []
    out = []
    if not io.empty:
        reason, port, err = io["reason"].to_numpy(), io["port"].to_numpy(), io["err"].to_numpy()
        gpa, info1, rip = io["gpa"].to_numpy(), io["info1"].to_numpy(), io["rip"].to_numpy()
        slot, flags, itid = io["size"].to_numpy(), io["count"].to_numpy(), io["tid"].to_numpy()

        def body(rows: np.ndarray) -> list[str]:
            res = []
            for i in rows.tolist():
                cmd = int(reason[i])
                a = f'"tid":{int(itid[i])},"fd":{int(port[i])},"result":{int(err[i])}'
                if cmd in _MEM_REGION:
                    a += (f',"slot":{int(slot[i])},"flags":"{int(flags[i]):#x}",'
                          f'"guest_phys_addr":"{int(gpa[i]):#x}","memory_size":"{int(info1[i]):#x}",'
                          f'"userspace_addr":"{int(rip[i]):#x}"')
                elif cmd == KvmIoctl.CREATE_VCPU:
                    a += f',"vcpu_id":{int(gpa[i])}'
                else:
                    a += f',"arg":"{int(gpa[i]):#x}"'
                res.append(f'"name":{q(ioctl_name(cmd))},"cat":"kvm_ioctl","args":{{{a}}}')
            return res

        pids = np.array([guest_pid(int(p)) for p in io["pid"].to_numpy()], dtype=np.int64)
        out.append(_Source("ioctls", io["ts_ns"].to_numpy(np.int64), io["info2"].to_numpy(np.int64), pids,
                           np.zeros(len(io), np.int64), body))
    steps = trace.df_lifecycle()
    steps = steps[~steps["step"].astype(str).str.startswith("KVM_")]
    if not steps.empty:
        step, detail, stid = steps["step"].astype(str).to_numpy(), steps["detail"].to_numpy(), steps["tid"].to_numpy()

        def body_steps(rows: np.ndarray) -> list[str]:
            res = []
            for i in rows.tolist():
                a = f'"tid":{int(stid[i])}' if stid[i] else ""
                if isinstance(detail[i], str) and detail[i]:
                    a += ("," if a else "") + f'"detail":{q(detail[i])}'
                res.append(f'"name":{q(step[i])},"cat":"lifecycle","args":{{{a}}}')
            return res

        d = steps["duration_ns"].to_numpy(np.int64)
        pids = np.array([guest_pid(-1)] * len(steps), dtype=np.int64)
        out.append(_Source("lifecycle", steps["ts_ns"].to_numpy(np.int64), np.where(d >= 0, d, -1), pids,
                           np.zeros(len(steps), np.int64), body_steps))
    return out


# --------------------------------------------------------------------------
# Tracks
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Counters
# --------------------------------------------------------------------------


def _window_counts(ts: np.ndarray, keys: np.ndarray, origin: int, lo: int, hi: int,
                   window_ns: int) -> tuple[int, dict[str, np.ndarray]]:
    """Counts of ``ts`` in [lo, hi) per window of ``window_ns`` since ``origin``, per key; the first window."""
    w0 = (lo - origin) // window_ns
    w1 = max((hi - 1 - origin) // window_ns, w0)
    n = int(w1 - w0 + 1)
    sel = (ts >= lo) & (ts < hi)
    w = (ts[sel] - origin) // window_ns - w0
    k = keys[sel]
    return int(w0), {str(key): np.bincount(w[k == key], minlength=n)[:n] for key in pd.unique(k)}


def _counters(frames: list[tuple[pd.DataFrame | None, str, Callable[[pd.DataFrame], np.ndarray]]],
              origin: int, lo: int, hi: int, window_ns: int, q: _Names) -> list[str]:
    """``C`` events per guest and frame: a sample where any series changes, and the last window.

    Each sample holds until the next, as both viewers draw counters, so the
    unchanged windows between need no event.
    """
    lines = []
    for frame, label, keys_of in frames:
        if frame is None or frame.empty:
            continue
        qn = q(label)
        for pid in pd.unique(frame["pid"].to_numpy()).tolist():
            f = frame[frame["pid"].to_numpy() == pid]
            first, series = _window_counts(f["ts_ns"].to_numpy(np.int64), keys_of(f), origin, lo, hi, window_ns)
            keys = sorted(series)
            if not keys:
                continue
            m = np.vstack([series[k] for k in keys])  # keys x windows
            change = np.ones(m.shape[1], dtype=bool)
            change[1:] = (m[:, 1:] != m[:, :-1]).any(axis=0)
            change[-1] = True
            qk = [q(k) for k in keys]
            for w in np.flatnonzero(change).tolist():
                args = ",".join(f"{k}:{v}" for k, v in zip(qk, m[:, w].tolist()))
                lines.append(f'{{"ph":"C","ts":{(first + w) * window_ns / 1000:.3f},"pid":{pid},"name":{qn},'
                             f'"args":{{{args}}}}}')
    return lines


# --------------------------------------------------------------------------
# The export
# --------------------------------------------------------------------------


def _load(trace):
    from kvmtrace.trace import Trace, load

    return trace if isinstance(trace, Trace) else load(trace)


def _check_events(trace) -> None:
    kind = trace.events["kind"].to_numpy()
    if trace.header.get("mode") == "counts" or (len(kind) and ((kind & AGGREGATE) != 0).any()):
        err = MissingTraceEventError(["single kvm events (record --mode events)"], "export_perfetto")
        err.fix = "a counts-mode recording keeps per-key counts, not events to draw: record with --mode events"
        raise err


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


def _open(path: Path, tmp: Path):
    try:
        if path.name.endswith(".gz"):
            return gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6)
        return open(tmp, "w", encoding="utf-8")
    except OSError as e:
        raise OutputError(f"cannot write the timeline {path}: {e.strerror}", "choose a writable path") from e


def _write(path: Path, meta: list[str], sources: list[_Source], tids: list[np.ndarray], origin: int,
           counters: list[str], other: dict) -> None:
    """Stream the JSON to ``path`` (through a ``.part`` file renamed when complete)."""
    tmp = path.with_name(path.name + ".part")
    fh = _open(path, tmp)
    try:
        with fh:
            fh.write('{"traceEvents":[\n')
            sep = ""
            if meta:
                fh.write(",\n".join(meta))
                sep = ",\n"
            for s, tid in zip(sources, tids):
                rows = np.flatnonzero(s.keep)
                # Per track in time order, a parent before the children that start with it.
                rows = rows[np.lexsort((-s.dur[rows], s.start[rows], tid[rows], s.pid[rows]))]
                for c0 in range(0, len(rows), _CHUNK):
                    chunk = rows[c0:c0 + _CHUNK]
                    ts_l = ((s.start[chunk] - origin) / 1000).tolist()
                    dur_l = (s.dur[chunk] / 1000).tolist()
                    lines = [
                        f'{{"ph":"X","ts":{a:.3f},"dur":{d:.3f},"pid":{p},"tid":{t},{b}}}' if d >= 0 else
                        f'{{"ph":"i","ts":{a:.3f},"s":"t","pid":{p},"tid":{t},{b}}}'
                        for a, d, p, t, b in zip(ts_l, dur_l, s.pid[chunk].tolist(), tid[chunk].tolist(),
                                                 s.body(chunk))
                    ]
                    fh.write(sep)
                    fh.write(",\n".join(lines))
                    sep = ",\n"
            if counters:
                fh.write(sep)
                fh.write(",\n".join(counters))
            fh.write('\n],\n"otherData":')
            fh.write(json.dumps(other, ensure_ascii=False))
            fh.write("}\n")
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise OutputError(f"writing the timeline {path} failed: {e.strerror or e}",
                          "free space or choose another path") from e


def export_perfetto(trace, out_path: str | os.PathLike, *, format: str = "json",
                    start_s: float | None = None, end_s: float | None = None,
                    max_events: int | None = None, counter_window_ms: float = 10.0,
                    in_kernel: bool = True) -> ExportResult:
    """Write ``trace`` (a :class:`~kvmtrace.trace.Trace` or a trace file path) as a timeline.

    ``format``: "json" (Chrome Trace Event Format; Perfetto's protobuf
    format is not written: the JSON opens in ui.perfetto.dev, and
    chrome://tracing opens only JSON).  ``out_path`` ending in ``.gz`` is
    gzip-compressed.  ``start_s`` / ``end_s`` keep the events that start in
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
                         "(the Perfetto UI opens the JSON, and so does chrome://tracing)")
    if max_events is not None and max_events < 0:
        raise ValueError(f"max_events must be >= 0, not {max_events}")
    if counter_window_ms <= 0:
        raise ValueError(f"counter_window_ms must be > 0, not {counter_window_ms}")
    if start_s is not None and end_s is not None and end_s < start_s:
        raise ValueError(f"end_s ({end_s}) is before start_s ({start_s})")
    trace = _load(trace)
    _check_events(trace)
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
    _write(out_path, meta, sources, tids, origin, counters, other)
    return ExportResult(
        path=out_path, format=format, bytes=out_path.stat().st_size, seconds=time.perf_counter() - t0,
        events=counts, metadata=len(meta), tracks=len(used), overlap_moved=overlap_moved,
        truncated=truncated, window_s=window_s,
    )
