"""`kvmtrace import`: text traces from trace-cmd, ftrace and perf, as trace files.

Tiny traces written here (inline or in tests/data/import) pin every field of
every shape; tests/golden/test_import.py checks the whole path on the real
traces of an Intel host.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from kvmtrace.importer import convert as importer
from kvmtrace.errors import OutputError, TraceFileError
from kvmtrace.kernel.events import NO_VCPU, EventFlag, EventKind, MmioOp, PioOp, SchedOp
from kvmtrace.tables.exits import Isa, SvmExit, VmxExit
from kvmtrace.tracefile import read_trace
from kvmtrace.importer import detect_format, import_text

from ..support import paths
from ..support.importing import exit_counts, kind, run

DATA = paths.DATA / "import"
NO_CPU = 0xFFFFFFFF


# --------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------


def test_trace_cmd_native_6x_line(tmp_path):
    text = (
        "cpus=20\n"
        "       CPU 0/KVM-60250 [007] 25135.606832: kvm_entry:            vcpu 0, rip 0xffffffffbb51c00b\n"
        "       CPU 0/KVM-60250 [007] 25135.606865: kvm_exit:             vcpu 0 reason EXTERNAL_INTERRUPT "
        "rip 0xffffffffbb533d40 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x800000ec "
        "error_code 0x00000000\n"
    )
    res, trace, ev = run(tmp_path, text)
    assert res.format == "trace-cmd" and res.isa == "VMX"
    assert res.events == 2 and res.unknown_lines == 0 and res.skipped_by_event == {}
    x = kind(ev, EventKind.EXIT).iloc[0]
    assert x["ts_ns"] == 25135_606865_000
    assert (x["pid"], x["tid"], x["cpu"], x["vcpu"]) == (60250, 60250, 7, 0)
    assert (x["reason"], x["isa"]) == (VmxExit.EXTERNAL_INTERRUPT, Isa.VMX)
    assert x["rip"] == 0xFFFFFFFFBB533D40 and x["intr_info"] == 0x800000EC
    assert (x["info1"], x["info2"], x["error_code"]) == (0, 0, 0)
    e = kind(ev, EventKind.ENTRY).iloc[0]
    assert (e["vcpu"], e["rip"], e["flags"]) == (0, 0xFFFFFFFFBB51C00B, 0)
    assert trace.header["host"] == {"isa": "VMX", "cpus": 20}
    assert trace.domains == [{"name": "CPU 0/KVM", "pid": 60250, "vcpus": [0], "tids": [60250],
                              "vcpu_threads": {"0": 60250}}]


def test_trace_cmd_plugin_line(tmp_path):
    """trace-cmd's kvm plugin: no vcpu, `info A B` in hex without 0x."""
    text = (" qemu-system-x86-3927  [007]   302.533069: kvm_exit:             "
            "reason EPT_VIOLATION rip 0xffffffff8b360413 info d82 0\n"
            " qemu-system-x86-3927  [007]   302.533071: kvm_entry:             vcpu 0 rip 0xffffffff8b360413\n")
    res, trace, ev = run(tmp_path, text)
    assert res.format == "trace-cmd"
    x = kind(ev, EventKind.EXIT).iloc[0]
    assert (x["reason"], x["isa"], x["vcpu"]) == (VmxExit.EPT_VIOLATION, Isa.VMX, NO_VCPU)
    assert (x["rip"], x["info1"], x["info2"]) == (0xFFFFFFFF8B360413, 0xD82, 0)
    assert (x["pid"], x["tid"], x["cpu"]) == (3927, 3927, 7)
    e = kind(ev, EventKind.ENTRY).iloc[0]
    assert (e["vcpu"], e["rip"]) == (0, 0xFFFFFFFF8B360413)


