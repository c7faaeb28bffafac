"""Part 3 of bench/overhead.py: what kvmtrace's sched probes cost an untraced process.

An idle guest (kvmtrace.demo.guest.HALT: halted with interrupts off, so
its vCPU makes no events) is recorded, and a ping-pong pair
(bench.harness.pingpong) is timed alone and under each recording
configuration, alternating round-robin. The sched probes are the only
kvmtrace programs that fire for the pair (nothing else of kvmtrace's runs
on its system calls: sys_enter_ioctl and sys_enter_close are filtered by
ioctl number and fd map, and are hit by other system calls only on their
own tracepoints, which the pair's read/write do not fire).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import uuid
from pathlib import Path

from bench.harness import log
from bench.harness.pingpong import round_trip_ns
from bench.harness.processes import STARTED, Lines, stop_group
from bench.harness.tracers.kvmtrace import kvmtrace_argv

#: (config, extra record arguments); None: no recording.
CONFIGS = (("alone", None), ("kvmtrace-events", []), ("kvmtrace-counts", ["--mode", "counts"]),
           ("kvmtrace-events-nosched", ["--no-vcpu-time"]))
CPU = 0


def _timed_under(name: str, extra: list[str] | None, round_trips: int, out: Path) -> float:
    if extra is None:
        return round_trip_ns(round_trips, CPU)
    proc = subprocess.Popen(kvmtrace_argv() + ["record", "--domain", name, "-o", str(out), *extra],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    STARTED.add(proc.pid)
    try:
        if Lines(proc.stderr).wait_for("recording", 180) is None:
            raise RuntimeError("kvmtrace record did not start")
        return round_trip_ns(round_trips, CPU)
    finally:
        stop_group(proc)


def switch_cost(rounds: int, round_trips: int) -> dict:
    from kvmtrace.demo.guest import HALT
    from kvmtrace.demo.run import start_demo, stop_demo

    name = f"kvmtrace-bench-idle-{uuid.uuid4().hex[:6]}"
    _conn, dom = start_demo(HALT, "qemu:///system", name=name, debug_exit=False)
    runs: list[dict] = []
    tmp = tempfile.mkdtemp(prefix="kvmtrace-bench-switches-")
    try:
        round_trip_ns(round_trips // 10, CPU)  # build and warm up
        for r in range(1, rounds + 1):
            for config, extra in CONFIGS:
                try:
                    ns = _timed_under(name, extra, round_trips, Path(tmp) / f"{config}-{r}.kvmtrace")
                    runs.append({"config": config, "round": r, "ns_per_round_trip": ns})
                    log(f"switches {r} {config}: {ns / 2:,.0f} ns per switch")
                except Exception as e:  # noqa: BLE001 - one failed run must not stop the benchmark
                    runs.append({"config": config, "round": r, "error": f"{type(e).__name__}: {e}"})
    finally:
        stop_demo(dom)
        shutil.rmtree(tmp, ignore_errors=True)
    summary = []
    base = None
    for config, _ in CONFIGS:
        ok = [x["ns_per_round_trip"] / 2 for x in runs if x["config"] == config and "error" not in x]
        if not ok:
            continue
        med = statistics.median(ok)
        if config == "alone":
            base = med
        row = {"config": config, "runs": len(ok), "ns_per_switch_median": round(med, 1),
               "ns_per_switch_min": round(min(ok), 1), "ns_per_switch_max": round(max(ok), 1)}
        if base:
            row["extra_ns_per_switch"] = round(med - base, 1)
            row["ratio"] = round(med / base, 3)
        summary.append(row)
    return {"cpu": CPU, "round_trips": round_trips, "runs": runs, "summary": summary}
