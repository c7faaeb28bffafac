"""BPF programs seen through bpftool: what a process has attached, waiting
until it has, what the kernel skipped, what is still loaded."""

from __future__ import annotations

import json
import re
import subprocess
import time

OUR_PROGS: set[int] = set()  # every BPF program id our tracers attached, for the leftover check


def bpf_attachments(pid: int) -> dict[str, int]:
    """Tracepoint name -> BPF program id, for the tracepoints (regular or raw) process ``pid`` has attached."""
    r = subprocess.run(["bpftool", "perf", "show", "-j"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        return {}
    found = {}
    for entry in json.loads(r.stdout):
        if entry.get("pid") == pid and entry.get("fd_type") in ("tracepoint", "raw_tracepoint"):
            found[entry["tracepoint"]] = entry["prog_id"]
    return found


def wait_bpf_attached(proc: subprocess.Popen, tracepoints: set[str], timeout: float) -> dict[str, int]:
    """Until ``proc`` has BPF programs on all ``tracepoints`` (bpftool perf show).

    bpftrace prints "attached_probes" before it attaches: without this wait the
    first milliseconds of the guest are not traced.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = bpf_attachments(proc.pid)
        if tracepoints <= set(got):
            return got
        if proc.poll() is not None:
            raise RuntimeError(f"tracer exited (status {proc.returncode}) before attaching")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"tracer attached only {sorted(got)} of {sorted(tracepoints)} in {timeout} s")
        time.sleep(0.02)


def recursion_misses(prog_ids) -> int:
    """Runs of these BPF programs the kernel skipped (a BPF program already running on that CPU)."""
    total = 0
    for pid in set(prog_ids):
        r = subprocess.run(["bpftool", "prog", "show", "id", str(pid), "-j"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            total += int(json.loads(r.stdout).get("recursion_misses", 0))
    return total


# Program names as bpftool shows them. bcc names a TRACEPOINT_PROBE's program
# tracepoint__SYS__EVENT (kernels with BTF names keep it whole, others cut it
# to 15 characters: kvm__kvm_pio); bpftrace's start with the probe type too.
#: kvmtrace- and bpftrace-like programs.
TRACER_PROGRAMS = r"^(kvm_|kvm__|tracepoint__|sys_enter_ioctl|syscalls__)"
#: kvmtrace's own programs on the kvm events and the syscalls' entries, regular
#: (tracepoint__kvm__kvm_pio) or raw (raw_tracepoint__kvm_pio, cut: raw_tracepoint_).
KVMTRACE_PROGRAMS = r"^((tracepoint__)?(kvm__kvm_|syscalls__sys_ente)|raw_tracepoint_(_kvm_|$))"


def loaded_programs(pattern: str = TRACER_PROGRAMS, prog_type: str | tuple[str, ...] | None = None,
                    check: bool = False) -> list[str]:
    """"ID NAME" of every BPF program loaded now whose name matches ``pattern``
    (and whose type is ``prog_type``, e.g. "tracepoint"): anyone's, since others
    may be tracing too. With ``check``, a failing bpftool raises instead of
    answering that nothing is loaded."""
    r = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=check)
    if r.returncode != 0 or not r.stdout.strip():
        return []
    pat = re.compile(pattern)
    types = (prog_type,) if isinstance(prog_type, str) else prog_type
    return [f"{p['id']} {p.get('name', '')}" for p in json.loads(r.stdout)
            if pat.match(p.get("name", "")) and (types is None or p.get("type") in types)]
