"""The guest split (in_guest / exit_handling, issue 12) on every surface of a
trace file: the frames, the timeline, the JSON and text report, compare's rate
rows; present where kvm_exit/kvm_entry fired, absent (not zero) where not."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kvmtrace.kernel.events import AGGREGATE, EVENT_DTYPE, VCPU_TIME_IN_GUEST, EventKind, VcpuState
from kvmtrace.present.report import render_json, render_text
from kvmtrace.trace import load
from kvmtrace.tracefile import TraceWriter

from ..support.evbuild import Ev
from .test_vcpu_time_c import synthetic

START, END = 1_000, 14_000
PROBES = ["kvm_exit", "kvm_entry", "kvm_userspace_exit", "kvm_fpu", "sched_switch", "sched_wakeup"]


def write(path, ev: Ev, header: dict):
    f = ev.frame()
    a = np.zeros(len(f), EVENT_DTYPE)
    for c in f.columns:
        a[c] = f[c].to_numpy()
    a = a[np.argsort(a["ts_ns"], kind="stable")]
    domain = {"name": "g", "pid": 100, "vcpu_threads": {"0": 100, "1": 200, "2": 300, "3": 400}}
    w = TraceWriter(path, {"domains": [domain], **header})
    w.write(a, {"start_time_ns": START})
    w.close({"start_time_ns": START, "end_time_ns": END, "lost_events": 0})
    return load(path)


@pytest.fixture
def trace(tmp_path):
    ev, hdr = synthetic()
    return write(tmp_path / "split.kvmtrace", ev, {**hdr, "probes": PROBES})


@pytest.fixture
def plain(tmp_path):
    """The same without kvm_exit/kvm_entry: a host where they never fire."""
    ev, hdr = synthetic()
    ev.rows = [r for r in ev.rows if r["kind"] not in (EventKind.EXIT, EventKind.ENTRY)]
    return write(tmp_path / "plain.kvmtrace", ev, {**hdr, "probes": [p for p in PROBES if "kvm_e" not in p]})


def _ns(x) -> np.ndarray:
    return np.round(np.asarray(x, dtype=float) * 1e9).astype(np.int64)


def test_frames_carry_the_parts_where_the_edges_fired(trace):
    df = trace.df_vcpu_time().set_index("vcpu")
    assert list(df.columns[-2:]) == ["in_guest_s", "exit_handling_s"]
    assert _ns(df["in_guest_s"].dropna()).tolist() == [6350, 6800, 9000] and np.isnan(df.loc[2, "in_guest_s"])
    split = df["in_guest_s"].notna()
    assert (_ns(df.loc[split, "in_guest_s"]) + _ns(df.loc[split, "exit_handling_s"])
            == _ns(df.loc[split, "guest_s"])).all()
    # Per window: the parts sum to guest in each, and the windows to the whole.
    w = trace.df_vcpu_time_intervals(2e-6)
    ws = w[w["in_guest_s"].notna()]
    assert (_ns(ws["in_guest_s"]) + _ns(ws["exit_handling_s"]) == _ns(ws["guest_s"])).all()
    per = w.groupby("vcpu")[["in_guest_s", "exit_handling_s"]].sum(min_count=1)
    assert _ns(per["in_guest_s"].dropna()).tolist() == _ns(df["in_guest_s"].dropna()).tolist()
    assert _ns(per["exit_handling_s"].dropna()).tolist() == _ns(df["exit_handling_s"].dropna()).tolist()


def test_timeline_segments_carry_the_in_guest_flag(trace):
    seg = trace.vcpu_timeline().frame()
    assert str(seg["in_guest"].dtype) == "boolean"
    assert seg.loc[seg["tid"] == 300, "in_guest"].isna().all()  # no kvm_exit/kvm_entry: no flag
    assert not seg.loc[seg["state"] != "guest", "in_guest"].any()
    dur = seg["end_ns"] - seg["start_ns"]
    by_tid = dur[seg["in_guest"].fillna(False).to_numpy(bool)].groupby(seg["tid"]).sum().to_dict()
    assert by_tid == {100: 6350, 200: 6800, 400: 9000}
    # Merging keeps an in-guest and an exit-handling stretch of guest apart.
    t100 = seg[seg["tid"] == 100]
    assert t100[["start_ns", "end_ns", "state", "in_guest"]].head(3).values.tolist() == [
        [1000, 2000, "guest", True], [2000, 2300, "guest", False], [2300, 4000, "guest", True]]


def test_without_the_edges_there_are_no_parts(plain):
    assert "in_guest_s" not in plain.df_vcpu_time().columns
    assert "in_guest_s" not in plain.df_vcpu_time_intervals(2e-6).columns
    assert "in_guest" not in plain.vcpu_timeline().frame().columns
    rows = json.loads(render_json(plain))["vcpu_time"]
    assert all("in_guest_s" not in r and "exit_handling_s" not in r for r in rows)
    assert "in_guest" not in render_text(plain, width=120)
    keys = plain.run_rates().counts["key"].astype(str)
    assert not keys.str.contains("in_guest|exit_handling").any()


def test_json_and_text_report(trace):
    rows = {r["tid"]: r for r in json.loads(render_json(trace))["vcpu_time"]}
    assert (rows[100]["in_guest_s"], rows[100]["exit_handling_s"], rows[100]["guest_s"]) == (6e-06, 1e-06, 7e-06)  # µs, rounded
    assert "in_guest_s" not in rows[300] and "exit_handling_s" not in rows[300]
    states = ("guest_s", "halted_s", "vmm_s", "vmm_waiting_s", "preempted_s")
    assert sum(rows[100][k] for k in states) == pytest.approx(rows[100]["total_s"])
    text = render_text(trace, width=120)
    section = text[text.index("Where vCPU 0's time went"):text.index("Where vCPU 1's time went")]
    lines = [ln for ln in section.splitlines() if ln.strip()]
    guest = next(i for i, ln in enumerate(lines) if ln.split()[0] == "guest")
    assert lines[guest + 1].split()[:2] == ["in_guest", "after"] and lines[guest + 2].split()[0] == "exit_handling"


def test_compare_rate_rows(trace):
    counts = trace.run_rates().counts
    vt = counts[counts["dimension"] == "vcpu_time"].set_index("key")["count"]
    # ms, rounded: the synthetic run is microseconds long, so check the keys and a run of seconds below.
    assert {"vcpu 0 in_guest", "vcpu 0 exit_handling", "vcpu 3 in_guest"} <= set(vt.index)
    assert "vcpu 2 in_guest" not in vt.index and "vcpu 2 guest" in vt.index
    from kvmtrace.analysis.vcpu_time import rate_rows

    df = trace.df_vcpu_time()
    df[[c for c in df.columns if c.endswith("_s")]] *= 1e6  # the same shares over seconds
    got = rate_rows(df).set_index("key")["count"]
    assert (got["vcpu 0 in_guest"], got["vcpu 0 exit_handling"], got["vcpu 0 guest"]) == (6350, 960, 7310)


def test_counts_mode_reads_the_kernels_in_guest_rows(tmp_path):
    rows = Ev()
    for tid, state, ns in ((100, VcpuState.GUEST, 700), (100, VCPU_TIME_IN_GUEST, 650), (100, VcpuState.HALTED, 300),
                           (200, VcpuState.GUEST, 1000)):
        rows.add(EventKind.VCPU_TIME | AGGREGATE, tid=tid, op=int(state), value=ns, dt=0)
    rows.add(EventKind.VCPU_TIME | AGGREGATE, tid=100, op=int(VcpuState.GUEST), value=1000, dt=4000)
    rows.add(EventKind.VCPU_TIME | AGGREGATE, tid=100, op=VCPU_TIME_IN_GUEST, value=900, dt=0)
    hdr = {"mode": "counts", "probes": PROBES, "vcpu_states": {
        str(t): {"vcpu": i, "pid": 100, "tid": t, "in_run": True, "sched": "on_cpu"} for i, t in ((0, 100), (1, 200))}}
    t = write(tmp_path / "counts.kvmtrace", rows, hdr)
    df = t.df_vcpu_time().set_index("tid")
    assert _ns(df.loc[100, ["guest_s", "in_guest_s", "exit_handling_s"]]).tolist() == [1700, 1550, 150]
    assert np.isnan(df.loc[200, "in_guest_s"])
    w = t.df_vcpu_time_intervals(2e-6)
    w100 = w[w["tid"] == 100]
    assert _ns(w100["in_guest_s"]).tolist() == [650, 900, 0, 0, 0, 0, 0]
    assert _ns(w100["exit_handling_s"]).tolist() == [50, 100, 0, 0, 0, 0, 0]


def test_perfetto_guest_slices_say_their_part(trace, tmp_path):
    from kvmtrace.present.perfetto import export_perfetto

    export_perfetto(trace, tmp_path / "t.json", format="json")
    doc = json.loads((tmp_path / "t.json").read_text())
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    guest = [e for e in events if e.get("cat") == "vcpu_state" and e["name"] == "guest"]
    parts = {}
    for e in (e for e in guest if "part" in e["args"]):
        parts[(e["tid"], e["args"]["part"])] = parts.get((e["tid"], e["args"]["part"]), 0) + round(e["dur"] * 1000)
    assert parts[(100, "in_guest")] == 6350 and parts[(100, "exit_handling")] == 960
    assert not [e for e in events if e.get("cat") == "vcpu_state" and e["name"] != "guest" and "part" in e["args"]]
    assert not [e for e in guest if e["tid"] == 300 and "part" in e["args"]]
    assert {e["tid"] for e in guest if "part" not in e["args"]} == {300}


def test_top_shows_the_parts_as_shares_of_the_interval():
    import pandas as pd

    from kvmtrace.live.counter import Snapshot
    from kvmtrace.live.top import render, snapshot_frame

    a = np.zeros(7, EVENT_DTYPE)
    a["pid"] = 7
    a["kind"] = EventKind.VCPU_TIME | AGGREGATE
    a["tid"] = [70, 70, 70, 71, 71, 71, 71]
    a["op"] = [VcpuState.GUEST, VcpuState.HALTED, VCPU_TIME_IN_GUEST,  # tid 70: a VMX vCPU
               VcpuState.GUEST, VcpuState.HALTED, VcpuState.VMM, VcpuState.PREEMPTED]  # tid 71: no edges
    a["value"] = [600_000_000, 400_000_000, 450_000_000, 250_000_000, 250_000_000, 250_000_000, 250_000_000]
    rows = pd.DataFrame({n: a[n] for n in EVENT_DTYPE.names if not n.startswith("pad")})
    snap = Snapshot(t=1.0, interval_s=1.0, delta=rows, total=rows, domains={7: "g"}, vcpus={70: 0, 71: 1})
    df = snapshot_frame(snap, {})
    rate = df[df["dimension"] == "vcpu time"].set_index("key")["rate"]
    assert rate["vcpu 0 (tid 70) in_guest"] == pytest.approx(0.45)
    assert rate["vcpu 0 (tid 70) exit_handling"] == pytest.approx(0.15)
    assert "vcpu 1 (tid 71) in_guest" not in rate.index
    out = render(df, snap, width=140)
    header = next(ln for ln in out.splitlines() if "preempted" in ln)
    assert header.split()[-5:] == ["preempted", "in", "guest", "exit", "handling"], out
    row0 = next(ln for ln in out.splitlines() if ln.lstrip().startswith("vcpu 0")).split()
    row1 = next(ln for ln in out.splitlines() if ln.lstrip().startswith("vcpu 1")).split()
    assert row0[-2:] == ["45", "15"] and row1[-2:] == ["-", "-"]


def _run(label, rows: dict[str, int]):
    import pandas as pd

    from kvmtrace.analysis.compare import RunRates

    counts = pd.DataFrame({"dimension": ["vcpu_time"] * len(rows), "key": list(rows), "count": list(rows.values())})
    return RunRates(label=label, counts=counts, duration_s=4.0, exits=40_000)


def test_compare_leaves_the_parts_out_when_one_run_has_none():
    from kvmtrace.analysis.compare import compare, describe_cause, regression_causes

    pvm = _run("pvm", {"vcpu 0 guest": 3000, "vcpu 0 halted": 1000})
    vmx = _run("vmx", {"vcpu 0 guest": 3000, "vcpu 0 halted": 1000, "vcpu 0 in_guest": 2600,
                       "vcpu 0 exit_handling": 400})
    df = compare(pvm, vmx)
    assert set(df["key"].astype(str)) == {"vcpu 0 guest", "vcpu 0 halted"} and not df["regression"].any()
    # Two VMX runs compare them: exit handling from 10 % to 40 % of the vCPU's time is a regression.
    slow = _run("slow", {"vcpu 0 guest": 3000, "vcpu 0 halted": 1000, "vcpu 0 in_guest": 1400,
                         "vcpu 0 exit_handling": 1600})
    causes = [describe_cause(r) for r in regression_causes(compare(vmx, slow)).to_dict("records")]
    assert causes == ["vcpu_time vcpu 0 exit_handling rose from 10% to 40%"]


def test_markdown_and_csv_reports(trace, plain):
    from kvmtrace.present.formats import render_csv, render_markdown

    md = render_markdown(trace)
    table = md[md.index("Where each vCPU's time went"):].split("\n\n")[1].splitlines()
    assert table[0].split("|")[-3:-1] == [" in guest ", " exit handling "]
    row300 = next(ln for ln in table if ln.startswith("| 2 | 300 |"))
    assert row300.split("|")[-3:-1] == [" - ", " - "]
    assert "in guest" not in render_markdown(plain)
    csv = [ln for ln in render_csv(trace).splitlines() if ln.startswith("vcpu_time,")]
    assert sum(",in_guest," in ln for ln in csv) == 3 and sum(",exit_handling," in ln for ln in csv) == 3


def test_the_plot_draws_guest_as_its_parts_where_it_has_them(trace, plain):
    from kvmtrace.present.plots import plot_vcpu_time

    fig = plot_vcpu_time(trace, 2e-6)
    labels = [ax.get_legend_handles_labels()[1] for ax in fig.axes]
    assert labels[0][:3] == ["in_guest", "exit_handling", "halted"]  # vCPU 0: kvm_exit/kvm_entry fired
    assert labels[2][0] == "guest"  # vCPU 2: none
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "guest"  # the legend has every band once
    assert "in_guest" not in plot_vcpu_time(plain, 2e-6).axes[0].get_legend_handles_labels()[1]