def test_ftrace_trace_file_every_event(tmp_path):
    res, trace, ev = run(tmp_path, src=DATA / "ftrace-trace.txt")
    assert res.format == "ftrace" and res.isa == "VMX"
    assert res.unknown_lines == 0 and not res.truncated_last_line
    assert res.lost_events == 3 and trace.lost_events == 3
    assert res.skipped_by_event == {"kvm_nested_vmexit": 1}
    assert res.events_by_probe == {"kvm_exit": 3, "kvm_entry": 2, "kvm_pio": 1, "kvm_mmio": 3,
                                   "kvm_userspace_exit": 4, "sys_enter_ioctl": 2, "sched_switch": 1}
    # swapper/2 -> CPU 1/KVM: the idle task's side is no vCPU thread; 4243's (it has kvm lines) is kept.
    assert res.sched == {"lines": {"sched_switch": 1}, "kept": {"sched_switch": 1}, "other_threads": {},
                         "out_of_sequence": 0}
    sw = kind(ev, EventKind.SCHED_SWITCH)
    assert len(sw) == 1 and tuple(sw.iloc[0][["ts_ns", "tid", "pid", "cpu", "op", "reason", "flags", "vcpu"]]) == (
        812_000_250_000, 4243, 4243, 2, SchedOp.IN, 0, 0, NO_VCPU)
    assert list(ev["ts_ns"]) == sorted(ev["ts_ns"]) and ev["ts_ns"].iloc[0] == 812_000_100_000

    x = kind(ev, EventKind.EXIT)
    assert list(x["reason"]) == [VmxExit.IO_INSTRUCTION, VmxExit.EPT_MISCONFIG, VmxExit.HLT]
    assert list(x["vcpu"]) == [0, 0, 1] and list(x["pid"]) == [4242, 4242, 4243]
    assert x["info1"].iloc[0] == 0x800040
    n = kind(ev, EventKind.ENTRY)
    assert list(n["flags"]) == [0, int(EventFlag.IMMEDIATE_EXIT)] and list(n["rip"]) == [0xFFF0, 0xFFF1]

    p = kind(ev, EventKind.PIO).iloc[0]
    assert (p["op"], p["port"], p["size"], p["count"], p["value"]) == (PioOp.WRITE, 0x80, 1, 1, 0x2A)
    assert p["flags"] == int(EventFlag.VALUE)
    m = kind(ev, EventKind.MMIO)
    assert list(m["op"]) == [MmioOp.UNSATISFIED_READ, MmioOp.READ, MmioOp.WRITE]
    assert list(m["gpa"]) == [0xFED00010, 0xFED00010, 0xFEE000B0]
    assert list(m["value"]) == [0, 0x1234, 0] and list(m["size"]) == [4, 4, 4]
    u = kind(ev, EventKind.USERSPACE_EXIT)
    assert list(u["reason"]) == [2, 6, 0, 0] and list(u["err"]) == [0, 0, -4, -14]
    r = kind(ev, EventKind.RUN)
    assert list(r["tid"]) == [4242, 4242] and (r["vcpu"] == NO_VCPU).all()

    # The reports run on it: the read the VMM answered is one access.
    s = trace.summary
    assert s.interrupted_runs == 1 and s.failed_runs == 1
    assert s.mmio.set_index(["gpa", "direction"])["count"].to_dict() == {
        (0xFED00010, "read"): 1, (0xFEE000B0, "write"): 1}
    assert exit_counts(trace) == {("VMX", "IO_INSTRUCTION", 30, ""): 1, ("VMX", "EPT_MISCONFIG", 49, ""): 1,
                                  ("VMX", "HLT", 12, ""): 1}


def test_ftrace_tgid_column_and_4_char_flags(tmp_path):
    res, trace, ev = run(tmp_path, src=DATA / "ftrace-tgid.txt")
    assert res.format == "ftrace" and res.unknown_lines == 0
    assert res.skipped_by_event == {}
    # <idle> wakes 3931, a vCPU thread of process 3927 (the TGID column of its kvm lines).
    w = kind(ev, EventKind.WAKEUP)
    assert len(w) == 1 and tuple(w.iloc[0][["ts_ns", "tid", "pid", "cpu", "op"]]) == (
        302_533_100_000, 3931, 3927, 1, 0)
    assert res.events_by_probe["sched_wakeup"] == 1
    x = kind(ev, EventKind.EXIT)
    # (TGID) gives the process; the task column is the thread. (-------): the thread only.
    assert list(zip(x["pid"], x["tid"])) == [(3927, 3930), (3927, 3931), (5120, 5120)]
    assert list(x["cpu"]) == [7, 5, 2]
    assert list(x["reason"]) == [VmxExit.EPT_VIOLATION, VmxExit.HLT, VmxExit.INTERRUPT_WINDOW]
    assert [d["pid"] for d in trace.domains] == [3927, 5120]
    assert trace.domains[0]["vcpus"] == [0, 1] and trace.domains[0]["tids"] == [3930, 3931]
    assert trace.domains[0]["vcpu_threads"] == {"0": 3930, "1": 3931}


