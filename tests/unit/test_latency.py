"""Latency statistics and log2 histograms, checked against independent computations."""

import numpy as np
import pandas as pd
import pytest

from kvmtrace.analysis.latency import (
    _group_codes,
    exit_handling,
    format_log2_histogram,
    latency_stats,
    log2_histogram,
    log2_histograms,
    vmm_service,
)
from kvmtrace.kernel.events import MmioOp
from kvmtrace.tables.exits import ExitNames

from ..support.evbuild import Ev

NAMES = ExitNames.builtin()


def random_durations(seed=1, n=5000):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "reason": pd.Categorical(rng.choice(["IO", "MMIO", "HLT", "NOSUCH"], n, p=[0.5, 0.3, 0.2, 0.0])),
        "port": rng.choice(np.array([0x70, 0x71, 0x80], dtype=np.uint32), n),
        "ns": rng.lognormal(8, 2, n).astype(np.int64),
    })
    df.loc[rng.random(n) < 0.05, "ns"] = -1  # unpaired
    # Small groups too: a single value, two values, and one with only unpaired rows.
    extra = pd.DataFrame({
        "reason": pd.Categorical(["ONE", "TWO", "TWO", "NONE", "NONE"], categories=df["reason"].cat.categories.tolist()
                                 + ["ONE", "TWO", "NONE"]),
        "port": np.array([1, 2, 2, 3, 3], dtype=np.uint32),
        "ns": np.array([123, 10, 11, -1, -1], dtype=np.int64),
    })
    df["reason"] = df["reason"].cat.set_categories(extra["reason"].cat.categories)
    return pd.concat([df, extra], ignore_index=True)


@pytest.mark.parametrize("by", [["reason"], ["reason", "port"], []])
def test_percentiles_equal_numpy_per_group(by):
    df = random_durations()
    got = latency_stats(df, "ns", by, percentiles=(50, 90, 99, 99.9))
    assert got.index.name == "group"
    assert list(got.columns) == [*by, "count", "unpaired", "min", "mean", "p50", "p90", "p99", "p99.9", "max"]
    groups = df.groupby(by, observed=True) if by else [((), df)]
    n = 0
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        row = got
        for col, k in zip(by, key):
            row = row[row[col] == k]
        row = row.iloc[0]
        v = g["ns"].to_numpy()
        ok = v[v >= 0]
        assert row["count"] == len(ok) and row["unpaired"] == (v < 0).sum()
        if len(ok):
            # Bit-for-bit equal to numpy's default (linear) percentile.
            for q in (50, 90, 99, 99.9):
                assert row[f"p{q:g}"] == np.percentile(ok, q), (key, q)
            assert row["min"] == ok.min() and row["max"] == ok.max()
            assert row["mean"] == pytest.approx(ok.mean(), rel=1e-12)
        else:
            assert np.isnan([row["min"], row["p50"], row["p99"], row["max"], row["mean"]]).all()
        n += 1
    assert len(got) == n


def test_percentiles_of_known_values():
    df = pd.DataFrame({"ns": np.array([1, 2, 3, 4, 100], dtype=np.int64)})
    row = latency_stats(df, "ns").iloc[0]
    # linear: virtual index q*(n-1); p90 -> 3.6: 4 + 0.6 * (100 - 4); p99 -> 3.96
    assert row["p50"] == 3.0
    assert row["p90"] == pytest.approx(61.6, abs=1e-9) and row["p99"] == pytest.approx(96.16, abs=1e-9)
    assert (row["p90"], row["p99"]) == (np.percentile(df["ns"], 90), np.percentile(df["ns"], 99))
    assert (row["count"], row["min"], row["max"], row["mean"]) == (5, 1.0, 100.0, 22.0)


def test_stats_dtypes_and_key_dtypes_kept():
    df = random_durations()
    got = latency_stats(df, "ns", ["reason", "port"])
    assert str(got["reason"].dtype) == "category" and got["port"].dtype == np.uint32
    assert got["count"].dtype == np.int64 and got["unpaired"].dtype == np.int64
    assert all(got[c].dtype == np.float64 for c in ("min", "mean", "p50", "p90", "p99", "max"))
    assert "NOSUCH" not in set(got["reason"])  # unobserved categories give no rows


