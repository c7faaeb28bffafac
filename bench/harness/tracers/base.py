"""What every tracer of the overhead benchmark does, and what it reports."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness.guest import Guest
from bench.harness.processes import group_cpu_s, stop_group

# What a tracer saw, per kind.  "uexit_io": kvm_userspace_exit with reason
# KVM_EXIT_IO and errno >= 0; "uexit_other": every other kvm_userspace_exit
# event (a -EINTR "restart", or another reason): not a port exit.
KINDS = ("pio", "mmio", "uexit_io", "uexit_other", "run", "exit", "entry", "other")


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
