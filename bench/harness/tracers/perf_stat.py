"""``perf stat`` counting kvm_pio and kvm_userspace_exit of QEMU's process:
how kvm_stat and other perf-event counters see the guest."""

from __future__ import annotations

import signal
from pathlib import Path

from bench.harness.guest import Guest
from bench.harness.processes import cpu_seconds, reap, stop_group
from bench.harness.tracers.base import Outcome, Tracer, empty_counts
from bench.harness.tracers.perf import Perf, start_enabled

EVENTS = ("kvm:kvm_pio", "kvm:kvm_userspace_exit")


class PerfStat(Tracer):
    name = "perf stat"

    def __init__(self):
        self.proc = None
        self.perf = Perf().perf

    def unavailable(self) -> str | None:
        return Perf().unavailable()

    def start(self, guest: Guest, workdir: Path) -> None:
        self.path = workdir / "perf-stat.csv"
        self.proc, self.stderr_path = start_enabled(self.perf, ["stat", "-x", ","], EVENTS, guest, workdir,
                                                    "perf-stat", self.path)

    def finish(self, guest: Guest) -> Outcome:
        out = Outcome()
        usage = reap(self.proc, 2)  # it may end with the process it counts ...
        if usage is None:  # ... or print its counts on SIGINT (not on SIGTERM)
            usage = stop_group(self.proc, signals=(signal.SIGINT, signal.SIGKILL), wait=30)
        out.tracer_cpu_s, out.tracer_rc = cpu_seconds(usage), self.proc.returncode
        out.log_tail = self.stderr_path.read_text(errors="replace")[-600:]
        counts = empty_counts()
        text = self.path.read_text() if self.path.exists() else ""
        seen = {}
        for line in text.splitlines():
            cols = line.split(",")
            if len(cols) > 2 and cols[2] in EVENTS:
                seen[cols[2]] = int(cols[0]) if cols[0].isdigit() else None
        if set(seen) != set(EVENTS) or None in seen.values():
            out.notes.append(f"perf stat printed no count for some events: {text[-300:]!r}")
            return out
        counts["pio"] = seen["kvm:kvm_pio"]
        counts["uexit_io"] = seen["kvm:kvm_userspace_exit"]  # every reason and errno: checked apart
        out.counts = counts
        out.recorded = sum(counts.values())
        out.lost = 0  # counters: nothing to lose
        return out
