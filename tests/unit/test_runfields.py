"""kvm_run members' values (tables/exits/runfields, analysis/runfields), per-vCPU
counts (analysis/vcpus), counts mode's exact MMIO addresses and its overflow,
compare across granularities, and the demo ROM's new workloads, on hand-built
frames (no kernel)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kvmtrace.analysis.compare import RunRates, compare
from kvmtrace.analysis.runfields import exit_details
from kvmtrace.analysis.summary import mmio
from kvmtrace.analysis.vcpus import vcpu_counts
from kvmtrace.demo.guest import Workload, expected, expected_by_vcpu
from kvmtrace.demo.machine import domain_xml
from kvmtrace.kernel.events import AGGREGATE, EventFlag, EventKind, MmioOp, bpf_defines
from kvmtrace.tables.exits import KVM_EXITS
from kvmtrace.tables.exits.runfields import LAYOUTS, VALUE_NAMES, decode, describe

from ..support.cli import one_error_line, run
from ..support.evbuild import Ev

UAPI = Path("/usr/include/linux/kvm.h")
# The words of the KVM_EXIT_INTERNAL_ERROR this host gave for the ROM's empty IDT + int3.
EMULATION_WORDS = [1 | 8 << 32, 1, 0xFCEBF4FACC0F, 0x746D766B00000000, 0x1000]


@pytest.mark.skipif(not UAPI.exists(), reason="no uapi linux/kvm.h (apt-get install linux-libc-dev)")
def test_value_names_are_the_uapi_headers():
    text = UAPI.read_text()
    checked = 0
    for prefix, names in VALUE_NAMES.items():
        for value, name in names.items():
            m = re.search(rf"#define\s+{prefix}{name}\s+(\S.*)", text)
            if m is None:
                continue  # newer than this header (e.g. KVM_SYSTEM_EVENT_TDX_FATAL)
            macro = m.group(1).split("/*")[0].strip().replace("ULL", "")
            assert eval(macro) == value, (prefix, name)  # "(1 << 2)", "3"
            checked += 1
    assert checked >= 18


def test_every_layout_is_its_exits_member():
    for code, layout in LAYOUTS.items():
        assert KVM_EXITS[code].member == layout.member
        names = {f.name.split("[")[0] for f in layout.fields}
        assert names - {"exception", "pc", "dr6", "dr7", "u"} <= set(KVM_EXITS[code].fields) | {layout.member}, code


def test_decode_an_emulation_failure():
    member, v = decode(17, EMULATION_WORDS)
    assert member == "emulation_failure"
    assert v["suberror"] == 1 and v["suberror_name"] == "EMULATION" and v["ndata"] == 8
    assert v["flags"] == 1 and v["flags_name"] == "INSTRUCTION_BYTES"
    assert v["insn_size"] == 15 and v["insn_bytes"][:4] == [0xCC, 0xFA, 0xF4, 0xEB] and len(v["insn_bytes"]) == 15
    assert v["data[3]"] == 0x1000
    assert describe(v).startswith("suberror=1 (EMULATION), ndata=8, flags=1 (INSTRUCTION_BYTES)")
    # A counts recording keeps 16 bytes: what lies beyond is left out, not made up.
    member, v = decode(17, EMULATION_WORDS[:2] + [0, 0, 0], 16)
    assert set(v) == {"suberror", "suberror_name", "ndata", "flags", "flags_name"}


def test_decode_other_members():
    assert decode(24, [2 | 1 << 32, 7, 0, 0, 0]) == (
        "system_event", {"type": 2, "type_name": "RESET", "ndata": 1, "data": [7, 0, 0, 0]})
    member, v = decode(29, [0, 4 | 0x10 << 32, 99, 0, 0])
    assert member == "msr" and v["reason_name"] == "FILTER" and v["index"] == 0x10 and v["data"] == 99
    assert decode(1, [13 | 5 << 32, 0, 0, 0, 0])[1] == {"exception": 13, "exception_name": "GP", "error_code": 5}
    assert decode(5, [1, 2, 3, 4, 5]) == ("", {})  # HLT fills no member


def test_exit_details_group_by_value():
    e = Ev()
    union = dict(zip(("rip", "info1", "info2", "gpa", "value"), EMULATION_WORDS))
    for _ in range(3):
        e.pio(0x80, True).uexit_io(0x80, True).run()
    e.uexit(17, flags=int(EventFlag.RUN_FIELDS | EventFlag.RUN_UNION), **union)
    e.uexit(8, flags=int(EventFlag.RUN_FIELDS))  # SHUTDOWN: no member, no values
    d = exit_details(e.frame())
    assert d[2] == [{"direction": 1, "direction_name": "OUT", "size": 1, "port": 0x80, "count": 3}]
    (x,) = d[17]
    assert x["member"] == "emulation_failure" and x["count"] == 1 and x["bytes"] == 40 and x["ndata"] == 8
    assert 8 not in d


def test_df_userspace_exits_has_member_and_values(tmp_path):
    from kvmtrace.analysis.runloop import userspace_runs

    e = Ev()
    union = dict(zip(("rip", "info1", "info2", "gpa", "value"), EMULATION_WORDS))
    e.pio(0x80, True).uexit_io(0x80, True).run()
    e.uexit(17, flags=int(EventFlag.RUN_FIELDS | EventFlag.RUN_UNION), **union)
    r = userspace_runs(e.frame())
    assert list(r["member"].astype(str)) == ["io", "emulation_failure"]
    assert r["values"].astype(str).iloc[1].startswith("suberror=1 (EMULATION)")
    assert r["member"].dtype == "category" and r["values"].dtype == "category"


def test_vcpu_counts_list_idle_vcpus():
    e = Ev()
    e.pio(0x80, True, tid=11).uexit_io(0x80, True, tid=11).run(tid=11)
    e.mmio(0xFEE00020, MmioOp.READ, tid=12)
    domains = [{"name": "g", "pid": 100, "vcpu_threads": {"0": 11, "1": 12, "2": 13}}]
    got = vcpu_counts(e.frame(), domains, np.zeros(4, bool))
    assert [(v["vcpu"], v["tid"], v["userspace_exits"], v["pio"], v["mmio"]) for v in got] == [
        (0, 11, 1, 1, 0), (1, 12, 0, 0, 1), (2, 13, 0, 0, 0)]


def _agg(rows: list[dict]) -> pd.DataFrame:
    e = Ev()
    for r in rows:
        e.add(EventKind(r.pop("kind")), **r)
    f = e.frame()
    f["kind"] = f["kind"] | AGGREGATE
    return f


def test_counts_mode_keeps_per_page_overflow_apart():
    f = _agg([dict(kind=EventKind.MMIO, gpa=0xFED00000, op=MmioOp.UNSATISFIED_READ, size=4, value=5),
              dict(kind=EventKind.MMIO, gpa=0xFED00000, op=MmioOp.WRITE, size=4, value=7,
                   flags=int(EventFlag.MMIO_PAGE)),
              dict(kind=EventKind.USERSPACE_EXIT, reason=6, gpa=0xFED00000, op=MmioOp.UNSATISFIED_READ, size=4,
                   value=5, flags=int(EventFlag.RUN_FIELDS))])
    m = mmio(f)
    assert m.to_dict("records") == [
        {"gpa": 0xFED00000, "direction": "read", "len": 4, "per_page": False, "userspace": True, "count": 5},
        {"gpa": 0xFED00000, "direction": "write", "len": 4, "per_page": True, "userspace": False, "count": 7}]


def _rates(label, rows, granularity="address", dims=None):
    c = pd.DataFrame(rows, columns=["dimension", "key", "count"])
    return RunRates(label, c, 1.0, int(c["count"].sum()), mmio_granularity=granularity, dimensions=dims)


def test_compare_leaves_out_what_one_run_cannot_have():
    base = _rates("old", [("mmio", "0xfed00000 write", 100), ("port", "0x0080 write", 100),
                          ("exit", "VMX IO_INSTRUCTION", 50)], "page", ("port", "mmio", "exit"))
    new = _rates("new", [("mmio", "0xfed00010 write", 100), ("port", "0x0080 write", 100)],
                 "address", ("port", "mmio"))
    df = compare(base, new)
    assert set(df["dimension"].astype(str)) == {"port"}
    assert not np.isinf(df["change_pct"]).any()
    notes = df.attrs["left_out"]
    assert any(n.startswith("mmio: old counted MMIO per 4 KiB page") for n in notes)
    assert any(n.startswith("exit: only old could count it") for n in notes)


def test_workload_validation_and_truths():
    with pytest.raises(ValueError, match="ending"):
        Workload(ending="explode")
    with pytest.raises(ValueError, match="steady=False"):
        Workload(steady=True, ending="triple_fault")
    with pytest.raises(ValueError, match="irqs"):
        Workload(irqs=3)
    with pytest.raises(ValueError, match="vcpus"):
        Workload(vcpus=9)
    assert "ENDING" not in Workload().defines() and "VCPUS" not in Workload().defines()
    assert Workload(ending="triple_fault").defines()["ENDING"] == 2
    w = Workload(tick_hz=100, irqs=5)
    assert expected(w)["pio"][(0x20, "write", 1, False)] == 1 + 5  # ICW1 and five EOIs
    off = expected(w, "off")
    assert all(k[3] for k in off["pio"]) and all(k[3] for k in off["mmio"])
    assert off["interrupt_waits"] == {"HLT or IRQ_WINDOW_OPEN": 5}
    assert expected(Workload(ending="emulation_failure"))["userspace_exits"]["INTERNAL_ERROR"] == 1
    per = expected_by_vcpu(Workload(vcpus=3))
    assert sorted(per) == [0, 1, 2] and per[2]["pio"] == {(0x80, "write", 1, True): 61}


def test_domain_xml_vcpus_and_irqchip():
    xml = domain_xml(name="t", rom_path="/x.rom", vcpus=4, irqchip="off")
    assert "<vcpu placement='static'>4</vcpu>" in xml and "kernel_irqchip=off" in xml
    assert "kernel_irqchip" not in domain_xml(name="t", rom_path="/x.rom")
    with pytest.raises(ValueError, match="irqchip"):
        domain_xml(name="t", rom_path="/x.rom", irqchip="split-brain")


def test_member_mask_names_every_member_but_io_and_mmio():
    flags = bpf_defines(probes=["kvm_userspace_exit"], fields={}, ringbuf_pages=1)
    (mask,) = [int(f.split("=")[1].rstrip("U"), 0) for f in flags if f.startswith("-DKT_KVM_EXIT_MEMBERS=")]
    for code in range(64):
        info = KVM_EXITS.get(code)
        want = bool(info and info.member and code not in (2, 6))
        assert bool(mask >> code & 1) == want, code


def test_mmio_addresses_needs_counts_mode():
    r = run("record", "--domain", "x", "--mmio-addresses", "2")
    assert r.returncode == 2 and "--mode counts" in one_error_line(r)


def test_every_format_shows_member_values_and_vcpus(tmp_path):
    """A trace with an emulation failure on one of two vCPUs: the text, markdown,
    csv and html reports show the decoded values and the per-vCPU rows."""
    import csv
    import io

    from kvmtrace.kernel.events import EVENT_DTYPE
    from kvmtrace.present.formats import render
    from kvmtrace.trace import load_for_report
    from kvmtrace.tracefile import TraceWriter

    e = Ev()
    union = dict(zip(("rip", "info1", "info2", "gpa", "value"), EMULATION_WORDS))
    e.pio(0x80, True, tid=11).uexit_io(0x80, True, tid=11).run(tid=11)
    e.uexit(17, tid=11, flags=int(EventFlag.RUN_FIELDS | EventFlag.RUN_UNION), **union)
    f = e.frame()
    a = np.zeros(len(f), EVENT_DTYPE)
    for name in f.columns:
        a[name] = f[name].to_numpy()
    p = tmp_path / "t.kvmtrace"
    w = TraceWriter(p, {"domains": [{"name": "g", "pid": 100, "vcpu_threads": {"0": 11, "1": 12}}]})
    w.write(a, {})
    w.close({"start_time_ns": 0, "end_time_ns": 10**9})
    t = load_for_report(p)
    text = render(t, "text")
    assert "suberror=1 (EMULATION)," in text and "insn_bytes=[cc" in text  # wrapped in its column
    assert "Per vCPU" in text and max(len(x) for x in text.splitlines()) <= 80
    assert "emulation_failure" in render(t, "markdown") and "emulation_failure" in render(t, "html")
    rows = list(csv.DictReader(io.StringIO(render(t, "csv"))))
    (v,) = [r for r in rows if r["section"] == "userspace_exit_values"]
    assert v["reason"] == "INTERNAL_ERROR" and v["member"] == "emulation_failure" and v["count"] == "1"
    assert [(r["vcpu"], r["tid"], r["count"], r["pio"]) for r in rows if r["section"] == "vcpus"] == [
        ("0", "11", "2", "1"), ("1", "12", "0", "0")]
