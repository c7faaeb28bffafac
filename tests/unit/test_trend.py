"""`kvmtrace trend`: the baseline band, the flags and the graph, on synthetic series."""

import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from kvmtrace.analysis.compare import RateTableError, RunRates
from kvmtrace.analysis.trend import COLUMNS, trend_frame
from kvmtrace.present.trend import plot_trend, save_trend

RATES = {
    ("port", "0x0080 write"): 30_000,
    ("port", "0x0071 read"): 9_000,
    ("port", "0x0070 write"): 6_000,
    ("port", "0x0040 read"): 1_500,
    ("device", "hpet"): 12_000,
    ("vcpu", "0"): 45_000,
}
PORT_KEYS = {k for d, k in RATES if d == "port"}


def series(n=8, raise_run=6, key=("port", "0x0080 write"), factor=1.3, seed=5, extra=None, duration_s=3.0):
    """n runs "run1".."runN" of the same Poisson process; run `raise_run` has `key` x factor."""
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(1, n + 1):
        counts = {k: rng.poisson(r * (factor if (i == raise_run and k == key) else 1.0) * duration_s)
                  for k, r in RATES.items()}
        if extra and i in extra:
            counts.update(extra[i])
        df = pd.DataFrame([(d, k, c) for (d, k), c in counts.items()], columns=["dimension", "key", "count"])
        runs.append(RunRates(f"run{i}", df, duration_s, int(df["count"].sum())))
    return runs


def flagged(frame):
    return {(str(r["run"]), str(r["dimension"]), str(r["key"])) for r in frame.to_dict("records") if r["flagged"]}


def test_thirty_percent_rise_in_run6_is_flagged_exactly_there():
    frame = trend_frame(series())
    assert flagged(frame) == {("run6", "port", "0x0080 write")}
    assert set(frame["direction"].astype(str)) == {"", "up"}
    hit = frame[frame["flagged"]].iloc[0]
    assert hit["rate"] > hit["band_hi"] and hit["direction"] == "up"
    assert 1.25 < hit["rate"] / hit["baseline_rate"] < 1.35


def test_frame_shape_and_dtypes():
    runs = series()
    frame = trend_frame(runs)
    assert list(frame.columns) == COLUMNS
    assert frame.index.name == "row"
    assert len(frame) == len(runs) * len(RATES)
    assert frame["run"].cat.ordered and list(frame["run"].cat.categories) == [f"run{i}" for i in range(1, 9)]
    for col in ("dimension", "key", "direction"):
        assert str(frame[col].dtype) == "category"
    assert frame["count"].dtype == np.int64 and frame["run_index"].dtype == np.int64
    assert frame["flagged"].dtype == bool and frame["baseline"].dtype == bool
    assert not any(frame[c].dtype == object for c in frame.columns)
    assert frame.loc[frame["baseline"], "run"].astype(str).unique().tolist() == ["run1", "run2", "run3"]
    r = frame.iloc[0]
    assert r["rate"] == r["count"] / 3.0
    assert (frame["band_lo"] <= frame["baseline_rate"]).all() and (frame["baseline_rate"] <= frame["band_hi"]).all()


def test_band_is_mean_plus_max_of_three_sigma_and_poisson():
    from scipy.stats import poisson

    # A key whose baseline runs disagree a lot: 3 sigma wins.
    wide = {1: {("port", "0x0060 read"): 3000}, 2: {("port", "0x0060 read"): 6000},
            3: {("port", "0x0060 read"): 9000}}
    frame = trend_frame(series(extra=wide))
    k = frame[(frame["key"] == "0x0060 read") & (frame["run"] == "run5")].iloc[0]
    rates = np.array([3000, 6000, 9000]) / 3.0
    assert k["baseline_rate"] == pytest.approx(rates.mean())
    assert k["band_hi"] == pytest.approx(rates.mean() + 3 * rates.std(ddof=1))
    assert k["band_lo"] == 0.0  # clipped: a rate is never negative
    assert k["count"] == 0 and k["direction"] == "" and not k["flagged"]  # 0 is inside [0, hi]
    # Every key, by the definition: mean +- max(3 sigma, Poisson 99.9 % of a 3 s run).
    for (dim, key), g in frame.groupby(["dimension", "key"], observed=True):
        base = g.loc[g["baseline"], "rate"]
        m, sd = base.mean(), base.std(ddof=1)
        hi = m + max(3 * sd, poisson.ppf(0.9995, m * 3.0) / 3.0 - m)
        lo = max(0.0, m - max(3 * sd, m - poisson.ppf(0.0005, m * 3.0) / 3.0))
        np.testing.assert_allclose(g["band_hi"], hi, err_msg=f"{dim} {key}")
        np.testing.assert_allclose(g["band_lo"], lo, err_msg=f"{dim} {key}")
    # Three identical baseline counts: sigma is 0 and the band is the Poisson interval.
    steady = {i: {("port", "0x03f8 write"): 30} for i in (1, 2, 3)}
    f = trend_frame(series(extra=steady))
    r = f[(f["key"] == "0x03f8 write") & (f["run"] == "run4")].iloc[0]
    assert r["baseline_rate"] == 10.0
    assert r["band_hi"] == pytest.approx(poisson.ppf(0.9995, 30) / 3.0)  # 49 counts
    assert r["band_lo"] == pytest.approx(poisson.ppf(0.0005, 30) / 3.0)  # 14 counts


