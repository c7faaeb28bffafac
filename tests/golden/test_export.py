"""export_perfetto on real recordings: a demo trace recorded here (when present)
and an imported trace of an Intel host with kvm_exit and kvm_entry."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kvmtrace.present.perfetto import export_perfetto
from kvmtrace.trace import load

from ..support.paths import REAL_TRACES as REAL
from ..support.timeline import cat, check_timeline, export

DEMO = Path("/tmp/demo.kvmtrace")




@pytest.mark.skipif(not DEMO.exists(), reason=f"{DEMO} not present (made by `kvmtrace demo -o {DEMO}`)")
def test_demo_trace_exports_quickly_and_validly(tmp_path):
    t = load(DEMO)
    t0 = time.perf_counter()
    res = export_perfetto(t, tmp_path / "demo.json")
    took = time.perf_counter() - t0
    assert took < 30, f"export took {took:.1f} s"
    with open(tmp_path / "demo.json", encoding="utf-8") as fh:
        doc = json.load(fh)
    ph = check_timeline(doc)
    runs = t.df_userspace_exits()
    pio, mmio = t.df_pio(), t.df_mmio()
    assert len(cat(ph, "userspace_exit")) == len(runs) == res.events["userspace_exits"]
    assert len(ph["i"]) == int((~pio["userspace"]).sum() + (~mmio["userspace"]).sum())
    assert res.overlap_moved == 0 and not res.truncated
    # Under 400 bytes per drawn event.
    assert res.bytes < 400 * (len(ph["X"]) + len(ph["i"]))
    gz = export_perfetto(t, tmp_path / "demo.json.gz")
    assert gz.bytes < res.bytes / 5
    cut = export_perfetto(t, tmp_path / "cut.json", max_events=10_000)
    assert cut.truncated and cut.events["userspace_exits"] + cut.events["in_kernel_accesses"] <= 10_000


@pytest.mark.skipif(not (REAL / "hip24-vmx-6.5-2vm-tracedat.native-render.txt").exists(),
                    reason="shared/real-traces not present")
def test_real_vmx_trace_with_entries(tmp_path):
    importer = pytest.importorskip("kvmtrace.importer")
    src = REAL / "hip24-vmx-6.5-2vm-tracedat.native-render.txt"
    importer.import_text(src, tmp_path / "r.kvmtrace")
    t = load(tmp_path / "r.kvmtrace")
    doc, ph, res = export(t, tmp_path / "r.json")
    hw = cat(ph, "kvm_exit")
    assert len(hw) == len(t.df_exits()) == 22_772
    assert sum(e["dur"] == 0 and "kvm_entry" in e["args"] for e in hw) == t.unpaired()["exit_without_entry"]
