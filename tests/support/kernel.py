"""Helpers for the tests that run real guests, probes and tracers: what the
host lacks, waiting for a subprocess's line, bpftrace as the independent
tracer, and which BPF programs are attached."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

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


def attached_tracepoints(pid: int) -> set[str]:
    """Tracepoints process ``pid`` has BPF programs on (bpftool perf show)."""
    r = subprocess.run(["bpftool", "perf", "show", "-j"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        return set()
    return {e["tracepoint"] for e in json.loads(r.stdout) if e.get("pid") == pid and e.get("fd_type") == "tracepoint"}


class Bpftrace:
    """bpftrace counting kvm_pio, kvm_mmio and kvm_userspace_exit of one process:
    the independent tracer kvmtrace's numbers are checked against."""

    def __init__(self, pid: int):
        self.proc = subprocess.Popen(["bpftrace", "-f", "json", "-e", BPFTRACE_PROG % {"pid": pid}],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for_line(self.proc.stdout, "attached_probes", 60)
        # bpftrace 0.17 says attached_probes before it has attached: wait until
        # the kernel shows its three tracepoint programs.
        deadline = time.monotonic() + 30
        while len(attached_tracepoints(self.proc.pid)) < 3:
            assert time.monotonic() < deadline, "bpftrace did not attach its probes"
            time.sleep(0.02)

    def stop(self) -> dict[str, dict[tuple[int, ...], int]]:
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=60)
        maps: dict[str, dict[tuple[int, ...], int]] = {}
        for line in filter(None, (s.strip() for s in out.decode().splitlines())):
            msg = json.loads(line)
            if msg.get("type") != "map":
                continue
            for name, entries in msg["data"].items():
                maps[name.lstrip("@")] = {tuple(int(x) for x in k.split(",")): v for k, v in entries.items()}
        return maps


# bcc names a TRACEPOINT_PROBE's program tracepoint__SYS__EVENT (kernels with
# BTF names keep it whole, others cut it to 15 characters: kvm__kvm_pio).
_KVMTRACE_PROG = re.compile(r"\btracepoint\s+name (tracepoint__)?(kvm__kvm_|syscalls__sys_ente)")


def kvmtrace_progs() -> list[str]:
    """kvmtrace's BPF programs still loaded in the kernel (bpftool prog show)."""
    out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if _KVMTRACE_PROG.search(line)]
