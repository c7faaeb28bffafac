"""Tracer processes: their output read as lines, their process groups stopped
and reaped, their CPU time."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

STARTED: set[int] = set()  # every tracer process (= process group) started, for the leftover check


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


def tool_version(argv: list[str]) -> str | None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (r.stdout + r.stderr).strip()
    return text.splitlines()[0] if text else None