def test_stats_bad_column_is_named():
    with pytest.raises(ValueError, match="nope"):
        latency_stats(pd.DataFrame({"ns": [1]}), "ns", ["nope"])


def bit_length_histogram(values):
    """Independent log2 histogram: Python's int.bit_length, one value at a time."""
    counts = {}
    for v in values:
        if v >= 0:
            counts[int(v).bit_length()] = counts.get(int(v).bit_length(), 0) + 1
    return counts


def test_log2_histogram_buckets_like_bcc():
    values = [0, 1, 2, 3, 4, 7, 8, 1000, 1023, 1024, -1, 2**62, 2**63 - 1, 2**53 + 1, 2**54 - 1]
    h = log2_histogram(np.array(values, dtype=np.int64))
    assert h.index.name == "slot" and list(h.columns) == ["lower", "upper", "count"]
    expected = bit_length_histogram(values)
    got = dict(zip(h.index, h["count"]))
    assert {k: v for k, v in got.items() if v} == expected
    # Contiguous from the lowest to the highest slot, empty ones counted as 0.
    assert list(h.index) == list(range(0, 64))
    assert (h.loc[0, "lower"], h.loc[0, "upper"]) == (0, 0)
    assert (h.loc[1, "lower"], h.loc[1, "upper"]) == (1, 1)
    assert (h.loc[2, "lower"], h.loc[2, "upper"]) == (2, 3)
    assert (h.loc[10, "lower"], h.loc[10, "upper"]) == (512, 1023)
    assert (h.loc[63, "lower"], h.loc[63, "upper"]) == (2**62, 2**63 - 1)
    assert h["count"].sum() == len(values) - 1
    # Every value falls between its bucket's bounds.
    for v in values:
        if v >= 0:
            slot = int(v).bit_length()
            assert h.loc[slot, "lower"] <= v <= h.loc[slot, "upper"]


def test_log2_histogram_random_against_bit_length():
    rng = np.random.default_rng(3)
    v = rng.lognormal(9, 3, 20000).astype(np.int64)
    h = log2_histogram(v)
    expected = bit_length_histogram(v.tolist())
    assert {k: c for k, c in zip(h.index, h["count"]) if c} == expected
    assert h.index[0] == min(expected) and h.index[-1] == max(expected)


def test_log2_histograms_per_group():
    df = pd.DataFrame({"g": ["a", "a", "a", "b", "b", "c"], "ns": [1, 9, 40, 0, -1, -1]})
    h = log2_histograms(df, "ns", ["g"])
    assert list(h.columns) == ["g", "slot", "lower", "upper", "count"] and h.index.name == "row"
    rows = [tuple(r) for r in h[["g", "slot", "count"]].itertuples(index=False)]
    assert rows == [("a", 1, 1), ("a", 2, 0), ("a", 3, 0), ("a", 4, 1), ("a", 5, 0), ("a", 6, 1), ("b", 0, 1)]


def test_format_log2_histogram_like_bcc():
    h = log2_histogram(np.array([3, 3, 3, 3, 5, 9]))
    text = format_log2_histogram(h, label="nsecs", width=8)
    lines = text.splitlines()
    assert lines[0].strip().startswith("nsecs") and "distribution" in lines[0]
    assert lines[1:] == [
        "         2 -> 3         : 4         |********|",
        "         4 -> 7         : 1         |**      |",
        "         8 -> 15        : 1         |**      |",
    ]


def runloop_frame():
    e = Ev()
    for handling in (500, 700, 900):  # in-kernel port writes
        e.exit(30, dt=1000).pio(0x70, True, dt=100).entry(dt=handling - 100)
    for service in (3000, 5000):  # port writes QEMU answers
        e.exit(30, dt=1000).pio(0x80, True, dt=100).uexit_io(0x80, True, dt=100).run(dt=service).entry(dt=100)
    e.exit(48, dt=1000).mmio(0xFED00000, MmioOp.UNSATISFIED_READ, dt=100)
    e.uexit_mmio(0xFED00000, False, dt=100).run(dt=8000).mmio(0xFED00000, MmioOp.READ, dt=100).entry(dt=100)
    e.exit(12, dt=1000).entry(dt=1_000_000)
    e.exit(12, dt=1000)  # the recording ends in this HLT
    return e.frame()


