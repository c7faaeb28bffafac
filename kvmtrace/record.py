"""Record a libvirt guest's run loop into a trace file.

Order of work, so that nothing is attached before every cheap check passed
and nothing stays attached after any exit: preflight (privileges, tracefs,
headers), resolve the domain through libvirt, open the output file, build
and attach the probes, stream events to the file until Ctrl-C, SIGTERM,
--duration or the domain stopping, then stop tracing the guest, drain what
is left, detach and write the trailer.
"""

from __future__ import annotations

import datetime as dt
import os
import select
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from . import __version__
from .domain import DEFAULT_URI, GuestProcess, connect, resolve
from .host import check_kernel_headers, check_privileges, find_tracefs, host_info
from .tracefile import TraceWriter

FLUSH_EVENTS = 1 << 16  # write a batch at this many events ...
FLUSH_SECONDS = 0.25  # ... or this often
POLL_MS = 50


@dataclass
class RecordOptions:
    domain: str | None
    uri: str = DEFAULT_URI
    duration: float | None = None
    output: str | None = None
    capture_values: bool = False
    mode: str = "events"  # or "counts": aggregate in the kernel
    counts_interval: float = 1.0
    ringbuf_pages: int | None = None
    progress_interval: float = 1.0
    dry_run: bool = False
    argv: list[str] = field(default_factory=list)


@dataclass
class RecordResult:
    path: Path | None
    events: int
    lost: int
    stop_reason: str
    duration_s: float


