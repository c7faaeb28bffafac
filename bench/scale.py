#!/usr/bin/env python3
"""How `kvmtrace report` scales, against `trace-cmd report` printing the same events.

Records the demo guest in its unpaced steady mode (a storm of about 200k
events/s) with `kvmtrace record` and, alongside on the same run, `trace-cmd
record` of the same tracepoints filtered to the vCPU thread; then times, in
fresh processes, `kvmtrace report FILE` (start-up, load and every table)
against `trace-cmd report -i FILE.dat` merely printing the events, both to
/dev/null, and takes kvmtrace's peak resident memory. Medians of --repeat.

With --synthesize, longer traces are made from the largest recording (or
--source FILE, recording nothing) by replicating its batches with shifted
timestamps (bench/synth.py: the recorder's own writer and batch sizes), on
--vcpus vCPUs side by side and with --union-every: userspace exits other than
IO/MMIO that carry kvm_run union words (SYSTEM_EVENT, HYPERCALL,
INTERNAL_ERROR), for `kvmtrace report` alone (trace-cmd has no such file to
print). With --against DIR, each synthesized trace is also reported by the
checkout in DIR (e.g. main), alternately with this one: before and after.
Recordings are made with --no-vcpu-time (--vcpu-time keeps the sched probes,
whose report section is reduced batch by batch too, analysis/vcpu_stream.py).

    sudo .venv/bin/python bench/scale.py --events 1e6 10e6 --repeat 3 --synthesize 30e6 100e6
    .venv/bin/python bench/scale.py --source sample-traces/series/run1.kvmtrace --synthesize 24e6 \
        --vcpus 4 --union-every 50 --against /work/main --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's kvmtrace and bench.harness, also when run from elsewhere

from bench.harness.guest import URI  # noqa: E402
from bench.harness.tracefs import TracefsState  # noqa: E402  (what trace-cmd leaves changed in tracefs)
from kvmtrace.demo.guest import Workload  # noqa: E402
from kvmtrace.demo.run import start_demo, stop_demo  # noqa: E402
from kvmtrace.record.domain import resolve  # noqa: E402

# What kvmtrace records of a running guest's vCPU thread: its port and MMIO
# accesses, userspace exits and KVM_RUN ioctls (kvm_exit/kvm_entry do not
# fire on the nested host this was measured on).
TRACEPOINTS = ["kvm:kvm_pio", "kvm:kvm_mmio", "kvm:kvm_userspace_exit", "syscalls:sys_enter_ioctl"]
KVMTRACE = [sys.executable, "-m", "kvmtrace.cli"]


def timed(cmd: list[str], checkout: Path = ROOT) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one run of cmd, output to /dev/null;
    ``python -m kvmtrace.cli`` is the one of ``checkout``."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as null:
        p = subprocess.Popen(cmd, stdout=null, stderr=subprocess.DEVNULL, cwd=checkout, env=env)
        _pid, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:3]} failed")
    return time.perf_counter() - t0, usage.ru_maxrss


def record(target_events: float, workdir: Path, rate_guess: float, vcpu_time: bool = False) -> dict:
    name = f"kvmtrace-bench-scale-{uuid.uuid4().hex[:6]}"
    conn, dom = start_demo(Workload(steady=True), URI, name=name)
    trace = workdir / f"scale-{int(target_events)}.kvmtrace"
    dat = workdir / f"scale-{int(target_events)}.dat"
    try:
        tid = next(iter(resolve(conn, name).vcpu_threads.values()))
        # A filter per event, after the event. --no-filter and -d: this kernel
        # refuses set_ftrace_pid and function tracing (see bench.harness.tracers.trace_cmd).
        state = TracefsState().save()
        tc = subprocess.Popen(["stdbuf", "-oL", "trace-cmd", "record", "--no-filter", "-d", "-o", str(dat),
                               *sum((["-e", e, "-f", f"common_pid=={tid}"] for e in TRACEPOINTS), [])],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen = []
        for line in tc.stdout:
            seen.append(line)
            if "Hit Ctrl^C" in line:
                break
        else:
            raise SystemExit("trace-cmd record did not start: " + "".join(seen[-5:]))
        duration = target_events / rate_guess
        subprocess.run([*KVMTRACE, "record", "--domain", name, "--duration", f"{duration:.1f}", "-o", str(trace),
                        "--quiet", *([] if vcpu_time else ["--no-vcpu-time"])], check=True)
        tc.send_signal(signal.SIGINT)
        tc.communicate(timeout=300)  # status 1 after writing its file: its function-filter clean-up
        state.restore()
    finally:
        stop_demo(dom)
    return {"trace": trace, "dat": dat, "seconds": duration}


def synthesize(src: Path, target_events: float, dst: Path, vcpus: int = 1, union_every: int = 0) -> int:
    """bench.synth.synthesize in a child process (this one stays small; see timed)."""
    out = subprocess.run([sys.executable, "-m", "bench.synth", str(src), str(target_events), str(dst),
                          "--vcpus", str(vcpus), "--union-every", str(union_every)],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=float, nargs="+", default=[1e6, 10e6])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rate", type=float, default=300_000, help="events/s to expect from the storm guest")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/kvmtrace-bench"))
    ap.add_argument("--synthesize", type=float, nargs="*", default=[],
                    help="also report traces of this many events made from the largest recording")
    ap.add_argument("--source", type=Path, help="synthesize from this trace; record nothing")
    ap.add_argument("--vcpus", type=int, default=1, help="synthesized traces: vCPUs side by side")
    ap.add_argument("--union-every", type=int, default=0,
                    help="synthesized traces: a union-word userspace exit after every N-th KVM_RUN (0: none)")
    ap.add_argument("--against", type=Path, help="also report the synthesized traces with this checkout")
    ap.add_argument("--vcpu-time", action="store_true", help="record with the sched probes")
    ap.add_argument("--keep", action="store_true", help="keep the recorded files")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "scale.json")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    largest = args.source
    for n in [] if args.source else args.events:
        rec = record(n, args.workdir, args.rate, args.vcpu_time)
        from kvmtrace.tracefile import read_trace

        # One small column only: a child forked from a big parent starts with
        # the parent's resident set, and wait4's ru_maxrss would count it.
        events = read_trace(rec["trace"], ["kind"]).table.num_rows
        tc_events = int(subprocess.run(["sh", "-c", f"trace-cmd report -i {rec['dat']} 2>/dev/null | wc -l"],
                                       capture_output=True, text=True).stdout) - 1
        ours, theirs, rss = [], [], []
        for _ in range(args.repeat):  # alternate, so both see the same machine
            t, m = timed([*KVMTRACE, "report", str(rec["trace"])])
            ours.append(t)
            rss.append(m)
            t, _ = timed(["trace-cmd", "report", "-i", str(rec["dat"])])
            theirs.append(t)
        row = {"events": events, "trace_cmd_events": tc_events,
               "kvmtrace_file_mb": rec["trace"].stat().st_size / 1e6, "trace_dat_mb": rec["dat"].stat().st_size / 1e6,
               "kvmtrace_report_s": statistics.median(ours), "trace_cmd_report_s": statistics.median(theirs),
               "kvmtrace_peak_rss_mb": max(rss) / 1024, "runs": {"kvmtrace": ours, "trace_cmd": theirs}}
        row["speedup"] = row["trace_cmd_report_s"] / row["kvmtrace_report_s"]
        results.append(row)
        print(f"{events:>11,} events (trace-cmd {tc_events:,}): kvmtrace report {row['kvmtrace_report_s']:.2f} s, "
              f"peak {row['kvmtrace_peak_rss_mb']:,.0f} MB; trace-cmd report {row['trace_cmd_report_s']:.2f} s; "
              f"{row['speedup']:.1f}x", flush=True)
        largest = rec["trace"]
        if not args.keep:
            rec["dat"].unlink()
            if n != max(args.events) or not args.synthesize:
                rec["trace"].unlink()
    for n in args.synthesize:
        dst = args.workdir / f"scale-synth-{int(n)}.kvmtrace"
        events = synthesize(largest, n, dst, args.vcpus, args.union_every)
        checkouts = {"this": ROOT, **({"against": args.against.resolve()} if args.against else {})}
        runs: dict[str, list] = {k: [] for k in checkouts}
        for _ in range(args.repeat):  # alternate, so both see the same machine
            for k, checkout in checkouts.items():
                runs[k].append(timed([*KVMTRACE, "report", str(dst)], checkout))
        row = {"events": events, "synthesized_from": str(largest.name), "vcpus": args.vcpus,
               "union_every": args.union_every, "kvmtrace_file_mb": dst.stat().st_size / 1e6}
        for k, checkout in checkouts.items():
            label = "" if k == "this" else "against_"
            ts, rss = [t for t, _ in runs[k]], [m / 1024 for _, m in runs[k]]
            row |= {f"{label}checkout": str(checkout), f"{label}kvmtrace_report_s": statistics.median(ts),
                    f"{label}kvmtrace_peak_rss_mb": statistics.median(rss),
                    f"{label}runs": {"seconds": ts, "peak_rss_mb": rss}}
            print(f"{events:>11,} events (synthesized), {checkout}: kvmtrace report {statistics.median(ts):.2f} s, "
                  f"peak RSS median {statistics.median(rss):,.0f} MB (runs: {', '.join(f'{x:,.0f}' for x in rss)})",
                  flush=True)
        results.append(row)
        if not args.keep:
            dst.unlink()
    if args.synthesize and not args.keep and not args.source:
        largest.unlink()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "repeat": args.repeat,
                                     "results": results}, indent=2))


if __name__ == "__main__":
    main()