def test_trace_pipe_without_header(tmp_path):
    res, trace, ev = run(tmp_path, src=DATA / "trace-pipe.txt")
    assert res.format == "ftrace" and res.events == 4 and res.unknown_lines == 0
    p = kind(ev, EventKind.PIO).iloc[0]
    assert (p["op"], p["port"], p["value"]) == (PioOp.READ, 0x71, 0)


def test_ftrace_without_flags_column(tmp_path):
    """options/irq-info off: no flags column, as trace-cmd prints it."""
    text = "# tracer: nop\n#\n  qemu-system-x86-77      [001]    10.000001: kvm_exit: reason HLT rip 0x1 info 0 0\n"
    res, _, ev = run(tmp_path, text)
    assert res.format == "ftrace" and res.events == 1 and ev["pid"].iloc[0] == 77


def test_perf_script(tmp_path):
    res, trace, ev = run(tmp_path, src=DATA / "perf-script.txt")
    assert res.format == "perf" and res.unknown_lines == 0
    assert res.skipped_by_event == {"kvm_fast_mmio": 1}
    assert res.events_by_probe == {"kvm_exit": 3, "kvm_entry": 1, "kvm_pio": 1, "kvm_userspace_exit": 1}
    # swapper -> 3927: the process's main thread has no kvm line, so it is no vCPU thread.
    assert res.sched == {"lines": {"sched_switch": 1}, "kept": {}, "other_threads": {"sched_switch": 1},
                         "out_of_sequence": 0}
    assert kind(ev, EventKind.SCHED_SWITCH).empty
    x = kind(ev, EventKind.EXIT)
    assert list(zip(x["pid"], x["tid"])) == [(3927, 3930), (3927, 3931), (5120, 5120)]
    assert list(x["vcpu"]) == [NO_VCPU, 1, NO_VCPU]
    assert x["ts_ns"].iloc[0] == 302_533_069_000
    p = kind(ev, EventKind.PIO).iloc[0]
    assert (p["port"], p["count"], p["value"]) == (0x80, 4, 7)
    assert trace.domains[0]["name"] == "qemu-system-x86"
    assert trace.domains[0]["vcpu_threads"] == {"0": 3930, "1": 3931}


def test_bare_lines_without_task(tmp_path):
    text = ("kvm_exit: reason HLT rip 0xffffffff81000000 info 0 0\n"
            "kvm_entry: vcpu 0\n"
            "kvm_exit: vcpu 0 reason CPUID rip 0x10 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0\n")
    res, trace, ev = run(tmp_path, text)
    assert res.format == "bare" and res.events == 3
    assert (ev["pid"] == 0).all() and (ev["tid"] == 0).all() and (ev["cpu"] == NO_CPU).all()
    assert (ev["ts_ns"] == 0).all()
    assert list(kind(ev, EventKind.EXIT)["reason"]) == [VmxExit.HLT, VmxExit.CPUID]


def test_detect_format():
    assert detect_format(["cpus=4\n", "  x-1 [000] 1.000001: kvm_exit: reason HLT rip 0x1 info 0 0\n"]) == "trace-cmd"
    assert detect_format(["  x-1 [000] 1.000001: kvm_exit: reason HLT rip 0x1 info 0 0\n"]) == "trace-cmd"
    assert detect_format(["  x-1 [000] d..1. 1.000001: kvm_exit: reason HLT rip 0x1 info 0 0\n"]) == "ftrace"
    assert detect_format(["  x-1 (    1) [000] d... 1.000001: kvm_entry: vcpu 0\n"]) == "ftrace"
    assert detect_format(["# tracer: nop\n", "#\n"]) == "ftrace"
    assert detect_format(["  x 1/2 [000] 1.000001: kvm:kvm_exit: reason HLT rip 0x1 info 0 0\n"]) == "perf"
    assert detect_format(["kvm_entry: vcpu 3\n"]) == "bare"
    with pytest.raises(TraceFileError, match="no line has the shape"):
        detect_format(["hello\n", "world\n"])


