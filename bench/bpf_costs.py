#!/usr/bin/env python3
"""What a BPF program costs per event on this host, part by part.

Runs the storm guest of bench.harness.guest (N port writes to 0x80, then the end)
with ``kernel.bpf_stats_enabled=1``, which makes the kernel time every run of
every program, and reports nanoseconds per run:

1. **primitives**: one small program per helper or map operation kvmtrace's
   probes use, all attached to ``kvm:kvm_pio`` (``r_*``: raw tracepoint programs);
2. **kvmtrace's probes** in events and counts mode, as ``kvmtrace record``
   loads them (through kvmtrace.kernel.probe.Probes).

The stats' own timing (two clock reads per run) is in every figure: the empty
program shows it. Subtract it to compare primitives.

    sudo .venv/bin/python bench/bpf_costs.py --writes 100000
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's kvmtrace and bench.harness, also when run from elsewhere

from bench.harness.bpf import bpf_attachments  # noqa: E402
from bench.harness.guest import storm_guest, storm_workload  # noqa: E402

DOMAIN = "kvmtrace-bench-costs"
STATS = "/proc/sys/kernel/bpf_stats_enabled"

#: One program per operation; each runs on every kvm_pio (the guest's writes).
PRIMITIVES = r"""
struct key40 { u64 a; u32 b[8]; };
struct ev104 { u64 x[13]; };
BPF_HASH(targets, u32, u32, 64);
BPF_HASH(h4, u32, u64, 1024);
BPF_PERCPU_ARRAY(pcarray, u64, 16);
BPF_PERCPU_HASH(pchash40, struct key40, u64, 1024);
BPF_PERCPU_ARRAY(scratch, struct ev104, 1);
BPF_RINGBUF_OUTPUT(ring, 1 << 12);