def test_baseline_by_labels_and_order_by_time():
    runs = series()
    # Given in reverse time order: time order puts run8 first.
    times = [float(-i) for i in range(len(runs))]
    frame = trend_frame(runs, order_by="time", times=times, baseline=["run8", "run7", "run5"])
    assert list(frame["run"].cat.categories) == [f"run{i}" for i in range(8, 0, -1)]
    assert sorted(frame.loc[frame["baseline"], "run"].astype(str).unique()) == ["run5", "run7", "run8"]
    assert flagged(frame) == {("run6", "port", "0x0080 write")}
    assert frame.attrs["order_by"] == "time"


def test_labels_sort_naturally():
    runs = series(n=11, raise_run=0)
    frame = trend_frame(list(reversed(runs)))
    assert list(frame["run"].cat.categories) == [f"run{i}" for i in range(1, 12)]
    assert flagged(frame) == set()


def test_a_key_that_appears_after_the_baseline_is_flagged():
    frame = trend_frame(series(raise_run=0, extra={7: {("port", "0x03f8 write"): 30}}))
    assert flagged(frame) == {("run7", "port", "0x03f8 write")}
    # A key missing from a run counts 0 there.
    assert frame[(frame["key"] == "0x03f8 write")]["count"].tolist() == [0] * 6 + [30, 0]


def test_bad_input_is_named():
    runs = series()
    with pytest.raises(RateTableError, match="run9"):
        trend_frame(runs, baseline=["run9"])
    with pytest.raises(RateTableError, match="baseline=9"):
        trend_frame(runs, baseline=9)
    with pytest.raises(RateTableError, match="times"):
        trend_frame(runs, order_by="time")
    with pytest.raises(RateTableError, match="share the labels run1"):
        trend_frame(runs + [runs[0]])
    with pytest.raises(RateTableError, match="no 'mmio' rows"):
        plot_trend(trend_frame(runs), dimension="mmio")


def _is_red(c):
    return np.allclose(to_rgba(c)[:3], (1.0, 0.0, 0.0))


def test_plot_has_labels_legend_one_line_per_key_and_a_red_ring():
    frame = trend_frame(series())
    fig = plot_trend(frame, dimension="port")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "I/O exits per second (exits/s)"
    assert "run" in ax.get_xlabel()
    assert "port" in ax.get_title(loc="left").lower()
    lines = ax.get_lines()
    assert len(lines) == len(PORT_KEYS)
    assert {ln.get_label() for ln in lines} == PORT_KEYS
    assert all(len(ln.get_xdata()) == 8 for ln in lines)
    legend = ax.get_legend()
    assert legend is not None
    texts = [t.get_text() for t in legend.get_texts()]
    assert set(texts) >= PORT_KEYS | {"above band", "baseline runs"}
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"run{i}" for i in range(1, 9)]
    # The red ring sits on run6's 0x80 rate, and the note names the key.
    rings = [c for c in ax.collections if c.get_edgecolor().size and _is_red(c.get_edgecolor()[0])]
    assert len(rings) == 1
    hit = frame[frame["flagged"]].iloc[0]
    np.testing.assert_allclose(rings[0].get_offsets(), [[5, hit["rate"]]])
    notes = [t.get_text() for t in ax.texts]
    assert len(notes) == 1 and "0x0080 write" in notes[0]
    assert f"{100 * (hit['rate'] / hit['baseline_rate'] - 1):+.0f}% vs baseline" in notes[0]
    # Bands: one shaded area per key.
    assert sum(1 for c in ax.collections if type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection")) \
        == len(PORT_KEYS)


def test_plot_options():
    frame = trend_frame(series())
    fig = plot_trend(frame, dimension="port", keys=["0x0040 read"], log=True, title="mine")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_title(loc="left") == "mine"
    # Keys asked for are exactly the keys drawn; by default flagged keys are always among them.
    assert {ln.get_label() for ln in ax.get_lines()} == {"0x0040 read"}
    assert "0x0080 write" in {ln.get_label() for ln in plot_trend(frame, max_keys=1).axes[0].get_lines()}
    few = plot_trend(trend_frame(series(raise_run=6, key=("port", "0x0040 read"))), max_keys=1).axes[0]
    assert {ln.get_label() for ln in few.get_lines()} == {"0x0080 write", "0x0040 read"}
    dev = plot_trend(frame, dimension="device").axes[0]
    assert [ln.get_label() for ln in dev.get_lines()] == ["hpet"]
    long = [RunRates(f"nightly-2024-06-{i:02d}", r.counts, r.duration_s, r.exits) for i, r in enumerate(series(), 1)]
    ticks = plot_trend(trend_frame(long)).axes[0].get_xticklabels()
    assert ticks[0].get_rotation() == 30


def test_save_png_svg_html(tmp_path):
    frame = trend_frame(series())
    fig = plot_trend(frame)
    png = save_trend(fig, tmp_path / "trend.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = save_trend(fig, tmp_path / "trend.svg")
    assert "<svg" in svg.read_text()
    page = save_trend(frame, tmp_path / "trend.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "<table>" in page
    # Self-contained: nothing loaded from anywhere.
    assert "<script" not in page.lower()
    assert not re.search(r"<(link|img|iframe|object|embed|use|image)\b[^>]*\b(src|href)\s*=\s*[\"']?(https?:)?//",
                         page, re.I)
    assert "@import" not in page and not re.search(r"url\((?!#)", page)  # only in-page url(#id)
    # The table marks the flagged run.
    assert re.search(r'<td class="up" title="count [\d,]+; band[^"]*">39,', page) or page.count('class="up"') == 1
    with pytest.raises(RateTableError, match=r"\.png, \.svg or \.html"):
        save_trend(fig, tmp_path / "trend.pdf")
