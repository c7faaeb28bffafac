"""`kvmtrace compare`'s statistics on rate tables whose answers are known."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from kvmtrace.present.compare import format_text
from kvmtrace.analysis.compare import (
    COLUMNS, RateTableError, RunRates, compare, has_regression, holm, poisson_rate_test,
    regression_causes, to_json,
)

# Rates of the demo guest's kind: tens of thousands of events per second.
DEMO = {
    ("userspace_exit", "HLT"): 20_000,
    ("port", "0x0080 write"): 30_000,
    ("port", "0x0071 read"): 9_000,
    ("port", "0x0070 write"): 9_000,
    ("mmio", "0xfed00000 read"): 12_000,
    ("device", "hpet"): 15_000,
    ("vcpu", "0"): 45_000,
    ("exit", "EPT_MISCONFIG"): 500,
}


def table(counts: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [(d, k, int(n)) for (d, k), n in counts.items()], columns=["dimension", "key", "count"]
    ).astype({"dimension": "category", "key": "category", "count": "int64"})


def sample(rng, rates: dict, duration_s=3.0, scale: dict | None = None, label="run") -> RunRates:
    scale = scale or {}
    counts = {k: rng.poisson(r * scale.get(k, 1.0) * duration_s) for k, r in rates.items()}
    return RunRates(label, table(counts), duration_s, exits=int(sum(counts.values())))


def flagged(df, column="regression"):
    return {(str(r["dimension"]), str(r["key"])) for r in df.to_dict("records") if r[column]}


def test_columns_and_dtypes():
    rng = np.random.default_rng(0)
    df = compare(sample(rng, DEMO), sample(rng, DEMO))
    assert list(df.columns) == COLUMNS
    assert df.index.name == "row"
    assert str(df["dimension"].dtype) == "category" and str(df["key"].dtype) == "category"
    assert df["base_count"].dtype == np.int64 and df["new_count"].dtype == np.int64
    assert df["significant"].dtype == bool and df["regression"].dtype == bool
    assert not any(df[c].dtype == object for c in df.columns)
    assert len(df) == len(DEMO)


def test_same_poisson_process_is_not_a_change():
    # Many keys at 1000/s over 3 s, two independent samples of the same process.
    rates = {("port", f"{0x60 + i:#06x} write"): 1000 for i in range(6)}
    rng = np.random.default_rng(42)
    df = compare(sample(rng, rates), sample(rng, rates))
    assert not df["significant"].any()
    assert not has_regression(df)
    # And the false alarm rate is what Holm promises (family-wise <= alpha = 1%):
    # over 200 seeded pairs at most a few show anything.
    any_sig = sum(compare(sample(np.random.default_rng(s), rates), sample(np.random.default_rng(10_000 + s), rates))
                  ["significant"].any() for s in range(200))
    assert any_sig <= 6


def test_twenty_percent_more_of_one_key_is_exactly_one_regression():
    rng = np.random.default_rng(7)
    key = ("port", "0x0080 write")
    base = sample(rng, DEMO, label="base")
    new = sample(rng, DEMO, scale={key: 1.2}, label="new")
    df = compare(base, new, threshold_pct=10.0)
    assert flagged(df) == {key}
    assert flagged(df, "significant") == {key}
    top = df.iloc[0]
    assert (top["dimension"], top["key"]) == key  # regressions sort first
    assert 17 < top["change_pct"] < 23
    assert top["new_rate"] == top["new_count"] / 3.0
    assert top["new_share"] == top["new_count"] / new.exits
    assert has_regression(df)


def test_twenty_percent_fewer_is_significant_but_not_a_regression():
    rng = np.random.default_rng(8)
    key = ("mmio", "0xfed00000 read")
    df = compare(sample(rng, DEMO), sample(rng, DEMO, scale={key: 0.8}))
    assert flagged(df, "significant") == {key}
    assert flagged(df) == set()
    assert not has_regression(df)
    assert df.iloc[0]["change_pct"] < -15


def test_a_small_significant_rise_below_threshold_is_not_a_regression():
    rng = np.random.default_rng(9)
    key = ("vcpu", "0")
    df = compare(sample(rng, DEMO), sample(rng, DEMO, scale={key: 1.05}), threshold_pct=10.0)
    assert flagged(df, "significant") == {key}
    assert flagged(df) == set()


def test_key_new_in_new_run_is_a_regression_and_gone_key_is_not():
    base = RunRates("base", table({("port", "0x0080 write"): 90_000, ("device", "rtc"): 300}), 3.0, 90_300)
    new = RunRates("new", table({("port", "0x0080 write"): 90_000, ("port", "0x03f8 write"): 600}), 3.0, 90_600)
    df = compare(base, new).set_index(["dimension", "key"])
    appeared = df.loc[("port", "0x03f8 write")]
    assert appeared["base_count"] == 0 and appeared["new_count"] == 600
    assert math.isinf(appeared["change_pct"]) and appeared["change_pct"] > 0
    assert appeared["regression"]
    gone = df.loc[("device", "rtc")]
    assert gone["change_pct"] == -100.0 and gone["significant"] and not gone["regression"]
    assert not df.loc[("port", "0x0080 write")]["significant"]


def test_zero_in_both_runs_is_no_change_without_warnings():
    base = RunRates("base", table({("port", "0x0080 write"): 0, ("vcpu", "0"): 5}), 3.0, 5)
    new = RunRates("new", table({("port", "0x0080 write"): 0, ("vcpu", "0"): 5}), 2.0, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = compare(base, new).set_index(["dimension", "key"])
    z = df.loc[("port", "0x0080 write")]
    assert z["change_pct"] == 0.0 and z["base_rate"] == 0.0 and z["new_rate"] == 0.0
    assert math.isnan(z["p_value"]) and not z["significant"] and not z["regression"]
    assert math.isnan(df.loc[("vcpu", "0")]["new_share"])  # the new run had 0 exits: no share
    assert df.loc[("vcpu", "0")]["base_share"] == 1.0


def test_conditional_test_matches_hand_computation():
    # 10 events in base, none in new, equal exposure: P = 2 * 0.5**10.
    assert poisson_rate_test(10, 1.0, 0, 1.0) == pytest.approx(2 * 0.5**10)
    # Exposure enters: 10 vs 20 events over 1 s vs 2 s are the same rate.
    assert poisson_rate_test(10, 1.0, 20, 2.0) == pytest.approx(1.0)
    assert math.isnan(poisson_rate_test(0, 1.0, 0, 3.0))


def test_holm_on_a_hand_example():
    # m = 4, alpha = 0.05. Sorted p: 0.004, 0.012, 0.020, 0.3 against
    # 0.05/4 = 0.0125, 0.05/3 = 0.0167, 0.05/2 = 0.025, 0.05/1: the first three
    # pass, the fourth fails. (Bonferroni at 0.0125 would keep only two.)
    p = np.array([0.3, 0.020, 0.004, 0.012])
    adj = holm(p)
    np.testing.assert_allclose(adj, [0.3, 0.040, 0.016, 0.036])
    assert list(adj < 0.05) == [False, True, True, True]
    assert list(p * len(p) < 0.05) == [False, False, True, True]
    # Step-down monotonicity: 0.025 * 1 = 0.025 is raised to the 0.04 before it.
    np.testing.assert_allclose(holm(np.array([0.01, 0.02, 0.025])), [0.03, 0.04, 0.04])
    # Untestable rows (NaN) are not in the family.
    np.testing.assert_allclose(holm(np.array([0.01, np.nan, 0.02])), [0.02, np.nan, 0.02])
    assert np.isnan(holm(np.array([np.nan]))).all()


def test_compare_applies_holm_across_rows():
    rng = np.random.default_rng(3)
    df = compare(sample(rng, DEMO), sample(rng, DEMO, scale={("device", "hpet"): 1.02}), alpha=0.05)
    np.testing.assert_allclose(df["p_adjusted"], holm(df["p_value"].to_numpy()))
    assert (df["significant"] == (df["p_adjusted"] < 0.05)).all()


# --- bootstrap over time windows ------------------------------------------------------------

def windowed(rng, rates: dict, n_win=30, window_s=0.1, burst_cv=0.0, scale=None, label="run") -> RunRates:
    """Counts per window; with burst_cv > 0 each window's rate is gamma-distributed
    around the mean (coefficient of variation burst_cv): overdispersed counts."""
    scale = scale or {}
    rows = []
    for w in range(n_win):
        for key, r in rates.items():
            mean = r * scale.get(key, 1.0) * window_s
            if burst_cv > 0:
                mean = rng.gamma(1 / burst_cv**2, mean * burst_cv**2)
            rows.append((w, key[0], key[1], rng.poisson(mean)))
    windows = pd.DataFrame(rows, columns=["window", "dimension", "key", "count"])
    counts = windows.groupby(["dimension", "key"], as_index=False)["count"].sum()
    return RunRates(label, counts, n_win * window_s, int(counts["count"].sum()), windows=windows, window_s=window_s)


def test_bootstrap_does_not_call_bursty_noise_a_change_where_poisson_does():
    # Same process in both runs, but each 0.1 s window's rate varies by 50 %.
    rates = {("port", "0x0080 write"): 30_000, ("device", "hpet"): 12_000, ("vcpu", "0"): 40_000}
    for seed in range(10):
        rng = np.random.default_rng(seed)
        base = windowed(rng, rates, burst_cv=0.5)
        new = windowed(rng, rates, burst_cv=0.5)
        assert compare(base, new, method="poisson")["significant"].any()  # Poisson is fooled by the bursts ...
        assert not compare(base, new, method="bootstrap")["significant"].any()  # ... the bootstrap is not.


def test_bootstrap_finds_a_real_rise_and_is_reproducible():
    rates = {("port", "0x0080 write"): 30_000, ("device", "hpet"): 12_000, ("vcpu", "0"): 40_000}
    rng = np.random.default_rng(12)
    key = ("port", "0x0080 write")
    base = windowed(rng, rates)
    new = windowed(rng, rates, scale={key: 1.2})
    a = compare(base, new, method="bootstrap")
    assert flagged(a) == {key}
    pd.testing.assert_frame_equal(a, compare(base, new, method="bootstrap"))


def test_bootstrap_key_new_in_new_run_is_flagged():
    rng = np.random.default_rng(13)
    base = windowed(rng, {("port", "0x0080 write"): 30_000})
    new = windowed(rng, {("port", "0x0080 write"): 30_000, ("port", "0x03f8 write"): 2_000})
    df = compare(base, new, method="bootstrap")
    assert flagged(df) == {("port", "0x03f8 write")}


def test_bootstrap_needs_windows_and_enough_of_them():
    rng = np.random.default_rng(14)
    with pytest.raises(RateTableError, match="per-window counts"):
        compare(sample(rng, DEMO), sample(rng, DEMO), method="bootstrap")
    few = windowed(rng, {("vcpu", "0"): 1000}, n_win=4)
    with pytest.raises(RateTableError, match="complete windows"):
        compare(few, few, method="bootstrap")


def test_bad_tables_are_named():
    good = RunRates("a", table({("vcpu", "0"): 1}), 1.0, 1)
    with pytest.raises(RateTableError, match="duration_s"):
        compare(good, RunRates("b", table({("vcpu", "0"): 1}), 0.0, 1))
    with pytest.raises(RateTableError, match="lacks the columns count"):
        compare(good, RunRates("b", pd.DataFrame({"dimension": ["vcpu"], "key": ["0"]}), 1.0, 1))
    with pytest.raises(RateTableError, match="method"):
        compare(good, good, method="t-test")


# --- output ---------------------------------------------------------------------------------

def test_text_fits_80_columns_and_names_the_regression():
    rng = np.random.default_rng(7)
    key = ("port", "0x0080 write")
    df = compare(sample(rng, DEMO, label="v1.0"), sample(rng, DEMO, scale={key: 1.2}, label="v1.1"))
    text = format_text(df)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "v1.0" in text and "v1.1" in text
    reg = [line for line in lines if "REGRESSION" in line]
    assert len(reg) == 1 and "0x0080 write" in reg[0] and "userspace_exit" in text
    short = format_text(df, max_rows=2)
    assert f"{len(df) - 2} more rows not shown" in short


def test_regression_causes_are_the_finest_rows_that_rose():
    # One port rose by half; its device, KVM_EXIT reason and vCPU rose with it.
    port, rest = ("port", "0x0080 write"), ("port", "0x0071 read")
    base = {port: 30_000, rest: 9_000, ("device", "ioport80"): 30_000, ("userspace_exit", "IO"): 39_000,
            ("vcpu", "vcpu 0"): 39_000}
    new = {port: 45_000, rest: 9_000, ("device", "ioport80"): 45_000, ("userspace_exit", "IO"): 54_000,
           ("vcpu", "vcpu 0"): 54_000}
    df = compare(RunRates("base", table(base), 3.0, 39_000), RunRates("new", table(new), 3.0, 54_000))
    assert flagged(df) == {port, ("device", "ioport80"), ("userspace_exit", "IO"), ("vcpu", "vcpu 0")}
    assert flagged(regression_causes(df)) == {port} and len(regression_causes(df)) == 1
    # Only coarse rows rose (no port, MMIO or kvm_exit row): they are the causes.
    coarse = {("device", "hpet"): 10_000, ("vcpu", "vcpu 0"): 10_000}
    df = compare(RunRates("base", table(coarse), 3.0, 10_000),
                 RunRates("new", table({k: 2 * n for k, n in coarse.items()}), 3.0, 20_000))
    assert flagged(regression_causes(df)) == set(coarse)
    same = compare(RunRates("base", table(coarse), 3.0, 10_000), RunRates("new", table(coarse), 3.0, 10_000))
    assert regression_causes(same).empty


def test_json_is_plain_and_strict():
    base = RunRates("base", table({("port", "0x0080 write"): 900, ("device", "rtc"): 0}), 3.0, 900)
    new = RunRates("new", table({("port", "0x0080 write"): 900, ("port", "0x03f8 write"): 600}), 3.0, 0)
    out = to_json(compare(base, new))
    text = json.dumps(out, allow_nan=False)  # no NaN/Infinity tokens
    assert json.loads(text) == out
    for row in out:
        assert set(row) == set(COLUMNS)
        for v in row.values():
            assert v is None or type(v) in (str, int, float, bool)
    new_key = next(r for r in out if r["key"] == "0x03f8 write")
    assert new_key["change_pct"] is None and new_key["base_count"] == 0 and new_key["regression"] is True
    assert type(new_key["new_count"]) is int and new_key["new_share"] is None
