"""Where each vCPU's time goes, for real: the demo guest through libvirt, its
vCPU thread's five states recorded by `kvmtrace record` in both modes, and
checked against the kernel's own accounting of the same thread on the same
run (/proc/PID/task/TID/schedstat: time on a CPU and time waiting on a run
queue, kept by the scheduler whatever traces it).

Guest timing on these hosts is fragile (every guest instruction is
emulated, two cores shared with other work): shares are compared with the
independent figure of the same run; fixed thresholds only where the guest
leaves no choice (a halted or paused vCPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from kvmtrace.demo.guest import HALT, Workload
from kvmtrace.demo.run import resume, start_demo, stop_demo
from kvmtrace.kernel.events import VcpuState
from kvmtrace.record.domain import connect, resolve
from kvmtrace.trace import load

from ..support.cli import kvmtrace_cmd
from ..support.kernel import URI, wait_for_line

STORM = Workload(steady=True)
MODES = ("events", "counts")


def schedstat(pid: int, tid: int) -> tuple[int, int]:
    """(ns on a CPU, ns runnable waiting for one) of a thread, as the scheduler keeps them."""
    on_cpu, waiting, _slices = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
    return int(on_cpu), int(waiting)


class Run:
    """A recording of one demo domain: the trace, its vcpu_time row, and the
    thread's schedstat over the same run."""

    def __init__(self, tmp: Path, name: str, mode: str, duration: float, before_stop=None, after_start=None):
        self.out = tmp / f"{name}-{mode}.kvmtrace"
        guest = resolve(connect(URI), name)
        self.pid, self.tid = guest.pid, guest.vcpu_threads[0]
        rec = subprocess.Popen(kvmtrace_cmd("record", "--domain", name, "--mode", mode, "--duration", str(duration),
                                            "-o", str(self.out)), stderr=subprocess.PIPE)
        try:
            wait_for_line(rec.stderr, "recording", 60)
            self.stat0, self.t0 = schedstat(self.pid, self.tid), time.monotonic_ns()
            if after_start:
                after_start()
            self.stderr = rec.stderr.read().decode()
            self.stat1, self.t1 = schedstat(self.pid, self.tid), time.monotonic_ns()
            assert rec.wait(timeout=120) == 0, self.stderr
        finally:
            if rec.poll() is None:
                rec.kill()
        self.trace = load(self.out)
        self.report = json.loads(subprocess.run(kvmtrace_cmd("report", "--format", "json", str(self.out)),
                                                capture_output=True, check=True).stdout)
        rows = [r for r in self.report["vcpu_time"] if r["tid"] == self.tid]
        assert len(rows) == 1, self.report["vcpu_time"]
        self.row = rows[0]

    def share(self, state: str) -> float:
        return self.row[f"{state}_s"] / self.row["total_s"]

    @property
    def independent(self) -> dict[str, float]:
        """Shares of the run from schedstat: on a CPU, and runnable waiting (= preempted)."""
        wall = self.t1 - self.t0
        return {"on_cpu": (self.stat1[0] - self.stat0[0]) / wall, "preempted": (self.stat1[1] - self.stat0[1]) / wall}


@pytest.fixture
def guest(kernel):
    """Start a demo domain (workload, paused=..., debug_exit=...); destroyed afterwards."""
    doms = []

    def start(workload: Workload, **kw):
        name = f"kvmtrace-test-vt-{uuid.uuid4().hex[:8]}"
        _conn, dom = start_demo(workload, URI, name=name, **kw)
        doms.append(dom)
        return name, dom

    yield start
    for dom in doms:
        stop_demo(dom)


@pytest.fixture
def hog_on_cpu0():
    """A busy loop pinned to CPU 0, SCHED_RR priority 1 (see the test below)."""
    hog = subprocess.Popen(["chrt", "-r", "1", "taskset", "-c", "0", "sh", "-c", "while :; do :; done"])
    yield hog
    hog.kill()
    hog.wait()


