"""Part 2 of the overhead benchmark: how fast kvmtrace drains events to its
trace file, with its own classes (Probes/RingReader and TraceWriter)."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

from bench.harness.bpf import OUR_PROGS, bpf_attachments
from bench.harness.guest import KVM_EXIT_IO, ground_truth, storm_guest, storm_workload

BATCH = 65536


def synthetic_storm(n: int, seed: int = 1):
    """EVENT_DTYPE records shaped like the storm: PIO, USERSPACE_EXIT (with kvm_run fields), RUN."""
    import numpy as np

    from kvmtrace.kernel.events import EVENT_DTYPE, EventFlag, EventKind

    rng = np.random.default_rng(seed)
    ev = np.zeros(n, dtype=EVENT_DTYPE)
    cycle = np.array([EventKind.PIO, EventKind.USERSPACE_EXIT, EventKind.RUN], dtype=np.uint8)
    ev["kind"] = cycle[np.arange(n) % 3]
    ev["ts_ns"] = 10**12 + np.cumsum(rng.integers(300, 8000, n, dtype=np.uint64))
    ev["pid"], ev["tid"], ev["vcpu"] = 4321, 4330, 0
    ev["cpu"] = rng.integers(0, 2, n, dtype=np.uint32)
    io = ev["kind"] != EventKind.RUN
    ev["port"][io], ev["size"][io], ev["count"][io], ev["op"][io] = 0x80, 1, 1, 1
    ue = ev["kind"] == EventKind.USERSPACE_EXIT
    ev["reason"][ue] = KVM_EXIT_IO
    ev["flags"][ue] = int(EventFlag.RUN_FIELDS)
    ev["info1"][ue] = 0x1000  # data_offset
    return ev


def bench_writer(total: int, workdir: Path) -> dict:
    """TraceWriter.write throughput, batches of BATCH events."""
    import numpy as np

    from kvmtrace.tracefile import TraceWriter

    batch = synthetic_storm(BATCH)
    span = int(batch["ts_ns"][-1] - batch["ts_ns"][0]) + 1000
    warm = TraceWriter(workdir / "warmup.kvmtrace", {"bench": "warm-up, not timed"})  # first-use costs
    warm.write(batch, {})
    warm.close({})
    (workdir / "warmup.kvmtrace").unlink()
    path = workdir / "writer.kvmtrace"
    writer = TraceWriter(path, {"bench": "synthetic storm"})
    wall = cpu = 0.0
    written = 0
    try:
        while written < total:
            n = min(BATCH, total - written)
            ev = batch[:n]
            w0, c0 = time.perf_counter(), time.process_time()
            writer.write(ev, {"t_ns": written})
            wall += time.perf_counter() - w0
            cpu += time.process_time() - c0
            written += n
            batch["ts_ns"] += np.uint64(span)  # the next batch later in time (not timed)
        w0, c0 = time.perf_counter(), time.process_time()
        writer.close({"stop_reason": "bench"})
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
    finally:
        if not writer.closed:
            writer.abandon()
    size = path.stat().st_size
    path.unlink()
    return {"events": written, "batch": BATCH, "wall_s": round(wall, 4), "cpu_s": round(cpu, 4),
            "events_per_s_wall": round(written / wall), "events_per_cpu_s": round(written / cpu),
            "cpu_ns_per_event": round(cpu / written * 1e9, 1), "file_bytes": size,
            "bytes_per_event": round(size / written, 2)}


def bench_ring_drain(writes: int, pages: int, workdir: Path, timeout: float) -> dict:
    """Fill kvmtrace's BPF ring buffer with the storm guest, nobody reading; then drain it all and write it."""
    from kvmtrace.kernel.events import EventKind
    from kvmtrace.record.host import check_kernel_headers, find_tracefs
    from kvmtrace.kernel.probe import Probes, available_tracepoints
    from kvmtrace.tracefile import TraceWriter

    check_kernel_headers()
    formats = available_tracepoints(str(find_tracefs()))
    workload = storm_workload(writes)
    truth = ground_truth(workload)
    probes = writer = None
    res: dict = {"port_writes": writes, "ringbuf_pages": pages}
    try:
        with storm_guest(workload) as (dom, g, pidfd):
            try:
                probes = Probes(formats, ringbuf_pages=pages)
                OUR_PROGS.update(bpf_attachments(os.getpid()).values())
                for vcpu, tid in g.vcpu_threads.items():
                    probes.add_vcpu(g.pid, tid, g.kvm_run.get(vcpu, 0))
                probes.add_target(g.pid, 0)
                t0 = time.perf_counter()
                dom.resume()
                if not select.select([pidfd], [], [], timeout)[0]:
                    raise RuntimeError(f"the guest did not end within {timeout} s")
                res["guest_s"] = round(time.perf_counter() - t0, 4)
                probes.stop_matching()  # the ring now holds the whole run
                counters = probes.counters()
                res["matched"] = sum(counters.matched.values())
                res["lost"] = counters.lost_total
                res["pending"] = probes.pending
                writer = TraceWriter(workdir / "drain.kvmtrace", {"bench": "ring drain"})
                drain_wall = drain_cpu = write_wall = write_cpu = 0.0
                drained = 0
                pio = 0
                while True:
                    w0, c0 = time.perf_counter(), time.process_time()
                    ev = probes.take(BATCH)
                    drain_wall += time.perf_counter() - w0
                    drain_cpu += time.process_time() - c0
                    if not len(ev):
                        break
                    drained += len(ev)
                    pio += int((ev["kind"] == EventKind.PIO).sum())  # not timed
                    w0, c0 = time.perf_counter(), time.process_time()
                    writer.write(ev, {"t_ns": drained})
                    write_wall += time.perf_counter() - w0
                    write_cpu += time.process_time() - c0
                w0, c0 = time.perf_counter(), time.process_time()
                writer.close({"stop_reason": "bench"})
                write_wall += time.perf_counter() - w0
                write_cpu += time.process_time() - c0
                size = (workdir / "drain.kvmtrace").stat().st_size
                res.update(
                    file_bytes=size, bytes_per_event=round(size / drained, 2) if drained else None,
                    drained=drained, pio_drained=pio, pio_expected=truth["pio"],
                    complete=drained + res["lost"] == res["matched"] and pio == truth["pio"],
                    drain_wall_s=round(drain_wall, 5), drain_cpu_s=round(drain_cpu, 5),
                    write_wall_s=round(write_wall, 5), write_cpu_s=round(write_cpu, 5),
                )
                total_wall, total_cpu = drain_wall + write_wall, drain_cpu + write_cpu
                if drained:
                    res.update(
                        drain_events_per_s_wall=round(drained / drain_wall) if drain_wall else None,
                        drain_events_per_cpu_s=round(drained / drain_cpu) if drain_cpu else None,
                        events_per_s_wall=round(drained / total_wall),
                        events_per_cpu_s=round(drained / total_cpu) if total_cpu else None,
                        cpu_ns_per_event=round(total_cpu / drained * 1e9, 1),
                    )
            finally:
                if writer is not None and not writer.closed:
                    writer.abandon()
                if probes is not None:
                    probes.close()
    finally:
        (workdir / "drain.kvmtrace").unlink(missing_ok=True)
    return res