def test_explicit_format(tmp_path):
    res, _, _ = run(tmp_path, src=DATA / "perf-script.txt", fmt="perf")
    assert res.format == "perf" and res.events == 6
    # Told it is trace-cmd text, the perf lines are not read (counted, not fatal).
    with pytest.raises(TraceFileError, match="holds no kvm events"):
        run(tmp_path, src=DATA / "perf-script.txt", fmt="trace-cmd")
    with pytest.raises(ValueError, match="unknown format"):
        run(tmp_path, src=DATA / "perf-script.txt", fmt="csv")


# --------------------------------------------------------------------------
# Event shapes
# --------------------------------------------------------------------------

PFX = "  qemu-system-x86-100 [000] 5.000001: "


def test_kvm_exit_every_kernel_era(tmp_path):
    text = "".join(PFX + s + "\n" for s in [
        "kvm_exit: reason HLT rip 0x10 info 0 0",  # <= 5.x / plugin
        "kvm_exit: reason PENDING_INTERRUPT rip 0x10 info 0 0",  # <= 5.4 name of 7
        "kvm_exit: vcpu 2 reason CPUID rip 0x10 info1 0x0000000000000001 info2 0x0000000000000002 "
        "intr_info 0x00000003 error_code 0x00000004",  # 5.10 - 6.x
        "kvm_exit: vcpu 2 reason CPUID rip 0x10 info1 0x0000000000000001 info2 0x0000000000000002 "
        "intr_info 0x00000003 error_code 0x00000004 requests 0x0000000000000000",  # 6.1x
        "kvm_exit: vcpu 2 reason INVALID_STATE FAILED_VMENTRY rip 0x10 info1 0x0 info2 0x0 "
        "intr_info 0x0 error_code 0x0",  # VMX flag after the name
        "kvm_exit: vcpu 2 reason 0x4e rip 0x10 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0",  # unnamed code
        "kvm_exit: reason UNKNOWN (78) rip 0x10 info 0 0",  # trace-cmd's plugin for a code it cannot name
    ])
    res, trace, ev = run(tmp_path, text)
    assert res.unknown_lines == 0 and res.undecodable_exits == {}
    x = kind(ev, EventKind.EXIT)
    assert list(x["reason"]) == [12, 7, 10, 10, 0x80000021, 0x4E, 78]
    assert (x["isa"] == Isa.VMX).all()  # the number takes the ISA the names voted for
    assert list(x["vcpu"]) == [NO_VCPU, NO_VCPU, 2, 2, 2, 2, NO_VCPU]
    assert (x["info1"].iloc[2], x["info2"].iloc[2], x["intr_info"].iloc[2], x["error_code"].iloc[2]) == (1, 2, 3, 4)
    counts = exit_counts(trace)
    assert counts[("VMX", "INVALID_STATE", 33, "FAILED_VMENTRY")] == 1
    assert counts[("VMX", "INTERRUPT_WINDOW", 7, "")] == 1
    assert counts[("VMX", "UNKNOWN(0x4e)", 0x4E, "")] == 2  # 78 == 0x4e


def test_undecodable_exit_reason_is_counted_not_stored(tmp_path):
    text = (PFX + "kvm_exit: reason HLT rip 0x10 info 0 0\n"
            + PFX + "kvm_exit: reason UNKNOWN rip 0x10 info 0 0\n"  # the plugin's word for a code it cannot name
            + PFX + "kvm_exit: reason UNKNOWN rip 0x10 info 0 0\n"
            + PFX + "kvm_exit: reason NOT_A_REASON rip 0x10 info 0 0\n")
    res, trace, ev = run(tmp_path, text)
    assert res.undecodable_exits == {"NOT_A_REASON": 1, "UNKNOWN": 2}
    assert res.events == 1 and len(kind(ev, EventKind.EXIT)) == 1
    assert trace.header["import"]["undecodable_exits"] == {"NOT_A_REASON": 1, "UNKNOWN": 2}
    assert "no known name or number" in res.message()