def test_exit_handling_per_reason():
    got = exit_handling(runloop_frame(), NAMES)
    rows = {(r["isa"], r["reason"]): (r["count"], r["unpaired"], r["min"], r["max"]) for r in got.to_dict("records")}
    assert rows == {
        ("VMX", "IO_INSTRUCTION"): (5, 0, 500.0, 5300.0),
        ("VMX", "EPT_VIOLATION"): (1, 0, 8400.0, 8400.0),
        ("VMX", "HLT"): (1, 1, 1_000_000.0, 1_000_000.0),
    }
    io = got[got["reason"] == "IO_INSTRUCTION"].iloc[0]
    assert io["p50"] == np.percentile([500, 700, 900, 3300, 5300], 50)
    split = exit_handling(runloop_frame(), NAMES, by=("reason", "handled"))
    assert {(r["reason"], r["handled"]): r["count"] for r in split.to_dict("records")} == {
        ("EPT_VIOLATION", "userspace"): 1,
        ("HLT", "kernel"): 1,
        ("HLT", "unknown"): 0,
        ("IO_INSTRUCTION", "kernel"): 3,
        ("IO_INSTRUCTION", "userspace"): 2,
    }


def test_vmm_service_by_reason_port_and_gpa():
    f = runloop_frame()
    by_reason = vmm_service(f, NAMES)
    assert {r["reason"]: (r["count"], r["min"], r["max"]) for r in by_reason.to_dict("records")} == {
        "IO": (2, 3000.0, 5000.0),
        "MMIO": (1, 8000.0, 8000.0),
    }
    by_port = vmm_service(f, NAMES, by=("reason", "port", "direction"))
    io = by_port[by_port["reason"] == "IO"].iloc[0]
    assert (io["port"], io["direction"], io["p50"]) == (0x80, "write", 4000.0)
    by_gpa = vmm_service(f, NAMES, by=("gpa", "direction"))
    assert (by_gpa["gpa"] == 0xFED00000).sum() == 1
    by_vcpu = vmm_service(f, NAMES, by=("vcpu",))
    assert list(by_vcpu["vcpu"]) == [0] and by_vcpu["count"].item() == 3


def test_group_codes_on_numpy_match_pandas_groupby():
    """Category (with unused categories and NaN), unsigned, signed and bool keys: the groups,
    their order and their keys' dtypes are pandas' own (sort=True, observed=True, dropna=False)."""
    rng = np.random.default_rng(2)
    n = 3000
    df = pd.DataFrame({
        "reason": pd.Categorical(rng.choice(["IO", "MMIO", None], n), categories=["MMIO", "IO", "HLT"]),
        "device": pd.Categorical(rng.choice(["", "rtc", "hpet"], n)),
        "port": rng.choice(np.array([0x80, 0x71, 0x40], dtype=np.uint32), n),
        "delta": rng.integers(-3, 3, n).astype(np.int16),
        "known": rng.random(n) < 0.5,
        "ns": rng.integers(0, 10_000, n),
    })
    for by in (["reason"], ["device", "reason"], ["port", "known"], ["reason", "delta", "device", "known"]):
        codes, keys = _group_codes(df, by)
        g = df.groupby(by, observed=True, sort=True, dropna=False)
        assert (codes == g.ngroup().to_numpy()).all(), by
        expected = g.size().index.to_frame(index=False)
        for c in by:
            expected[c] = expected[c].astype(df[c].dtype)
        pd.testing.assert_frame_equal(keys, expected)


def test_percentiles_of_many_groups_equal_numpy():
    rng = np.random.default_rng(4)
    df = pd.DataFrame({"port": rng.integers(0, 700, 20_000).astype(np.uint32), "ns": rng.integers(0, 10**6, 20_000)})
    got = latency_stats(df, "ns", ["port"]).set_index("port")
    assert len(got) == 700  # more groups than fit in a byte
    for port, g in df.groupby("port"):
        assert list(got.loc[port, ["p50", "p90", "p99"]]) == list(np.percentile(g["ns"], [50, 90, 99]))
