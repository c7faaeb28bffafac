#!/usr/bin/env python3
"""Soak: record the steady demo guest for a long time, sampling the recorder's
memory and file descriptors every second; is resident memory flat after
warm-up, and are no descriptors leaked?

    sudo .venv/bin/python bench/soak.py --seconds 600

Prints the RSS slope after warm-up (least squares, KiB per minute), the RSS
range, and the fd count range; writes every sample to bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
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
from kvmtrace.demo.guest import Workload  # noqa: E402
from kvmtrace.demo.run import start_demo, stop_demo  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--warmup", type=float, default=60)
    ap.add_argument("--mode", choices=["events", "counts"], default="events")
    ap.add_argument("--out", type=Path, default=Path("/var/tmp/kvmtrace-soak.kvmtrace"))
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "soak.json")
    args = ap.parse_args()
    name = f"kvmtrace-soak-{uuid.uuid4().hex[:6]}"
    _conn, dom = start_demo(Workload(steady=True), URI, name=name)
    samples = []
    try:
        p = subprocess.Popen([sys.executable, "-m", "kvmtrace.cli", "record", "--domain", name, "--mode", args.mode,
                              "--duration", str(args.seconds), "-o", str(args.out), "--quiet"])
        t0 = time.monotonic()
        while p.poll() is None:
            try:
                samples.append({"t": time.monotonic() - t0, "rss_kib": rss_kib(p.pid),
                                "fds": len(os.listdir(f"/proc/{p.pid}/fd"))})
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(1.0)
        rc = p.wait()
    finally:
        stop_demo(dom)
    steady = [s for s in samples if s["t"] >= args.warmup and s["rss_kib"]]
    result = {
        "seconds": args.seconds, "mode": args.mode, "returncode": rc, "samples": samples,
        "rss_slope_kib_per_min": 60 * slope([s["t"] for s in steady], [s["rss_kib"] for s in steady]),
        "rss_after_warmup_kib": [min(s["rss_kib"] for s in steady), max(s["rss_kib"] for s in steady)],
        "fds": [min(s["fds"] for s in steady), max(s["fds"] for s in steady)],
        "trace_bytes": args.out.stat().st_size,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"{args.seconds:.0f} s {args.mode} recording, exit {rc}: RSS after {args.warmup:.0f} s warm-up "
          f"{result['rss_after_warmup_kib'][0] / 1024:.1f}..{result['rss_after_warmup_kib'][1] / 1024:.1f} MiB, "
          f"slope {result['rss_slope_kib_per_min']:+.1f} KiB/min; fds {result['fds'][0]}..{result['fds'][1]}; "
          f"trace {result['trace_bytes'] / 1e6:.0f} MB")
    args.out.unlink()


if __name__ == "__main__":
    main()
