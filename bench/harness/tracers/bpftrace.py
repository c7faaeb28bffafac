"""bpftrace counting the same events in kernel maps: the cheapest BPF peer.

``BpftraceRun`` is the one way this project runs bpftrace (the benchmark here,
the kernel tests' independent check of kvmtrace's counts): in its own process
group, waited for until the kernel shows its programs attached, stopped with
SIGINT, its maps read from its JSON output.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

from bench.harness.bpf import OUR_PROGS, recursion_misses, wait_bpf_attached
from bench.harness.guest import KVM_EXIT_IO, KVM_RUN, Guest
from bench.harness.processes import STARTED, Lines, cpu_seconds, stop_group
from bench.harness.tracefs import KVM_EVENTS
from bench.harness.tracers.base import Outcome, Tracer, empty_counts


class BpftraceRun:
    """One ``bpftrace -f json -e PROGRAM`` process.

    ``start`` returns once the kernel shows its programs on every tracepoint
    asked for: bpftrace prints "attached_probes" before it attaches, and
    without this wait the first milliseconds are not traced. If it raises,
    bpftrace has been stopped. ``stop`` sends SIGINT (bpftrace prints its maps
    then) and, if it does not end, SIGKILL.
    """

    def __init__(self, program: str):
        self.program = program
        self.proc: subprocess.Popen | None = None
        self.progs: dict[str, int] = {}  # tracepoint -> BPF program id

    def start(self, tracepoints: set[str], start_timeout: float = 120, attach_timeout: float = 60) -> "BpftraceRun":
        self.proc = subprocess.Popen(["bpftrace", "-f", "json", "-e", self.program], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        STARTED.add(self.proc.pid)
        self.out, self.err = Lines(self.proc.stdout), Lines(self.proc.stderr)
        try:
            if self.out.wait_for("attached_probes", start_timeout) is None:
                raise RuntimeError(f"bpftrace did not start: {self.err.text(1)[-1500:]}")
            self.progs = wait_bpf_attached(self.proc, tracepoints, attach_timeout)
        except BaseException:
            self.cleanup()  # its own session: nobody else's Ctrl-C or kill reaches it
            raise
        OUR_PROGS.update(self.progs.values())
        return self

    def stop(self, wait: float = 60):
        """Stop it (its group); returns its rusage if this call reaped it."""
        return stop_group(self.proc, signals=(signal.SIGINT, signal.SIGKILL), wait=wait)

    def cleanup(self) -> None:
        """Stop whatever still runs (for a finally block; idempotent)."""
        if self.proc is not None:
            stop_group(self.proc)

    def maps(self) -> dict[str, object]:
        """The maps it printed when it ended, by name ("@pio"): a dict of
        "k1,k2" string keys for a keyed map, a number for a plain one."""
        maps: dict[str, object] = {}
        for line in self.out.text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                msg = json.loads(line)
                if msg.get("type") == "map":
                    maps.update(msg["data"])
        return maps


def keyed(maps: dict[str, object], name: str) -> dict[tuple[int, ...], int]:
    """Map ``name`` of ``BpftraceRun.maps()`` with integer-tuple keys; {} if absent or not keyed."""
    data = maps.get(name) or {}
    if not isinstance(data, dict):
        return {}
    return {tuple(int(x) for x in k.split(",")): int(v) for k, v in data.items()}


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
        self.run: BpftraceRun | None = None

    @property
    def proc(self) -> subprocess.Popen | None:  # for Tracer.cpu_now and Tracer.cleanup
        return self.run.proc if self.run is not None else None

    def unavailable(self) -> str | None:
        return None if shutil.which("bpftrace") else "bpftrace not installed"

    def start(self, guest: Guest, workdir: Path) -> None:
        self.run = BpftraceRun(BPFTRACE_PROG.format(pid=guest.pid, run=KVM_RUN))
        self.run.start(set(KVM_EVENTS) | {"sys_enter_ioctl"}, 120, 60)

    def finish(self, guest: Guest) -> Outcome:
        out = Outcome()
        run = self.run
        misses = recursion_misses(run.progs.values())
        usage = run.stop(wait=60)
        out.tracer_cpu_s, out.tracer_rc = cpu_seconds(usage), run.proc.returncode
        out.log_tail = run.err.text()[-600:]
        maps = run.maps()
        if not maps:
            out.notes.append(f"no maps printed: {run.err.text(1)[-300:]}")
            return out

        counts = empty_counts()
        counts["pio"] = sum(keyed(maps, "@pio").values())
        counts["mmio"] = sum(keyed(maps, "@mmio").values())
        for (reason, errno), n in keyed(maps, "@uexit").items():
            counts["uexit_io" if reason == KVM_EXIT_IO and errno >= 0 else "uexit_other"] += n
        for k in ("exit", "entry", "run"):
            v = maps.get(f"@{k}", 0)
            counts[k] = int(v) if isinstance(v, (int, float)) else 0
        out.counts = counts
        out.recorded = sum(counts.values())
        out.lost = misses
        out.lost_detail = {"recursion_misses": misses,
                           "pio_by_port": {str(k): v for k, v in keyed(maps, "@pio").items()},
                           "uexit_by_reason_errno": {str(k): v for k, v in keyed(maps, "@uexit").items()}}
        return out
