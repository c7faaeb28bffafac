"""`kvmtrace import` on the real traces of an Intel host in ../shared/real-traces:
the whole path (text -> trace file -> kvmtrace.trace.load -> summary) checked
against counts nobody here computed."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from kvmtrace.kernel.events import NO_VCPU, EventKind

from ..support.importing import exit_counts, kind, run
from ..support.paths import REAL_TRACES as REAL

NATIVE = REAL / "hip24-vmx-6.5-2vm-tracedat.native-render.txt"
PLUGIN = REAL / "hip24-vmx-6.5-2vm-tracedat.plugin-render.txt"
EXIT_ONLY = REAL / "hip24-vmx-6x-kvm-exit-only.txt"
MIXED = REAL / "hip24-vmx-6x-tcreport-mixed-events.txt"


needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real traces not present ({REAL})")


def author_counts() -> dict[str, int]:
    text = (REAL / "hip24-vmx-6x-kvm-exit-only.AUTHOR-COUNTS.md").read_text()
    counts = {name: int(n) for name, n in re.findall(r"'(\w+)': (\d+) times", text)}
    assert sum(counts.values()) == int(re.search(r"Total exits: (\d+)", text).group(1))
    return counts


@needs_real
def test_real_exit_only_matches_the_authors_counts(tmp_path):
    res, trace, ev = run(tmp_path, src=EXIT_ONLY)
    assert res.format == "trace-cmd" and res.isa == "VMX"
    assert res.unknown_lines == 0 and res.skipped_by_event == {} and res.undecodable_exits == {}
    x = trace.summary.exits
    assert list(x.columns) == ["isa", "reason", "code", "flags", "count", "rate"]
    assert (x["isa"] == "VMX").all() and (x["flags"] == "").all()
    assert dict(zip(x["reason"], x["count"])) == author_counts()
    assert x["count"].sum() == 14132
    assert trace.domains[0]["pid"] == 3927


def _per_pid(ev: pd.DataFrame, k: EventKind) -> dict:
    return kind(ev, k).groupby(["pid", "reason"]).size().to_dict()


@needs_real
def test_real_two_renders_of_one_2vm_trace_agree(tmp_path):
    (tmp_path / "n").mkdir()
    (tmp_path / "p").mkdir()
    native, tn, en = run(tmp_path / "n", src=NATIVE)
    plugin, tp, ep = run(tmp_path / "p", src=PLUGIN)
    for res in (native, plugin):
        assert res.format == "trace-cmd" and res.isa == "VMX" and res.unknown_lines == 0
        assert res.events_by_probe == {"kvm_exit": 22772, "kvm_entry": 22771}
    # Per reason, overall and per process.
    assert exit_counts(tn) == exit_counts(tp)
    assert sum(exit_counts(tn).values()) == 22772
    assert _per_pid(en, EventKind.EXIT) == _per_pid(ep, EventKind.EXIT)
    assert kind(en, EventKind.ENTRY)["pid"].value_counts().to_dict() == kind(ep, EventKind.ENTRY)["pid"].value_counts().to_dict()
    # The two guests both have a vCPU 0; pids keep them apart.
    assert set(en["pid"]) == {52679, 60250, 60251}
    doms = {d["pid"]: (d["name"], d["vcpus"]) for d in tn.domains}
    assert doms == {52679: ("qemu-system-x86", [0]), 60250: ("CPU 0/KVM", [0]), 60251: ("CPU 1/KVM", [1])}
    assert {d["pid"]: d["vcpus"] for d in tp.domains} == {52679: [0], 60250: [0], 60251: [1]}
    old = kind(en, EventKind.EXIT)
    assert ((old["pid"] == 52679) & (old["vcpu"] == 0)).sum() > 0 and ((old["pid"] == 60250) & (old["vcpu"] == 0)).sum() > 0
    # Same events, same times, same fields the plugin prints.
    xn, xp = kind(en, EventKind.EXIT), kind(ep, EventKind.EXIT)
    for col in ("ts_ns", "pid", "tid", "cpu", "reason", "isa", "rip", "info1", "info2"):
        assert np.array_equal(xn[col].to_numpy(), xp[col].to_numpy()), col
    assert (xp["vcpu"] == NO_VCPU).all() and (xn["vcpu"] != NO_VCPU).all()


@needs_real
def test_real_mixed_trace_cmd_report(tmp_path):
    res, trace, ev = run(tmp_path, src=MIXED)
    assert res.format == "trace-cmd" and res.unknown_lines == 0 and not res.truncated_last_line
    kvm = {"kvm_exit": 810, "kvm_entry": 806, "kvm_mmio": 27, "kvm_userspace_exit": 7, "sys_enter_ioctl": 8}
    assert {k: v for k, v in res.events_by_probe.items() if not k.startswith("sched_")} == kvm
    s = res.skipped_by_event
    assert s["kvm_msr"] == 505 and s["kvm_fast_mmio"] == 43 and s["sched_waking"] == 274
    assert res.sched["lines"] == {"sched_switch": 515, "sched_wakeup": 256}  # the scheduler's: test_import_sched.py
    assert s["sys_enter_ioctl"] == 5  # ioctls other than KVM_RUN
    assert "kvm_exit" not in s and "kvm_entry" not in s and "sched_switch" not in s
    # Every line: the cpus= header, skipped, read into no row of its own (kvm_fpu), a scheduler line, or a kvm event.
    assert res.folded == {"kvm_fpu load inside a KVM_RUN ioctl (its sys_enter_ioctl is the edge)": 8,
                          "kvm_fpu unload (KVM_RUN returning: kvm_userspace_exit is the edge)": 7}
    assert res.lines == 16672 == 1 + sum(s.values()) + 15 + 515 + 256 + sum(kvm.values())
    assert trace.header["host"] == {"isa": "VMX", "cpus": 20}
    u = trace.summary.userspace_exits
    assert dict(zip(u["reason"], u["count"])) == {"MMIO": 7}
    assert sum(exit_counts(trace).values()) == 810