@pytest.mark.parametrize("mode", MODES)
def test_states_cover_the_recorded_time_and_agree_with_schedstat(guest, tmp_path, mode):
    name, _dom = guest(STORM)
    run = Run(tmp_path, name, mode, 4)
    r = run.row
    states = r["guest_s"] + r["halted_s"] + r["vmm_s"] + r["vmm_waiting_s"] + r["preempted_s"]
    assert states == pytest.approx(r["total_s"], rel=1e-6)
    assert r["total_s"] == pytest.approx(run.report["duration_s"], rel=0.01)
    # A storm never sleeps inside KVM_RUN (no hlt); the scheduler's own figures agree.
    assert r["halted_s"] < 0.01 * r["total_s"]
    ind = run.independent
    assert run.share("guest") + run.share("vmm") == pytest.approx(ind["on_cpu"], abs=0.05), (r, ind)
    assert run.share("preempted") == pytest.approx(ind["preempted"], abs=0.05), (r, ind)
    # kvm_exit/kvm_entry never fire on this host: guest has no split, in neither mode.
    assert "in_guest_s" not in r and "exit_handling_s" not in r
    assert "in_guest_s" not in run.trace.df_vcpu_time().columns
    if mode == "counts":  # the kernel saw no edge, so read out no in-guest row
        from kvmtrace.kernel.events import AGGREGATE, VCPU_TIME_IN_GUEST, EventKind

        ev = run.trace.events
        vt = ev[ev["kind"] == (EventKind.VCPU_TIME | AGGREGATE)]
        assert len(vt) and not (vt["op"] == VCPU_TIME_IN_GUEST).any()


@pytest.mark.parametrize("mode", MODES)
def test_pinned_beside_a_cpu_hog_the_vcpu_is_preempted_about_half_the_time(guest, tmp_path, hog_on_cpu0, mode):
    """The vCPU thread and a busy loop share CPU 0 as SCHED_RR priority 1
    tasks: round-robin in 100 ms slices, each gets half of what real-time
    tasks may take (95 %: RT throttling leaves 5 % to everything else), so
    the vCPU is preempted 0.5 * 0.95 + 0.05 = 52.5 % of the time. Real-time
    priority keeps the host's other work (load 5-6 on 2 cores: with
    ordinary priority the same vCPU was preempted 52-85 % from run to run)
    out of the split (the thread leaves libvirt's cpu cgroup, whose
    real-time runtime is 0, for the root one). Tolerance 0.42-0.62: 40 slices in 4 s can end one
    slice off (2.5 %), and the vCPU's exits to QEMU can wait for QEMU's
    other threads, which run at ordinary priority."""
    name, _dom = guest(STORM)
    tid = resolve(connect(URI), name).vcpu_threads[0]
    os.sched_setaffinity(tid, {0})
    # libvirt's cpu cgroup (v1) for QEMU has no real-time runtime: this test
    # guest's vCPU thread moves to the root group, which has.
    root_cpu = Path("/sys/fs/cgroup/cpu/tasks")
    if root_cpu.exists():
        root_cpu.write_text(str(tid))
    os.sched_setscheduler(tid, os.SCHED_RR, os.sched_param(1))
    run = Run(tmp_path, name, mode, 4)
    ind = run.independent
    print(f"\n{mode}: preempted {run.share('preempted'):.3f}, schedstat {ind['preempted']:.3f}; row {run.row}")
    assert 0.42 <= run.share("preempted") <= 0.62, run.row
    # The scheduler's own run-queue wait of the same thread over the same run.
    assert run.share("preempted") == pytest.approx(ind["preempted"], abs=0.05), (run.row, ind)


