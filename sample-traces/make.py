#!/usr/bin/env python3
"""Re-make the sample traces: real recordings of the demo guest by `kvmtrace record`.

Run as root from the repository (after ./setup.sh):

    sudo .venv/bin/python sample-traces/make.py

Each file is recorded through the CLI exactly as a user would; what each
holds is in sample-traces/README.md.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import uuid
from pathlib import Path

from kvmtrace.demo.run import resume, start_demo, stop_demo
from kvmtrace.demo.guest import PACED, Workload, build_rom
from kvmtrace.demo.machine import domain_xml

HERE = Path(__file__).resolve().parent
URI = "qemu:///system"
KVMTRACE = [sys.executable, "-m", "kvmtrace.cli"]


def run(*args: str) -> None:
    print("+ kvmtrace", " ".join(args), file=sys.stderr)
    subprocess.run([*KVMTRACE, *args], check=True)


def record_running(workload: Workload, out: Path, seconds: float, *extra: str) -> None:
    name = f"kvmtrace-sample-{uuid.uuid4().hex[:6]}"
    _conn, dom = start_demo(workload, URI, name=name)
    try:
        time.sleep(0.3)  # past the ROM's set-up
        run("record", "--domain", name, "--duration", str(seconds), "-o", str(out), "--quiet", *extra)
    finally:
        stop_demo(dom)


def record_finite(workload: Workload, out: Path) -> None:
    name = f"kvmtrace-sample-{uuid.uuid4().hex[:6]}"
    _conn, dom = start_demo(workload, URI, name=name, paused=True)
    try:
        p = subprocess.Popen([*KVMTRACE, "record", "--domain", name, "-o", str(out), "--quiet"],
                             stderr=subprocess.PIPE, text=True)
        for line in p.stderr:
            if "recording" in line:
                break
        resume(dom)
        p.communicate(timeout=120)
        if p.returncode:
            raise SystemExit(f"record failed: {p.returncode}")
    finally:
        stop_demo(dom)


def main() -> None:
    # 1. The finite demo guest, default (prime) counts: every count is known.
    record_finite(Workload(), HERE / "demo-finite.kvmtrace")
    # 2. The same guest launched from its XML: creation timeline and memory slots.
    xml = HERE / "demo-launch.xml"
    small = Workload(port_writes=23, rtc_reads=29, pit_writes=31, pit_reads=37, hpet_writes=41, hpet_reads=43,
                     ioapic_writes=47)
    xml.write_text(domain_xml(name=f"kvmtrace-sample-launch-{uuid.uuid4().hex[:6]}", rom_path=str(build_rom(small))))
    try:
        run("launch", str(xml), "-o", str(HERE / "demo-launch.kvmtrace"), "--quiet")
    finally:
        xml.unlink()
    # 3. The paced steady guest in counts mode (aggregated in the kernel).
    record_running(PACED, HERE / "demo-counts.kvmtrace", 2, "--mode", "counts")
    # 4. A series of eight runs of the paced guest; run6's port 0x80 writes are raised 20 %.
    series = HERE / "series"
    series.mkdir(exist_ok=True)
    for i in range(1, 9):
        w = dataclasses.replace(PACED, port_writes=round(PACED.port_writes * 1.2)) if i == 6 else PACED
        record_running(w, series / f"run{i}.kvmtrace", 1, "--label", f"run{i}")
    # 5. Where the vCPU's time goes: the paced guest (it halts between passes)
    #    with its vCPU pinned to CPU 0, and a busy loop there for the second half.
    record_vcpu_time(HERE / "demo-vcpu-time.kvmtrace")


def record_vcpu_time(out: Path) -> None:
    import os

    from kvmtrace.record.domain import connect, resolve

    name = f"kvmtrace-sample-{uuid.uuid4().hex[:6]}"
    _conn, dom = start_demo(PACED, URI, name=name)
    hog = None
    try:
        os.sched_setaffinity(resolve(connect(URI), name).vcpu_threads[0], {0})
        time.sleep(0.3)
        p = subprocess.Popen([*KVMTRACE, "record", "--domain", name, "--duration", "1", "-o", str(out)],
                             stderr=subprocess.PIPE, text=True)
        for line in p.stderr:
            if "recording" in line:
                break
        time.sleep(0.5)
        hog = subprocess.Popen(["taskset", "-c", "0", "sh", "-c", "while :; do :; done"])
        p.communicate(timeout=120)
        if p.returncode:
            raise SystemExit(f"record failed: {p.returncode}")
    finally:
        if hog is not None:
            hog.kill()
        stop_demo(dom)


if __name__ == "__main__":
    main()
