#!/usr/bin/env python3
"""kvmtrace overhead benchmark: guest run time under each tracer, and drain speed.

Part 1, guest run time.  The demo guest (kvmtrace.demo.guest) runs a finite "storm":
N writes to port 0x80 and nothing else, then ends QEMU through isa-debug-exit.
Each write is one kvm_pio event, one userspace exit (KVM_EXIT_IO) and one
KVM_RUN ioctl.  The domain is started paused, the tracer is started and waited
for until it is really attached, and the guest run time is measured from
dom.resume() until the QEMU process ends (its pidfd becomes readable): QEMU's
start-up is not included.  Configurations alternate round-robin (untraced,
kvmtrace events, kvmtrace counts, bpftrace, perf, trace-cmd, untraced, ...)
so that a noisy machine hits them all alike; medians are reported, with the
ratio to the untraced median.  Every tracer's recorded counts are checked
against the guest's program (kvmtrace.demo.guest.expected) and its lost events
are reported.

Part 3, the sched probes' cost to the rest of the host: sched_switch fires
at every context switch of every process. A pipe ping-pong between two
processes pinned to one CPU (bench.harness.pingpong, two switches per round
trip) is timed alone and while kvmtrace records an idle guest (events mode,
counts mode, and --no-vcpu-time), alternating; the extra ns per switch is
what every context switch on the host pays while kvmtrace records.

Part 2, drain speed: events per second per core from kvmtrace's BPF ring
buffer to its trace file, with kvmtrace's own classes (Probes/RingReader and
TraceWriter): (a) TraceWriter.write of synthetic storm events in batches of
65536; (b) one drain of a real ring buffer that the storm guest filled while
nobody read it, then the write of what was drained.

Run as root from the repository root:

    sudo .venv/bin/python bench/overhead.py --rounds 7 --writes 150000

It prints a table and writes bench/results/overhead-<date>-<time>.json.
Every tracer runs in its own process group and is stopped, and every domain
destroyed, in finally blocks; at the end the script checks that none of its
BPF programs is still loaded and that tracefs is as it found it.

What it runs on is bench.harness: processes, BPF attachment checks, tracefs
save and restore, the storm guest and its ground truth, one module per tracer,
and the drain measurements.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's kvmtrace and bench.harness, also when run from elsewhere

from bench.harness import log  # noqa: E402
from bench.harness.bpf import OUR_PROGS, loaded_programs  # noqa: E402
from bench.harness.drain import BATCH, bench_ring_drain, bench_writer  # noqa: E402
from bench.harness.guest import (DOMAIN, URI, Guest, ground_truth, storm_guest, storm_workload,  # noqa: E402
                                 vcpu_cpu_ns)
from bench.harness.pingpong import unavailable as pingpong_unavailable  # noqa: E402
from bench.harness.processes import STARTED, group_alive, tool_version  # noqa: E402
from bench.harness.tracefs import KVM_EVENTS, TRACEFS, TracefsState  # noqa: E402
from bench.harness.tracers import Bpftrace, EmptyBpf, Kvmtrace, Outcome, Perf, TraceCmd, Tracer  # noqa: E402
from bench.harness.tracers.kvmtrace import kvmtrace_argv  # noqa: E402


# --------------------------------------------------------------------------
# Part 1: guest run time


def check(outcome: Outcome, truth: dict, tracer: Tracer, hw_exits_fire: bool) -> tuple[int, list[str]]:
    """(events the tool should have recorded, at least; mismatches against the ground truth)."""
    c = outcome.counts
    bad = []
    for k in ("pio", "mmio", "uexit_io"):
        if c[k] != truth[k]:
            bad.append(f"{k} {c[k]} != {truth[k]}")
    # Kinds without a ground truth (uexit_other, kvmtrace's extra kinds) count as observed.
    expected = truth["pio"] + truth["mmio"] + truth["uexit_io"] + c["uexit_other"] + c["other"]
    if tracer.records_run:
        want = truth["run"] + c["uexit_other"]
        if c["run"] != want:
            bad.append(f"run {c['run']} != {want}")
        expected += want
    if hw_exits_fire:
        for k in ("exit", "entry"):
            if c[k] < truth["pio"]:
                bad.append(f"{k} {c[k]} < {truth['pio']}")
        expected += c["exit"] + c["entry"]
    elif c["exit"] or c["entry"]:
        expected += c["exit"] + c["entry"]
    return expected, bad


def run_once(tracer: Tracer | None, workload, workdir: Path, timeout: float, settle: float = 0.0) -> dict:
    res: dict = {"guest_s": None, "resume_s": None, "error": None}
    try:
        with storm_guest(workload) as (dom, g, pidfd):
            try:
                guest = Guest(g.name, g.pid, sorted(g.vcpu_threads.values()))
                res["qemu_pid"] = guest.pid
                if tracer is not None:
                    tracer.start(guest, workdir)
                time.sleep(settle)  # let the start-up's after-effects (libvirt, tracer set-up) pass
                res["loadavg_1m"] = os.getloadavg()[0]
                cpu0 = tracer.cpu_now() if tracer is not None else None
                vcpu0 = vcpu_cpu_ns(guest)
                t0 = time.perf_counter()
                dom.resume()
                t1 = time.perf_counter()
                # Until QEMU ends, sample the vCPU threads' CPU time every 5 ms: the
                # last sample before they exit is the guest's CPU time (to 5 ms).
                ready, vcpu1 = [], vcpu0
                while time.perf_counter() - t0 < timeout and not ready:
                    ready, _, _ = select.select([pidfd], [], [], 0.005)
                    now = vcpu_cpu_ns(guest)
                    vcpu1 = now if now is not None else vcpu1
                t2 = time.perf_counter()
                cpu1 = tracer.cpu_now() if tracer is not None else None
                if cpu0 is not None and cpu1 is not None:
                    res["tracer_cpu_during_s"] = round(cpu1 - cpu0, 3)
                if not ready:
                    raise RuntimeError(f"the guest did not end within {timeout} s")
                res["guest_s"] = round(t2 - t0, 6)
                if vcpu0 is not None and vcpu1 is not None:
                    res["vcpu_cpu_s"] = round((vcpu1 - vcpu0) / 1e9, 6)
                res["resume_s"] = round(t1 - t0, 6)
                if tracer is not None:
                    res["outcome"] = tracer.finish(guest)
            finally:
                if tracer is not None:
                    tracer.cleanup()
    except Exception as e:  # noqa: BLE001 - one failed run must not stop the benchmark
        res["error"] = f"{type(e).__name__}: {e}"
    return res


def make_tracer(name: str) -> Tracer | None:
    return {
        "untraced": lambda: None,
        "kvmtrace-events": lambda: Kvmtrace("events"),
        "kvmtrace-counts": lambda: Kvmtrace("counts"),
        "kvmtrace-events-nosched": lambda: Kvmtrace("events", vcpu_time=False),
        "kvmtrace-counts-nosched": lambda: Kvmtrace("counts", vcpu_time=False),
        "bpftrace": Bpftrace,
        "bpf-empty": EmptyBpf,
        "raw-empty": lambda: EmptyBpf(raw=True),
        "perf": Perf,
        "trace-cmd": TraceCmd,
    }[name]()


#: Configurations that record nothing: timed, not checked against the ground truth.
NO_RECORDS = ("untraced", "bpf-empty", "raw-empty")
CONFIGS = ("untraced", "bpf-empty", "raw-empty", "kvmtrace-events", "kvmtrace-counts", "kvmtrace-events-nosched",
           "kvmtrace-counts-nosched", "bpftrace", "perf", "trace-cmd")


def overhead(args, report: dict) -> None:
    workload = storm_workload(args.writes)
    truth = ground_truth(workload)
    hw_exits_fire = args.hw_exits
    report["workload"] = {"port_writes": args.writes, "steady": False}
    report["ground_truth"] = truth
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"unknown configs {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    active, skipped = [], {}
    for name in configs:
        t = make_tracer(name)
        why = t.unavailable() if t is not None else None
        if why:
            skipped[name] = why
            log(f"skipping {name}: {why}")
        else:
            active.append(name)
    report["skipped"] = skipped
    runs = report["runs"] = []
    schedule = [("warmup", 0, "untraced")] * args.warmup
    schedule += [("round", r + 1, c) for r in range(args.rounds) for c in active]
    with tempfile.TemporaryDirectory(prefix="kvmtrace-bench-", dir=args.workdir) as tmp:
        for i, (phase, rnd, name) in enumerate(schedule, 1):
            workdir = Path(tmp) / f"{i:03d}-{name}"
            workdir.mkdir()
            tracer = make_tracer(name)
            res = run_once(tracer, workload, workdir, args.timeout, args.settle)
            entry = {"config": name, "round": rnd, "warmup": phase == "warmup", "guest_s": res["guest_s"],
                     "vcpu_cpu_s": res.get("vcpu_cpu_s"), "resume_s": res["resume_s"], "loadavg_1m": res.get("loadavg_1m"),
                     "tracer_cpu_during_s": res.get("tracer_cpu_during_s"),
                     "error": res["error"]}
            oc: Outcome | None = res.get("outcome")
            if oc is not None:
                entry.update(counts=oc.counts, recorded=oc.recorded, lost=oc.lost, lost_detail=oc.lost_detail,
                             tracer_cpu_s=oc.tracer_cpu_s, tracer_rc=oc.tracer_rc, notes=oc.notes,
                             tracer_log_tail=oc.log_tail)
                if oc.counts is not None:
                    entry["expected"], entry["mismatches"] = check(oc, truth, tracer, hw_exits_fire)
            runs.append(entry)
            desc = f"{entry['guest_s']:.3f} s" if entry["guest_s"] is not None else "no time"
            if entry.get("recorded") is not None:
                desc += f", recorded {entry['recorded']:,}/{entry.get('expected', 0):,}, lost {entry['lost']}"
            if entry.get("mismatches"):
                desc += f", MISMATCH {entry['mismatches']}"
            if entry["error"]:
                desc += f", ERROR {entry['error']}"
            log(f"{phase} {rnd} {name}: {desc}")
            if args.keep:
                keep = Path(args.keep) / workdir.name
                keep.mkdir(parents=True, exist_ok=True)
                for f in workdir.iterdir():
                    if f.is_file():  # not perf's control FIFOs
                        shutil.copy2(f, keep / f.name)
    report["summary"] = summarize(runs, active)


def summarize(runs: list[dict], configs: list[str]) -> list[dict]:
    rows = []
    base = vbase = None
    for name in configs:
        mine = [r for r in runs if r["config"] == name and not r["warmup"]]
        timed = [r for r in mine if r["guest_s"] is not None and not r["error"]]
        # A run whose counts miss the ground truth did not measure the tracer doing its
        # whole job (e.g. tracefs reset by someone else mid-run): its time is left out.
        nothing = name in NO_RECORDS
        valid = [r["guest_s"] for r in timed if not r.get("mismatches") and (nothing or r.get("counts"))]
        row = {"config": name, "runs": len(mine), "ok_runs": len(valid), "errors": sum(1 for r in mine if r["error"]),
               "excluded_runs": len(timed) - len(valid)}
        if valid:
            row.update(median_s=round(statistics.median(valid), 4), min_s=round(min(valid), 4),
                       max_s=round(max(valid), 4))
        vcpu = [r["vcpu_cpu_s"] for r in timed if r.get("vcpu_cpu_s") is not None and not r.get("mismatches")
                and (nothing or r.get("counts"))]
        if vcpu:
            row["vcpu_cpu_median_s"] = round(statistics.median(vcpu), 4)
        if timed:
            row["median_all_s"] = round(statistics.median(r["guest_s"] for r in timed), 4)
        if name == "untraced":
            base, vbase = row.get("median_s"), row.get("vcpu_cpu_median_s")
        rec = [r for r in mine if r.get("recorded") is not None]
        if rec:
            row["recorded_median"] = int(statistics.median(r["recorded"] for r in rec))
            row["expected_median"] = int(statistics.median(r.get("expected", 0) for r in rec))
            row["lost_max"] = max(r["lost"] or 0 for r in rec)
            # Events due but neither stored nor reported lost: silent loss.
            row["missing_max"] = max(max(0, r.get("expected", 0) - r["recorded"] - (r["lost"] or 0)) for r in rec)
            row["lost_total"] = sum(r["lost"] or 0 for r in rec)
            row["runs_matching_truth"] = sum(1 for r in rec if not r.get("mismatches"))
            cpu = [r["tracer_cpu_s"] for r in rec if r.get("tracer_cpu_s") is not None]
            if cpu:
                row["tracer_cpu_s_median"] = round(statistics.median(cpu), 3)
            during = [r["tracer_cpu_during_s"] for r in rec if r.get("tracer_cpu_during_s") is not None]
            if during:
                row["tracer_cpu_during_s_median"] = round(statistics.median(during), 3)
        rows.append(row)
    for row in rows:
        if base and row.get("median_s"):
            row["ratio"] = round(row["median_s"] / base, 3)
        if vbase and row.get("vcpu_cpu_median_s"):
            row["vcpu_ratio"] = round(row["vcpu_cpu_median_s"] / vbase, 3)
    return rows


# --------------------------------------------------------------------------
# Part 3: the sched probes' cost to other processes


def switches(args, report: dict) -> None:
    """Ping-pong round trips (bench.harness.pingpong) alone and while kvmtrace records an idle guest."""
    from bench.harness.switches import switch_cost

    why = pingpong_unavailable()
    if why:
        report["switches"] = {"skipped": why}
        log(f"skipping the context-switch cost: {why}")
        return
    report["switches"] = switch_cost(args.switch_rounds, args.round_trips)


# --------------------------------------------------------------------------
# Part 2: drain speed


def drain(args, report: dict) -> None:
    out = report["drain"] = {"target_events_per_cpu_s": 1_000_000}
    with tempfile.TemporaryDirectory(prefix="kvmtrace-bench-drain-", dir=args.workdir) as tmp:
        log(f"drain (a): TraceWriter.write of {args.drain_events:,} synthetic events in batches of {BATCH}")
        out["writer"] = bench_writer(args.drain_events, Path(tmp))
        log(f"drain (a): {out['writer']['events_per_cpu_s']:,} events per CPU-second")
        out["ring"] = []
        for i in range(args.drain_rounds):
            try:
                r = bench_ring_drain(args.drain_writes or args.writes, args.ringbuf_pages, Path(tmp), args.timeout)
            except Exception as e:  # noqa: BLE001
                r = {"error": f"{type(e).__name__}: {e}"}
            out["ring"].append(r)
            log(f"drain (b) {i + 1}: " + (f"{r.get('drained', 0):,} events, "
                                          f"{r.get('events_per_cpu_s', 0):,} per CPU-second, lost {r.get('lost')}"
                                          if "error" not in r else r["error"]))
        ok = [r for r in out["ring"] if r.get("events_per_cpu_s")]
        if ok:
            out["ring_median"] = {k: statistics.median(r[k] for r in ok)
                                  for k in ("drained", "drain_events_per_cpu_s", "events_per_cpu_s",
                                            "events_per_s_wall", "cpu_ns_per_event")}
        best = out.get("ring_median", {}).get("events_per_cpu_s")
        out["meets_target"] = bool(best and best >= out["target_events_per_cpu_s"])


# --------------------------------------------------------------------------
# Output


def print_tables(report: dict) -> None:
    lines = []
    if report.get("summary"):
        n = report["workload"]["port_writes"]
        lines.append(f"\nGuest run time, storm of {n:,} port writes (dom.resume() -> QEMU exit), "
                     f"{report['args']['rounds']} rounds")
        hdr = (f"{'config':<17}{'runs':>5}{'median s':>10}{'min':>8}{'max':>8}{'ratio':>7}{'vcpu s':>8}{'ratio':>7}"
               f"{'recorded':>10}{'expected':>10}{'exact':>6}{'lost':>6}{'missing':>8}{'cpu s':>6}{'total':>6}")
        lines += [hdr, "-" * len(hdr)]
        for r in report["summary"]:
            def f(key, fmt):
                return format(r[key], fmt) if r.get(key) is not None else "-"
            exact = f"{r['runs_matching_truth']}/{r['runs']}" if "runs_matching_truth" in r else "-"
            lines.append(f"{r['config']:<17}{r['ok_runs']:>5}{f('median_s', '.3f'):>10}{f('min_s', '.3f'):>8}"
                         f"{f('max_s', '.3f'):>8}{f('ratio', '.2f'):>7}{f('vcpu_cpu_median_s', '.3f'):>8}"
                         f"{f('vcpu_ratio', '.2f'):>7}{f('recorded_median', ','):>10}"
                         f"{f('expected_median', ','):>10}{exact:>6}{f('lost_max', ','):>6}{f('missing_max', ','):>8}"
                         f"{f('tracer_cpu_during_s_median', '.2f'):>6}{f('tracer_cpu_s_median', '.2f'):>6}")
        for name, why in report.get("skipped", {}).items():
            lines.append(f"{name:<17}skipped: {why}")
        lines.append("runs: runs timed, those whose counts missed the ground truth left out (JSON: median_all_s).\n"
                     "vcpu s: CPU time of the guest's vCPU threads (schedstat), where the BPF programs run;\n"
                     "less affected than wall time by the machine's other load. Ratios to untraced.\n"
                     "recorded/expected: medians of events stored / due (ground truth). exact: runs whose pio,\n"
                     "userspace IO exits (and KVM_RUN) equal the guest's program. lost: most a run's tool reported\n"
                     "lost; missing: most a run lacked without any loss report (silent). cpu s: tracer processes'\n"
                     "CPU time while the guest ran; total: over the tracer's life (start-up, final drain). Medians.")
    d = report.get("drain")
    if d:
        lines.append(f"\nDrain to file, one core (target >= {d['target_events_per_cpu_s']:,} events/s)")
        w = d.get("writer")
        if w:
            lines.append(f"  TraceWriter.write, {w['events']:,} synthetic events: {w['events_per_cpu_s']:,} events "
                         f"per CPU-s ({w['cpu_ns_per_event']} ns CPU/event), {w['events_per_s_wall']:,}/s wall, "
                         f"{w['bytes_per_event']} bytes/event on disk")
        for r in d.get("ring", []):
            if r.get("error"):
                lines.append(f"  ring drain failed: {r['error']}")
        m = d.get("ring_median")
        if m:
            lines.append(f"  RingReader.drain + write, real ring ({int(m['drained']):,} events, median of "
                         f"{len(d['ring'])}): {int(m['events_per_cpu_s']):,} events per CPU-s "
                         f"({m['cpu_ns_per_event']} ns CPU/event), {int(m['events_per_s_wall']):,}/s wall; "
                         f"drain alone {int(m['drain_events_per_cpu_s']):,} per CPU-s")
        if "meets_target" in d:
            lines.append(f"  meets target: {'yes' if d['meets_target'] else 'NO'}")
    sw = report.get("switches")
    if sw and sw.get("summary"):
        lines.append(f"\nContext switches of an untraced process (a pipe ping-pong pinned to CPU {sw['cpu']}, "
                     f"{sw['round_trips']:,} round trips = 2 switches each), while kvmtrace records an idle guest")
        lines.append(f"{'config':<26}{'runs':>5}{'ns/switch':>11}{'+ns/switch':>12}{'ratio':>7}"
                     f"{'switch probe ns':>17}{'wakeup probe ns':>17}")
        for r in sw["summary"]:
            extra = f"{r['extra_ns_per_switch']:+.0f}" if r.get("extra_ns_per_switch") is not None else "-"
            probe = [f"{r[k]:.0f}" if r.get(k) is not None else "-"
                     for k in ("sched_switch_ns_per_run_median", "sched_wakeup_ns_per_run_median")]
            lines.append(f"{r['config']:<26}{r['runs']:>5}{r['ns_per_switch_median']:>11.0f}{extra:>12}"
                         f"{r.get('ratio', 1.0):>7.3f}{probe[0]:>17}{probe[1]:>17}")
        lines.append("ns/switch: the pair's time per context switch (medians); probe ns: the kernel's own timing\n"
                     "(bpf_stats) of each run of the sched probes during the ping-pong, every switch on the host.")
    if report.get("leftovers"):
        lines.append(f"\nLEFTOVERS: {report['leftovers']}")
    elif "leftovers" in report:
        lines.append(f"\nclean-up check: none of this run's {len(report.get('our_bpf_program_ids', []))} BPF "
                     f"programs is loaded, no tracer process, no {DOMAIN} domain, no kvm event left enabled")
    print("\n".join(lines))


def leftovers(started_groups: set[int]) -> dict:
    """Anything of ours still there: BPF programs, tracer processes, the domain, tracefs events."""
    found: dict = {}
    still = [pid for pid in sorted(OUR_PROGS)
             if subprocess.run(["bpftool", "prog", "show", "id", str(pid)], capture_output=True).returncode == 0]
    if still:
        found["bpf_programs"] = still
    groups = [g for g in sorted(started_groups) if group_alive(g)]
    if groups:
        found["tracer_process_groups"] = groups
    r = subprocess.run(["virsh", "-c", URI, "domstate", DOMAIN], capture_output=True, text=True)
    if r.returncode == 0 and "shut off" not in r.stdout:
        found["domain"] = f"{DOMAIN}: {r.stdout.strip()}"
    on = [ev for ev in KVM_EVENTS if (TRACEFS / "events/kvm" / ev / "enable").exists()
          and (TRACEFS / "events/kvm" / ev / "enable").read_text().strip() != "0"]
    if on:
        found["tracefs_events_enabled"] = on
    return found


def host_facts() -> dict:
    from kvmtrace.record.host import host_info

    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        **host_info().as_dict(),
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "tools": {
            "kvmtrace": tool_version(kvmtrace_argv() + ["--version"]),
            "bpftrace": tool_version(["bpftrace", "--version"]),
            "perf": tool_version(["perf", "--version"]),
            "trace-cmd": tool_version(["trace-cmd", "--version"]),
            "qemu": tool_version(["qemu-system-x86_64", "--version"]),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7, help="rounds of all configurations (default 7)")
    p.add_argument("--writes", type=int, default=150_000, help="port writes of the storm guest (default 150000)")
    p.add_argument("--warmup", type=int, default=1, help="untraced runs first, not counted (default 1)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list (default all: {','.join(CONFIGS)})")
    p.add_argument("--hw-exits", action="store_true",
                   help="kvm_exit/kvm_entry fire on this host (VMX/SVM): check them (default: detected)")
    p.add_argument("--no-overhead", action="store_true", help="skip part 1 (guest run time)")
    p.add_argument("--no-drain", action="store_true", help="skip part 2 (drain speed)")
    p.add_argument("--no-switches", action="store_true",
                   help="skip part 3 (the sched probes' cost to an untraced process's context switches)")
    p.add_argument("--switch-rounds", type=int, default=7, help="rounds of part 3 (default 7)")
    p.add_argument("--round-trips", type=int, default=200_000, help="ping-pong round trips per run (200000)")
    p.add_argument("--drain-events", type=int, default=10_000_000, help="synthetic events for TraceWriter (10M)")
    p.add_argument("--drain-writes", type=int, default=None, help="port writes for the ring drain (default --writes)")
    p.add_argument("--drain-rounds", type=int, default=3, help="ring drain runs (default 3)")
    p.add_argument("--ringbuf-pages", type=int, default=1 << 15, help="ring buffer for the drain (default 2^15 pages)")
    p.add_argument("--settle", type=float, default=0.5, help="seconds between attach and resume (default 0.5)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a guest may run (default 120)")
    p.add_argument("--workdir", default=None, help="where tracers write their files (default: the temp dir)")
    p.add_argument("--keep", metavar="DIR", help="copy every tracer's output files here")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"), help="directory for the JSON")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root: sudo .venv/bin/python bench/overhead.py ...", file=sys.stderr)
        return 2
    if not args.hw_exits:
        from kvmtrace.record.host import host_info

        args.hw_exits = host_info().isa in ("VMX", "SVM")

    started = time.time()
    report: dict = {"benchmark": "kvmtrace overhead", "date": dt.datetime.now().isoformat(timespec="seconds"),
                    "args": vars(args), "host": host_facts(),
                    "note": "shared 2-core nested VM (KVM in a PVM guest): noisy; quote medians"}
    tracefs_before = TracefsState().save() if TRACEFS.is_dir() else None

    def interrupt(signum, _frame):  # SIGTERM and SIGHUP clean up like Ctrl-C
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    try:
        if not args.no_overhead:
            overhead(args, report)
        if not args.no_drain:
            drain(args, report)
        if not args.no_switches:
            switches(args, report)
    except KeyboardInterrupt as e:
        report["interrupted"] = str(e) or "SIGINT"
        log(f"interrupted ({report['interrupted']}); cleaned up")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the clean-up below is not cut short
        if tracefs_before is not None:
            changed = tracefs_before.restore()
            if changed:
                report["tracefs_restored_at_end"] = changed
        report["leftovers"] = leftovers(STARTED)
        report["bpf_programs_loaded_at_end"] = loaded_programs()
        report["our_bpf_program_ids"] = sorted(OUR_PROGS)
        report["elapsed_s"] = round(time.time() - started, 1)
        out_dir = Path(args.results)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"overhead-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print_tables(report)
        print(f"\nresults: {path}")
    return 1 if report.get("leftovers") else 0


if __name__ == "__main__":
    sys.exit(main())
