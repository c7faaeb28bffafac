"""Part 3 of bench/overhead.py: what kvmtrace's sched probes cost an untraced process.

An idle guest (kvmtrace.demo.guest.HALT: halted with interrupts off, so
its vCPU makes no events) is recorded, and a ping-pong pair
(bench.harness.pingpong) is timed alone and under each recording
configuration, alternating round-robin. The sched probes are the only
kvmtrace programs that fire for the pair (nothing else of kvmtrace's runs
on its system calls: sys_enter_ioctl and sys_enter_close are filtered by
ioctl number and fd map, and are hit by other system calls only on their
own tracepoints, which the pair's read/write do not fire).

The pair's time on this shared host varies far more between runs than the
probes can add, so the probes' own cost is also measured exactly: with
``kernel.bpf_stats_enabled=1`` (put back afterwards) the kernel times every
run of the sched_switch and sched_wakeup programs during the ping-pong, at
every context switch of the host, the pair's and everyone else's.
"""

from __future__ import annotations

import json
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


STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def _sched_progs(pid: int) -> dict[str, int]:
    """Raw sched tracepoint -> program id, of the programs process ``pid`` attached."""
    r = subprocess.run(["bpftool", "perf", "show", "-j"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        return {}
    return {e["tracepoint"]: e["prog_id"] for e in json.loads(r.stdout)
            if e.get("pid") == pid and e.get("fd_type") == "raw_tracepoint" and e.get("tracepoint", "").startswith("sched_")}


def _prog_stats(ids: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(run_cnt, run_time_ns) of each program (bpf_stats)."""
    progs = json.loads(subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True,
                                      check=True).stdout)
    by_id = {p["id"]: p for p in progs}
    return {tp: (by_id[i].get("run_cnt", 0), by_id[i].get("run_time_ns", 0)) for tp, i in ids.items() if i in by_id}


def _timed_under(name: str, extra: list[str] | None, round_trips: int, out: Path) -> tuple[float, dict]:
    """ns per round trip, and per sched probe its runs and ns per run during the ping-pong."""
    if extra is None:
        return round_trip_ns(round_trips, CPU), {}
    proc = subprocess.Popen(kvmtrace_argv() + ["record", "--domain", name, "-o", str(out), *extra],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    STARTED.add(proc.pid)
    try:
        if Lines(proc.stderr).wait_for("recording", 180) is None:
            raise RuntimeError("kvmtrace record did not start")
        ids = _sched_progs(proc.pid)
        before = _prog_stats(ids)
        ns = round_trip_ns(round_trips, CPU)
        after = _prog_stats(ids)
        probes = {}
        for tp, (cnt, t) in after.items():
            runs, spent = cnt - before[tp][0], t - before[tp][1]
            probes[tp] = {"runs": runs, "ns_per_run": round(spent / runs, 1) if runs else None}
        return ns, probes
    finally:
        stop_group(proc)


def switch_cost(rounds: int, round_trips: int) -> dict:
    from kvmtrace.demo.guest import HALT
    from kvmtrace.demo.run import start_demo, stop_demo

    name = f"kvmtrace-bench-idle-{uuid.uuid4().hex[:6]}"
    _conn, dom = start_demo(HALT, "qemu:///system", name=name, debug_exit=False)
    runs: list[dict] = []
    tmp = tempfile.mkdtemp(prefix="kvmtrace-bench-switches-")
    stats_before = STATS.read_text().strip()
    STATS.write_text("1")  # the kernel times every BPF program run; put back below
    try:
        round_trip_ns(round_trips // 10, CPU)  # build and warm up
        for r in range(1, rounds + 1):
            for config, extra in CONFIGS:
                try:
                    ns, probes = _timed_under(name, extra, round_trips, Path(tmp) / f"{config}-{r}.kvmtrace")
                    runs.append({"config": config, "round": r, "ns_per_round_trip": ns, "probes": probes})
                    sw = probes.get("sched_switch", {})
                    log(f"switches {r} {config}: {ns / 2:,.0f} ns per switch"
                        + (f"; sched_switch probe {sw['ns_per_run']} ns per run ({sw['runs']:,} runs)"
                           if sw.get("runs") else ""))
                except Exception as e:  # noqa: BLE001 - one failed run must not stop the benchmark
                    runs.append({"config": config, "round": r, "error": f"{type(e).__name__}: {e}"})
    finally:
        STATS.write_text(stats_before)
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
        for tp in ("sched_switch", "sched_wakeup"):
            per = [x["probes"][tp]["ns_per_run"] for x in runs if x["config"] == config and "error" not in x
                   and x.get("probes", {}).get(tp, {}).get("ns_per_run") is not None]
            if per:
                row[f"{tp}_ns_per_run_median"] = round(statistics.median(per), 1)
        summary.append(row)
    return {"cpu": CPU, "round_trips": round_trips, "runs": runs, "summary": summary}
