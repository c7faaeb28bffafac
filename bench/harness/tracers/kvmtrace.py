"""``kvmtrace record``, in events or counts mode, checked through its own report and file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.harness import log
from bench.harness.bpf import OUR_PROGS, wait_bpf_attached
from bench.harness.guest import KVM_EXIT_IO, Guest
from bench.harness.processes import STARTED, Lines, cpu_seconds, reap, stop_group
from bench.harness.tracers.base import Outcome, Tracer, empty_counts


def kvmtrace_argv() -> list[str]:
    script = Path(sys.executable).with_name("kvmtrace")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kvmtrace.cli"]


class Kvmtrace(Tracer):
    records_run = True

    def __init__(self, mode: str = "events", vcpu_time: bool = True):
        self.mode = mode
        self.vcpu_time = vcpu_time  # False: record --no-vcpu-time (no sched probes)
        self.name = f"kvmtrace {mode}" + ("" if vcpu_time else " --no-vcpu-time")
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
        if not self.vcpu_time:
            argv.append("--no-vcpu-time")
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
            if k in (7, 13):  # HIST buckets, VCPU_TIME nanoseconds (counts mode): not traced events
                continue
            if k == 5:
                io = sel & (reason == KVM_EXIT_IO) & (err >= 0)
                counts["uexit_io"] += int(weight[io].sum())
                counts["uexit_other"] += int(weight[sel & ~io].sum())
            else:
                counts[names.get(int(k), "other")] += int(weight[sel].sum())
        return counts
