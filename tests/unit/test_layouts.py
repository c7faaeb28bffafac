"""Which probes are raw, regular or launch-only, decided from the tracepoint
formats of a kernel (the stored ones in tests/data/formats) and its release;
and that the BPF C each plan builds holds the right program variants."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kvmtrace.kernel.events import bpf_defines
from kvmtrace.kernel.layouts import kernel_version, plan_probes, raw_events, run_edge
from kvmtrace.kernel.probe import bpf_source, format_fields, probes_dir

FORMATS = Path(__file__).resolve().parents[1] / "data" / "formats"
SYSCALLS = {"sys_enter_ioctl": {"cmd", "fd", "arg"}, "sys_exit_ioctl": {"ret"}, "sys_enter_close": {"fd"},
            "sched_process_exit": {"comm", "pid", "prio"}}


def fixture_fields(kernel: str) -> dict[str, set[str]]:
    """event -> its format's fields, for one stored kernel (plus the syscall and sched events)."""
    out = dict(SYSCALLS)
    for fmt in (FORMATS / kernel / "events" / "kvm").glob("*/format"):
        out[fmt.parent.name] = format_fields(fmt.read_text())
    return out


def test_kernel_version_reads_a_release():
    assert kernel_version("6.18.44-amd64") == (6, 18)
    assert kernel_version("5.4.0-150-generic") == (5, 4)
    assert kernel_version("weird") == (0, 0)


def test_linux_6_18_plan():
    plan = plan_probes(fixture_fields("linux-6.18"), "6.18.44")
    assert plan.raw == {"kvm_pio", "kvm_mmio", "kvm_userspace_exit"}
    assert plan.run_edge == "kvm_fpu"
    # kvm_exit and kvm_entry read fields their raw arguments lack: regular, returning 1.
    assert plan.attachments()["kvm_exit"] == plan.attachments()["kvm_entry"] == "tracepoint"
    assert not any(p.startswith("sys_") for p in plan.probes)  # no syscall hook while a guest runs
    launch = plan_probes(fixture_fields("linux-6.18"), "6.18.44", launch=True)
    assert launch.launch_only == ("sys_enter_ioctl", "sys_exit_ioctl", "sys_enter_close")


def test_linux_5_4_plan():
    plan = plan_probes(fixture_fields("linux-5.4"), "5.4.0")
    # kvm_entry(unsigned int vcpu_id): its raw argument is all it has.
    assert plan.raw == {"kvm_pio", "kvm_mmio", "kvm_userspace_exit", "kvm_entry"}
    # No bpf_task_pt_regs() before 5.15: KVM_RUN from the syscall, which then stays.
    assert plan.run_edge == "sys_enter_ioctl" and "kvm_fpu" not in plan.probes
    launch = plan_probes(fixture_fields("linux-5.4"), "5.4.0", launch=True)
    assert launch.launch_only == ("sys_exit_ioctl", "sys_enter_close")
    assert "sys_enter_ioctl" in launch.probes


def test_older_layouts_fall_back_on_the_regular_tracepoint():
    f = fixture_fields("linux-5.4")
    assert "kvm_mmio" not in raw_events(f, "4.14.0")  # val was a u64, not a pointer
    assert "kvm_pio" not in raw_events({**f, "kvm_pio": {"rw", "port", "size", "count"}}, "5.4.0")
    assert "kvm_userspace_exit" not in raw_events({**f, "kvm_userspace_exit": {"reason"}}, "5.4.0")
    assert "kvm_entry" not in raw_events(fixture_fields("linux-6.18"), "6.18.0")
    assert run_edge({**f, "kvm_fpu": set()}, "6.18.0") == "sys_enter_ioctl"
    assert run_edge(f, "5.15.0") == "kvm_fpu"


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C preprocessor")
@pytest.mark.parametrize("kernel,release", [("linux-5.4", "5.4.0"), ("linux-6.18", "6.18.44")])
@pytest.mark.parametrize("launch", [False, True])
def test_each_plan_builds_its_program_variants(kernel, release, launch):
    fields = fixture_fields(kernel)
    plan = plan_probes(fields, release, launch)
    flags = bpf_defines(probes=list(plan.probes), fields=fields, ringbuf_pages=1, raw=plan.raw,
                        launch=plan.launch, run_by_syscall=plan.run_edge == "sys_enter_ioctl")
    out = subprocess.run(["cc", "-E", "-P", f"-I{probes_dir()}", *flags, "-"],
                         input=bpf_source(f"{probes_dir()}/kvmtrace.bpf.c"), capture_output=True, text=True,
                         check=True).stdout
    raw = set(re.findall(r"\bRAW_TRACEPOINT_PROBE\((\w+)\)", out))
    regular = set(re.findall(r"\bTRACEPOINT_PROBE\(\w+, (\w+)\)", out))
    assert raw == set(plan.raw) | ({"kvm_fpu"} if plan.run_edge == "kvm_fpu" else set())
    assert regular == set(plan.probes) - raw
    # Every regular program leaves the event to perf: no "return 0" in one.
    for body in re.findall(r"\bTRACEPOINT_PROBE\(\w+, \w+\)\s*\{(.*?)\n\}", out, re.S):
        assert "return 0" not in body
    assert ("ran.lookup" in out) is launch
