"""``trace-cmd record`` of the kvm events, filtered to the vCPU threads in the kernel."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench.harness import log
from bench.harness.guest import Guest
from bench.harness.processes import STARTED, Lines, cpu_seconds, group_alive, stop_group
from bench.harness.tracefs import KVM_EVENTS, TRACEFS, TracefsState
from bench.harness.tracers.base import Outcome, Tracer, empty_counts, parse_event_lines


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
