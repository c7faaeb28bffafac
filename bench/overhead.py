#!/usr/bin/env python3
"""kvmtrace overhead benchmark: guest run time under each tracer, and drain speed.

Part 1, guest run time.  The demo guest (kvmtrace.demo.guest) runs a finite "storm":
N writes to port 0x80 and nothing else, then ends QEMU through isa-debug-exit.
Each write is one kvm_pio event, one userspace exit (KVM_EXIT_IO) and one
KVM_RUN ioctl.  The domain is started paused, the tracer is started and waited
for until it is really attached, and the guest run time is measured from
dom.resume() until the QEMU process ends (its pidfd becomes readable): QEMU's
start-up is not included.  Configurations alternate round-robin (untraced,
kvmtrace events, kvmtrace counts, bpftrace, perf, trace-cmd, untraced, ...)
so that a noisy machine hits them all alike; medians are reported, with the
ratio to the untraced median.  Every tracer's recorded counts are checked
against the guest's program (kvmtrace.demo.guest.expected) and its lost events
are reported.

Part 2, drain speed: events per second per core from kvmtrace's BPF ring
buffer to its trace file, with kvmtrace's own classes (Probes/RingReader and
TraceWriter): (a) TraceWriter.write of synthetic storm events in batches of
65536; (b) one drain of a real ring buffer that the storm guest filled while
nobody read it, then the write of what was drained.

Run as root from the repository root:

    sudo .venv/bin/python bench/overhead.py --rounds 7 --writes 150000

It prints a table and writes bench/results/overhead-<date>-<time>.json.
Every tracer runs in its own process group and is stopped, and every domain
destroyed, in finally blocks; at the end the script checks that none of its
BPF programs is still loaded and that tracefs is as it found it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's kvmtrace, also when run from elsewhere

DOMAIN = "kvmtrace-bench"
URI = "qemu:///system"
TRACEFS = Path("/sys/kernel/tracing")
KVM_EVENTS = ("kvm_pio", "kvm_mmio", "kvm_userspace_exit", "kvm_exit", "kvm_entry")
KVM_RUN = 0xAE80
KVM_EXIT_IO = 2
BATCH = 65536

# What a tracer saw, per kind.  "uexit_io": kvm_userspace_exit with reason
# KVM_EXIT_IO and errno >= 0; "uexit_other": every other kvm_userspace_exit
# event (a -EINTR "restart", or another reason): not a port exit.
KINDS = ("pio", "mmio", "uexit_io", "uexit_other", "run", "exit", "entry", "other")


STARTED: set[int] = set()  # every tracer process (= process group) started, for the leftover check
OUR_PROGS: set[int] = set()  # every BPF program id our tracers attached, for the leftover check


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Processes


class Lines:
    """Read a child's pipe in a thread, keep its lines, wait for one."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream) -> None:
        try:
            for raw in iter(stream.readline, b""):
                with self._cond:
                    self.lines.append(raw.decode(errors="replace"))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def wait_for(self, needle: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if needle in line:
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    return None
                self._cond.wait(min(left, 0.2))

    def text(self, join_timeout: float = 5.0) -> str:
        self._thread.join(join_timeout)
        with self._cond:
            return "".join(self.lines)


def reap(proc: subprocess.Popen, timeout: float):
    """Wait for a child with wait4 (for its CPU time). Returns rusage or None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_group(proc: subprocess.Popen, signals=(signal.SIGINT, signal.SIGTERM, signal.SIGKILL),
               wait: float = 10.0):
    """Stop a tracer started with start_new_session=True, and every process of its group.

    Signals go to the group id (= the tracer's pid), never to processes found by
    name. Returns the tracer's rusage if this call reaped it.
    """
    usage = None
    for sig in signals:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            usage = reap(proc, wait) or usage
        elif group_alive(proc.pid):  # the leader is gone, helpers are not (trace-cmd's recorders)
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait
            while group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        if proc.returncode is not None and not group_alive(proc.pid):
            break
    return usage


def cpu_seconds(usage) -> float | None:
    return None if usage is None else round(usage.ru_utime + usage.ru_stime, 4)


def group_cpu_s(pgid: int) -> float:
    """CPU time (user + system, with reaped children) of every process in group ``pgid``, from /proc."""
    ticks = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # fields[0] is the state: pgrp is stat field 5
            ticks += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def bpf_attachments(pid: int) -> dict[str, int]:
    """Tracepoint name -> BPF program id, for the tracepoints process ``pid`` has attached."""
    r = subprocess.run(["bpftool", "perf", "show", "-j"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        return {}
    found = {}
    for entry in json.loads(r.stdout):
        if entry.get("pid") == pid and entry.get("fd_type") == "tracepoint":
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


def tool_version(argv: list[str]) -> str | None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (r.stdout + r.stderr).strip()
    return text.splitlines()[0] if text else None


# --------------------------------------------------------------------------
# tracefs state (trace-cmd changes it and, on this kernel, cannot restore it)


class TracefsState:
    """What trace-cmd may leave changed in tracefs, saved and put back."""

    def __init__(self, root: Path = TRACEFS):
        self.root = root
        self.files = ["tracing_on", "buffer_size_kb", "trace_clock", "set_event_pid", "tracing_cpumask"]
        for ev in KVM_EVENTS:
            self.files += [f"events/kvm/{ev}/enable", f"events/kvm/{ev}/filter"]
        self.saved: dict[str, str] = {}
        self.options: dict[str, bool] = {}
        self.instances: set[str] = set()

    def _read(self, rel: str) -> str | None:
        try:
            return (self.root / rel).read_text()
        except OSError:
            return None

    def _options(self) -> dict[str, bool]:
        text = self._read("trace_options") or ""
        return {o[2:] if o.startswith("no") else o: not o.startswith("no") for o in text.split()}

    def save(self) -> "TracefsState":
        self.saved = {f: v for f in self.files if (v := self._read(f)) is not None}
        self.options = self._options()
        self.instances = set(os.listdir(self.root / "instances")) if (self.root / "instances").is_dir() else set()
        return self

    @staticmethod
    def _value(rel: str, text: str) -> str:
        text = text.strip()
        if rel == "trace_clock":
            m = re.search(r"\[(\S+)\]", text)
            return m.group(1) if m else text
        if rel.endswith("/filter") and text == "none":
            return "0"
        if rel == "buffer_size_kb" and "(" in text:  # "7 (expanded: 1408)"
            return text.split()[0]
        return text

    def diff(self) -> list[str]:
        out = [f for f, v in self.saved.items() if self._read(f) != v]
        now = self._options()
        out += [f"options/{k}" for k, v in self.options.items() if now.get(k, v) != v]
        if (self.root / "instances").is_dir():
            out += [f"instances/{i}" for i in set(os.listdir(self.root / "instances")) - self.instances]
        return out

    def restore(self) -> list[str]:
        """Put back what changed; return what had changed."""
        changed = self.diff()
        now = self._options()
        for k, v in self.options.items():
            if now.get(k, v) != v:
                self._write(f"options/{k}", "1" if v else "0")
        for f, v in self.saved.items():
            if f == "tracing_on":
                continue
            if self._read(f) != v:
                value = self._value(f, v)
                if f.endswith("set_event_pid") and not value:
                    with open(self.root / f, "w"):  # O_TRUNC clears the list
                        pass
                else:
                    self._write(f, value)
        if (self.root / "instances").is_dir():
            for inst in set(os.listdir(self.root / "instances")) - self.instances:
                try:
                    os.rmdir(self.root / "instances" / inst)
                except OSError:
                    pass
        if "tracing_on" in self.saved and self._read("tracing_on") != self.saved["tracing_on"]:
            self._write("tracing_on", self.saved["tracing_on"].strip())
        return changed

    def _write(self, rel: str, value: str) -> None:
        try:
            (self.root / rel).write_text(value + "\n")
        except OSError as e:
            log(f"warning: could not restore {self.root / rel}: {e}")


# --------------------------------------------------------------------------
# Tracers


@dataclass
class Guest:
    name: str
    pid: int
    vcpu_tids: list[int]


@dataclass
class Outcome:
    """What one tracer recorded in one run."""

    counts: dict[str, int] | None = None  # per KINDS, for the tracepoints the tool traces
    recorded: int | None = None  # events the tool stored
    lost: int | None = None
    lost_detail: dict = field(default_factory=dict)
    tracer_cpu_s: float | None = None
    tracer_rc: int | None = None
    notes: list[str] = field(default_factory=list)
    log_tail: str = ""  # the end of the tracer's own messages


def empty_counts() -> dict[str, int]:
    return {k: 0 for k in KINDS}


def kvmtrace_argv() -> list[str]:
    script = Path(sys.executable).with_name("kvmtrace")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kvmtrace.cli"]


class Tracer:
    name = "?"
    records_run = False  # traces KVM_RUN ioctls too

    def unavailable(self) -> str | None:
        return None

    def cpu_now(self) -> float | None:
        """CPU time used so far by the tracer's processes."""
        proc = getattr(self, "proc", None)
        return group_cpu_s(proc.pid) if proc is not None and proc.returncode is None else None

    def start(self, guest: Guest, workdir: Path) -> None:
        raise NotImplementedError

    def finish(self, guest: Guest) -> Outcome:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Stop whatever still runs (called in a finally block; idempotent)."""
        proc = getattr(self, "proc", None)
        if proc is not None:
            stop_group(proc)


class Kvmtrace(Tracer):
    records_run = True

    def __init__(self, mode: str = "events"):
        self.mode = mode
        self.name = f"kvmtrace {mode}"
        self.proc = None

    def unavailable(self) -> str | None:
        if self.mode == "events":
            return None
        r = subprocess.run(kvmtrace_argv() + ["record", "--help"], capture_output=True, text=True)
        if "--mode" not in r.stdout:
            return "`kvmtrace record --help` does not list --mode yet"
        if self.mode not in r.stdout:
            return f"`kvmtrace record --mode` does not offer {self.mode!r}"
        return None

    def start(self, guest: Guest, workdir: Path) -> None:
        self.path = workdir / f"kvmtrace-{self.mode}.kvmtrace"
        argv = kvmtrace_argv() + ["record", "--domain", guest.name, "-o", str(self.path)]
        if self.mode != "events":
            argv += ["--mode", self.mode]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        STARTED.add(self.proc.pid)
        self.err = Lines(self.proc.stderr)
        if self.err.wait_for("recording", 180) is None:
            raise RuntimeError(f"kvmtrace record did not start: {self.err.text(1)[-1500:]}")
        # The "recording" line comes after bcc attached every probe; check it anyway.
        self.progs = wait_bpf_attached(self.proc, {"kvm_pio", "kvm_userspace_exit"}, 30)
        OUR_PROGS.update(self.progs.values())

    def finish(self, guest: Guest) -> Outcome:
        out = Outcome()
        # It stops by itself when the domain stops.
        usage = reap(self.proc, 60)
        if usage is None:
            out.notes.append("did not stop by itself within 60 s after the guest ended; sent SIGINT")
            usage = stop_group(self.proc)
        out.tracer_cpu_s, out.tracer_rc = cpu_seconds(usage), self.proc.returncode
        stderr = self.err.text()
        out.log_tail = stderr[-600:]
        if "domain stopped" not in stderr:
            out.notes.append("stop line: " + (stderr.strip().splitlines() or ["?"])[-1][-200:])
        r = subprocess.run(kvmtrace_argv() + ["report", "--format", "json", str(self.path)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            out.notes.append(f"kvmtrace report failed: {r.stderr.strip()[-300:]}")
            return out
        rep = json.loads(r.stdout)
        out.lost = int(rep.get("lost_events") or 0)
        out.lost_detail = {"lost_events": rep.get("lost_events"), "complete": rep.get("complete")}
        if rep.get("complete") is False:
            out.notes.append("trace file incomplete")
        counts = self._kinds_from_file()
        if counts is None:  # fall back on the report's own tables
            counts = empty_counts()
            counts["pio"] = sum(int(x["count"]) for x in rep.get("pio", []))
            counts["mmio"] = sum(int(x["count"]) for x in rep.get("mmio", []))
            for x in rep.get("userspace_exits", []):
                counts["uexit_io" if x.get("code") == KVM_EXIT_IO else "uexit_other"] += int(x["count"])
            counts["uexit_other"] += int(rep.get("interrupted_runs") or 0) + int(rep.get("failed_runs") or 0)
            out.notes.append("kinds from the report (RUN not counted)")
        out.counts = counts
        if self.mode == "events":
            out.recorded = int(rep["events"])
        else:
            out.recorded = sum(counts.values())
            out.lost_detail["aggregate_rows"] = rep.get("events")
        # Cross-check the report's own port and exit tables against the ground truth too.
        out.lost_detail["report_pio"] = sum(int(x["count"]) for x in rep.get("pio", []))
        out.lost_detail["report_uexit_io"] = sum(int(x["count"]) for x in rep.get("userspace_exits", [])
                                                 if x.get("code") == KVM_EXIT_IO)
        return out

    def _kinds_from_file(self) -> dict[str, int] | None:
        try:
            import numpy as np

            from kvmtrace.tracefile import read_trace
        except ImportError:
            return None
        try:
            table = read_trace(self.path).table
        except Exception as e:  # noqa: BLE001 - a damaged file is reported, not fatal
            log(f"warning: reading {self.path}: {e}")
            return None
        kind = table.column("kind").to_numpy()
        reason = table.column("reason").to_numpy()
        err = table.column("err").to_numpy()
        value = table.column("value").to_numpy()
        agg = (kind & 0x80) != 0
        weight = np.where(agg, value, 1).astype(np.int64)
        base = kind & 0x7F
        counts = empty_counts()
        names = {1: "exit", 2: "entry", 3: "pio", 4: "mmio", 6: "run"}
        for k in np.unique(base):
            sel = base == k
            if k == 7:  # HIST: latency histogram buckets (counts mode), not traced events
                continue
            if k == 5:
                io = sel & (reason == KVM_EXIT_IO) & (err >= 0)
                counts["uexit_io"] += int(weight[io].sum())
                counts["uexit_other"] += int(weight[sel & ~io].sum())
            else:
                counts[names.get(int(k), "other")] += int(weight[sel].sum())
        return counts


BPFTRACE_PROG = """
tracepoint:kvm:kvm_pio /pid == {pid}/ {{ @pio[args->port, args->rw] = count(); }}
tracepoint:kvm:kvm_mmio /pid == {pid}/ {{ @mmio[args->type] = count(); }}
tracepoint:kvm:kvm_userspace_exit /pid == {pid}/ {{ @uexit[args->reason, args->errno] = count(); }}
tracepoint:kvm:kvm_exit /pid == {pid}/ {{ @exit = count(); }}
tracepoint:kvm:kvm_entry /pid == {pid}/ {{ @entry = count(); }}
tracepoint:syscalls:sys_enter_ioctl /pid == {pid} && args->cmd == {run:#x}/ {{ @run = count(); }}
"""


class Bpftrace(Tracer):
    name = "bpftrace"
    records_run = True

    def __init__(self):
        self.proc = None

    def unavailable(self) -> str | None:
        return None if shutil.which("bpftrace") else "bpftrace not installed"

    def start(self, guest: Guest, workdir: Path) -> None:
        prog = BPFTRACE_PROG.format(pid=guest.pid, run=KVM_RUN)
        self.proc = subprocess.Popen(["bpftrace", "-f", "json", "-e", prog], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        STARTED.add(self.proc.pid)
        self.out, self.err = Lines(self.proc.stdout), Lines(self.proc.stderr)
        if self.out.wait_for("attached_probes", 120) is None:
            raise RuntimeError(f"bpftrace did not start: {self.err.text(1)[-1500:]}")
        self.progs = wait_bpf_attached(self.proc, set(KVM_EVENTS) | {"sys_enter_ioctl"}, 60)
        OUR_PROGS.update(self.progs.values())

    def finish(self, guest: Guest) -> Outcome:
        out = Outcome()
        misses = recursion_misses(self.progs.values())
        usage = stop_group(self.proc, signals=(signal.SIGINT, signal.SIGKILL), wait=60)
        out.tracer_cpu_s, out.tracer_rc = cpu_seconds(usage), self.proc.returncode
        out.log_tail = self.err.text()[-600:]
        maps: dict[str, object] = {}
        for line in self.out.text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                msg = json.loads(line)
                if msg.get("type") == "map":
                    maps.update(msg["data"])
        if not maps:
            out.notes.append(f"no maps printed: {self.err.text(1)[-300:]}")
            return out

        def keyed(name: str) -> dict[tuple[int, ...], int]:
            data = maps.get(name) or {}
            if not isinstance(data, dict):
                return {}
            return {tuple(int(x) for x in k.split(",")): int(v) for k, v in data.items()}

        counts = empty_counts()
        counts["pio"] = sum(keyed("@pio").values())
        counts["mmio"] = sum(keyed("@mmio").values())
        for (reason, errno), n in keyed("@uexit").items():
            counts["uexit_io" if reason == KVM_EXIT_IO and errno >= 0 else "uexit_other"] += n
        for k in ("exit", "entry", "run"):
            v = maps.get(f"@{k}", 0)
            counts[k] = int(v) if isinstance(v, (int, float)) else 0
        out.counts = counts
        out.recorded = sum(counts.values())
        out.lost = misses
        out.lost_detail = {"recursion_misses": misses, "pio_by_port": {str(k): v for k, v in keyed("@pio").items()},
                           "uexit_by_reason_errno": {str(k): v for k, v in keyed("@uexit").items()}}
        return out


#: Attaches a program that returns at once to each tracepoint kvmtrace
#: attaches, then waits for SIGINT: the cost of having BPF on them at all.
EMPTY_PROGRAMS = r"""
import signal, sys
from bcc import BPF
from kvmtrace.kernel.events import TRACEPOINTS
b = BPF(text="int e(void *ctx) { return 0; }")
for system, name, _kind in TRACEPOINTS:
    try:
        b.attach_tracepoint(tp=f"{system}:{name}".encode(), fn_name=b"e")
    except Exception:  # not on this kernel
        pass
print("attached", flush=True)
signal.sigwait([signal.SIGINT, signal.SIGTERM])
b.cleanup()
"""


class EmptyBpf(Tracer):
    """The floor under any BPF tracer of these events: an empty program on
    each of kvmtrace's tracepoints. It records nothing."""

    name = "bpf-empty"

    def __init__(self):
        self.proc = None

    def start(self, guest: Guest, workdir: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", EMPTY_PROGRAMS], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        STARTED.add(self.proc.pid)
        self.out, self.err = Lines(self.proc.stdout), Lines(self.proc.stderr)
        if self.out.wait_for("attached", 120) is None:
            raise RuntimeError(f"empty programs did not attach: {self.err.text(1)[-1500:]}")
        self.progs = wait_bpf_attached(self.proc, {"kvm_pio", "kvm_userspace_exit", "sys_enter_ioctl"}, 30)
        OUR_PROGS.update(self.progs.values())

    def finish(self, guest: Guest) -> Outcome:
        out = Outcome()
        usage = stop_group(self.proc, signals=(signal.SIGINT, signal.SIGKILL), wait=30)
        out.tracer_cpu_s, out.tracer_rc = cpu_seconds(usage), self.proc.returncode
        return out


def parse_event_lines(lines, counts: dict[str, int]) -> int:
    """Count `kvm_xxx: <printed fields>` lines (perf script / trace-cmd report).

    The lines carry the thread and a nanosecond timestamp: a line equal to the
    one before it is the same sample written twice (perf 6.1 on this kernel did
    that), not a second event; it is skipped. Returns how many were skipped.
    """
    pat = re.compile(r"(?:^|\s)(?:kvm:)?(kvm_pio|kvm_mmio|kvm_userspace_exit|kvm_exit|kvm_entry):\s*(.*)$")
    prev = None
    duplicates = 0
    for line in lines:
        m = pat.search(line)
        if not m:
            continue
        if line == prev:
            duplicates += 1
            continue
        prev = line
        ev, rest = m.groups()
        if ev == "kvm_userspace_exit":
            counts["uexit_io" if "KVM_EXIT_IO " in rest + " " else "uexit_other"] += 1
        else:
            counts[{"kvm_pio": "pio", "kvm_mmio": "mmio", "kvm_exit": "exit", "kvm_entry": "entry"}[ev]] += 1
    return duplicates


class Perf(Tracer):
    name = "perf"

    def __init__(self):
        self.proc = None
        self.perf = "/usr/bin/perf" if os.path.exists("/usr/bin/perf") else shutil.which("perf")

    def unavailable(self) -> str | None:
        if not self.perf:
            return "perf not installed (apt-get install linux-perf)"
        r = subprocess.run([self.perf, "record", "-e", "kvm:kvm_pio", "-o", "/dev/null", "--", "true"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return f"perf record does not work on this kernel: {r.stderr.strip()[-200:]}"
        return None

    def start(self, guest: Guest, workdir: Path) -> None:
        self.path = workdir / "perf.data"
        ctl, ack = workdir / "perf-ctl", workdir / "perf-ack"
        for f in (ctl, ack):
            f.unlink(missing_ok=True)
            os.mkfifo(f, 0o600)
        argv = [self.perf, "record", "-D", "-1", "--control", f"fifo:{ctl},{ack}"]
        for ev in KVM_EVENTS:
            argv += ["-e", f"kvm:{ev}"]
        argv += ["-p", str(guest.pid), "-o", str(self.path)]
        self.stderr_path = workdir / "perf.stderr"
        with open(self.stderr_path, "wb") as errf:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf,
                                         start_new_session=True)
        STARTED.add(self.proc.pid)
        # Started with its events disabled; enable them and wait for perf's ack:
        # after it, every event of the guest is counted.
        ack_fd = os.open(ack, os.O_RDONLY | os.O_NONBLOCK)
        ctl_fd = None
        try:
            deadline = time.monotonic() + 60
            while ctl_fd is None:
                try:
                    ctl_fd = os.open(ctl, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"perf did not start: {self.stderr_path.read_text()[-1000:]}")
                    time.sleep(0.02)
            os.write(ctl_fd, b"enable\n")
            got = b""
            while b"ack" not in got:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"perf did not acknowledge enable: {self.stderr_path.read_text()[-1000:]}")
                r, _, _ = select.select([ack_fd], [], [], 0.1)
                if r:
                    got += os.read(ack_fd, 64)
                    if not got:
                        time.sleep(0.02)
        finally:
            os.close(ack_fd)
            if ctl_fd is not None:
                os.close(ctl_fd)

    def finish(self, guest: Guest) -> Outcome:
        out = Outcome()
        usage = reap(self.proc, 60)  # perf -p ends when the process it traces ends
        if usage is None:
            out.notes.append("perf did not end with the guest; sent SIGINT")
            usage = stop_group(self.proc)
        out.tracer_cpu_s, out.tracer_rc = cpu_seconds(usage), self.proc.returncode
        counts = empty_counts()
        lost = 0
        with subprocess.Popen([self.perf, "script", "-i", str(self.path), "-F", "tid,time,event,trace", "--ns",
                               "--show-lost-events"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) as p:
            lost_lines = []

            def lines():
                for line in p.stdout:
                    if "LOST" in line:
                        lost_lines.append(line)
                    yield line

            duplicates = parse_event_lines(lines(), counts)
        if p.returncode:
            out.notes.append(f"perf script failed with status {p.returncode}")
        for line in lost_lines:
            m = re.search(r"LOST (\d+)", line)
            lost += int(m.group(1)) if m else 0
        stats = subprocess.run([self.perf, "report", "-i", str(self.path), "--stats"],
                               capture_output=True, text=True).stdout
        out.log_tail = self.stderr_path.read_text(errors="replace")[-600:]
        samples = {m.group(1): int(m.group(2)) for m in
                   re.finditer(r"^(\S+) stats:\s*\n\s*SAMPLE events:\s+(\d+)", stats, re.M)}
        lost_records = sum(int(m.group(2))
                           for m in re.finditer(r"^\s*(LOST|LOST_SAMPLES) events:\s+(\d+)", stats, re.M))
        throttles = sum(int(m.group(1)) for m in re.finditer(r"^\s*THROTTLE events:\s+(\d+)", stats, re.M))
        rec_line = re.search(r"Captured and wrote .*", self.stderr_path.read_text())
        out.counts = counts
        out.recorded = sum(counts.values())
        out.lost = lost
        out.lost_detail = {"lost_in_script": lost, "lost_records_in_stats": lost_records,
                           "duplicate_samples": duplicates, "throttle_records": throttles, "samples_in_stats": samples,
                           "perf_record": rec_line.group(0) if rec_line else None}
        if duplicates:
            out.notes.append(f"{duplicates} samples written twice (same thread and ns timestamp), not counted")
        if throttles:
            out.notes.append(f"{throttles} THROTTLE records: the kernel stopped sampling for a while")
        if lost_records and not lost:
            out.notes.append(f"{lost_records} LOST records in perf report --stats")
        return out


class TraceCmd(Tracer):
    name = "trace-cmd"

    def __init__(self):
        self.proc = None
        self.state = None

    def unavailable(self) -> str | None:
        if not shutil.which("trace-cmd"):
            return "trace-cmd not installed"
        if not (TRACEFS / "events" / "kvm").is_dir():
            return f"{TRACEFS} not mounted"
        return None

    def start(self, guest: Guest, workdir: Path) -> None:
        # Filter on the vCPU threads (common_pid is a thread id), in the kernel.
        # `-P PID` is not used: trace-cmd 3.1.6 segfaults with it on this kernel,
        # as it does without --no-filter (both read set_ftrace_pid, which this
        # kernel refuses with EPERM); -d because function tracing is refused
        # too (/proc/sys/kernel/ftrace_enabled). trace-cmd then ends with status 1
        # after writing its file ("opening to set_ftrace_filter"): its clean-up of
        # function filters; TracefsState puts back what it leaves changed.
        self.path = workdir / "trace.dat"
        filt = "||".join(f"common_pid=={tid}" for tid in guest.vcpu_tids)
        argv = ["trace-cmd", "record", "--no-filter", "-d"]
        for ev in KVM_EVENTS:
            argv += ["-e", f"kvm:{ev}", "-f", filt]
        argv += ["-o", str(self.path)]
        if shutil.which("stdbuf"):
            argv = ["stdbuf", "-oL"] + argv  # its "Hit Ctrl^C" line, unbuffered
        self.state = TracefsState().save()
        self.stderr_path = workdir / "trace-cmd.stderr"
        with open(self.stderr_path, "wb") as errf:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf,
                                         start_new_session=True)
        STARTED.add(self.proc.pid)
        self.out = Lines(self.proc.stdout)
        if self.out.wait_for("Hit Ctrl^C", 60) is None:
            raise RuntimeError(f"trace-cmd did not start: {self.stderr_path.read_text()[-1000:]}")
        # And the kernel side: tracing on, every event enabled with its filter.
        deadline = time.monotonic() + 10
        while True:
            on = (TRACEFS / "tracing_on").read_text().strip() == "1"
            enabled = all((TRACEFS / "events/kvm" / ev / "enable").read_text().strip() == "1" for ev in KVM_EVENTS)
            if on and enabled:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("trace-cmd started but the kvm events are not enabled in tracefs")
            time.sleep(0.02)

    def finish(self, guest: Guest) -> Outcome:
        out = Outcome()
        # tracefs is one per machine: anyone's trace-cmd or ftrace use meanwhile changes ours.
        disturbed = []
        if (TRACEFS / "tracing_on").read_text().strip() != "1":
            disturbed.append("tracing_on is 0")
        for ev in KVM_EVENTS:
            base = TRACEFS / "events/kvm" / ev
            if base.joinpath("enable").read_text().strip() != "1":
                disturbed.append(f"{ev} disabled")
            elif "common_pid" not in base.joinpath("filter").read_text():
                disturbed.append(f"{ev} filter changed")
        if disturbed:
            out.notes.append("tracefs changed by someone else during the run: " + ", ".join(disturbed))
        usage = stop_group(self.proc, signals=(signal.SIGINT,), wait=60)
        if self.proc.returncode is None or group_alive(self.proc.pid):
            out.notes.append("trace-cmd did not end on SIGINT; its group was killed")
            usage = stop_group(self.proc, signals=(signal.SIGUSR1, signal.SIGTERM, signal.SIGKILL)) or usage
        out.tracer_cpu_s, out.tracer_rc = cpu_seconds(usage), self.proc.returncode
        out.log_tail = self.stderr_path.read_text(errors="replace")[-600:]
        self.restore_tracefs(out.notes)
        if not self.path.exists():
            out.notes.append(f"no trace file: {self.stderr_path.read_text()[-300:]}")
            return out
        counts = empty_counts()
        dropped = []
        with subprocess.Popen(["trace-cmd", "report", "-t", "-i", str(self.path)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) as p:
            def lines():
                for line in p.stdout:
                    if "DROPPED" in line or "LOST EVENTS" in line:
                        dropped.append(line)
                    yield line

            duplicates = parse_event_lines(lines(), counts)
        if p.returncode:
            out.notes.append(f"trace-cmd report failed with status {p.returncode}")
        stat = subprocess.run(["trace-cmd", "report", "--stat", "-i", str(self.path)],
                              capture_output=True, text=True).stdout
        kernel = {k: sum(int(m) for m in re.findall(rf"^{k}:\s+(\d+)", stat, re.M))
                  for k in ("overrun", "commit overrun", "dropped events")}
        marked = sum(int(m.group(1) or 1) for line in dropped
                     for m in [re.search(r"\[(\d+)?\s*(?:EVENTS DROPPED|LOST EVENTS)", line)] if m)
        out.counts = counts
        out.recorded = sum(counts.values())
        out.lost = sum(kernel.values())
        out.lost_detail = {**kernel, "dropped_marks_in_report": marked, "duplicate_lines": duplicates}
        if duplicates:
            out.notes.append(f"{duplicates} events printed twice (same thread and ns timestamp), not counted")
        if out.tracer_rc not in (0, None):
            err = self.stderr_path.read_text().strip().splitlines()
            out.notes.append(f"exit {out.tracer_rc} after writing its file: {' '.join(err[-2:])[:160]}")
        return out

    def restore_tracefs(self, notes: list[str] | None = None) -> None:
        if self.state is not None:
            changed = self.state.restore()
            left = self.state.diff()
            if left:
                log(f"warning: tracefs still differs after restore: {left}")
            self.state = None
            if notes is not None and changed:
                notes.append("restored tracefs: " + ", ".join(sorted(changed)))

    def cleanup(self) -> None:
        if self.proc is not None and (self.proc.returncode is None or group_alive(self.proc.pid)):
            stop_group(self.proc, signals=(signal.SIGINT, signal.SIGUSR1, signal.SIGTERM, signal.SIGKILL))
        self.restore_tracefs()


# --------------------------------------------------------------------------
# Ground truth


def storm_workload(writes: int):
    """Workload(port_writes=N, every other access kind 0, steady=False): only port 0x80 writes."""
    import dataclasses

    from kvmtrace.demo.guest import Workload

    zero = {f.name: 0 for f in dataclasses.fields(Workload) if f.type in (int, "int") and f.name != "port_writes"}
    return Workload(**{**zero, "port_writes": writes, "steady": False})


def ground_truth(workload) -> dict:
    """What the kernel must report for one run, from kvmtrace.demo.guest.expected()."""
    from kvmtrace.demo.guest import expected

    truth = expected(workload)
    pio = sum(truth["pio"].values())  # N writes to 0x80 + the final write to 0xf4
    mmio = sum(truth["mmio"].values())
    uexit_io = truth["userspace_exits"].get("IO", 0)
    return {
        "pio": pio,
        "mmio": mmio,
        "uexit_io": uexit_io,
        # KVM_RUN: the first one after resume, then one after every userspace
        # return except the last (the write to 0xf4 ends QEMU inside it), i.e.
        # uexit_io, plus one per non-exit return (uexit_other, checked per run).
        "run": uexit_io,
        "expected_by_tool": "pio + uexit_io (+ run for tools tracing KVM_RUN); kvm_exit/kvm_entry "
                            "add at least one pair per port write on VMX/SVM hosts (none fire here)",
    }


def check(outcome: Outcome, truth: dict, tracer: Tracer, hw_exits_fire: bool) -> tuple[int, list[str]]:
    """(events the tool should have recorded, at least; mismatches against the ground truth)."""
    c = outcome.counts
    bad = []
    for k in ("pio", "mmio", "uexit_io"):
        if c[k] != truth[k]:
            bad.append(f"{k} {c[k]} != {truth[k]}")
    # Kinds without a ground truth (uexit_other, kvmtrace's extra kinds) count as observed.
    expected = truth["pio"] + truth["mmio"] + truth["uexit_io"] + c["uexit_other"] + c["other"]
    if tracer.records_run:
        want = truth["run"] + c["uexit_other"]
        if c["run"] != want:
            bad.append(f"run {c['run']} != {want}")
        expected += want
    if hw_exits_fire:
        for k in ("exit", "entry"):
            if c[k] < truth["pio"]:
                bad.append(f"{k} {c[k]} < {truth['pio']}")
        expected += c["exit"] + c["entry"]
    elif c["exit"] or c["entry"]:
        expected += c["exit"] + c["entry"]
    return expected, bad


# --------------------------------------------------------------------------
# One run


def vcpu_cpu_ns(guest: Guest) -> int | None:
    """CPU time the guest's vCPU threads have used (ns, /proc/PID/task/TID/schedstat),
    None once one has exited. The BPF programs run on these threads."""
    total = 0
    for tid in guest.vcpu_tids:
        try:
            with open(f"/proc/{guest.pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return None
    return total


@contextlib.contextmanager
def storm_guest(workload, name: str = DOMAIN):
    """The demo guest running ``workload``, created paused: yields (libvirt
    domain, its kvmtrace.record.domain.GuestProcess, a pidfd of QEMU), and destroys
    it on the way out, whatever happened."""
    from kvmtrace.demo.run import start_demo, stop_demo
    from kvmtrace.record.domain import resolve

    conn = dom = pidfd = None
    try:
        conn, dom = start_demo(workload, URI, name=name, paused=True)
        g = resolve(conn, name)
        pidfd = os.pidfd_open(g.pid)
        yield dom, g, pidfd
    finally:
        if pidfd is not None:
            os.close(pidfd)
        if dom is not None:
            stop_demo(dom)
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass


def run_once(tracer: Tracer | None, workload, workdir: Path, timeout: float, settle: float = 0.0) -> dict:
    res: dict = {"guest_s": None, "resume_s": None, "error": None}
    try:
        with storm_guest(workload) as (dom, g, pidfd):
            try:
                guest = Guest(g.name, g.pid, sorted(g.vcpu_threads.values()))
                res["qemu_pid"] = guest.pid
                if tracer is not None:
                    tracer.start(guest, workdir)
                time.sleep(settle)  # let the start-up's after-effects (libvirt, tracer set-up) pass
                res["loadavg_1m"] = os.getloadavg()[0]
                cpu0 = tracer.cpu_now() if tracer is not None else None
                vcpu0 = vcpu_cpu_ns(guest)
                t0 = time.perf_counter()
                dom.resume()
                t1 = time.perf_counter()
                # Until QEMU ends, sample the vCPU threads' CPU time every 5 ms: the
                # last sample before they exit is the guest's CPU time (to 5 ms).
                ready, vcpu1 = [], vcpu0
                while time.perf_counter() - t0 < timeout and not ready:
                    ready, _, _ = select.select([pidfd], [], [], 0.005)
                    now = vcpu_cpu_ns(guest)
                    vcpu1 = now if now is not None else vcpu1
                t2 = time.perf_counter()
                cpu1 = tracer.cpu_now() if tracer is not None else None
                if cpu0 is not None and cpu1 is not None:
                    res["tracer_cpu_during_s"] = round(cpu1 - cpu0, 3)
                if not ready:
                    raise RuntimeError(f"the guest did not end within {timeout} s")
                res["guest_s"] = round(t2 - t0, 6)
                if vcpu0 is not None and vcpu1 is not None:
                    res["vcpu_cpu_s"] = round((vcpu1 - vcpu0) / 1e9, 6)
                res["resume_s"] = round(t1 - t0, 6)
                if tracer is not None:
                    res["outcome"] = tracer.finish(guest)
            finally:
                if tracer is not None:
                    tracer.cleanup()
    except Exception as e:  # noqa: BLE001 - one failed run must not stop the benchmark
        res["error"] = f"{type(e).__name__}: {e}"
    return res


def make_tracer(name: str) -> Tracer | None:
    return {
        "untraced": lambda: None,
        "kvmtrace-events": lambda: Kvmtrace("events"),
        "kvmtrace-counts": lambda: Kvmtrace("counts"),
        "bpftrace": Bpftrace,
        "bpf-empty": EmptyBpf,
        "perf": Perf,
        "trace-cmd": TraceCmd,
    }[name]()


#: Configurations that record nothing: timed, not checked against the ground truth.
NO_RECORDS = ("untraced", "bpf-empty")
CONFIGS = ("untraced", "bpf-empty", "kvmtrace-events", "kvmtrace-counts", "bpftrace", "perf", "trace-cmd")


def overhead(args, report: dict) -> None:
    workload = storm_workload(args.writes)
    truth = ground_truth(workload)
    hw_exits_fire = args.hw_exits
    report["workload"] = {"port_writes": args.writes, "steady": False}
    report["ground_truth"] = truth
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"unknown configs {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    active, skipped = [], {}
    for name in configs:
        t = make_tracer(name)
        why = t.unavailable() if t is not None else None
        if why:
            skipped[name] = why
            log(f"skipping {name}: {why}")
        else:
            active.append(name)
    report["skipped"] = skipped
    runs = report["runs"] = []
    schedule = [("warmup", 0, "untraced")] * args.warmup
    schedule += [("round", r + 1, c) for r in range(args.rounds) for c in active]
    with tempfile.TemporaryDirectory(prefix="kvmtrace-bench-", dir=args.workdir) as tmp:
        for i, (phase, rnd, name) in enumerate(schedule, 1):
            workdir = Path(tmp) / f"{i:03d}-{name}"
            workdir.mkdir()
            tracer = make_tracer(name)
            res = run_once(tracer, workload, workdir, args.timeout, args.settle)
            entry = {"config": name, "round": rnd, "warmup": phase == "warmup", "guest_s": res["guest_s"],
                     "vcpu_cpu_s": res.get("vcpu_cpu_s"), "resume_s": res["resume_s"], "loadavg_1m": res.get("loadavg_1m"),
                     "tracer_cpu_during_s": res.get("tracer_cpu_during_s"),
                     "error": res["error"]}
            oc: Outcome | None = res.get("outcome")
            if oc is not None:
                entry.update(counts=oc.counts, recorded=oc.recorded, lost=oc.lost, lost_detail=oc.lost_detail,
                             tracer_cpu_s=oc.tracer_cpu_s, tracer_rc=oc.tracer_rc, notes=oc.notes,
                             tracer_log_tail=oc.log_tail)
                if oc.counts is not None:
                    entry["expected"], entry["mismatches"] = check(oc, truth, tracer, hw_exits_fire)
            runs.append(entry)
            desc = f"{entry['guest_s']:.3f} s" if entry["guest_s"] is not None else "no time"
            if entry.get("recorded") is not None:
                desc += f", recorded {entry['recorded']:,}/{entry.get('expected', 0):,}, lost {entry['lost']}"
            if entry.get("mismatches"):
                desc += f", MISMATCH {entry['mismatches']}"
            if entry["error"]:
                desc += f", ERROR {entry['error']}"
            log(f"{phase} {rnd} {name}: {desc}")
            if args.keep:
                keep = Path(args.keep) / workdir.name
                keep.mkdir(parents=True, exist_ok=True)
                for f in workdir.iterdir():
                    if f.is_file():  # not perf's control FIFOs
                        shutil.copy2(f, keep / f.name)
    report["summary"] = summarize(runs, active)


def summarize(runs: list[dict], configs: list[str]) -> list[dict]:
    rows = []
    base = vbase = None
    for name in configs:
        mine = [r for r in runs if r["config"] == name and not r["warmup"]]
        timed = [r for r in mine if r["guest_s"] is not None and not r["error"]]
        # A run whose counts miss the ground truth did not measure the tracer doing its
        # whole job (e.g. tracefs reset by someone else mid-run): its time is left out.
        nothing = name in NO_RECORDS
        valid = [r["guest_s"] for r in timed if not r.get("mismatches") and (nothing or r.get("counts"))]
        row = {"config": name, "runs": len(mine), "ok_runs": len(valid), "errors": sum(1 for r in mine if r["error"]),
               "excluded_runs": len(timed) - len(valid)}
        if valid:
            row.update(median_s=round(statistics.median(valid), 4), min_s=round(min(valid), 4),
                       max_s=round(max(valid), 4))
        vcpu = [r["vcpu_cpu_s"] for r in timed if r.get("vcpu_cpu_s") is not None and not r.get("mismatches")
                and (nothing or r.get("counts"))]
        if vcpu:
            row["vcpu_cpu_median_s"] = round(statistics.median(vcpu), 4)
        if timed:
            row["median_all_s"] = round(statistics.median(r["guest_s"] for r in timed), 4)
        if name == "untraced":
            base, vbase = row.get("median_s"), row.get("vcpu_cpu_median_s")
        rec = [r for r in mine if r.get("recorded") is not None]
        if rec:
            row["recorded_median"] = int(statistics.median(r["recorded"] for r in rec))
            row["expected_median"] = int(statistics.median(r.get("expected", 0) for r in rec))
            row["lost_max"] = max(r["lost"] or 0 for r in rec)
            # Events due but neither stored nor reported lost: silent loss.
            row["missing_max"] = max(max(0, r.get("expected", 0) - r["recorded"] - (r["lost"] or 0)) for r in rec)
            row["lost_total"] = sum(r["lost"] or 0 for r in rec)
            row["runs_matching_truth"] = sum(1 for r in rec if not r.get("mismatches"))
            cpu = [r["tracer_cpu_s"] for r in rec if r.get("tracer_cpu_s") is not None]
            if cpu:
                row["tracer_cpu_s_median"] = round(statistics.median(cpu), 3)
            during = [r["tracer_cpu_during_s"] for r in rec if r.get("tracer_cpu_during_s") is not None]
            if during:
                row["tracer_cpu_during_s_median"] = round(statistics.median(during), 3)
        rows.append(row)
    for row in rows:
        if base and row.get("median_s"):
            row["ratio"] = round(row["median_s"] / base, 3)
        if vbase and row.get("vcpu_cpu_median_s"):
            row["vcpu_ratio"] = round(row["vcpu_cpu_median_s"] / vbase, 3)
    return rows


# --------------------------------------------------------------------------
# Part 2: drain speed


def synthetic_storm(n: int, seed: int = 1):
    """EVENT_DTYPE records shaped like the storm: PIO, USERSPACE_EXIT (with kvm_run fields), RUN."""
    import numpy as np

    from kvmtrace.kernel.events import EVENT_DTYPE, EventFlag, EventKind

    rng = np.random.default_rng(seed)
    ev = np.zeros(n, dtype=EVENT_DTYPE)
    cycle = np.array([EventKind.PIO, EventKind.USERSPACE_EXIT, EventKind.RUN], dtype=np.uint8)
    ev["kind"] = cycle[np.arange(n) % 3]
    ev["ts_ns"] = 10**12 + np.cumsum(rng.integers(300, 8000, n, dtype=np.uint64))
    ev["pid"], ev["tid"], ev["vcpu"] = 4321, 4330, 0
    ev["cpu"] = rng.integers(0, 2, n, dtype=np.uint32)
    io = ev["kind"] != EventKind.RUN
    ev["port"][io], ev["size"][io], ev["count"][io], ev["op"][io] = 0x80, 1, 1, 1
    ue = ev["kind"] == EventKind.USERSPACE_EXIT
    ev["reason"][ue] = KVM_EXIT_IO
    ev["flags"][ue] = int(EventFlag.RUN_FIELDS)
    ev["info1"][ue] = 0x1000  # data_offset
    return ev


def bench_writer(total: int, workdir: Path) -> dict:
    """TraceWriter.write throughput, batches of BATCH events."""
    import numpy as np

    from kvmtrace.tracefile import TraceWriter

    batch = synthetic_storm(BATCH)
    span = int(batch["ts_ns"][-1] - batch["ts_ns"][0]) + 1000
    warm = TraceWriter(workdir / "warmup.kvmtrace", {"bench": "warm-up, not timed"})  # first-use costs
    warm.write(batch, {})
    warm.close({})
    (workdir / "warmup.kvmtrace").unlink()
    path = workdir / "writer.kvmtrace"
    writer = TraceWriter(path, {"bench": "synthetic storm"})
    wall = cpu = 0.0
    written = 0
    try:
        while written < total:
            n = min(BATCH, total - written)
            ev = batch[:n]
            w0, c0 = time.perf_counter(), time.process_time()
            writer.write(ev, {"t_ns": written})
            wall += time.perf_counter() - w0
            cpu += time.process_time() - c0
            written += n
            batch["ts_ns"] += np.uint64(span)  # the next batch later in time (not timed)
        w0, c0 = time.perf_counter(), time.process_time()
        writer.close({"stop_reason": "bench"})
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
    finally:
        if not writer.closed:
            writer.abandon()
    size = path.stat().st_size
    path.unlink()
    return {"events": written, "batch": BATCH, "wall_s": round(wall, 4), "cpu_s": round(cpu, 4),
            "events_per_s_wall": round(written / wall), "events_per_cpu_s": round(written / cpu),
            "cpu_ns_per_event": round(cpu / written * 1e9, 1), "file_bytes": size,
            "bytes_per_event": round(size / written, 2)}


def bench_ring_drain(writes: int, pages: int, workdir: Path, timeout: float) -> dict:
    """Fill kvmtrace's BPF ring buffer with the storm guest, nobody reading; then drain it all and write it."""
    from kvmtrace.kernel.events import EventKind
    from kvmtrace.record.host import check_kernel_headers, find_tracefs
    from kvmtrace.kernel.probe import Probes, available_tracepoints
    from kvmtrace.tracefile import TraceWriter

    check_kernel_headers()
    formats = available_tracepoints(str(find_tracefs()))
    workload = storm_workload(writes)
    truth = ground_truth(workload)
    probes = writer = None
    res: dict = {"port_writes": writes, "ringbuf_pages": pages}
    try:
        with storm_guest(workload) as (dom, g, pidfd):
            try:
                probes = Probes(formats, ringbuf_pages=pages)
                OUR_PROGS.update(bpf_attachments(os.getpid()).values())
                for vcpu, tid in g.vcpu_threads.items():
                    probes.add_vcpu(g.pid, tid, g.kvm_run.get(vcpu, 0))
                probes.add_target(g.pid, 0)
                t0 = time.perf_counter()
                dom.resume()
                if not select.select([pidfd], [], [], timeout)[0]:
                    raise RuntimeError(f"the guest did not end within {timeout} s")
                res["guest_s"] = round(time.perf_counter() - t0, 4)
                probes.stop_matching()  # the ring now holds the whole run
                counters = probes.counters()
                res["matched"] = sum(counters.matched.values())
                res["lost"] = counters.lost_total
                res["pending"] = probes.pending
                writer = TraceWriter(workdir / "drain.kvmtrace", {"bench": "ring drain"})
                drain_wall = drain_cpu = write_wall = write_cpu = 0.0
                drained = 0
                pio = 0
                while True:
                    w0, c0 = time.perf_counter(), time.process_time()
                    ev = probes.take(BATCH)
                    drain_wall += time.perf_counter() - w0
                    drain_cpu += time.process_time() - c0
                    if not len(ev):
                        break
                    drained += len(ev)
                    pio += int((ev["kind"] == EventKind.PIO).sum())  # not timed
                    w0, c0 = time.perf_counter(), time.process_time()
                    writer.write(ev, {"t_ns": drained})
                    write_wall += time.perf_counter() - w0
                    write_cpu += time.process_time() - c0
                w0, c0 = time.perf_counter(), time.process_time()
                writer.close({"stop_reason": "bench"})
                write_wall += time.perf_counter() - w0
                write_cpu += time.process_time() - c0
                size = (workdir / "drain.kvmtrace").stat().st_size
                res.update(
                    file_bytes=size, bytes_per_event=round(size / drained, 2) if drained else None,
                    drained=drained, pio_drained=pio, pio_expected=truth["pio"],
                    complete=drained + res["lost"] == res["matched"] and pio == truth["pio"],
                    drain_wall_s=round(drain_wall, 5), drain_cpu_s=round(drain_cpu, 5),
                    write_wall_s=round(write_wall, 5), write_cpu_s=round(write_cpu, 5),
                )
                total_wall, total_cpu = drain_wall + write_wall, drain_cpu + write_cpu
                if drained:
                    res.update(
                        drain_events_per_s_wall=round(drained / drain_wall) if drain_wall else None,
                        drain_events_per_cpu_s=round(drained / drain_cpu) if drain_cpu else None,
                        events_per_s_wall=round(drained / total_wall),
                        events_per_cpu_s=round(drained / total_cpu) if total_cpu else None,
                        cpu_ns_per_event=round(total_cpu / drained * 1e9, 1),
                    )
            finally:
                if writer is not None and not writer.closed:
                    writer.abandon()
                if probes is not None:
                    probes.close()
    finally:
        (workdir / "drain.kvmtrace").unlink(missing_ok=True)
    return res


def drain(args, report: dict) -> None:
    out = report["drain"] = {"target_events_per_cpu_s": 1_000_000}
    with tempfile.TemporaryDirectory(prefix="kvmtrace-bench-drain-", dir=args.workdir) as tmp:
        log(f"drain (a): TraceWriter.write of {args.drain_events:,} synthetic events in batches of {BATCH}")
        out["writer"] = bench_writer(args.drain_events, Path(tmp))
        log(f"drain (a): {out['writer']['events_per_cpu_s']:,} events per CPU-second")
        out["ring"] = []
        for i in range(args.drain_rounds):
            try:
                r = bench_ring_drain(args.drain_writes or args.writes, args.ringbuf_pages, Path(tmp), args.timeout)
            except Exception as e:  # noqa: BLE001
                r = {"error": f"{type(e).__name__}: {e}"}
            out["ring"].append(r)
            log(f"drain (b) {i + 1}: " + (f"{r.get('drained', 0):,} events, "
                                          f"{r.get('events_per_cpu_s', 0):,} per CPU-second, lost {r.get('lost')}"
                                          if "error" not in r else r["error"]))
        ok = [r for r in out["ring"] if r.get("events_per_cpu_s")]
        if ok:
            out["ring_median"] = {k: statistics.median(r[k] for r in ok)
                                  for k in ("drained", "drain_events_per_cpu_s", "events_per_cpu_s",
                                            "events_per_s_wall", "cpu_ns_per_event")}
        best = out.get("ring_median", {}).get("events_per_cpu_s")
        out["meets_target"] = bool(best and best >= out["target_events_per_cpu_s"])


# --------------------------------------------------------------------------
# Output


def print_tables(report: dict) -> None:
    lines = []
    if report.get("summary"):
        n = report["workload"]["port_writes"]
        lines.append(f"\nGuest run time, storm of {n:,} port writes (dom.resume() -> QEMU exit), "
                     f"{report['args']['rounds']} rounds")
        hdr = (f"{'config':<17}{'runs':>5}{'median s':>10}{'min':>8}{'max':>8}{'ratio':>7}{'vcpu s':>8}{'ratio':>7}"
               f"{'recorded':>10}{'expected':>10}{'exact':>6}{'lost':>6}{'missing':>8}{'cpu s':>6}{'total':>6}")
        lines += [hdr, "-" * len(hdr)]
        for r in report["summary"]:
            def f(key, fmt):
                return format(r[key], fmt) if r.get(key) is not None else "-"
            exact = f"{r['runs_matching_truth']}/{r['runs']}" if "runs_matching_truth" in r else "-"
            lines.append(f"{r['config']:<17}{r['ok_runs']:>5}{f('median_s', '.3f'):>10}{f('min_s', '.3f'):>8}"
                         f"{f('max_s', '.3f'):>8}{f('ratio', '.2f'):>7}{f('vcpu_cpu_median_s', '.3f'):>8}"
                         f"{f('vcpu_ratio', '.2f'):>7}{f('recorded_median', ','):>10}"
                         f"{f('expected_median', ','):>10}{exact:>6}{f('lost_max', ','):>6}{f('missing_max', ','):>8}"
                         f"{f('tracer_cpu_during_s_median', '.2f'):>6}{f('tracer_cpu_s_median', '.2f'):>6}")
        for name, why in report.get("skipped", {}).items():
            lines.append(f"{name:<17}skipped: {why}")
        lines.append("runs: runs timed, those whose counts missed the ground truth left out (JSON: median_all_s).\n"
                     "vcpu s: CPU time of the guest's vCPU threads (schedstat), where the BPF programs run;\n"
                     "less affected than wall time by the machine's other load. Ratios to untraced.\n"
                     "recorded/expected: medians of events stored / due (ground truth). exact: runs whose pio,\n"
                     "userspace IO exits (and KVM_RUN) equal the guest's program. lost: most a run's tool reported\n"
                     "lost; missing: most a run lacked without any loss report (silent). cpu s: tracer processes'\n"
                     "CPU time while the guest ran; total: over the tracer's life (start-up, final drain). Medians.")
    d = report.get("drain")
    if d:
        lines.append(f"\nDrain to file, one core (target >= {d['target_events_per_cpu_s']:,} events/s)")
        w = d.get("writer")
        if w:
            lines.append(f"  TraceWriter.write, {w['events']:,} synthetic events: {w['events_per_cpu_s']:,} events "
                         f"per CPU-s ({w['cpu_ns_per_event']} ns CPU/event), {w['events_per_s_wall']:,}/s wall, "
                         f"{w['bytes_per_event']} bytes/event on disk")
        for r in d.get("ring", []):
            if r.get("error"):
                lines.append(f"  ring drain failed: {r['error']}")
        m = d.get("ring_median")
        if m:
            lines.append(f"  RingReader.drain + write, real ring ({int(m['drained']):,} events, median of "
                         f"{len(d['ring'])}): {int(m['events_per_cpu_s']):,} events per CPU-s "
                         f"({m['cpu_ns_per_event']} ns CPU/event), {int(m['events_per_s_wall']):,}/s wall; "
                         f"drain alone {int(m['drain_events_per_cpu_s']):,} per CPU-s")
        if "meets_target" in d:
            lines.append(f"  meets target: {'yes' if d['meets_target'] else 'NO'}")
    if report.get("leftovers"):
        lines.append(f"\nLEFTOVERS: {report['leftovers']}")
    elif "leftovers" in report:
        lines.append(f"\nclean-up check: none of this run's {len(report.get('our_bpf_program_ids', []))} BPF "
                     f"programs is loaded, no tracer process, no {DOMAIN} domain, no kvm event left enabled")
    print("\n".join(lines))


def leftovers(started_groups: set[int]) -> dict:
    """Anything of ours still there: BPF programs, tracer processes, the domain, tracefs events."""
    found: dict = {}
    still = [pid for pid in sorted(OUR_PROGS)
             if subprocess.run(["bpftool", "prog", "show", "id", str(pid)], capture_output=True).returncode == 0]
    if still:
        found["bpf_programs"] = still
    groups = [g for g in sorted(started_groups) if group_alive(g)]
    if groups:
        found["tracer_process_groups"] = groups
    r = subprocess.run(["virsh", "-c", URI, "domstate", DOMAIN], capture_output=True, text=True)
    if r.returncode == 0 and "shut off" not in r.stdout:
        found["domain"] = f"{DOMAIN}: {r.stdout.strip()}"
    on = [ev for ev in KVM_EVENTS if (TRACEFS / "events/kvm" / ev / "enable").exists()
          and (TRACEFS / "events/kvm" / ev / "enable").read_text().strip() != "0"]
    if on:
        found["tracefs_events_enabled"] = on
    return found


def loaded_programs() -> list[str]:
    """kvmtrace- and bpftrace-like programs loaded now (anyone's: others may be tracing too)."""
    r = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        return []
    pat = re.compile(r"^(kvm_|kvm__|tracepoint__|sys_enter_ioctl|syscalls__)")
    return [f"{p['id']} {p.get('name', '')}" for p in json.loads(r.stdout) if pat.match(p.get("name", ""))]


def host_facts() -> dict:
    from kvmtrace.record.host import host_info

    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        **host_info().as_dict(),
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "tools": {
            "kvmtrace": tool_version(kvmtrace_argv() + ["--version"]),
            "bpftrace": tool_version(["bpftrace", "--version"]),
            "perf": tool_version(["perf", "--version"]),
            "trace-cmd": tool_version(["trace-cmd", "--version"]),
            "qemu": tool_version(["qemu-system-x86_64", "--version"]),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7, help="rounds of all configurations (default 7)")
    p.add_argument("--writes", type=int, default=150_000, help="port writes of the storm guest (default 150000)")
    p.add_argument("--warmup", type=int, default=1, help="untraced runs first, not counted (default 1)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list (default all: {','.join(CONFIGS)})")
    p.add_argument("--hw-exits", action="store_true",
                   help="kvm_exit/kvm_entry fire on this host (VMX/SVM): check them (default: detected)")
    p.add_argument("--no-overhead", action="store_true", help="skip part 1 (guest run time)")
    p.add_argument("--no-drain", action="store_true", help="skip part 2 (drain speed)")
    p.add_argument("--drain-events", type=int, default=10_000_000, help="synthetic events for TraceWriter (10M)")
    p.add_argument("--drain-writes", type=int, default=None, help="port writes for the ring drain (default --writes)")
    p.add_argument("--drain-rounds", type=int, default=3, help="ring drain runs (default 3)")
    p.add_argument("--ringbuf-pages", type=int, default=1 << 15, help="ring buffer for the drain (default 2^15 pages)")
    p.add_argument("--settle", type=float, default=0.5, help="seconds between attach and resume (default 0.5)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a guest may run (default 120)")
    p.add_argument("--workdir", default=None, help="where tracers write their files (default: the temp dir)")
    p.add_argument("--keep", metavar="DIR", help="copy every tracer's output files here")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"), help="directory for the JSON")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root: sudo .venv/bin/python bench/overhead.py ...", file=sys.stderr)
        return 2
    if not args.hw_exits:
        from kvmtrace.record.host import host_info

        args.hw_exits = host_info().isa in ("VMX", "SVM")

    started = time.time()
    report: dict = {"benchmark": "kvmtrace overhead", "date": dt.datetime.now().isoformat(timespec="seconds"),
                    "args": vars(args), "host": host_facts(),
                    "note": "shared 2-core nested VM (KVM in a PVM guest): noisy; quote medians"}
    tracefs_before = TracefsState().save() if TRACEFS.is_dir() else None

    def interrupt(signum, _frame):  # SIGTERM and SIGHUP clean up like Ctrl-C
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    try:
        if not args.no_overhead:
            overhead(args, report)
        if not args.no_drain:
            drain(args, report)
    except KeyboardInterrupt as e:
        report["interrupted"] = str(e) or "SIGINT"
        log(f"interrupted ({report['interrupted']}); cleaned up")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the clean-up below is not cut short
        if tracefs_before is not None:
            changed = tracefs_before.restore()
            if changed:
                report["tracefs_restored_at_end"] = changed
        report["leftovers"] = leftovers(STARTED)
        report["bpf_programs_loaded_at_end"] = loaded_programs()
        report["our_bpf_program_ids"] = sorted(OUR_PROGS)
        report["elapsed_s"] = round(time.time() - started, 1)
        out_dir = Path(args.results)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"overhead-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print_tables(report)
        print(f"\nresults: {path}")
    return 1 if report.get("leftovers") else 0


if __name__ == "__main__":
    sys.exit(main())
