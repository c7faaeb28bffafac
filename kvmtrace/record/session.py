"""Record libvirt guests' run loops into a trace file.

Order of work, so that nothing is attached before every cheap check passed
and nothing stays attached after any exit: preflight (privileges, tracefs,
headers), resolve the domains through libvirt, open the output file, build
and attach the probes, stream events to the file until Ctrl-C, SIGTERM,
--duration or the domains stopping, then stop tracing the guests, drain
what is left, detach and write the trailer. :class:`Session` holds those
steps; :func:`record` and :mod:`kvmtrace.record.launch` put them in order.
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

import numpy as np

from kvmtrace import __version__
from kvmtrace.record.domain import DEFAULT_URI, GuestProcess, connect, resolve, running_domains
from kvmtrace.errors import KvmtraceError
from kvmtrace.record.host import check_kernel_headers, check_privileges, find_tracefs, host_info
from kvmtrace.record.threadstate import read_thread_state
from kvmtrace.kernel.events import ThreadSched
from kvmtrace.tracefile import TraceWriter

FLUSH_EVENTS = 1 << 16  # write a batch at this many events ...
FLUSH_SECONDS = 0.25  # ... or this often
POLL_MS = 50


@dataclass
class RecordOptions:
    domain: str | None = None
    all_domains: bool = False
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
    label: str | None = None
    max_mmio_addresses: int | None = None  # counts mode: exact MMIO addresses (None: the default)
    vcpu_time: bool = True  # attach the sched probes (where each vCPU's time goes)


@dataclass
class RecordResult:
    path: Path | None
    events: int
    lost: int
    stop_reason: str
    duration_s: float


def _max_mmio_addresses() -> int:
    from kvmtrace.kernel.events import MAX_MMIO_ADDRESSES

    return MAX_MMIO_ADDRESSES


def default_output(name: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return f"kvmtrace-{safe}-{stamp}.kvmtrace"


class _StopFlag:
    """Set by SIGINT/SIGTERM/SIGHUP; the poll loop checks it every POLL_MS."""

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


class _Watch:
    """Tells when a traced VMM process has exited (pidfd where available)."""

    def __init__(self, pid: int):
        self.pid = pid
        try:
            self.fd: int | None = os.pidfd_open(pid)
        except (OSError, AttributeError):
            self.fd = None

    def gone(self) -> bool:
        if self.fd is not None:
            return bool(select.select([self.fd], [], [], 0)[0])
        return not Path(f"/proc/{self.pid}").exists()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Session:
    """One recording: probes, traced guests, the file, and the stop."""

    def __init__(self, opts: RecordOptions, log: TextIO = sys.stderr):
        self.opts = opts
        self.log = log
        self.probes = None
        self.writer: TraceWriter | None = None
        self.guests: list[GuestProcess] = []
        self.formats: dict[str, str] = {}
        self.plan = None  # kvmtrace.kernel.layouts.ProbePlan, made at preflight
        self.start_ns = self.end_ns = time.monotonic_ns()
        self.start_wall = dt.datetime.now(dt.timezone.utc)
        self.stop_reason = "error"
        self.counters = None
        self.extra_trailer: dict = {}
        self.maps = None  # MapWatch: QEMU's memory map read again while recording
        #: tid -> the vCPU thread's state at attach (record/threadstate.py)
        self.vcpu_states: dict[str, dict] = {}
        from kvmtrace.kernel.probe import CountsDelta

        self._delta = CountsDelta()

    def say(self, msg: str) -> None:
        print(f"kvmtrace: {msg}", file=self.log, flush=True)

    def preflight(self, launch: bool = False) -> None:
        """Check the host and plan the probes (``launch``: with the ioctl
        probes that watch QEMU build the VM)."""
        import platform

        from kvmtrace.kernel.layouts import plan_probes
        from kvmtrace.kernel.probe import available_tracepoints, format_fields

        check_privileges()
        tracefs = find_tracefs()
        check_kernel_headers()
        self.formats = available_tracepoints(str(tracefs))
        if not self.opts.vcpu_time:
            from kvmtrace.kernel.events import SCHED_PROBES

            self.formats = {k: v for k, v in self.formats.items() if k not in SCHED_PROBES}
        fields = {name: format_fields(text) for name, text in self.formats.items()}
        self.plan = plan_probes(fields, platform.release(), launch)

    def header(self, extra: dict | None = None, guests: list[GuestProcess] | None = None) -> dict:
        return {
            "kvmtrace_version": __version__,
            "command": self.opts.argv,
            "host": host_info().as_dict(),
            "tracepoint_formats": self.formats,
            "probes": sorted(self.plan.probes) if self.plan else sorted(self.formats),
            "attachments": self.plan.attachments() if self.plan else {},
            "run_edge": self.plan.run_edge if self.plan else None,
            "domains": [g.as_dict() for g in (self.guests if guests is None else guests)],
            "values_captured": self.opts.capture_values,
            "mode": self.opts.mode,
            **({"mmio_granularity": "address",
                "max_mmio_addresses": self.opts.max_mmio_addresses or _max_mmio_addresses()}
               if self.opts.mode == "counts" else {}),
            "clock": "CLOCK_MONOTONIC",
            "label": self.opts.label,
            **(extra or {}),
        }

    def open_output(self, path: str, extra: dict | None = None, guests: list[GuestProcess] | None = None) -> None:
        """Create the trace file (before attaching, where the header allows).

        ``guests``: the domains the header describes, when they are not
        traced yet (the file is opened before the probes exist).
        """
        # The header waits for the vCPU threads' states at attach (trace()).
        self.writer = TraceWriter(path, self.header(extra, guests), defer_header=True)

    def attach(self) -> None:
        from kvmtrace.kernel.probe import DEFAULT_RINGBUF_PAGES, Probes

        self.probes = Probes(
            self.formats,
            ringbuf_pages=self.opts.ringbuf_pages or DEFAULT_RINGBUF_PAGES,
            capture_values=self.opts.capture_values,
            counts_mode=self.opts.mode == "counts",
            max_mmio_addresses=self.opts.max_mmio_addresses,
            plan=self.plan,
        )

    def trace(self, guest: GuestProcess) -> None:
        """Start matching ``guest``'s events in the kernel."""
        index = len(self.guests)
        self.guests.append(guest)
        # Threads first: the probes make an entry of their own for a thread
        # of a target they have not been told of (without its kvm_run).
        for vcpu, tid in guest.vcpu_threads.items():
            state = read_thread_state(guest.pid, tid)
            self.vcpu_states[str(tid)] = {"vcpu": int(vcpu), "pid": guest.pid, **state}
            self.probes.add_vcpu(guest.pid, tid, guest.kvm_run.get(vcpu, 0), in_run=state["in_run"],
                                 sched=ThreadSched[state["sched"].upper()] if state["sched"] != "gone"
                                 else ThreadSched.ASLEEP, at_ns=state["at_ns"])
        self.probes.add_target(guest.pid, index)
        if self.writer is not None and not self.writer.header_written:
            # What was attached (the sched probes need BTF), and the threads' states.
            self.writer.amend_header({"probes": sorted(self.probes.probes), "vcpu_states": self.vcpu_states})

    def watch_maps(self) -> None:
        """Read the traced guests' memory maps again on unnamed accesses and at the end (record.mapwatch)."""
        from kvmtrace.record.mapwatch import MapWatch

        if self.writer is not None:
            self.maps = MapWatch(self.guests, self.writer.write_memory_map, self.say)

    def mark_start(self) -> None:
        self.start_ns = time.monotonic_ns()
        self.start_wall = dt.datetime.now(dt.timezone.utc)
        if self.probes is not None and self.probes.counts_mode:
            # The kernel counts each vCPU's state time from when its thread was
            # entered (trace()); the recording starts now: what came before is
            # the baseline of the first interval's deltas, not written.
            keys, totals = self.probes.read_vcpu_time(self.start_ns)
            self._delta.rows(keys, totals, self.start_ns)

    def _meta(self) -> dict:
        lost = self.probes.counters().lost_total
        return {"start_time_ns": self.start_ns, "start_wall": self.start_wall.isoformat(),
                "t_ns": time.monotonic_ns(), "lost_events": lost}

    def _keep(self, events: np.ndarray) -> np.ndarray:
        """Events of the traced guests only (a launch also sees other VMMs' ioctls)."""
        pids = np.array([g.pid for g in self.guests], dtype=np.uint32)
        return events if np.isin(events["pid"], pids).all() else events[np.isin(events["pid"], pids)]

    def flush(self, now_ns: int | None = None) -> None:
        """Move what the kernel has to the file (counts: as of ``now_ns``, default now)."""
        meta = self._meta()
        # What is there now, no more: at a storm's rate a loop "until empty"
        # could chase new events for ever and never get back to its stop checks.
        left = self.probes.pending
        while left > 0:
            events = self.probes.take(min(FLUSH_EVENTS, left))
            if not len(events):
                break
            left -= len(events)
            events = self._keep(events)
            if len(events):
                self.writer.write(events, meta)
                if self.maps is not None:
                    self.maps.observe(events)
        if self.probes.counts_mode:
            now = now_ns or time.monotonic_ns()
            keys, totals = self.probes.read_counts()
            vkeys, vtotals = self.probes.read_vcpu_time(now)
            keys, totals = np.concatenate([keys, vkeys]), np.concatenate([totals, vtotals])
            rows = self._keep(self._delta.rows(keys, totals, now))
            if len(rows):
                self.writer.write(rows, meta)
                if self.maps is not None:
                    self.maps.observe(rows)
        if self.maps is not None:
            self.maps.poll()

    def stream(self, watch_all: bool = True) -> str:
        """Move events to the file until a stop condition; return its name."""
        opts = self.opts
        watches = [_Watch(g.pid) for g in self.guests]
        start = time.monotonic()
        deadline = start + opts.duration if opts.duration else None
        interval = opts.counts_interval if self.probes.counts_mode else FLUSH_SECONDS
        last_flush = last_progress = start
        last_count = 0
        try:
            with _StopFlag() as stop:
                while True:
                    if self.probes.counts_mode:
                        time.sleep(POLL_MS / 1000)
                    elif self.probes.pending:
                        # Data waits in the ring buffer: the kernel will not wake
                        # us for more, so sleep until the next flush is due
                        # instead of spinning on poll().
                        time.sleep(max(0.0, min(POLL_MS / 1000, last_flush + interval - time.monotonic())))
                    else:
                        self.probes.poll(POLL_MS)
                    now = time.monotonic()
                    if self.probes.held and self.probes.release_launch_probes():
                        self.say(f"the guest runs: detached {', '.join(self.probes.plan.launch_only)}")
                    if now - last_flush >= interval or (
                            not self.probes.counts_mode and self.probes.pending >= FLUSH_EVENTS):
                        self.flush()
                        last_flush = now
                    if opts.progress_interval and now - last_progress >= opts.progress_interval:
                        counters = self.probes.counters()
                        total = sum(counters.matched.values())
                        rate = (total - last_count) / (now - last_progress)
                        self.say(f"{now - start:6.1f} s  {total:,} events  {rate:,.0f}/s  "
                                 f"lost {counters.lost_total:,}")
                        last_progress, last_count = now, total
                    if stop.reason:
                        return stop.reason
                    if deadline is not None and now >= deadline:
                        return "duration"
                    gone = [w.gone() for w in watches]
                    if gone and (all(gone) if watch_all else any(gone)):
                        return "domain stopped" if len(gone) == 1 else "domains stopped"
        finally:
            for w in watches:
                w.close()

    def finish(self) -> RecordResult:
        """Stop matching, drain, detach, write the trailer. Safe after any failure."""
        self.end_ns = time.monotonic_ns()
        probes, writer = self.probes, self.writer
        if probes is not None and probes.bpf is not None:
            try:
                if writer is not None and not writer.closed:
                    # Stop matching new events, then drain: what the kernel
                    # matched is then exactly what was written plus what was lost.
                    probes.stop_matching()
                    self.flush(self.end_ns)
                self.counters = probes.counters()
            finally:
                probes.close()
        c = self.counters
        if self.maps is not None and writer is not None and not writer.closed:
            self.maps.finish()  # never raises for a map it cannot read: that is written down
        if writer is not None and not writer.closed:
            writer.close({
                "start_time_ns": self.start_ns,
                "start_wall": self.start_wall.isoformat(),
                "end_time_ns": self.end_ns,
                "end_wall": dt.datetime.now(dt.timezone.utc).isoformat(),
                "stop_reason": self.stop_reason,
                "lost_events": c.lost_total if c else None,
                "lost_by_kind": c.lost if c else None,
                "matched_by_kind": c.matched if c else None,
                **self.extra_trailer,
            })
        lost = c.lost_total if c else 0
        duration = (self.end_ns - self.start_ns) / 1e9
        written = writer.events_written if writer else 0
        if writer is not None:
            what = "aggregate rows" if self.opts.mode == "counts" else "events"
            self.say(f"stopped ({self.stop_reason}) after {duration:.1f} s: {written:,} {what}, "
                     f"{lost:,} lost; trace in {writer.path}")
        return RecordResult(writer.path if writer else None, written, lost, self.stop_reason, duration)


