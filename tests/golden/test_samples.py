"""Golden tests on the committed sample traces (real recordings, see sample-traces/README.md)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from kvmtrace.demo.guest import PACED, Workload, expected
from kvmtrace.trace import load

from ..support.cli import kvmtrace_cmd
from ..support.paths import EXPECTED as GOLDEN
from ..support.paths import REAL_TRACES as REAL
from ..support.paths import SAMPLES

SERIES = sorted((SAMPLES / "series").glob("run*.kvmtrace"), key=lambda p: int(p.stem[3:]))


def expected_frame(truth: dict, keys: list[str]) -> pd.DataFrame:
    rows = [dict(zip(keys + ["userspace"], k), count=n) for k, n in truth.items()]
    return (pd.DataFrame(rows, columns=keys + ["userspace", "count"]).astype({"count": "int64"})
            .sort_values(keys + ["userspace"], ascending=[True] * len(keys) + [False], ignore_index=True))


def test_finite_sample_equals_the_rom():
    s = load(SAMPLES / "demo-finite.kvmtrace").summary
    truth = expected(Workload())
    got = s.pio.astype({"port": "int64", "size": "int64"})
    pd.testing.assert_frame_equal(got, expected_frame(truth["pio"], ["port", "direction", "size"]).astype(
        {"port": "int64", "size": "int64"}), check_dtype=False)
    got = s.mmio.astype({"gpa": "int64", "len": "int64"})
    pd.testing.assert_frame_equal(got, expected_frame(truth["mmio"], ["gpa", "direction", "len"]).astype(
        {"gpa": "int64", "len": "int64"}), check_dtype=False)


def test_finite_sample_text_report_is_golden():
    out = subprocess.run(kvmtrace_cmd("report", str(SAMPLES / "demo-finite.kvmtrace")), capture_output=True,
                         text=True, check=True).stdout
    out = "\n".join(["kvmtrace report: demo-finite.kvmtrace", *out.splitlines()[1:]]) + "\n"
    assert out == (GOLDEN / "demo-finite.report.txt").read_text()


def test_launch_sample_timeline():
    t = load(SAMPLES / "demo-launch.kvmtrace")
    steps = list(t.df_lifecycle()["step"].astype(str))
    assert steps.index("KVM_CREATE_VM") < steps.index("KVM_CREATE_VCPU") < steps.index("first KVM_RUN")
    assert int(t.df_memslots()["size"].sum()) == 16 * 2**20 + 2**16


def test_counts_sample_rates_follow_the_guests_clock():
    t = load(SAMPLES / "demo-counts.kvmtrace")
    rates = {r["reason"]: r["rate"] for r in t.summary.userspace_exits.to_dict("records")}
    per_tick = sum(expected(PACED)["userspace_exits"].values())
    assert rates["IO"] + rates["MMIO"] == pytest.approx(100 * per_tick, rel=0.03)


def compare(a: Path, b: Path):
    r = subprocess.run(kvmtrace_cmd("compare", "--format", "json", str(a), str(b)), capture_output=True, text=True)
    return r.returncode, json.loads(r.stdout)


@pytest.mark.parametrize("other", [2, 3, 4, 5, 7, 8])
def test_compare_same_workload_is_no_change(other):
    rc, out = compare(SERIES[0], SERIES[other - 1])
    assert rc == 0 and not out["regression"]
    assert not any(r["significant"] for r in out["rows"])


def test_compare_flags_exactly_the_raised_port():
    rc, out = compare(SERIES[0], SERIES[5])
    assert rc == 1 and out["regression"]
    assert [(c["dimension"], c["key"]) for c in out["causes"]] == [("port", "0x0080 write")]
    assert out["causes"][0]["change_pct"] == pytest.approx(100 * (116 / 97 - 1), abs=2)
    ports = [r for r in out["rows"] if r["dimension"] == "port" and r["regression"]]
    assert [r["key"] for r in ports] == ["0x0080 write"]


def test_trend_flags_run6_on_that_port(tmp_path):
    r = subprocess.run(kvmtrace_cmd("trend", "--format", "json", "--dimension", "port", "-o", str(tmp_path / "t.png"),
                                    *map(str, SERIES)), capture_output=True, text=True, check=True)
    flagged = json.loads(r.stdout)["flagged"]
    assert {(f["run"], f["key"]) for f in flagged if f["dimension"] == "port"} == {("run6", "0x0080 write")}
    assert {f["run"] for f in flagged} == {"run6"}
    assert (tmp_path / "t.png").stat().st_size > 10_000


@pytest.mark.skipif(not (REAL / "hip24-vmx-6x-kvm-exit-only.txt").exists(),
                    reason="../shared/real-traces is not beside this checkout")
def test_imported_real_trace_json_rows_carry_isa_code_and_the_kernels_name(tmp_path):
    out = tmp_path / "hip.kvmtrace"
    subprocess.run(kvmtrace_cmd("import", str(REAL / "hip24-vmx-6x-kvm-exit-only.txt"), "-o", str(out)),
                   check=True, capture_output=True)
    rep = json.loads(subprocess.run(kvmtrace_cmd("report", "--format", "json", str(out)), capture_output=True,
                                    check=True).stdout)
    from kvmtrace.tables.exits import VMX_EXIT_NAMES

    assert sum(r["count"] for r in rep["exits"]) == 14132
    for r in rep["exits"]:
        assert r["isa"] == "VMX" and not r["reason"].startswith("UNKNOWN")
        assert VMX_EXIT_NAMES[r["code"]] == r["reason"]


def test_vcpu_time_sample_covers_its_recording_and_matches_its_timeline():
    """demo-vcpu-time: the paced guest halting between passes, then beside a CPU hog."""
    t = load(SAMPLES / "demo-vcpu-time.kvmtrace")
    df = t.df_vcpu_time()
    assert len(df) == 1 and df["vcpu"].tolist() == [0]
    r = df.iloc[0]
    states = r[["guest_s", "halted_s", "vmm_s", "vmm_waiting_s", "preempted_s"]].sum()
    assert states == pytest.approx(r["total_s"]) and r["total_s"] == pytest.approx(t.duration_s, rel=1e-6)
    # Halted between passes while alone; preempted once the hog shares its CPU.
    assert r["halted_s"] > 0.3 * r["total_s"] and r["preempted_s"] > 0.2 * r["total_s"]
    windows = t.df_vcpu_time_intervals("100ms")
    assert windows[["guest_s", "halted_s", "vmm_s", "vmm_waiting_s", "preempted_s"]].sum().sum() == pytest.approx(
        r["total_s"])
    seg = t.vcpu_timeline().frame()
    assert ((seg["end_ns"] - seg["start_ns"]).sum() / 1e9) == pytest.approx(r["total_s"])


def test_vcpu_states_are_slices_on_the_vcpu_track(tmp_path):
    import collections

    from kvmtrace.present.perfetto import export_perfetto

    t = load(SAMPLES / "demo-vcpu-time.kvmtrace")
    res = export_perfetto(t, tmp_path / "t.json", format="json")
    doc = json.loads((tmp_path / "t.json").read_text())
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    states = [e for e in events if e.get("cat") == "vcpu_state"]
    seg = t.vcpu_timeline().frame()
    assert res.events["vcpu_states"] == len(seg) == len(states)
    tid = int(t.df_vcpu_time()["tid"].iloc[0])
    assert {e["tid"] for e in states} <= {tid} | {e["tid"] for e in events if e.get("ph") == "M"
                                                 and "overlap" in e.get("args", {}).get("name", "")}
    assert collections.Counter(e["name"] for e in states) == collections.Counter(seg["state"].astype(str))
    assert sum(e["dur"] for e in states) == pytest.approx((seg["end_ns"] - seg["start_ns"]).sum() / 1e3, rel=1e-6)


def test_compare_reads_vcpu_time_also_batch_by_batch():
    """`kvmtrace compare` reads runs batch by batch (load_for_report(rates=True)): the vcpu_time rows are there too."""
    from kvmtrace.trace import load_for_report

    path = SAMPLES / "demo-vcpu-time.kvmtrace"
    got = load_for_report(path, rates=True).run_rates().counts
    want = load(path).run_rates().counts
    vt = got[got["dimension"] == "vcpu_time"].sort_values("key", ignore_index=True)
    assert len(vt) == 5
    pd.testing.assert_frame_equal(vt, want[want["dimension"] == "vcpu_time"].sort_values("key", ignore_index=True),
                                  check_dtype=False, check_categorical=False)


def test_csv_carries_vcpu_time_rows_equal_to_the_json():
    """`report --format csv`: one vcpu_time row per thread and state, the JSON's seconds, shares summing to 1."""
    import csv
    import io

    from kvmtrace.present.formats import render_csv
    from kvmtrace.present.report import report_dict
    from kvmtrace.trace import load_for_report

    path = SAMPLES / "demo-vcpu-time.kvmtrace"
    want = report_dict(load_for_report(path))["vcpu_time"]
    rows = [r for r in csv.DictReader(io.StringIO(render_csv(load_for_report(path)))) if r["section"] == "vcpu_time"]
    five = ["guest", "halted", "vmm", "vmm_waiting", "preempted"]
    assert [r["state"] for r in rows] == five
    for r in rows:
        assert (int(r["vcpu"]), int(r["tid"])) == (want[0]["vcpu"], want[0]["tid"])
        assert float(r["seconds"]) == want[0][r["state"] + "_s"]
    assert sum(float(r["share"]) for r in rows) == pytest.approx(1.0, abs=1e-5)
