"""`kvmtrace serve`: per-domain exit, I/O and latency metrics for Prometheus.

Counting happens in the kernel (counts mode); each scrape reads the
cumulative counts, so metrics are exact counters with no sampling thread.
Metrics (all with a ``domain`` label):

- ``kvmtrace_userspace_exits_total{reason}``: KVM_RUN returns to the VMM
- ``kvmtrace_exits_total{isa,reason}``: hardware exits (where kvm_exit fires)
- ``kvmtrace_pio_total{port,direction,device,handler}``: port I/O, handler
  "kernel" or "vmm"
- ``kvmtrace_mmio_total{page,direction,device,handler}``: MMIO by 4 KiB page
- ``kvmtrace_vmm_service_seconds{reason}`` and
  ``kvmtrace_exit_handling_seconds{reason}``: log2-bucket histograms; their
  ``_sum`` is estimated from the bucket midpoints (the kernel keeps counts only)
- ``kvmtrace_lost_events_total``: counts the kernel could not keep
"""

from __future__ import annotations

import sys
import time


from kvmtrace.analysis.summary import mmio, port_io, userspace_exits, hardware_exits, weighted
from kvmtrace.kernel.events import EventKind, Latency
from kvmtrace.tables.exits import ExitNames
from kvmtrace.live.counter import LiveCounter, RESCAN_SECONDS

NAMES = ExitNames.builtin()


class KvmtraceCollector:
    """A prometheus_client collector reading the live in-kernel counts."""

    def __init__(self, live: LiveCounter):
        self.live = live
        self._last_rescan = time.monotonic()
        self._devmaps: dict[int, object] = {}

    def _devmap(self, guest):
        from kvmtrace.tables.devices import DeviceMap

        if guest.pid not in self._devmaps:
            text = guest.memory_map_text
            self._devmaps[guest.pid] = DeviceMap.from_mtree(text) if text else DeviceMap.builtin()
        return self._devmaps[guest.pid]

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
        pio = CounterMetricFamily("kvmtrace_pio", "Port I/O accesses", labels=["domain", "port", "direction",
                                                                              "device", "handler"])
        mm = CounterMetricFamily("kvmtrace_mmio", "MMIO accesses by 4 KiB page",
                                 labels=["domain", "page", "direction", "device", "handler"])
        hists = {
            Latency.VMM_SERVICE: HistogramMetricFamily(
                "kvmtrace_vmm_service_seconds", "Userspace exit to the thread's next KVM_RUN (sum estimated)",
                labels=["domain", "reason"]),
            Latency.EXIT_HANDLING: HistogramMetricFamily(
                "kvmtrace_exit_handling_seconds", "kvm_exit to kvm_entry (sum estimated)",
                labels=["domain", "reason"]),
        }
        for guest in self.live.guests:
            r = rows[rows["pid"] == guest.pid]
            dom = guest.name
            dev = self._devmap(guest)
            for x in userspace_exits(r, NAMES, 1.0).to_dict("records"):
                uexit.add_metric([dom, x["reason"]], x["count"])
            for x in hardware_exits(r, NAMES, 1.0).to_dict("records"):
                hw.add_metric([dom, x["isa"], x["reason"]], x["count"])
            for x in port_io(r).to_dict("records"):
                region = dev.port(int(x["port"]))
                pio.add_metric([dom, f"{x['port']:#06x}", x["direction"], region.name if region else "unknown",
                                "vmm" if x["userspace"] else "kernel"], x["count"])
            for x in mmio(r).to_dict("records"):
                region = dev.mmio(int(x["gpa"]))
                mm.add_metric([dom, f"{int(x['gpa']) & ~0xFFF:#x}", x["direction"],
                               region.name if region else "unknown", "vmm" if x["userspace"] else "kernel"],
                              x["count"])
            h = r[r["k"] == EventKind.HIST]
            for (which, reason), part in h.groupby(["op", "reason"]):
                lat = Latency(int(which))
                name = NAMES.kvm_exit(int(reason)) if lat == Latency.VMM_SERVICE else str(int(reason))
                counts = part.groupby("port")["w"].sum().sort_index()
                buckets, cum, est = [], 0, 0.0
                for b, n in counts.items():
                    cum += int(n)
                    est += int(n) * 1.5 * 2.0 ** int(b) / 1e9
                    buckets.append((repr(2.0 ** (int(b) + 1) / 1e9), cum))
                buckets.append(("+Inf", cum))
                hists[lat].add_metric([dom, name], buckets, est)
        lost = CounterMetricFamily("kvmtrace_lost_events", "Events or counts the kernel could not keep")
        lost.add_metric([], self.live.session.probes.counters().lost_total)
        yield from (uexit, hw, pio, mm, *hists.values(), lost)


def run_serve(domain: str | None, uri: str, all_domains: bool, port: int, listen: str) -> int:
    from prometheus_client import CollectorRegistry, start_http_server

    from kvmtrace.record.session import _StopFlag

    with LiveCounter(domain, uri, all_domains) as live:
        registry = CollectorRegistry()
        registry.register(KvmtraceCollector(live))
        server, thread = start_http_server(port, addr=listen, registry=registry)
        names = ", ".join(g.name for g in live.guests) or "no domain yet"
        print(f"kvmtrace: serving metrics of {names} on http://{listen}:{port}/metrics; Ctrl-C stops",
              file=sys.stderr, flush=True)
        try:
            with _StopFlag() as stop:
                while not stop.reason:
                    time.sleep(0.1)
        finally:
            server.shutdown()
    return 0