def test_svm_names(tmp_path):
    res, trace, ev = run(tmp_path, src=DATA / "svm-trace-cmd.txt")
    assert res.isa == "SVM" and trace.header["host"]["isa"] == "SVM"
    x = kind(ev, EventKind.EXIT)
    assert list(x["reason"]) == [SvmExit.NPF, SvmExit.HLT, SvmExit.IOIO, SvmExit.MSR, SvmExit.EXCP_PF, SvmExit.INTR]
    assert (x["isa"] == Isa.SVM).all()
    assert x["info2"].iloc[0] == 0xFEE00300
    names = {r[1] for r in exit_counts(trace)}
    assert names == {"npf", "hlt", "io", "msr", "PF excp", "interrupt"}


def test_isa_override(tmp_path):
    """Numbers alone cannot say the vendor: --isa does."""
    text = PFX + "kvm_exit: vcpu 0 reason 0x7b rip 0x10 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0\n"
    res, trace, ev = run(tmp_path, text)
    assert res.isa == "unknown" and kind(ev, EventKind.EXIT)["isa"].iloc[0] == Isa.UNKNOWN
    res, trace, ev = run(tmp_path, text, isa="svm")
    assert res.isa == "SVM" and trace.header["import"]["isa_from"] == "--isa"
    x = kind(ev, EventKind.EXIT).iloc[0]
    assert (x["isa"], x["reason"]) == (Isa.SVM, SvmExit.IOIO)
    assert exit_counts(trace) == {("SVM", "io", 0x7B, ""): 1}
    with pytest.raises(ValueError, match="unknown ISA"):
        run(tmp_path, text, isa="arm")


def test_kvm_entry_shapes(tmp_path):
    text = "".join(PFX + s + "\n" for s in [
        "kvm_entry: vcpu 0",
        "kvm_entry: vcpu 1, rip 0xffffffff81000000",
        "kvm_entry: vcpu 2 rip 0x1234",
        "kvm_entry: vcpu 3, rip 0x10 intr_info 0x80000b0e error_code 0x00000002",
        "kvm_entry: vcpu 4, rip 0x10 intr_info 0x00000000 error_code 0x00000000[immediate exit]",
    ])
    res, _, ev = run(tmp_path, text)
    n = kind(ev, EventKind.ENTRY)
    assert res.unknown_lines == 0 and list(n["vcpu"]) == [0, 1, 2, 3, 4]
    assert list(n["rip"]) == [0, 0xFFFFFFFF81000000, 0x1234, 0x10, 0x10]
    assert (n["intr_info"].iloc[3], n["error_code"].iloc[3]) == (0x80000B0E, 2)
    assert list(n["flags"]) == [0, 0, 0, 0, int(EventFlag.IMMEDIATE_EXIT)]


def test_kvm_userspace_exit_errors(tmp_path):
    text = "".join(PFX + s + "\n" for s in [
        "kvm_userspace_exit: reason KVM_EXIT_HLT (5)",
        "kvm_userspace_exit: reason restart (4)",
        "kvm_userspace_exit: reason error (22)",
        "kvm_userspace_exit: reason 0x25 (37)",
    ])
    _, trace, ev = run(tmp_path, text)
    u = kind(ev, EventKind.USERSPACE_EXIT)
    assert list(u["reason"]) == [5, 0, 0, 37] and list(u["err"]) == [0, -4, -22, 0]
    assert trace.summary.interrupted_runs == 1 and trace.summary.failed_runs == 1


def test_sys_enter_ioctl_other_than_kvm_run_is_skipped(tmp_path):
    text = (PFX + "sys_enter_ioctl: fd: 0x0000000a, cmd: 0xffffffffc008ae67, arg: 0x7fd3191f8240\n"
            + PFX + "sys_enter_ioctl: fd: 0x0000000b, cmd: 0x0000ae80, arg: 0x00000000\n")
    res, _, ev = run(tmp_path, text)
    assert res.events_by_probe == {"sys_enter_ioctl": 1} and res.skipped_by_event == {"sys_enter_ioctl": 1}
    assert list(ev["kind"]) == [EventKind.RUN]