int p_empty(void *ctx) { return 0; }
int p_pid_tgid(void *ctx) { return bpf_get_current_pid_tgid() == 1; }
int p_ktime(void *ctx) { return bpf_ktime_get_ns() == 1; }
int p_hash_lookup(void *ctx) { u32 k = bpf_get_current_pid_tgid() >> 32; return targets.lookup(&k) != 0; }
int p_percpu_array_inc(void *ctx) { int k = 3; u64 *v = pcarray.lookup(&k); if (v) (*v)++; return 0; }
int p_percpu_hash40_inc(void *ctx)
{
	struct key40 k = {};
	u64 one = 1, *v;

	k.a = 5;
	v = pchash40.lookup(&k);
	if (v)
		(*v)++;
	else
		pchash40.update(&k, &one);
	return 0;
}
int p_scratch_memset104(void *ctx)
{
	int z = 0;
	struct ev104 *e = scratch.lookup(&z);

	if (e) {
		__builtin_memset(e, 0, sizeof(*e));
		e->x[1] = 3;
	}
	return 0;
}
int p_ringbuf_104(void *ctx)
{
	struct ev104 *e = ring.ringbuf_reserve(sizeof(struct ev104));

	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	ring.ringbuf_submit(e, 0);
	return 0;
}
int p_hash_update_delete(void *ctx)
{
	u32 k = 7;
	u64 v = 1;

	h4.update(&k, &v);
	h4.delete(&k);
	return 0;
}
"""


#: Raw tracepoint programs on kvm_pio: the floor of a raw probe, and the check
#: kvmtrace's kvm_fpu probe makes that it runs inside ioctl(KVM_RUN).
RAW_PRIMITIVES = r"""
#include <asm/ptrace.h>
int r_empty(struct bpf_raw_tracepoint_args *ctx) { return 0; }
int r_task_pt_regs_read(struct bpf_raw_tracepoint_args *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	u64 r[3];

	if (bpf_probe_read_kernel(r, sizeof(r), &regs->si))
		return 0;
	return r[2] == 16;
}
"""


def prog_stats(names: set[str] | None = None, ids: set[int] | None = None, key: str = "name") -> dict:
    """Runs and ns per run of the loaded programs named in ``names`` or with an id in ``ids``,
    keyed by name (or by id)."""
    progs = json.loads(subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True,
                                      check=True).stdout)
    out = {}
    for p in progs:
        if (names and p.get("name") in names) or (ids and p["id"] in ids):
            cnt = p.get("run_cnt", 0)
            out[p["id"] if key == "id" else p.get("name", str(p["id"]))] = {"runs": cnt, "ns_per_run": round(p["run_time_ns"] / cnt, 1)
                                                if cnt else None}
    return out


def run_guest(writes: int, on_started) -> None:
    """Start the storm guest paused, call on_started(guest), resume, wait for its end."""
    with storm_guest(storm_workload(writes), DOMAIN) as (dom, g, pidfd):
        on_started(g)
        dom.resume()
        if not select.select([pidfd], [], [], 300)[0]:
            raise RuntimeError("the guest did not end within 300 s")


def primitives(writes: int) -> dict[str, dict]:
    import ctypes

    from bcc import BPF

    b = BPF(text=PRIMITIVES)
    # bcc attaches one raw program per tracepoint per BPF object: one object each.
    rs = []
    names = [line.split("(")[0].split()[-1] for line in PRIMITIVES.splitlines() if line.startswith("int p_")]
    raw = [line.split("(")[0].split()[-1] for line in RAW_PRIMITIVES.splitlines() if line.startswith("int r_")]
    try:
        for n in names:
            b.attach_tracepoint(tp=b"kvm:kvm_pio", fn_name=n.encode())
        for n in raw:
            rs.append(BPF(text=RAW_PRIMITIVES))
            rs[-1].attach_raw_tracepoint(tp=b"kvm_pio", fn_name=n.encode())
        run_guest(writes, lambda g: b[b"targets"].__setitem__(ctypes.c_uint32(g.pid), ctypes.c_uint32(0)))
        return prog_stats(names=set(names) | set(raw))
    finally:
        b.cleanup()
        for r in rs:
            r.cleanup()


def kvmtrace_probes(writes: int, mode: str) -> dict[str, dict]:
    """kvmtrace's probes as record loads them, drained by a thread as record does."""
    import threading

    from kvmtrace.kernel.probe import Probes, available_tracepoints

    probes = Probes(available_tracepoints("/sys/kernel/tracing"), counts_mode=mode == "counts")
    try:
        # The programs this process attached (kvmtrace's), by tracepoint: bpftool's
        # names of raw tracepoint programs are cut or taken from BTF, not reliable.
        attached = bpf_attachments(os.getpid())
        ids = set(attached.values())

        def trace(g):
            for vcpu, tid in g.vcpu_threads.items():
                probes.add_vcpu(g.pid, tid, g.kvm_run.get(vcpu, 0))
            probes.add_target(g.pid, 0)

        stop = threading.Event()

        def drain():
            while not stop.is_set():
                probes.poll(100)
                probes.take()

        t = threading.Thread(target=drain)
        t.start()
        try:
            run_guest(writes, trace)
        finally:
            stop.set()
            t.join()
        by_id = prog_stats(ids=ids, key="id")
        return {f"{tp} ({'raw' if tp in probes.plan.raw or tp == 'kvm_fpu' else 'tracepoint'})": by_id[pid]
                for tp, pid in attached.items() if pid in by_id and by_id[pid]["runs"]}
    finally:
        probes.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writes", type=int, default=100_000)
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    before = Path(STATS).read_text().strip()
    Path(STATS).write_text("1")
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "writes": args.writes, "kernel": os.uname().release}
    try:
        report["primitives"] = primitives(args.writes)
        report["kvmtrace_events"] = kvmtrace_probes(args.writes, "events")
        report["kvmtrace_counts"] = kvmtrace_probes(args.writes, "counts")
    finally:
        Path(STATS).write_text(before)
    for part in ("primitives", "kvmtrace_events", "kvmtrace_counts"):
        print(f"\n{part} (ns per run, bpf_stats; storm of {args.writes:,} port writes)")
        for name, s in sorted(report[part].items(), key=lambda kv: kv[1]["ns_per_run"] or 0):
            print(f"  {name:<44}{s['runs']:>10,}{s['ns_per_run']:>9.1f}")
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"bpf-costs-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