@pytest.mark.parametrize("mode", MODES)
def test_a_guest_halted_with_interrupts_off_is_halted(guest, tmp_path, mode):
    # Recording from before its first instruction: paused, then resumed once attached.
    name, dom = guest(HALT, paused=True, debug_exit=False)
    run = Run(tmp_path, name, mode, 5, after_start=lambda: resume(dom))
    print(f"\n{mode}: {run.row}")
    assert run.share("halted") >= 0.95, run.row
    assert run.trace.header["vcpu_states"][str(run.tid)]["in_run"] is False  # paused: waiting in QEMU


@pytest.mark.parametrize("mode", MODES)
def test_a_guest_halted_before_the_recording_started_is_halted(guest, tmp_path, mode):
    name, _dom = guest(HALT, debug_exit=False)
    time.sleep(1.0)
    run = Run(tmp_path, name, mode, 3)
    print(f"\n{mode}: {run.row}")
    st = run.trace.header["vcpu_states"][str(run.tid)]
    assert (st["stat"], st["in_run"], st["sched"]) == ("S", True, "asleep"), st
    assert st["syscall"].split()[:3:2] == ["16", "0xae80"], st
    assert run.share("halted") >= 0.95, run.row


@pytest.mark.parametrize("mode", MODES)
def test_a_paused_domain_waits_in_the_vmm(guest, tmp_path, mode):
    name, dom = guest(STORM)
    time.sleep(0.5)
    dom.suspend()
    time.sleep(0.5)
    run = Run(tmp_path, name, mode, 3)
    print(f"\n{mode}: {run.row}")
    assert run.share("vmm_waiting") >= 0.95, run.row


def test_vmm_time_equals_the_vmm_service_times(guest, tmp_path):
    """Outside KVM_RUN is where QEMU serves the userspace exits: the time
    between each exit and the KVM_RUN that answers it, which the report's
    service-time tables are made of. On a free core all of it is ``vmm``.
    Whether the core is free is the scheduler's to say, on the same run
    (schedstat's run-queue wait of the vCPU thread): with under 1 % of the
    run waiting for a CPU, ``vmm`` alone must equal the service times within
    5 % (measured on a quiet host, 2026-12-05: vmm 1.6158 s against 1.6203 s
    of service over 445,161 exits, 0.3 %, with 0.17 % of the run preempted;
    beside the unit tests on the other core, 2.7 % with 0.8 % preempted: a
    preemption lands in the VMM's short service more than its share). On a
    busy host (2 cores shared with other work: 37-45 % waiting was seen) the
    service time is ``vmm`` plus what the timeline puts outside KVM_RUN off a
    CPU (preempted there, or vmm_waiting), which is asserted always."""
    name, _dom = guest(STORM)
    tid = resolve(connect(URI), name).vcpu_threads[0]
    os.sched_setaffinity(tid, {1})
    os.setpriority(os.PRIO_PROCESS, tid, -20)
    run = Run(tmp_path, name, "events", 4)
    runs = run.trace.df_userspace_exits()
    # The states cover the recording, start to stop; the probes match a moment
    # before its start (while the memory map is read): exits from the start on.
    runs = runs[(runs["service_ns"] >= 0) & (runs["ts_ns"] >= run.trace.start_ns)]
    service_s = runs["service_ns"].sum() / 1e9
    tl = run.trace.vcpu_timeline()
    dur = (tl.end - tl.start) / 1e9
    off_cpu_outside = dur[~tl.in_run & (tl.state != VcpuState.VMM) & (tl.state != VcpuState.GUEST)].sum()
    vmm = run.row["vmm_s"]
    print(f"\nvmm {vmm:.4f} s + off a CPU outside KVM_RUN {off_cpu_outside:.4f} s; service sum {service_s:.4f} s "
          f"over {len(runs)} exits; schedstat {run.independent}; {run.row}")
    assert vmm + off_cpu_outside == pytest.approx(service_s, rel=0.05), run.row
    if run.independent["preempted"] < 0.01:  # a free core
        assert vmm == pytest.approx(service_s, rel=0.05), run.row
    else:
        print(f"not a free core: {run.independent['preempted']:.1%} of the run waiting for a CPU")