def test_timestamps_are_exact(tmp_path):
    text = ("  a-1 [000] 25135.606865: kvm_entry: vcpu 0\n"
            "  a-1 [000] 9007199.254740993: kvm_entry: vcpu 0\n"  # ns, beyond a double's precision
            "  a-1 [000] 0.5: kvm_entry: vcpu 0\n")
    res, trace, ev = run(tmp_path, text)
    assert list(ev["ts_ns"]) == [25135_606865_000, 9007199_254740993, 500_000_000]
    assert trace.data.trailer["start_time_ns"] == 500_000_000
    assert trace.data.trailer["end_time_ns"] == 9007199_254740993


def test_task_names_with_spaces_slashes_and_dashes(tmp_path):
    text = ("  CPU 0/KVM-60250 [007] 1.000001: kvm_entry: vcpu 0\n"
            "  my-vmm-2-77 [001] 1.000002: kvm_entry: vcpu 0\n"
            "  <...>-150742 [019] 1.000003: kvm_entry: vcpu 1\n")
    _, trace, ev = run(tmp_path, text)
    assert list(ev["pid"]) == [60250, 77, 150742]
    assert [d["name"] for d in trace.domains] == ["CPU 0/KVM", "my-vmm-2", "<...>"]


def test_guests_with_the_same_vcpu_ids_stay_apart(tmp_path):
    text = ("  qemu-a-10 [000] 1.000001: kvm_exit: vcpu 0 reason HLT rip 0x1 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0\n"
            "  qemu-b-20 [001] 1.000002: kvm_exit: vcpu 0 reason CPUID rip 0x1 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0\n"
            "  qemu-a-10 [000] 1.000003: kvm_exit: vcpu 0 reason HLT rip 0x1 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0\n")
    _, trace, ev = run(tmp_path, text)
    x = kind(ev, EventKind.EXIT)
    assert x.groupby(["pid", "reason"]).size().to_dict() == {(10, 12): 2, (20, 10): 1}
    assert [(d["pid"], d["vcpus"]) for d in trace.domains] == [(10, [0]), (20, [0])]


# --------------------------------------------------------------------------
# What is not read, and bad input
# --------------------------------------------------------------------------


def test_nested_vmexit_lines_are_not_exits(tmp_path):
    body = "vcpu 0 reason EPT_VIOLATION rip 0x10 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0"
    text = (PFX + "kvm_nested_vmexit: " + body + "\n"
            + PFX + "kvm_nested_vmexit_inject: reason EXTERNAL_INTERRUPT info1 0 info2 0 int_info 800000ec "
              "int_info_err 0\n"
            + PFX + "kvm_exit: " + body + "\n")
    res, trace, ev = run(tmp_path, text)
    assert res.skipped_by_event == {"kvm_nested_vmexit": 1, "kvm_nested_vmexit_inject": 1}
    assert exit_counts(trace) == {("VMX", "EPT_VIOLATION", 48, ""): 1}


def test_garbage_lines_are_counted_with_line_numbers(tmp_path):
    good = PFX + "kvm_exit: reason HLT rip 0x10 info 0 0\n"
    text = (good + "this is not a trace line\n" + good
            + PFX + "kvm_exit: reason HLT rip nothex info 0 0\n"  # a kvm_exit nobody can read
            + "\n# a comment\n" + good)
    res, trace, ev = run(tmp_path, text)
    assert res.events == 3 and res.unknown_lines == 2 and res.unknown_examples == [2, 4]
    assert trace.header["import"]["unknown_lines"] == 2 and trace.header["import"]["unknown_examples"] == [2, 4]
    assert "lines 2, 4" in res.message()


def test_unknown_examples_are_capped(tmp_path):
    text = "garbage\n" * 50 + PFX + "kvm_entry: vcpu 0\n"
    res, _, _ = run(tmp_path, text)
    assert res.unknown_lines == 50 and res.unknown_examples == list(range(1, importer.UNKNOWN_EXAMPLES + 1))


