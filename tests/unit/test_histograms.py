"""Counts mode's in-kernel log2 latency histograms: quantiles as bucket bounds."""

from __future__ import annotations

import collections

import numpy as np

from kvmtrace.analysis.histograms import log2_latency
from kvmtrace.kernel.events import AGGREGATE, EventKind, Latency
from kvmtrace.tables.exits import ExitNames

from ..support.evbuild import Ev

NAMES = ExitNames.from_formats(None, None)


def hist_rows(ev: Ev, which: Latency, reason: int, buckets: dict[int, int], isa: int = 0) -> Ev:
    for b, n in buckets.items():
        ev.add(EventKind.HIST | AGGREGATE, op=int(which), reason=reason, isa=isa, port=b, value=n)
    return ev


def bpf_log2l(v: int) -> int:
    """bcc's bpf_log2l (helpers.h): floor(log2 v) + 1, and 1 for v = 0."""
    return max(int(v).bit_length(), 1)


def test_buckets_are_bccs_so_each_bound_is_at_least_the_true_value_and_under_twice_it():
    # The kernel buckets with bpf_log2l: bucket b holds [2^(b-1), 2^b). Each
    # reported quantile is then >= the true one and < 2x it (it was once read as
    # [2^b, 2^(b+1)), which doubled every counts-mode figure).
    rng = np.random.default_rng(7)
    samples = rng.integers(300, 5_000_000, size=997)
    buckets = collections.Counter(bpf_log2l(v) for v in samples)
    df = log2_latency(hist_rows(Ev(), Latency.VMM_SERVICE, 2, dict(buckets)).frame(), NAMES, Latency.VMM_SERVICE)
    row = df.to_dict("records")[0]
    srt = np.sort(samples)
    for q in (50, 90, 99):
        true = srt[int(np.ceil(q / 100 * len(srt))) - 1]
        assert true < row[f"p{q}"] <= 2 * true, (q, true, row)
    assert samples.max() < row["max"] <= 2 * samples.max()
    assert [bpf_log2l(v) for v in (0, 1, 2, 1023, 1024, 2047, 2048)] == [1, 1, 2, 10, 11, 11, 12]


def test_quantiles_are_the_upper_bound_of_the_bucket_holding_them():
    # 100 samples of KVM_EXIT_IO: 50 in [512, 1024) ns, 40 in [1024, 2048), 9 in [4096, 8192), 1 in [2^19, 2^20)
    ev = hist_rows(Ev(), Latency.VMM_SERVICE, 2, {10: 50, 11: 40, 13: 9, 20: 1})
    # the same bucket split over two intervals' rows adds up
    hist_rows(ev, Latency.VMM_SERVICE, 2, {10: 0})
    hist_rows(ev, Latency.VMM_SERVICE, 6, {12: 3})
    df = log2_latency(ev.frame(), NAMES, Latency.VMM_SERVICE)
    assert df.to_dict("records") == [
        {"isa": "", "reason": "IO", "count": 100, "p50": 1024, "p90": 2048, "p99": 8192, "max": 2 ** 20},
        {"isa": "", "reason": "MMIO", "count": 3, "p50": 4096, "p90": 4096, "p99": 4096, "max": 4096},
    ]
    assert log2_latency(ev.frame(), NAMES, Latency.EXIT_HANDLING).empty


def test_exit_handling_is_named_by_isa_and_reason():
    ev = hist_rows(Ev(), Latency.EXIT_HANDLING, 30, {9: 7}, isa=1)  # VMX IO_INSTRUCTION
    df = log2_latency(ev.frame(), NAMES, Latency.EXIT_HANDLING)
    assert df[["isa", "reason", "count", "max"]].to_dict("records") == [
        {"isa": "VMX", "reason": "IO_INSTRUCTION", "count": 7, "max": 512}]
