"""`kvmtrace report` batch by batch gives the in-memory report, to the last digit.

Each trace is written again with small batches (one event, a few, random
sizes; some with events out of time order across batches, as a thread moving
between CPUs gives), then reported through ``load_for_report`` with chunks of
a few events (so that nearly every pairing of the run loop meets a chunk's
edge) and compared with the report of the whole trace read at once: every
count, percentile and unpaired figure, as JSON. compare's rate tables too.

"union": demo-finite's first events on three vCPU threads of two domains,
interleaved in time, with userspace exits other than IO/MMIO carrying kvm_run
union words (bench/synth.py's variants; some interrupted, errno < 0): the
report's member details and per-vCPU counts, batch by batch.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bench.synth import TID_STEP, with_union_exits
from kvmtrace.analysis import batchwise
from kvmtrace.analysis.runfields import exit_details
from kvmtrace.analysis.summary import EINTR, mmio_completions
from kvmtrace.analysis.vcpus import vcpu_counts
from kvmtrace.analysis.compare import compare
from kvmtrace.importer import import_text
from kvmtrace.kernel.events import EVENT_DTYPE, EventKind
from kvmtrace.present.formats import render
from kvmtrace.present.report import render_text, report_dict
from kvmtrace.trace import ReportTrace, load, load_for_report
from kvmtrace.tracefile import COLUMNS, TraceWriter, read_trace

from ..support import paths

IMPORTS = ("svm-trace-cmd.txt", "ftrace-trace.txt", "perf-script.txt")
REAL = "hip24-vmx-6x-tcreport-mixed-events.txt"


def rebatch(src, dst, size: int, shuffle: int = 0, seed: int = 0) -> None:
    """``src`` written again in batches of ``size`` events (0: random 1-49); with
    ``shuffle``, each run of that many events in file order is permuted."""
    d = read_trace(src, arrays=True)
    n = len(d.arrays["ts_ns"])
    ev = np.zeros(n, dtype=EVENT_DTYPE)
    for c in COLUMNS:
        ev[c] = d.arrays[c]
    rng = np.random.default_rng(seed)
    if shuffle:
        perm = np.arange(n)
        for s in range(0, n, shuffle):
            rng.shuffle(perm[s:s + shuffle])
        ev = ev[perm]
    w = TraceWriter(dst, {k: v for k, v in d.header.items() if k != "format_version"})
    i = 0
    while i < n:
        m = size or int(rng.integers(1, 50))
        w.write(ev[i:i + m], d.progress or {})
        i += m
    w.close({k: v for k, v in (d.trailer or {}).items() if k != "events_written"})


def union_trace(dst, events: int = 1700) -> None:
    """The "union" trace (see the module doc): copy c of demo-finite's last ``events`` (port
    I/O, then MMIO with VMM-answered reads)
    on thread tid + c * TID_STEP, 1 µs later than the copy before; copy 2 in a second pid."""
    d = read_trace(paths.SAMPLES / "demo-finite.kvmtrace", arrays=True)
    ev = np.zeros(events, dtype=EVENT_DTYPE)
    for c in COLUMNS:
        ev[c] = d.arrays[c][-events:]
    ev = with_union_exits(ev, 5)
    union = np.flatnonzero((ev["kind"] == EventKind.USERSPACE_EXIT) & (ev["flags"] & 16 != 0))
    ev["err"][union[::9]] = -EINTR  # interrupted: no member values
    copies = []
    for c in range(3):
        e = ev.copy()
        e["ts_ns"] += np.uint64(c * 1000)
        e["tid"] += np.uint32(c * TID_STEP)
        if c == 2:
            e["pid"] += np.uint32(TID_STEP)
        copies.append(e)
    ev = np.concatenate(copies)
    ev = ev[np.argsort(ev["ts_ns"], kind="stable")]
    (dom,) = d.header["domains"]
    (t0,) = [int(t) for t in dom["vcpu_threads"].values()]
    domains = [{**dom, "vcpu_threads": {"0": t0, "1": t0 + TID_STEP, "2": t0 + 7}},  # vCPU 2: idle
               {**dom, "name": "second", "pid": dom["pid"] + TID_STEP, "vcpu_threads": {"0": t0 + 2 * TID_STEP}}]
    w = TraceWriter(dst, {**{k: v for k, v in d.header.items() if k != "format_version"}, "domains": domains})
    w.write(ev, d.progress or {})
    w.close({k: v for k, v in (d.trailer or {}).items() if k != "events_written"})


def as_json(d: dict) -> str:
    return json.dumps(d, sort_keys=True, default=str)


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("batchwise")
    out = {"demo-finite": str(paths.SAMPLES / "demo-finite.kvmtrace"),
           "demo-vcpu-time": str(paths.SAMPLES / "demo-vcpu-time.kvmtrace"),
           "run1": str(paths.SAMPLES / "series" / "run1.kvmtrace")}
    for name in IMPORTS:
        import_text(paths.DATA / "import" / name, tmp / f"{name}.kvmtrace")
        out[name] = str(tmp / f"{name}.kvmtrace")
    union_trace(tmp / "union.kvmtrace")
    out["union"] = str(tmp / "union.kvmtrace")
    if (paths.REAL_TRACES / REAL).exists():
        import_text(paths.REAL_TRACES / REAL, tmp / "real.kvmtrace")
        out["real"] = str(tmp / "real.kvmtrace")
    return out


@pytest.mark.parametrize("size,shuffle", [(1, 0), (0, 0), (5, 4), (64, 16)])
@pytest.mark.parametrize("name", ["demo-finite", "run1", "union", *IMPORTS, "real"])
def test_report_batch_by_batch_is_the_report(traces, tmp_path, monkeypatch, name, size, shuffle):
    if name not in traces:
        pytest.skip(f"{REAL} is not beside the checkout ({paths.REAL_TRACES})")
    path = tmp_path / "t.kvmtrace"
    big = name == "run1"  # 61,100 events: batches and chunks of hundreds
    rebatch(traces[name], path, max(size, 97) if big else size, shuffle)
    whole = as_json(report_dict(load(path)))
    # (events a chunk, events of each thread's tail a cut is first looked for in)
    for chunk, window in ((500, 40), (5000, 1 << 14)) if big else ((3, 2), (13, 1 << 14), (1 << 21, 1 << 14)):
        monkeypatch.setattr(batchwise, "CUT_WINDOW", window)
        t = load_for_report(path, chunk_events=chunk)
        assert isinstance(t, ReportTrace)
        assert as_json(report_dict(t)) == whole, f"chunks of {chunk}, window {window}"


def test_cuts_happen_and_carry_little(traces, tmp_path):
    path = tmp_path / "t.kvmtrace"
    rebatch(traces["demo-finite"], path, 7)
    t = load_for_report(path, chunk_events=5)
    assert t.tables.chunks > len(t.events) // 10  # most chunks analysed on their own
    assert t.tables.max_carry < 20
    assert t.event_count == len(load(path).events)


@pytest.mark.parametrize("name", ["union", "real"])
def test_domain_of_a_two_domain_trace(traces, tmp_path, name):
    if name not in traces:
        pytest.skip(f"{REAL} is not beside the checkout")
    path = tmp_path / "t.kvmtrace"
    rebatch(traces[name], path, 0)
    whole, streamed = load(path), load_for_report(path, chunk_events=17)
    for d in whole.domains:
        a, b = whole.for_domain(str(d["pid"])), streamed.for_domain(str(d["pid"]))
        assert as_json(report_dict(a)) == as_json(report_dict(b))


@pytest.mark.parametrize("window", [None, 0.05])
def test_rate_tables_batch_by_batch(traces, tmp_path, window):
    path = tmp_path / "t.kvmtrace"
    rebatch(traces["run1"], path, 101, 8)
    a = load(path).run_rates(window)
    b = load_for_report(path, chunk_events=29, rates=True, window_s=window).run_rates(window)

    def rows(df, keys):
        return df.assign(key=df["key"].astype(str)).sort_values(keys, ignore_index=True)

    pd.testing.assert_frame_equal(rows(a.counts, ["dimension", "key"]), rows(b.counts, ["dimension", "key"]))
    assert (a.exits, a.duration_s) == (b.exits, b.duration_s)
    method = "poisson"
    if window:
        keys = ["window", "dimension", "key"]
        pd.testing.assert_frame_equal(rows(a.windows, keys), rows(b.windows, keys))
        method = "bootstrap"
    pd.testing.assert_frame_equal(compare(a, a, method=method), compare(b, a, method=method))


def test_counts_and_launch_traces_are_read_whole():
    for name in ("demo-counts", "demo-launch"):
        t = load_for_report(paths.SAMPLES / f"{name}.kvmtrace")
        assert not isinstance(t, ReportTrace)


@pytest.mark.parametrize("size,shuffle", [(1, 0), (0, 0), (5, 4)])
def test_details_and_vcpus_are_the_in_memory_functions(traces, tmp_path, size, shuffle):
    path = tmp_path / "t.kvmtrace"
    rebatch(traces["union"], path, size, shuffle)
    ev = load(path).events
    domains = load(path).domains
    details = exit_details(ev)
    vcpus = vcpu_counts(ev, domains, mmio_completions(ev))
    assert {17, 24, 3} <= set(details) and sum(r["count"] for r in details[24]) > 40  # the test has what it tests
    assert [v["vcpu"] for v in vcpus] == [0, 1, 2, 0] and vcpus[2]["userspace_exits"] == 0
    assert all(v["mmio"] > 0 and v["pio"] > 0 for v in vcpus if v["vcpu"] != 2)
    for chunk in (2, 7, 64, 1 << 21):
        t = load_for_report(path, chunk_events=chunk)
        assert t.exit_details == details, f"chunks of {chunk}"
        assert t.vcpu_counts() == vcpus, f"chunks of {chunk}"
        for d in domains:
            sub = ev[ev["pid"] == d["pid"]]
            got = t.for_domain(str(d["pid"]))
            assert got.exit_details == exit_details(sub)
            assert got.vcpu_counts() == vcpu_counts(sub, [d], mmio_completions(sub))


def _no_events(self):
    raise AssertionError("the report read the whole trace (ReportTrace.events)")


@pytest.mark.parametrize("name", ["demo-finite", "run1", "union", "demo-vcpu-time", *IMPORTS, "real"])
def test_no_report_reads_the_events(traces, tmp_path, monkeypatch, name):
    """A ReportTrace never reads the whole trace (ReportTrace.events): with the sched
    probes or without (record --no-vcpu-time, imports with or without sched lines),
    each section of the text, JSON, markdown and CSV report, whole and per domain
    (text and JSON), is the in-memory report's, the vCPU-time section included
    (analysis.vcpu_stream)."""
    if name not in traces:
        pytest.skip(f"{REAL} is not beside the checkout ({paths.REAL_TRACES})")
    path = tmp_path / "t.kvmtrace"
    rebatch(traces[name], path, 0)
    whole = load(path)
    monkeypatch.setattr(ReportTrace, "events", property(_no_events))
    t = load_for_report(path, chunk_events=50)
    assert as_json(report_dict(t)) == as_json(report_dict(whole))
    assert render_text(t) == render_text(whole)
    for fmt in ("markdown", "csv"):  # `report --format` reads these batch by batch too
        assert render(t, fmt) == render(whole, fmt), fmt
    for d in t.domains:
        assert as_json(report_dict(t.for_domain(str(d["pid"])))) == as_json(report_dict(whole.for_domain(str(d["pid"]))))


@pytest.mark.parametrize("chunk", [1, 50, None])
def test_a_recording_with_the_sched_probes_is_reported_without_reading_the_events(monkeypatch, chunk):
    """The vCPU-time section too comes batch by batch (analysis.vcpu_stream): the report
    of a recording with the sched probes, whole and as compare reads it (with windows),
    equals the in-memory one without ReportTrace.events."""
    from kvmtrace.analysis.vcpu_time import rate_rows

    path = paths.SAMPLES / "demo-vcpu-time.kvmtrace"
    whole = load(path)
    expect_json, expect_text = as_json(report_dict(whole)), render_text(whole)
    want_windows = whole.df_vcpu_time_intervals(0.25)
    monkeypatch.setattr(ReportTrace, "events", property(_no_events))
    t = load_for_report(path, chunk_events=chunk)
    assert isinstance(t, ReportTrace) and "sched_switch" in t.header["probes"]
    assert as_json(report_dict(t)) == expect_json and render_text(t) == expect_text
    r = load_for_report(path, chunk_events=chunk, rates=True, window_s=0.25)
    pd.testing.assert_frame_equal(r.df_vcpu_time_intervals(0.25), want_windows)
    assert rate_rows(r.df_vcpu_time()).equals(rate_rows(whole.df_vcpu_time()))
