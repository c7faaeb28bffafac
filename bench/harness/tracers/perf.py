"""``perf record`` of the kvm events of QEMU's process, enabled through its control FIFO."""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

from bench.harness.guest import Guest
from bench.harness.processes import STARTED, cpu_seconds, reap, stop_group
from bench.harness.tracefs import KVM_EVENTS
from bench.harness.tracers.base import Outcome, Tracer, empty_counts, parse_event_lines


def enable_through_fifo(proc: subprocess.Popen, ctl: Path, ack: Path, stderr_path: Path) -> None:
    """Enable a perf started with ``-D -1 --control fifo:CTL,ACK`` and wait
    for its ack: after it, every event of the guest is counted."""
    ack_fd = os.open(ack, os.O_RDONLY | os.O_NONBLOCK)
    ctl_fd = None
    try:
        deadline = time.monotonic() + 60
        while ctl_fd is None:
            try:
                ctl_fd = os.open(ctl, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"perf did not start: {stderr_path.read_text()[-1000:]}")
                time.sleep(0.02)
        os.write(ctl_fd, b"enable\n")
        got = b""
        while b"ack" not in got:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"perf did not acknowledge enable: {stderr_path.read_text()[-1000:]}")
            r, _, _ = select.select([ack_fd], [], [], 0.1)
            if r:
                got += os.read(ack_fd, 64)
                if not got:
                    time.sleep(0.02)
    finally:
        os.close(ack_fd)
        if ctl_fd is not None:
            os.close(ctl_fd)


def fifos(workdir: Path, prefix: str) -> tuple[Path, Path]:
    """A fresh control and ack FIFO for one perf process."""
    ctl, ack = workdir / f"{prefix}-ctl", workdir / f"{prefix}-ack"
    for f in (ctl, ack):
        f.unlink(missing_ok=True)
        os.mkfifo(f, 0o600)
    return ctl, ack


def start_enabled(perf: str, command: list[str], events, guest: Guest, workdir: Path,
                  stem: str, out: Path) -> tuple[subprocess.Popen, Path]:
    """Start ``perf COMMAND`` on ``events`` of the guest's process, writing
    ``out``, disabled (``-D -1``) until enabled through its control FIFO, and
    enable it: it counts every event from its return on. Returns the process
    and the file holding its stdout and stderr."""
    ctl, ack = fifos(workdir, stem)
    argv = [perf, *command, "-D", "-1", "--control", f"fifo:{ctl},{ack}"]
    for ev in events:
        argv += ["-e", ev]
    argv += ["-p", str(guest.pid), "-o", str(out)]
    stderr_path = workdir / f"{stem}.stderr"
    with open(stderr_path, "wb") as errf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf, start_new_session=True)
    STARTED.add(proc.pid)
    enable_through_fifo(proc, ctl, ack, stderr_path)
    return proc, stderr_path


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
        self.proc, self.stderr_path = start_enabled(self.perf, ["record"], [f"kvm:{ev}" for ev in KVM_EVENTS],
                                                    guest, workdir, "perf", self.path)

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