def default_output(name: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return f"kvmtrace-{safe}-{stamp}.kvmtrace"


class _StopFlag:
    """Set by SIGINT/SIGTERM; the poll loop checks it every POLL_MS."""

    def __init__(self):
        self.reason: str | None = None
        self._old: dict[int, object] = {}

    def _handler(self, signum, _frame):
        self.reason = f"signal {signal.Signals(signum).name}"

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


def _process_gone(pidfd: int | None, pid: int) -> bool:
    if pidfd is not None:
        return bool(select.select([pidfd], [], [], 0)[0])
    return not Path(f"/proc/{pid}").exists()


def record(opts: RecordOptions, log: TextIO = sys.stderr,
           on_attached: Callable[[GuestProcess | None], None] | None = None) -> RecordResult:
    """Run one recording as ``opts`` says. Raises KvmtraceError subclasses."""
    from .probe import DEFAULT_RINGBUF_PAGES, Probes, available_tracepoints

    def say(msg: str) -> None:
        print(f"kvmtrace: {msg}", file=log, flush=True)

    check_privileges()
    tracefs = find_tracefs()
    check_kernel_headers()
    formats = available_tracepoints(str(tracefs))

    guest = None
    if opts.domain is not None:
        conn = connect(opts.uri)
        guest = resolve(conn, opts.domain)
    elif not opts.dry_run:
        raise ValueError("a domain is needed unless dry_run")

    writer = None
    if not opts.dry_run:
        path = opts.output or default_output(guest.name)
        host = host_info()
        header = {
            "kvmtrace_version": __version__,
            "command": opts.argv,
            "host": host.as_dict(),
            "tracepoint_formats": formats,
            "probes": sorted(formats),
            "domains": [guest.as_dict()],
            "values_captured": opts.capture_values,
            "mode": opts.mode,
            "clock": "CLOCK_MONOTONIC",
        }
        # Opened before attaching: an unwritable path fails with nothing attached.
        writer = TraceWriter(path, header)

    from .probe import CountsDelta

    probes = None
    counts_delta = CountsDelta()
    stop_reason = "error"
    start_ns = end_ns = time.monotonic_ns()
    try:
        probes = Probes(
            formats,
            ringbuf_pages=opts.ringbuf_pages or DEFAULT_RINGBUF_PAGES,
            capture_values=opts.capture_values,
            counts_mode=opts.mode == "counts",
        )
        if opts.dry_run:
            say(f"dry run: built and attached {len(probes.probes)} probes "
                f"({', '.join(probes.probes)}); detaching")
            stop_reason = "dry run"
            return RecordResult(None, 0, 0, stop_reason, 0.0)
        for vcpu, tid in guest.vcpu_threads.items():
            if vcpu in guest.kvm_run:
                probes.add_kvm_run(tid, guest.kvm_run[vcpu])
        probes.add_target(guest.pid, 0)
        start_ns = time.monotonic_ns()
        start_wall = dt.datetime.now(dt.timezone.utc)
        writer_meta_start = {"start_time_ns": start_ns, "start_wall": start_wall.isoformat()}
        say(f"recording {guest.name} (QEMU pid {guest.pid}, vCPU threads "
            f"{','.join(str(t) for t in guest.vcpu_threads.values())}) with "
            f"{len(probes.probes)} probes to {writer.path}; Ctrl-C stops")
        if on_attached:
            on_attached(guest)
        stop_reason = _stream(probes, writer, guest, opts, writer_meta_start, say, counts_delta)
    finally:
        end_ns = time.monotonic_ns()
        counters = None
        if probes is not None and probes.bpf is not None:
            try:
                if writer is not None and not writer.closed:
                    # Stop matching new events, then drain: what the kernel
                    # matched is then exactly what was written plus what was lost.
                    probes.bpf["targets"].clear()
                    _flush(probes, writer, {})
                    if probes.counts_mode:
                        _flush_counts(probes, writer, counts_delta, {})
                counters = probes.counters()
            finally:
                probes.close()
        if writer is not None and not writer.closed:
            trailer = {
                "start_time_ns": start_ns,
                "end_time_ns": end_ns,
                "end_wall": dt.datetime.now(dt.timezone.utc).isoformat(),
                "stop_reason": stop_reason,
                "lost_events": counters.lost_total if counters else None,
                "lost_by_kind": counters.lost if counters else None,
                "matched_by_kind": counters.matched if counters else None,
            }
            writer.close(trailer)
    lost = counters.lost_total if counters else 0
    duration = (end_ns - start_ns) / 1e9
    what = "aggregate rows" if opts.mode == "counts" else "events"
    say(f"stopped ({stop_reason}) after {duration:.1f} s: {writer.events_written:,} {what}, "
        f"{lost:,} lost; trace in {writer.path}")
    return RecordResult(writer.path, writer.events_written, lost, stop_reason, duration)


def _flush(probes, writer: TraceWriter, meta: dict) -> None:
    """Move everything in the ring buffer to the file, a batch at a time."""
    while True:
        events = probes.take(FLUSH_EVENTS)
        if not len(events):
            return
        writer.write(events, meta)


def _flush_counts(probes, writer: TraceWriter, delta, meta: dict) -> int:
    """Counts mode: write what the kernel counted since the last call."""
    keys, totals = probes.read_counts()
    rows = delta.rows(keys, totals, time.monotonic_ns())
    if len(rows):
        writer.write(rows, meta)
    return len(rows)


def _stream(probes, writer: TraceWriter, guest: GuestProcess, opts: RecordOptions,
            meta_start: dict, say, counts_delta) -> str:
    """Move events to the file until a stop condition; return its name."""
    pidfd = _pidfd(guest.pid)
    start = time.monotonic()
    deadline = start + opts.duration if opts.duration else None
    last_flush = last_progress = start
    last_count = 0
    try:
        with _StopFlag() as stop:
            while True:
                if probes.counts_mode:
                    time.sleep(POLL_MS / 1000)
                else:
                    probes.poll(POLL_MS)
                now = time.monotonic()
                if probes.counts_mode:
                    if now - last_flush >= opts.counts_interval:
                        counters = probes.counters()
                        _flush_counts(probes, writer, counts_delta,
                                      {**meta_start, "t_ns": time.monotonic_ns(), "lost_events": counters.lost_total})
                        last_flush = now
                elif probes.pending >= FLUSH_EVENTS or now - last_flush >= FLUSH_SECONDS:
                    counters = probes.counters()
                    _flush(probes, writer, {**meta_start, "t_ns": time.monotonic_ns(),
                                            "lost_events": counters.lost_total})
                    last_flush = now
                if opts.progress_interval and now - last_progress >= opts.progress_interval:
                    counters = probes.counters()
                    total = sum(counters.matched.values())
                    rate = (total - last_count) / (now - last_progress)
                    say(f"{now - start:6.1f} s  {total:,} events  {rate:,.0f}/s  "
                        f"lost {counters.lost_total:,}")
                    last_progress, last_count = now, total
                if stop.reason:
                    return stop.reason
                if deadline is not None and now >= deadline:
                    return "duration"
                if _process_gone(pidfd, guest.pid):
                    return "domain stopped"
    finally:
        if pidfd is not None:
            os.close(pidfd)
