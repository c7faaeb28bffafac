"""Counts mode's in-kernel log2 latency histograms: quantiles as bucket bounds."""

from __future__ import annotations

from kvmtrace.analysis.histograms import log2_latency
from kvmtrace.kernel.events import AGGREGATE, EventKind, Latency
from kvmtrace.tables.exits import ExitNames

from ..support.evbuild import Ev

NAMES = ExitNames.from_formats(None, None)


def hist_rows(ev: Ev, which: Latency, reason: int, buckets: dict[int, int], isa: int = 0) -> Ev:
    for b, n in buckets.items():
        ev.add(EventKind.HIST | AGGREGATE, op=int(which), reason=reason, isa=isa, port=b, value=n)
    return ev


def test_quantiles_are_the_upper_bound_of_the_bucket_holding_them():
    # 100 samples of KVM_EXIT_IO: 50 in [1024, 2048) ns, 40 in [2048, 4096), 9 in [8192, 16384), 1 in [2^20, 2^21)
    ev = hist_rows(Ev(), Latency.VMM_SERVICE, 2, {10: 50, 11: 40, 13: 9, 20: 1})
    # the same bucket split over two intervals' rows adds up
    hist_rows(ev, Latency.VMM_SERVICE, 2, {10: 0})
    hist_rows(ev, Latency.VMM_SERVICE, 6, {12: 3})
    df = log2_latency(ev.frame(), NAMES, Latency.VMM_SERVICE)
    assert df.to_dict("records") == [
        {"isa": "", "reason": "IO", "count": 100, "p50": 2048, "p90": 4096, "p99": 16384, "max": 2 ** 21},
        {"isa": "", "reason": "MMIO", "count": 3, "p50": 8192, "p90": 8192, "p99": 8192, "max": 8192},
    ]
    assert log2_latency(ev.frame(), NAMES, Latency.EXIT_HANDLING).empty


def test_exit_handling_is_named_by_isa_and_reason():
    ev = hist_rows(Ev(), Latency.EXIT_HANDLING, 30, {9: 7}, isa=1)  # VMX IO_INSTRUCTION
    df = log2_latency(ev.frame(), NAMES, Latency.EXIT_HANDLING)
    assert df[["isa", "reason", "count", "max"]].to_dict("records") == [
        {"isa": "VMX", "reason": "IO_INSTRUCTION", "count": 7, "max": 1024}]
