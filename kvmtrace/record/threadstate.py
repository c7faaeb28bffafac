"""A vCPU thread's state when recording starts, from /proc.

Where each vCPU's time goes (analysis.vcpu_time) follows two facts per
thread: inside KVM_RUN or not, and on a CPU, runnable or asleep. The probes
see them change; what held before the first change comes from here, read
as each thread is entered into the probes' map:

* ``/proc/PID/task/TID/stat``, field 3: R (running or runnable) or a
  sleeping state (S, D, I, t, T, ...);
* ``/proc/PID/task/TID/syscall``: the system call the thread is blocked in,
  ``16 0xFD 0xae80 ...`` for ioctl(fd, KVM_RUN) on x86-64, or ``running``
  for a thread on a CPU (then nothing says whether it is inside KVM_RUN).

The first edges the probes see correct both (a switch out says the thread
was on a CPU, KVM_RUN returning says it was inside): /proc's answer matters
for a thread that does not change for the whole recording, a halted or
paused vCPU, which is exactly when it is reliable.
"""

from __future__ import annotations

import time
from pathlib import Path

from kvmtrace.kernel.events import KVM_RUN, ThreadSched

#: ioctl's system call number on x86-64 (arch/x86/entry/syscalls/syscall_64.tbl).
SYS_IOCTL_X86_64 = 16


def parse_stat_state(stat: str) -> str:
    """The state letter of a /proc/.../stat line (after the parenthesised comm)."""
    return stat[stat.rindex(")") + 2:].split(" ", 1)[0]


def parse_syscall(text: str) -> tuple[int | None, list[int]]:
    """(number, arguments) of a /proc/.../syscall line; (None, []) for ``running``."""
    parts = text.split()
    if not parts or parts[0] == "running" or not parts[0].lstrip("-").isdigit():
        return None, []
    return int(parts[0]), [int(x, 16) for x in parts[1:7]]


def state_of(stat_state: str, syscall: tuple[int | None, list[int]]) -> dict:
    """in_run and sched of a thread from its stat letter and its syscall line.

    A running thread (syscall ``running``) is taken to be inside KVM_RUN, a
    vCPU's usual place; its first KVM_RUN edge corrects that.
    """
    nr, args = syscall
    if nr is None:
        in_run = True
    else:
        in_run = nr == SYS_IOCTL_X86_64 and len(args) > 1 and args[1] == KVM_RUN
    sched = ThreadSched.ON_CPU if stat_state == "R" else ThreadSched.ASLEEP
    return {"in_run": bool(in_run), "sched": sched.name.lower()}


def read_thread_state(pid: int, tid: int) -> dict:
    """The header's record of one vCPU thread at attach: tid, at_ns (CLOCK_MONOTONIC),
    the /proc facts as read (stat state letter, syscall line) and what they mean
    (in_run, sched: "on_cpu" or "asleep"). A thread that is gone gives sched "gone"."""
    base = Path(f"/proc/{pid}/task/{tid}")
    at = time.monotonic_ns()
    try:
        stat = parse_stat_state((base / "stat").read_text())
        syscall_text = (base / "syscall").read_text().strip()
    except OSError:
        return {"tid": tid, "at_ns": at, "stat": "", "syscall": "", "in_run": False, "sched": "gone"}
    return {"tid": tid, "at_ns": at, "stat": stat, "syscall": syscall_text,
            **state_of(stat, parse_syscall(syscall_text))}