def record(opts: RecordOptions, log: TextIO = sys.stderr,
           on_attached: Callable[[list[GuestProcess]], None] | None = None) -> RecordResult:
    """Run one recording as ``opts`` says. Raises KvmtraceError subclasses."""
    s = Session(opts, log)
    s.preflight()
    guests: list[GuestProcess] = []
    if opts.domain is not None or opts.all_domains:
        conn = connect(opts.uri)
        guests = running_domains(conn) if opts.all_domains else [resolve(conn, opts.domain)]
        if not guests:
            raise KvmtraceError(f"no running domain on {opts.uri} to record", "start one, or name it with --domain")
    elif not opts.dry_run:
        raise ValueError("a domain is needed unless dry_run")
    if not opts.dry_run:
        name = guests[0].name if len(guests) == 1 else "all"
        # Opened before attaching: an unwritable path fails with nothing attached.
        s.open_output(opts.output or default_output(name), guests=guests)
    try:
        s.attach()
        if opts.dry_run:
            s.say(f"dry run: built and attached {len(s.probes.probes)} probes "
                  f"({', '.join(s.probes.probes)}); detaching")
            s.stop_reason = "dry run"
            return RecordResult(None, 0, 0, s.stop_reason, 0.0)
        for g in guests:
            s.trace(g)
        s.watch_maps()
        s.mark_start()
        names = ", ".join(f"{g.name} (QEMU pid {g.pid}, vCPU threads "
                          f"{','.join(str(t) for t in g.vcpu_threads.values())})" for g in guests)
        s.say(f"recording {names} with {len(s.probes.probes)} probes to {s.writer.path}; Ctrl-C stops")
        if on_attached:
            on_attached(guests)
        s.stop_reason = s.stream()
    finally:
        result = s.finish()
    return result
