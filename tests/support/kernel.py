"""Helpers for the tests that run real guests, probes and tracers: what the
host lacks, waiting for a subprocess's line, bpftrace as the independent
tracer, and which BPF programs are loaded. The last two are the benchmark's
own (bench.harness): one bpftrace runner and one bpftool reading for both."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from pathlib import Path

from bench.harness.bpf import KVMTRACE_PROGRAMS, loaded_programs
from bench.harness.tracers.bpftrace import BpftraceRun, keyed

URI = "qemu:///system"


def kernel_problems() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    if not Path("/dev/kvm").exists():
        problems.append("no /dev/kvm")
    if not Path("/sys/kernel/tracing/events/kvm").is_dir():
        problems.append("tracefs with kvm events not mounted")
    try:
        import bcc  # noqa: F401
    except ImportError:
        problems.append("bcc not importable")
    if shutil.which("nasm") is None:
        problems.append("nasm missing")
    r = subprocess.run(["virsh", "-c", URI, "version"], capture_output=True) if shutil.which("virsh") else None
    if r is None or r.returncode != 0:
        problems.append("libvirtd not reachable")
    return problems


def wait_for_line(stream, needle: str, timeout: float, seen: list[str] | None = None) -> str:
    """Read lines from a subprocess pipe until one contains ``needle``."""
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.2)
        if not ready:
            continue
        chunk = stream.readline()
        if not chunk:
            break
        line = chunk.decode(errors="replace")
        if seen is not None:
            seen.append(line)
        if needle in line:
            return line
        buf += chunk
    raise AssertionError(f"no line with {needle!r} within {timeout} s; got: {buf.decode(errors='replace')[-2000:]}")


BPFTRACE_PROG = """
tracepoint:kvm:kvm_pio /pid == %(pid)d/ { @pio[args->port, args->rw, args->size] = count(); }
tracepoint:kvm:kvm_mmio /pid == %(pid)d/ { @mmio[args->gpa, args->type, args->len] = count(); }
tracepoint:kvm:kvm_userspace_exit /pid == %(pid)d/ { @uexit[args->reason, args->errno] = count(); }
"""


class Bpftrace:
    """bpftrace counting kvm_pio, kvm_mmio and kvm_userspace_exit of one process:
    the independent tracer kvmtrace's numbers are checked against.

    It runs as the benchmarks run it (bench.harness's BpftraceRun): the
    constructor returns once the kernel shows its three tracepoint programs
    (bpftrace says attached_probes before it has attached), stop() sends SIGINT.
    """

    def __init__(self, pid: int):
        self.run = BpftraceRun(BPFTRACE_PROG % {"pid": pid})
        self.run.start({"kvm_pio", "kvm_mmio", "kvm_userspace_exit"}, start_timeout=60, attach_timeout=30)

    @property
    def proc(self) -> subprocess.Popen:
        return self.run.proc

    def stop(self) -> dict[str, dict[tuple[int, ...], int]]:
        self.run.stop(wait=60)
        maps = self.run.maps()
        return {name.lstrip("@"): keyed(maps, name) for name in maps}


def _descends_from_us(pid: int) -> bool:
    """Whether process ``pid`` is this one or one of its descendants (/proc's ppid chain)."""
    me = os.getpid()
    while pid > 1:
        if pid == me:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def kvmtrace_progs() -> list[str]:
    """kvmtrace's BPF programs still loaded in the kernel (bpftool prog show),
    but those another live process outside this test's process tree has
    attached: the host is shared, and other people's recordings are not our
    leftovers (a leaked program of ours has no live holder, or one of ours)."""
    progs = loaded_programs(KVMTRACE_PROGRAMS, prog_type=("tracepoint", "raw_tracepoint"), check=True)
    others = set()
    r = subprocess.run(["bpftool", "perf", "show", "-j"], capture_output=True, text=True)
    if r.returncode == 0 and r.stdout.strip():
        import json

        others = {e["prog_id"] for e in json.loads(r.stdout) if not _descends_from_us(e["pid"])}
    return [p for p in progs if int(p.split()[0]) not in others]


def probe_a_paused_demo(workload, domain_name: str, register, **probe_kw):
    """Run the demo guest of ``workload`` once under kvmtrace's Probes, driven
    directly (no `record`): the domain is created paused, the probes are
    attached (``Probes(..., **probe_kw)``) and given its threads by
    ``register(probes, guest)``, then it runs until it stops. Returns
    (events, counters) of every event matched up to then; the domain is
    destroyed whatever happens."""
    from kvmtrace.demo.run import resume, start_demo, stop_demo, wait_stopped
    from kvmtrace.kernel.probe import Probes, available_tracepoints
    from kvmtrace.record.domain import resolve

    conn, dom = start_demo(workload, URI, name=domain_name, paused=True)
    try:
        guest = resolve(conn, domain_name)
        with Probes(available_tracepoints("/sys/kernel/tracing"), **probe_kw) as probes:
            register(probes, guest)
            probes.add_target(guest.pid)
            resume(dom)
            assert wait_stopped(dom, 60)
            time.sleep(0.2)
            probes.stop_matching()
            return probes.take(), probes.counters()
    finally:
        stop_demo(dom)