def test_truncated_last_line(tmp_path):
    good = PFX + "kvm_exit: reason HLT rip 0x10 info 0 0\n"
    res, trace, ev = run(tmp_path, good * 3 + PFX + "kvm_exit: reason HLT rip 0xffff")
    assert res.truncated_last_line and res.events == 3 and res.unknown_lines == 0 and res.lines == 4
    assert trace.header["import"]["truncated_last_line"] is True
    assert "cut short" in res.message()
    # Cut inside a line that would still parse: not trusted either.
    res, _, _ = run(tmp_path, good * 3 + PFX + "kvm_exit: reason HLT rip 0x10 info 0 ")
    assert res.truncated_last_line and res.events == 3


def test_binary_trace_dat_is_refused_with_the_trace_cmd_hint(tmp_path):
    dat = tmp_path / "trace.dat"
    dat.write_bytes(b"\x17\x08\x44tracing6\x00\x00\x00\x00" + bytes(range(256)))
    with pytest.raises(TraceFileError, match=r"trace-cmd report -i .*trace\.dat") as e:
        import_text(dat, tmp_path / "out.kvmtrace")
    assert "binary" in str(e.value)
    other = tmp_path / "blob.bin"
    other.write_bytes(b"abc\x00\x01\x02" * 100)
    with pytest.raises(TraceFileError, match="binary file.*trace-cmd report"):
        import_text(other, tmp_path / "out.kvmtrace")
    assert not (tmp_path / "out.kvmtrace").exists()


