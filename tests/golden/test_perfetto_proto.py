"""`kvmtrace export --perfetto`: Perfetto's native protobuf trace, read back with
Perfetto's own ``Trace`` proto (the ``perfetto`` package): a thread track per
vCPU, every exit a slice, begin/end balanced and nested on every track, and
the same slices as the Chrome JSON of ``--chrome-json``."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections import Counter, defaultdict

import pytest

from kvmtrace.tables.exits import Isa
from kvmtrace.trace import load

from ..support.cli import run
from ..support.paths import REAL_TRACES, SAMPLES

pb = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2",
                         reason="the perfetto package (a kvmtrace dependency) is not installed")
TE = pb.TrackEvent


def _read(path) -> pb.Trace:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    t = pb.Trace()
    t.ParseFromString(data)
    return t


def _tracks_and_slices(trace: pb.Trace):
    tracks = {p.track_descriptor.uuid: p.track_descriptor for p in trace.packet if p.HasField("track_descriptor")}
    slices = []  # (track uuid, name, category, start, end, args)
    open_: dict[int, list] = defaultdict(list)
    last: dict[int, int] = {}
    for p in trace.packet:
        if not p.HasField("track_event"):
            continue
        ev = p.track_event
        assert ev.track_uuid in tracks, "an event on a track nobody described"
        assert p.trusted_packet_sequence_id
        if ev.type in (TE.TYPE_SLICE_BEGIN, TE.TYPE_SLICE_END, TE.TYPE_INSTANT):
            assert p.timestamp >= last.get(ev.track_uuid, 0), "a track's events go back in time"
            last[ev.track_uuid] = p.timestamp
        if ev.type == TE.TYPE_SLICE_BEGIN:
            s = [ev.track_uuid, ev.name, list(ev.categories), p.timestamp, None,
                 {a.name: a for a in ev.debug_annotations}]
            open_[ev.track_uuid].append(s)
            slices.append(s)
        elif ev.type == TE.TYPE_SLICE_END:
            s = open_[ev.track_uuid].pop()  # an end with no begin raises IndexError
            s[4] = p.timestamp
    assert not any(open_.values()), "slices left open"
    return tracks, slices


def _export(tmp_path, trace, name="t.pftrace", *extra):
    out = tmp_path / name
    r = run("export", str(trace), "--perfetto", str(out), *extra)
    assert r.returncode == 0, r.stderr
    return out


def test_demo_trace_has_a_track_per_vcpu_and_every_userspace_exit(tmp_path):
    path = SAMPLES / "demo-finite.kvmtrace"
    trace = load(path)
    tracks, slices = _tracks_and_slices(_read(_export(tmp_path, path)))
    threads = {u: td.thread for u, td in tracks.items() if td.HasField("thread")}
    procs = {td.process.pid: td.process for td in tracks.values() if td.HasField("process")}
    for d in trace.domains:
        assert int(d["pid"]) in procs and d["name"] in procs[int(d["pid"])].process_name
        for vcpu, tid in d["vcpu_threads"].items():
            named = [t for t in threads.values() if t.tid == int(tid) and t.pid == int(d["pid"])]
            assert len(named) == 1 and named[0].thread_name == f"vCPU {vcpu} (tid {tid})"
    uexits = [s for s in slices if s[2] == ["userspace_exit"]]
    df = trace.df_userspace_exits()
    assert len(uexits) == len(df) > 0
    assert Counter(s[1].split(" ")[1] for s in uexits) == Counter(
        f"KVM_EXIT_{trace.names.kvm[int(c)]}" for c in df["code"])
    # each lies on its vCPU thread's track and lasts its service time
    assert all(tracks[s[0]].HasField("thread") for s in uexits)
    served = df[df["service_ns"] >= 0]
    assert sorted(s[4] - s[3] for s in uexits if "service_ns" in s[5]) == sorted(served["service_ns"].tolist())
    io = [s for s in uexits if s[1].startswith("VMM: KVM_EXIT_IO port")]
    assert all(s[5]["port"].string_value.startswith("0x") for s in io)


def test_same_slices_as_the_chrome_json(tmp_path):
    path = SAMPLES / "demo-launch.kvmtrace"
    _tracks, slices = _tracks_and_slices(_read(_export(tmp_path, path, "t.pftrace.gz")))
    js = tmp_path / "t.json"
    r = run("export", str(path), "--chrome-json", str(js))
    assert r.returncode == 0, r.stderr
    events = json.loads(js.read_text())["traceEvents"]
    xs = [e for e in events if e["ph"] == "X"]
    assert len(xs) == len(slices) > 0
    assert Counter(e["name"] for e in xs) == Counter(s[1] for s in slices)
    assert Counter(round(e["dur"] * 1000) for e in xs) == Counter(s[4] - s[3] for s in slices)


@pytest.mark.skipif(not (REAL_TRACES / "hip24-vmx-6.5-2vm-tracedat.native-render.txt").exists(),
                    reason="the real Intel traces (../shared/real-traces) are not beside the checkout")
def test_hardware_exits_are_slices_with_the_userspace_exit_inside(tmp_path):
    src = REAL_TRACES / "hip24-vmx-6.5-2vm-tracedat.native-render.txt"
    kt = tmp_path / "real.kvmtrace"
    assert run("import", str(src), "-o", str(kt)).returncode == 0
    trace = load(kt)
    tracks, slices = _tracks_and_slices(_read(_export(tmp_path, kt)))
    hw = [s for s in slices if s[2] == ["kvm_exit"]]
    x = trace.df_exits()
    assert len(hw) == len(x) == 22_772  # the README's count of kvm_exit lines
    assert Counter(s[1] for s in hw) == Counter(trace.names.hw(int(Isa.VMX), int(c)) for c in x["code"])
    assert sorted(s[4] - s[3] for s in hw if "handling_ns" in s[5]) == sorted(
        x.loc[x["entry_ts_ns"] >= 0, "handling_ns"].tolist())
    # vCPU ids collide across the two VMs: one thread track per (pid, tid)
    vcpu_tracks = {(td.thread.pid, td.thread.tid) for td in tracks.values() if td.HasField("thread")}
    assert {(int(p), int(t)) for p, t in trace.df_exits()[["pid", "tid"]].drop_duplicates().to_numpy()} \
        <= vcpu_tracks


def _trace_processor_shell():
    """trace_processor_shell already on this machine (the perfetto package downloads it otherwise)."""
    found = shutil.which("trace_processor_shell")
    cache = os.path.expanduser("~/.local/share/perfetto/prebuilts")
    if not found and os.path.isdir(cache):
        found = next((os.path.join(cache, f) for f in sorted(os.listdir(cache))
                      if f.startswith("trace_processor_shell") and not f.endswith(".tmp")), None)
    return found


@pytest.mark.skipif(_trace_processor_shell() is None,
                    reason="trace_processor_shell is not on this machine, and the perfetto package would "
                           "download it (no network here)")
def test_trace_processor_reads_the_slices(tmp_path):  # pragma: no cover - needs the binary
    from perfetto.trace_processor import TraceProcessor, TraceProcessorConfig

    path = SAMPLES / "demo-finite.kvmtrace"
    out = _export(tmp_path, path)
    tp = TraceProcessor(trace=str(out), config=TraceProcessorConfig(bin_path=_trace_processor_shell()))
    n = tp.query("select count(*) as n from slice where category = 'userspace_exit'").as_pandas_dataframe()
    assert int(n["n"][0]) == len(load(path).df_userspace_exits())
    tp.close()
