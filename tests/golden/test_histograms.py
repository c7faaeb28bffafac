"""Counts mode's in-kernel log2 latency histograms in the committed counts-mode
sample trace: the report's quantiles and counts against the raw histogram rows."""

from __future__ import annotations

import json
import subprocess

import numpy as np

from kvmtrace.kernel.events import AGGREGATE, EventKind, Latency
from kvmtrace.tables.exits import ExitNames
from kvmtrace.trace import load

from ..support.cli import kvmtrace_cmd
from ..support.paths import ROOT

NAMES = ExitNames.from_formats(None, None)


def test_counts_sample_report_shows_the_histograms():
    path = ROOT / "sample-traces" / "demo-counts.kvmtrace"
    rep = json.loads(subprocess.run(kvmtrace_cmd("report", "--format", "json", str(path)), capture_output=True,
                                    check=True).stdout)
    ev = load(path).events
    hist = ev[(ev["kind"] == (EventKind.HIST | AGGREGATE)) & (ev["op"] == Latency.VMM_SERVICE)]
    by_reason = {NAMES.kvm_exit(int(r)): int(n) for r, n in hist.groupby("reason")["value"].sum().items()}
    assert {r["reason"]: r["count"] for r in rep["vmm_service_log2"]} == by_reason
    # a paced guest that was never stopped mid-exit: one sample per userspace exit
    assert by_reason == {r["reason"]: r["count"] for r in rep["userspace_exits"]}
    for r in rep["vmm_service_log2"]:
        assert r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["max_us"]
        assert np.log2(r["max_us"] * 1000).is_integer()
    text = subprocess.run(kvmtrace_cmd("report", str(path)), capture_output=True, text=True, check=True).stdout
    assert "VMM service time" in text and "upper bound of its bucket" in text
    assert max(len(line) for line in text.splitlines()) <= 80