def test_empty_file_and_file_without_kvm_events(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(TraceFileError, match="is empty"):
        import_text(empty, tmp_path / "out.kvmtrace")
    sched = tmp_path / "sched.txt"
    sched.write_text("cpus=2\n          <idle>-0     [001] 1.000001: sched_switch: prev_comm=swapper/1 "
                     "prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=a next_pid=2 next_prio=120\n")
    with pytest.raises(TraceFileError, match=r"no kvm events.*sched_switch 1.*trace-cmd record -e kvm"):
        import_text(sched, tmp_path / "out.kvmtrace")
    prose = tmp_path / "prose.txt"
    prose.write_text("hello\nworld\n")
    with pytest.raises(TraceFileError, match="holds no kvm events"):
        import_text(prose, tmp_path / "out.kvmtrace")
    assert not (tmp_path / "out.kvmtrace").exists()
    with pytest.raises(TraceFileError, match="does not exist"):
        import_text(tmp_path / "missing.txt", tmp_path / "out.kvmtrace")


def test_output_errors(tmp_path):
    src = DATA / "trace-pipe.txt"
    with pytest.raises(OutputError, match="no directory"):
        import_text(src, tmp_path / "nowhere" / "out.kvmtrace")
    copy = tmp_path / "in.txt"
    copy.write_text(src.read_text())
    with pytest.raises(OutputError, match="is the input file"):
        import_text(copy, copy)
    assert copy.read_text() == src.read_text()


def test_gzip_input(tmp_path):
    src = tmp_path / "trace.txt.gz"
    src.write_bytes(gzip.compress((DATA / "trace-pipe.txt").read_bytes()))
    res, _, _ = run(tmp_path, src=src)
    assert res.format == "ftrace" and res.events == 4


def test_crlf_lines_and_trace_cmd_headers(tmp_path):
    text = ("cpus=2\r\nCPU 1 is empty\r\n"
            + PFX + "kvm_exit: reason HLT rip 0x10 info 0 0\r\n"
            + PFX + "kvm_pio: pio_write at 0x80 size 1 count 1 val 0x0 \r\n"
            + "CPU:0 [LOST EVENTS]\r\n"
            + "CPU:1 [EVENTS DROPPED]\r\n"
            + "CPU:1 [204600 EVENTS DROPPED]\r\n"
            + "version = 6\r\n")
    res, trace, ev = run(tmp_path, text)
    assert res.format == "trace-cmd" and res.events == 2 and res.unknown_lines == 0
    assert res.lost_marks_without_count == 2 and res.lost_events == 204600 == trace.lost_events
    assert trace.header["import"]["lost_marks_without_count"] == 2 and "without saying how many" in res.message()
    assert trace.header["host"]["cpus"] == 2


def test_default_output():
    assert importer.default_output("/x/report.txt") == Path("/x/report.kvmtrace")
    assert importer.default_output("trace.txt.gz") == Path("trace.kvmtrace")
    assert importer.default_output("pipe") == Path("pipe.kvmtrace")


def test_header_and_trailer(tmp_path):
    res, trace, _ = run(tmp_path, src=DATA / "ftrace-trace.txt")
    h = trace.header
    assert h["source"] == "import" and h["values_captured"] is True and h["tracepoint_formats"] == {}
    assert h["probes"] == ["kvm_exit", "kvm_entry", "kvm_pio", "kvm_mmio", "kvm_userspace_exit", "sys_enter_ioctl",
                           "sched_switch"]
    imp = h["import"]
    assert imp["path"] == str(DATA / "ftrace-trace.txt") and imp["format"] == "ftrace"
    assert imp["lines"] == 31 == res.lines and imp["events"] == 16 == res.events == len(trace.events)
    assert imp["skipped_by_event"] == {"kvm_nested_vmexit": 1}
    assert imp["sched"] == {"lines": {"sched_switch": 1}, "kept": {"sched_switch": 1}, "other_threads": {},
                            "out_of_sequence": 0}
    assert imp["run_edges"] == {"sys_enter_ioctl": 2} and imp["folded"] == {}
    assert imp["unknown_lines"] == 0 and imp["unknown_examples"] == [] and imp["truncated_last_line"] is False
    assert [(d["name"], d["pid"], d["vcpus"]) for d in h["domains"]] == [("CPU 0/KVM", 4242, [0]), ("CPU 1/KVM", 4243, [1])]
    t = trace.data.trailer
    assert trace.complete and t["stop_reason"] == "import" and t["lost_events"] == 3
    assert (t["start_time_ns"], t["end_time_ns"]) == (812_000_100_000, 812_000_300_000)
    assert t["events_written"] == 16
    assert json.loads(json.dumps(h)) == h


def test_many_batches_and_isa_decided_after_the_first(tmp_path, monkeypatch):
    """Numbers before any name, across batches, still get the ISA the whole trace votes for."""
    monkeypatch.setattr(importer, "BATCH_EVENTS", 4)
    num = PFX + "kvm_exit: vcpu 0 reason 0x30 rip 0x1 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0\n"
    hlt = PFX + "kvm_exit: vcpu 0 reason HLT rip 0x1 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0\n"
    bad = PFX + "kvm_exit: vcpu 0 reason Hlt rip 0x1 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0\n"
    entry = PFX + "kvm_entry: vcpu 0\n"
    text = (num + entry) * 5 + bad + (hlt + entry) * 5
    res, trace, ev = run(tmp_path, text)
    assert res.events == 21 and len(trace.events) == 21
    x = kind(ev, EventKind.EXIT)
    assert (x["isa"] == Isa.VMX).all()
    assert list(x["reason"]) == [0x30] * 5 + [12] * 6  # "Hlt" is HLT in the trace's ISA (VMX), not SVM's hlt
    assert exit_counts(trace) == {("VMX", "HLT", 12, ""): 6, ("VMX", "EPT_VIOLATION", 48, ""): 5}
    assert len(read_trace(trace.path).table.to_batches()) >= 6


def test_message_names_what_was_left_out(tmp_path):
    res, _, _ = run(tmp_path, src=DATA / "ftrace-trace.txt")
    msg = res.message()
    assert "imported 16 events from 31 lines of ftrace text" in msg
    assert "skipped: not kvmtrace events: 1 lines" in msg
    assert ("scheduler: read 1 sched_switch lines; kept 1 events of vCPU threads (1 sched_switch), "
            "left out 0 of other threads") in msg
    assert "KVM_RUN entered (RUN): 2 from sys_enter_ioctl KVM_RUN" in msg and "3 lost events" in msg
