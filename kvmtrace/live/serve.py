"""`kvmtrace serve`: per-domain exit, I/O and latency metrics for Prometheus.

Counting happens in the kernel (counts mode); each scrape reads the
cumulative counts, so metrics are exact counters with no sampling thread.
Metrics (all with a ``domain`` label; a label of the same name means the
same thing, and holds the same names, in every metric):

- ``kvmtrace_userspace_exits_total{reason}``: KVM_RUN returns to the VMM,
  ``reason`` the KVM_EXIT_* name without its prefix (``IO``, ``MMIO``, ...)
- ``kvmtrace_exits_total{isa,reason}``: hardware exits (where kvm_exit
  fires); ``isa`` ``VMX``/``SVM``/``UNKNOWN``, ``reason`` the kernel's name
  (``IO_INSTRUCTION``, ``NPF``, ...)
- ``kvmtrace_pio_total{port,direction,device,handled_by}``: port I/O;
  ``handled_by`` ``kernel`` or ``vmm`` (the access returned to QEMU)
- ``kvmtrace_mmio_total{page,direction,device,handled_by}``: MMIO by 4 KiB page
- ``kvmtrace_vmm_service_seconds{reason}`` (userspace exit to the thread's
  next KVM_RUN; ``reason`` as in kvmtrace_userspace_exits_total) and
  ``kvmtrace_exit_handling_seconds{isa,reason}`` (kvm_exit to kvm_entry;
  labels as in kvmtrace_exits_total): histograms with one fixed set of
  ``le`` buckets, :data:`BUCKETS`, in every series, so ``sum by (le)`` and
  ``histogram_quantile`` work across series and domains. Their ``_sum`` is
  estimated from the bucket midpoints (the kernel keeps counts only).
- ``kvmtrace_vcpu_seconds_total{vcpu,state}``: seconds each vCPU thread
  spent in each state (``guest``, ``halted``, ``vmm``, ``vmm_waiting``,
  ``preempted``: see kvmtrace.analysis.vcpu_time), the shape of
  node_cpu_seconds_total: ``rate()`` of one series is its state's share
- ``kvmtrace_vcpu_guest_seconds_total{vcpu,part}``: on VMX/SVM hosts (where
  kvm_exit/kvm_entry fire; no series elsewhere), the two parts of a vCPU's
  ``guest`` seconds: ``in_guest`` (after kvm_entry, until kvm_exit) and
  ``exit_handling`` (the rest); they sum to its ``state="guest"`` series. A
  family of its own, so that kvmtrace_vcpu_seconds_total still sums to wall time
- ``kvmtrace_lost_events_total``: counts the kernel could not keep
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

import numpy as np

from kvmtrace.analysis.handlers import handler_of
from kvmtrace.analysis.summary import mmio, port_io, userspace_exits, hardware_exits, weighted
from kvmtrace.errors import UsageError
from kvmtrace.kernel.events import AGGREGATE, VCPU_TIME_IN_GUEST, EventKind, Latency, VcpuState
from kvmtrace.tables.exits import ExitNames, Isa
from kvmtrace.live.counter import LiveCounter, RESCAN_SECONDS, vcpu_seconds

NAMES = ExitNames.builtin()

#: The kernel's log2 buckets (kvmtrace.bpf.c, kt_hist): bcc's bpf_log2l(ns),
#: the bit length of the interval, so bucket b >= 2 holds [2^(b-1), 2^b) ns
#: and bucket 1 holds 0 and 1 ns. A u64 interval has 1 to 64 bits.
FIRST_BUCKET, LAST_BUCKET = 1, 64
#: The ``le`` of every histogram series, in seconds: each kernel bucket's
#: upper bound 2^b ns, then +Inf. Prometheus' ``le`` is inclusive, and every
#: interval in bucket b is below 2^b ns.
BUCKETS = tuple(2.0 ** b / 1e9 for b in range(FIRST_BUCKET, LAST_BUCKET + 1))

#: The metric names serve exports (the families; Prometheus adds _total to
#: counters and _bucket/_count/_sum to histograms).
METRICS = ("kvmtrace_userspace_exits", "kvmtrace_exits", "kvmtrace_pio", "kvmtrace_mmio",
           "kvmtrace_vmm_service_seconds", "kvmtrace_exit_handling_seconds", "kvmtrace_vcpu_seconds",
           "kvmtrace_vcpu_guest_seconds", "kvmtrace_lost_events")


def histogram(counts: dict[int, int]) -> tuple[list[tuple[str, int]], float]:
    """Prometheus buckets (cumulative, every ``le`` of :data:`BUCKETS` and +Inf)
    and the estimated sum in seconds, from ``{kernel bucket: count}``.

    A bucket number outside 1..64 (none can be) counts in +Inf only.
    """
    from prometheus_client.utils import floatToGoString

    per = np.zeros(LAST_BUCKET + 1, dtype=np.int64)
    total, est = 0, 0.0
    for b, n in counts.items():
        b, n = int(b), int(n)
        total += n
        if FIRST_BUCKET <= b <= LAST_BUCKET:
            per[b] += n
            lower = 2.0 ** (b - 1) if b > FIRST_BUCKET else 0.0
            est += n * (lower + 2.0 ** b) / 2 / 1e9
    cum = np.cumsum(per)[FIRST_BUCKET:]
    buckets = [(floatToGoString(le), int(c)) for le, c in zip(BUCKETS, cum)]
    buckets.append(("+Inf", total))
    return buckets, est


def guest_parts(rows, pid: int, vcpus: dict[int, int]) -> list[tuple[int | None, int, str, float]]:
    """(vcpu, tid, part, seconds) of VMM ``pid``'s threads whose guest time splits
    (VCPU_TIME rows with op VCPU_TIME_IN_GUEST): in_guest, and exit_handling =
    guest - in_guest in the same nanoseconds."""
    r = rows[(rows["kind"] == (EventKind.VCPU_TIME | AGGREGATE)) & (rows["pid"] == pid)]
    ns = r.groupby(["tid", "op"])["value"].sum().to_dict() if len(r) else {}
    out = []
    for tid in sorted({int(t) for t, op in ns if op == VCPU_TIME_IN_GUEST}, key=lambda t: (vcpus.get(t, 1 << 30), t)):
        in_guest, guest = int(ns[(tid, VCPU_TIME_IN_GUEST)]), int(ns.get((tid, int(VcpuState.GUEST)), 0))
        out += [(vcpus.get(tid), tid, "in_guest", in_guest / 1e9),
                (vcpus.get(tid), tid, "exit_handling", (guest - in_guest) / 1e9)]
    return out


def _summed(rows, labels) -> dict[tuple, int]:
    """Counts summed per label tuple: rows that differ only in what is not a
    label (an access's size, a VMX exit's flag bits) make one series."""
    out: dict[tuple, int] = defaultdict(int)
    for x in rows:
        out[labels(x)] += int(x["count"])
    return out


class KvmtraceCollector:
    """A prometheus_client collector reading the live in-kernel counts."""

    def __init__(self, live: LiveCounter):
        self.live = live
        self._last_rescan = time.monotonic()
        from kvmtrace.record.mapwatch import MapWatch

        # QEMU's map read again when a port or page it does not name shows up
        # (a BAR the firmware mapped later); nothing is written anywhere.
        self._maps = MapWatch(live.guests, write=lambda _version: None)

    def _devmap(self, guest, rows):
        self._maps.ensure([guest])
        if len(rows):
            self._maps.observe(rows)
        return self._maps.devices(guest.pid)

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        if self.live.all_domains and time.monotonic() - self._last_rescan >= RESCAN_SECONDS:
            self.live._rescan()
            self._last_rescan = time.monotonic()
        rows = weighted(self.live.cumulative())
        uexit = CounterMetricFamily("kvmtrace_userspace_exits", "KVM_RUN returns to the VMM by KVM_EXIT reason",
                                    labels=["domain", "reason"])
        hw = CounterMetricFamily("kvmtrace_exits", "VM exits by ISA and reason (kvm:kvm_exit)",
                                 labels=["domain", "isa", "reason"])
        pio = CounterMetricFamily("kvmtrace_pio", "Port I/O accesses, by who handled them "
                                  "(kernel, ioeventfd, coalesced or vmm)",
                                  labels=["domain", "port", "direction", "device", "handled_by"])
        mm = CounterMetricFamily("kvmtrace_mmio", "MMIO accesses by 4 KiB page, by who handled them "
                                 "(kernel, ioeventfd, coalesced or vmm)",
                                 labels=["domain", "page", "direction", "device", "handled_by"])
        hists = {
            Latency.VMM_SERVICE: HistogramMetricFamily(
                "kvmtrace_vmm_service_seconds", "Userspace exit to the thread's next KVM_RUN (sum estimated)",
                labels=["domain", "reason"]),
            Latency.EXIT_HANDLING: HistogramMetricFamily(
                "kvmtrace_exit_handling_seconds", "kvm_exit to kvm_entry (sum estimated)",
                labels=["domain", "isa", "reason"]),
        }
        vcpu_time = CounterMetricFamily("kvmtrace_vcpu_seconds", "Seconds each vCPU spent in each state "
                                        "(guest, halted, vmm, vmm_waiting, preempted)",
                                        labels=["domain", "vcpu", "state"])
        vcpu_guest = CounterMetricFamily("kvmtrace_vcpu_guest_seconds", "The two parts of each vCPU's guest "
                                         "seconds where kvm_exit/kvm_entry fire (VMX/SVM): in_guest and "
                                         "exit_handling, summing to its state=\"guest\" seconds",
                                         labels=["domain", "vcpu", "part"])
        for guest in self.live.guests:
            r = rows[rows["pid"] == guest.pid]
            by_tid = {tid: v for v, tid in getattr(guest, "vcpu_threads", {}).items()}
            for vcpu, tid, state, secs in vcpu_seconds(r, guest.pid, by_tid):
                vcpu_time.add_metric([guest.name, f"tid{tid}" if vcpu is None else str(vcpu), state], secs)
            for vcpu, tid, part, secs in guest_parts(r, guest.pid, by_tid):
                vcpu_guest.add_metric([guest.name, f"tid{tid}" if vcpu is None else str(vcpu), part], secs)
            dom = guest.name
            dev = self._devmap(guest, r)

            def handled_by(x, region):
                # a live guest ran before the probes: deduced (analysis.handlers.DEDUCTION)
                address = int(x["port"]) if "port" in x else int(x["gpa"])
                return handler_of(region, bool(x["userspace"]), x["direction"] == "write", address)

            def device(region):
                return region.name if region else "unknown"

            for (reason,), n in _summed(userspace_exits(r, NAMES, 1.0).to_dict("records"),
                                        lambda x: (x["reason"],)).items():
                uexit.add_metric([dom, reason], n)
            for (isa, reason), n in _summed(hardware_exits(r, NAMES, 1.0).to_dict("records"),
                                            lambda x: (x["isa"], x["reason"])).items():
                hw.add_metric([dom, isa, reason], n)
            for labels, n in _summed(port_io(r).to_dict("records"), lambda x: (
                    f"{x['port']:#06x}", x["direction"], device(dev.port(int(x["port"]))),
                    handled_by(x, dev.port(int(x["port"]))))).items():
                pio.add_metric([dom, *labels], n)
            for labels, n in _summed(mmio(r).to_dict("records"), lambda x: (
                    f"{int(x['gpa']) & ~0xFFF:#x}", x["direction"], device(dev.mmio(int(x["gpa"]))),
                    handled_by(x, dev.mmio(int(x["gpa"]))))).items():
                mm.add_metric([dom, *labels], n)
            per: dict[tuple, dict[int, int]] = defaultdict(lambda: defaultdict(int))
            h = r[r["k"] == EventKind.HIST]
            for (which, isa, reason, b), n in h.groupby(["op", "isa", "reason", "port"])["w"].sum().items():
                lat = Latency(int(which))
                if lat == Latency.VMM_SERVICE:
                    labels = (NAMES.kvm_exit(int(reason)),)
                else:
                    labels = (Isa.coerce(int(isa)).name, NAMES.hw(int(isa), int(reason)))
                per[lat, labels][int(b)] += int(n)
            for (lat, labels), counts in per.items():
                buckets, est = histogram(counts)
                hists[lat].add_metric([dom, *labels], buckets, est)
        lost = CounterMetricFamily("kvmtrace_lost_events", "Events or counts the kernel could not keep")
        lost.add_metric([], self.live.session.probes.counters().lost_total)
        yield from (uexit, hw, pio, mm, *hists.values(), vcpu_time, vcpu_guest, lost)


def check_port(port: int) -> None:
    """Refuse a TCP port no server can listen on, before any probe is attached."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise UsageError(f"--port {port!r} is not a TCP port", "give a port from 1 to 65535 (default 9464)")


def run_serve(domain: str | None, uri: str, all_domains: bool, port: int, listen: str) -> int:
    from prometheus_client import CollectorRegistry, start_http_server

    from kvmtrace.record.session import _StopFlag

    check_port(port)
    registry = CollectorRegistry()
    # Listen first: a port in use or refused fails here, not after the
    # probes were compiled and attached. Until they are, a scrape is empty.
    try:
        server, thread = start_http_server(port, addr=listen, registry=registry)
    except OSError as e:
        raise UsageError(f"cannot listen on {listen}:{port}: {e.strerror or e}",
                         "choose another --port or --listen address") from e
    try:
        with LiveCounter(domain, uri, all_domains) as live:
            registry.register(KvmtraceCollector(live))
            names = ", ".join(g.name for g in live.guests) or "no domain yet"
            print(f"kvmtrace: serving metrics of {names} on http://{listen}:{port}/metrics; Ctrl-C stops",
                  file=sys.stderr, flush=True)
            with _StopFlag() as stop:
                while not stop.reason:
                    time.sleep(0.1)
    finally:
        server.shutdown()
    return 0
