"""The timeline as a native Perfetto trace: protobuf ``TracePacket``s with TrackEvent slices.

Written with the ``perfetto`` package's own generated ``Trace`` proto
(``perfetto.protos.perfetto.trace.perfetto_trace_pb2``; no binary needed),
which is what ui.perfetto.dev and trace_processor read natively. The same
sources, tracks and counters as the Chrome JSON (:mod:`.writer`), and the
same names and args (each row's JSON body is decoded into debug
annotations, so the two files cannot disagree):

* a process track per guest (``ProcessDescriptor``: the VMM's pid and the
  domain's name) and a thread track per vCPU thread (``ThreadDescriptor``:
  pid, tid, ``vCPU N (tid T)``), ordered by vCPU (``sibling_order_rank``);
  the ioctl track and overlap lanes are named tracks of the process;
* slices as ``TYPE_SLICE_BEGIN`` / ``TYPE_SLICE_END`` pairs on their track
  (nested: a userspace exit inside its hardware exit), instants as
  ``TYPE_INSTANT``, category and args kept;
* counters as counter tracks of the process, one per series;
* the export's facts (the JSON's ``otherData``) as debug annotations of one
  ``kvmtrace export`` instant on a ``kvmtrace`` track.

Timestamps are the trace's own nanoseconds (CLOCK_MONOTONIC of the host
that recorded, or the imported text's clock), written as they are: the
viewers show them relative to the first. Packets go out in batches, each a
serialized ``Trace`` (concatenated ``Trace`` messages are one ``Trace``),
through a ``.part`` file renamed when complete; ``.gz`` gzip-compresses.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np

from kvmtrace.errors import OutputError
from kvmtrace.present.perfetto.sources import _Source

_SEQ = 0x6B76  # trusted_packet_sequence_id of every packet ("kv")
_BATCH = 20_000  # packets per serialized Trace


def _pb():
    try:
        from perfetto.protos.perfetto.trace import perfetto_trace_pb2
    except ImportError as e:  # pragma: no cover - a dependency
        raise OutputError("the perfetto package is not installed: Perfetto's protobuf format cannot be written",
                          "pip install perfetto, or export --chrome-json OUT") from e
    return perfetto_trace_pb2


class _Uuids:
    def __init__(self):
        self._map: dict[tuple, int] = {}

    def __call__(self, *key) -> int:
        u = self._map.get(key)
        if u is None:
            u = self._map[key] = len(self._map) + 1
        return u


def _annotate(ev, args: dict) -> None:
    for k, v in args.items():
        a = ev.debug_annotations.add()
        a.name = str(k)
        if isinstance(v, bool):
            a.bool_value = v
        elif isinstance(v, int) and -(1 << 63) <= v < (1 << 63):
            a.int_value = v
        elif isinstance(v, float):
            a.double_value = v
        elif v is None:
            a.string_value = "null"
        elif isinstance(v, (dict, list)):
            a.legacy_json_value = json.dumps(v, ensure_ascii=False)
        else:
            a.string_value = str(v)


class _Out:
    """Packets to the file, a Trace message of up to _BATCH packets at a time."""

    def __init__(self, fh, pb):
        self.fh, self.pb = fh, pb
        self.trace = pb.Trace()
        self.n = 0

    def packet(self, ts: int | None = None):
        if len(self.trace.packet) >= _BATCH:
            self.flush()  # before adding: the caller fills the packet after this returns
        p = self.trace.packet.add()
        p.trusted_packet_sequence_id = _SEQ
        if ts is not None:
            p.timestamp = int(ts)
        self.n += 1
        return p

    def flush(self) -> None:
        if len(self.trace.packet):
            self.fh.write(self.trace.SerializeToString())
            self.trace = self.pb.Trace()


def _descriptors(out: _Out, uuid: _Uuids, meta: list[str], tracks, tracks_used) -> None:
    procs: dict[int, dict] = {}
    threads: dict[tuple[int, int], dict] = {}
    for line in meta:
        m = json.loads(line)
        if "tid" in m:
            threads.setdefault((m["pid"], m["tid"]), {})[m["name"]] = next(iter(m["args"].values()))
        else:
            procs.setdefault(m["pid"], {})[m["name"]] = next(iter(m["args"].values()))
    for pid, p in procs.items():
        td = out.packet().track_descriptor
        td.uuid = uuid("p", pid)
        td.process.pid = int(pid)
        td.process.process_name = str(p.get("process_name", f"pid {pid}"))
        td.sibling_order_rank = int(p.get("process_sort_index", 0))
        td.child_ordering = td.EXPLICIT
    for (pid, tid) in tracks_used:
        t = threads.get((pid, tid), {})
        name = str(t.get("thread_name", tracks.name(pid, tid)[0]))
        td = out.packet().track_descriptor
        td.uuid = uuid("t", pid, tid)
        td.parent_uuid = uuid("p", pid)
        td.sibling_order_rank = int(t.get("thread_sort_index", 0))
        if (pid, tid) in tracks.names:  # the ioctl track, an overlap lane: no thread of its own
            td.name = name
        else:
            td.thread.pid = int(pid)
            td.thread.tid = int(tid)
            td.thread.thread_name = name


def _track_events(out: _Out, uuid: _Uuids, pb, sources: list[_Source], tids: list[np.ndarray]) -> None:
    """Per track, begin/end pairs and instants in time order (a parent before the children it holds)."""
    TE = pb.TrackEvent
    pid = np.concatenate([s.pid[s.keep] for s in sources] or [np.zeros(0, np.int64)])
    tid = np.concatenate([t[s.keep] for s, t in zip(sources, tids)] or [np.zeros(0, np.int64)])
    start = np.concatenate([s.start[s.keep] for s in sources] or [np.zeros(0, np.int64)])
    dur = np.concatenate([s.dur[s.keep] for s in sources] or [np.zeros(0, np.int64)])
    src = np.concatenate([np.full(int(s.keep.sum()), i, np.int64) for i, s in enumerate(sources)]
                         or [np.zeros(0, np.int64)])
    row = np.concatenate([np.flatnonzero(s.keep) for s in sources] or [np.zeros(0, np.int64)])
    order = np.lexsort((-dur, start, tid, pid))
    bounds = np.flatnonzero(np.diff(pid[order]) | np.diff(tid[order])) + 1
    for idx in np.split(order, bounds):
        if not len(idx):
            continue
        track = uuid("t", int(pid[idx[0]]), int(tid[idx[0]]))
        bodies: dict[int, dict] = {}
        for i in np.unique(src[idx]).tolist():
            mine = idx[src[idx] == i]
            for k, b in zip(mine.tolist(), sources[i].body(row[mine])):
                bodies[k] = json.loads("{" + b + "}")
        stack: list[int] = []  # end times of the open slices
        for k in idx.tolist():
            t0, d = int(start[k]), int(dur[k])
            while stack and stack[-1] <= t0:
                out.packet(stack.pop()).track_event.CopyFrom(TE(type=TE.TYPE_SLICE_END, track_uuid=track))
            b = bodies[k]
            ev = out.packet(t0).track_event
            ev.type = TE.TYPE_SLICE_BEGIN if d >= 0 else TE.TYPE_INSTANT
            ev.track_uuid = track
            ev.name = str(b.get("name", ""))
            if b.get("cat"):
                ev.categories.append(str(b["cat"]))
            _annotate(ev, b.get("args") or {})
            if d >= 0:
                stack.append(t0 + d)
        while stack:
            out.packet(stack.pop()).track_event.CopyFrom(TE(type=TE.TYPE_SLICE_END, track_uuid=track))


def _counter_events(out: _Out, uuid: _Uuids, pb, counters: list[str], origin: int) -> None:
    TE = pb.TrackEvent
    for line in counters:
        c = json.loads(line)
        ts = origin + int(round(c["ts"] * 1000))
        for key, value in c["args"].items():
            ck = ("c", c["pid"], c["name"], key)
            if ck not in uuid._map:
                td = out.packet().track_descriptor
                td.uuid = uuid(*ck)
                td.parent_uuid = uuid("p", c["pid"])
                td.name = f"{c['name']}: {key}"
                td.counter.SetInParent()
            ev = out.packet(ts).track_event
            ev.type = TE.TYPE_COUNTER
            ev.track_uuid = uuid(*ck)
            ev.counter_value = int(value)


def _write_proto(path: Path, meta: list[str], sources: list[_Source], tids: list[np.ndarray], origin: int,
                 counters: list[str], other: dict, tracks) -> None:
    """Write the Perfetto protobuf trace to ``path`` (through a ``.part`` file renamed when complete)."""
    pb = _pb()
    tmp = path.with_name(path.name + ".part")
    try:
        fh = gzip.open(tmp, "wb", compresslevel=6) if path.name.endswith(".gz") else open(tmp, "wb")
    except OSError as e:
        raise OutputError(f"cannot write the timeline {path}: {e.strerror}", "choose a writable path") from e
    try:
        with fh:
            out, uuid = _Out(fh, pb), _Uuids()
            used = sorted({(int(p), int(t)) for s, tid in zip(sources, tids)
                           for p, t in zip(s.pid[s.keep].tolist(), tid[s.keep].tolist())})
            _descriptors(out, uuid, meta, tracks, used)
            td = out.packet().track_descriptor
            td.uuid = uuid("kvmtrace")
            td.name = "kvmtrace"
            ev = out.packet(origin).track_event
            ev.type = pb.TrackEvent.TYPE_INSTANT
            ev.track_uuid = uuid("kvmtrace")
            ev.name = "kvmtrace export"
            _annotate(ev, {k: v for k, v in other.items() if k != "timestamps"})
            _track_events(out, uuid, pb, sources, tids)
            _counter_events(out, uuid, pb, counters, origin)
            out.flush()
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise OutputError(f"writing the timeline {path} failed: {e.strerror or e}",
                          "free space or choose another path") from e
