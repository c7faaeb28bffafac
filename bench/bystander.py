#!/usr/bin/env python3
"""What a tracer costs processes it does not trace: the bystander benchmark.

A small C program (compiled here with cc), pinned to one core, times 1M
``ioctl(FIONREAD)`` on a pipe and 1M ``getppid()`` (CPU ns per call: the
thread's own CPU time, which other load on the shared core does not inflate;
wall time is kept in the JSON too), alone (the
guest running, no tracer) and while each tracer records a nearly idle guest:
the demo ROM paced at 100 passes a second (kvmtrace.demo.guest.PACED). A
syscall tracepoint puts every task's every syscall on the tracing slow path
and runs its program on each one; kvm tracepoints cost a bystander nothing.
``--runs`` rounds; each round starts every configuration afresh (guest and
tracer) and times the bystander once, round-robin, so that the shared
machine's noise hits them all alike. Medians per configuration, and the ratio
to the untraced median.

    sudo .venv/bin/python bench/bystander.py --runs 5

``--before KVMTRACE`` adds a configuration recording with another kvmtrace
executable (e.g. an older checkout's .venv/bin/kvmtrace), for a before/after.
It prints a table and writes bench/results/bystander-<date>-<time>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import log  # noqa: E402
from bench.harness.guest import Guest  # noqa: E402
from bench.harness.tracers import Bpftrace, Kvmtrace, Perf, TraceCmd  # noqa: E402
from bench.harness.tracers import kvmtrace as kvmtrace_tracer  # noqa: E402

DOMAIN = "kvmtrace-bench-bystander"
URI = "qemu:///system"

BYSTANDER_C = r"""
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(clockid_t clock)
{
	struct timespec t;

	clock_gettime(clock, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv)
{
	int cpu = atoi(argv[1]), p[2], avail;
	long n = atol(argv[2]), i;
	cpu_set_t set;
	double t0, t1, t2, c0, c1, c2;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) || pipe(p))
		return 1;
	for (i = 0; i < 10000; i++)
		ioctl(p[0], FIONREAD, &avail);
	c0 = now(CLOCK_THREAD_CPUTIME_ID);
	t0 = now(CLOCK_MONOTONIC);
	for (i = 0; i < n; i++)
		ioctl(p[0], FIONREAD, &avail);
	c1 = now(CLOCK_THREAD_CPUTIME_ID);
	t1 = now(CLOCK_MONOTONIC);
	for (i = 0; i < n; i++)
		syscall(SYS_getppid);
	c2 = now(CLOCK_THREAD_CPUTIME_ID);
	t2 = now(CLOCK_MONOTONIC);
	/* CPU ns per call (what the syscalls cost this thread), then wall ns */
	printf("%.1f %.1f %.1f %.1f\n", (c1 - c0) / n, (c2 - c1) / n, (t1 - t0) / n, (t2 - t1) / n);
	return 0;
}
"""


def build(workdir: Path) -> Path:
    src, exe = workdir / "bystander.c", workdir / "bystander"
    src.write_text(BYSTANDER_C)
    subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def foreign_syscall_hooks(ours: set[int]) -> list[str]:
    """Syscall tracepoints other processes hold now (bpftool perf show): one
    puts every task's syscalls on the slow path, ours included, so a run made
    meanwhile measures that too (the host is shared)."""
    r = subprocess.run(["bpftool", "perf", "show", "-j"], capture_output=True, text=True)
    found = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else []
    return sorted({f"pid {e['pid']} {e.get('tracepoint')}" for e in found
                   if str(e.get("tracepoint", "")).startswith(("sys_enter", "sys_exit"))
                   and e.get("pid") not in ours})


def bystander(exe: Path, cpu: int, calls: int) -> tuple[float, float, float, float]:
    """CPU ns per ioctl and per getppid (the thread's CPU time: what the calls
    cost it, whoever else shares the core), then the same in wall ns."""
    out = subprocess.run([str(exe), str(cpu), str(calls)], capture_output=True, text=True, check=True).stdout
    return tuple(float(x) for x in out.split())


class Before(Kvmtrace):
    """``kvmtrace record`` from another executable (an older checkout)."""

    def __init__(self, exe: str):
        super().__init__("events")
        self.exe = exe
        self.name = "kvmtrace-before"

    def start(self, guest, workdir):
        saved = kvmtrace_tracer.kvmtrace_argv
        kvmtrace_tracer.kvmtrace_argv = lambda: [self.exe]
        try:
            super().start(guest, workdir)
        finally:
            kvmtrace_tracer.kvmtrace_argv = saved


def make(name: str, before: str | None):
    return {"kvmtrace-events": lambda: Kvmtrace("events"), "kvmtrace-counts": lambda: Kvmtrace("counts"),
            "bpftrace": Bpftrace, "perf": Perf, "trace-cmd": TraceCmd,
            "kvmtrace-before": lambda: Before(before)}[name]()


def measure(config: str, exe: Path, args, workdir: Path, res: dict) -> None:
    """One bystander run while ``config`` traces the idle guest, added to ``res``."""
    from kvmtrace.demo.guest import PACED
    from kvmtrace.demo.run import start_demo, stop_demo
    from kvmtrace.record.domain import resolve

    tracer = None if config == "untraced" else make(config, args.before)
    conn, dom = start_demo(PACED, URI, name=DOMAIN, paused=True)
    try:
        g = resolve(conn, DOMAIN)
        guest = Guest(g.name, g.pid, list(g.vcpu_threads.values()))
        if tracer is not None:
            d = workdir / f"{config}-{len(res['ioctl_ns'])}"
            d.mkdir()
            tracer.start(guest, d)
        dom.resume()
        ours = {tracer.proc.pid} if tracer is not None and getattr(tracer, "proc", None) else set()
        if tracer is not None and getattr(tracer, "run", None) is not None:  # bpftrace
            ours.add(tracer.run.proc.pid)
        foreign = foreign_syscall_hooks(ours)
        i, p, wi, wp = bystander(exe, args.cpu, args.calls)
        foreign = sorted(set(foreign) | set(foreign_syscall_hooks(ours)))
        res.setdefault("foreign_syscall_hooks", []).append(foreign)
        res["ioctl_ns"].append(i)
        res["getppid_ns"].append(p)
        res.setdefault("ioctl_wall_ns", []).append(wi)
        res.setdefault("getppid_wall_ns", []).append(wp)
        pidfd = os.pidfd_open(guest.pid)
        stop_demo(dom)  # a tracer of this guest then ends by itself (or on SIGINT)
        select.select([pidfd], [], [], 30)
        os.close(pidfd)
        if tracer is not None:
            out = tracer.finish(guest)
            res.setdefault("tracer_notes", []).extend(out.notes)
    finally:
        if tracer is not None:
            tracer.cleanup()
        stop_demo(dom)
    log(f"{config}: ioctl {i:.1f} ns, getppid {p:.1f} ns (CPU; wall {wi:.1f}, {wp:.1f})"
        + (f"; others' syscall hooks: {', '.join(foreign)}" if foreign else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="rounds: bystander runs per configuration (default 5)")
    p.add_argument("--calls", type=int, default=1_000_000, help="calls of each syscall per run (default 1M)")
    p.add_argument("--cpu", type=int, default=1, help="the core the bystander is pinned to (default 1)")
    p.add_argument("--configs", default="kvmtrace-events,kvmtrace-counts,bpftrace,perf,trace-cmd")
    p.add_argument("--before", metavar="KVMTRACE", help="also record with this kvmtrace executable")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    configs = ["untraced"] + ([] if not args.before else ["kvmtrace-before"])
    configs += [c.strip() for c in args.configs.split(",") if c.strip()]
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"), "kernel": platform.release(),
              "runs": args.runs, "calls": args.calls, "cpu": args.cpu, "configs": []}
    with tempfile.TemporaryDirectory(prefix="kvmtrace-bystander-") as tmp:
        exe = build(Path(tmp))
        results = {c: {"config": c, "ioctl_ns": [], "getppid_ns": []} for c in configs}
        for n in range(args.runs):
            log(f"round {n + 1} of {args.runs}")
            for c in configs:
                measure(c, exe, args, Path(tmp), results[c])
    for r in results.values():
        # Runs during which another process held a syscall tracepoint measure
        # that process too: the medians are of the clean runs where there are any.
        clean = [n for n, f in enumerate(r["foreign_syscall_hooks"]) if not f] or list(range(len(r["ioctl_ns"])))
        r["clean_runs"] = len([f for f in r["foreign_syscall_hooks"] if not f])
        r["ioctl_median_ns"] = statistics.median(r["ioctl_ns"][n] for n in clean)
        r["getppid_median_ns"] = statistics.median(r["getppid_ns"][n] for n in clean)
        r["ioctl_min_ns"] = min(r["ioctl_ns"])
        r["getppid_min_ns"] = min(r["getppid_ns"])
        report["configs"].append(r)
    b_ioctl, b_ppid = results["untraced"]["ioctl_median_ns"], results["untraced"]["getppid_median_ns"]
    print(f"\nBystander: 1 core, {args.calls:,} calls each, medians of {args.runs} runs; "
          f"idle guest (PACED) traced by each tool")
    print(f"{'config':<18}{'ioctl ns':>10}{'ratio':>8}{'getppid ns':>12}{'ratio':>8}{'clean':>7}   (CPU ns per call)")
    for r in report["configs"]:
        r["ioctl_ratio"] = round(r["ioctl_median_ns"] / b_ioctl, 3)
        r["getppid_ratio"] = round(r["getppid_median_ns"] / b_ppid, 3)
        print(f"{r['config']:<18}{r['ioctl_median_ns']:>10.1f}{r['ioctl_ratio']:>8.3f}"
              f"{r['getppid_median_ns']:>12.1f}{r['getppid_ratio']:>8.3f}{r['clean_runs']:>5}/{args.runs}")
    print("clean: runs with no other process holding a syscall tracepoint (medians are of those, if any)")
    report["untraced_median_ns"] = {"ioctl": b_ioctl, "getppid": b_ppid}
    out = Path(args.results) / f"bystander-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
