"""Statistics and graph behind `kvmtrace trend TRACE... [-o graph.png|.svg|.html]`.

Many runs of the same guest, in order: every (dimension, key)'s rate per
run, a *baseline band* learnt from the first runs, and the runs whose rate
rose above it.

The band (per key, per run)
---------------------------
From the baseline runs (default: the first 3 in order; or runs named by
label) take the mean rate m and the between-run standard deviation s
(ddof=1; 0 with a single baseline run). Around m the band reaches, on each
side, the wider of

* 3 s: the spread the baseline runs showed between them (boot order, host
  load, timer alignment: what repeated runs really vary by), and
* the Poisson 99.9 % interval of a run of this run's length: counts
  between the 0.05 % and 99.95 % quantiles of Poisson(m * duration_s),
  divided by duration_s. This is the least any run varies by from counting
  alone; it keeps the band honest when the baseline runs agree by chance,
  and is asymmetric (and wider, relatively) for rare keys.

A run whose rate is above ``band_hi`` is ``flagged`` (direction "up");
below ``band_lo`` gives direction "down" and is not flagged (fewer exits is
not a regression). A key absent from every baseline run has m = 0 and a
band of [0, 0]: any later occurrence is flagged, as something new.

Caveat: with 3 baseline runs s is a rough estimate (2 degrees of freedom);
when runs genuinely vary between each other more than Poisson noise, a
band from so few runs will now and then be too narrow. Give 5 or more
baseline runs for a steadier band.

Plots use matplotlib's object API with the Agg canvas (never pyplot): no
display is needed and nothing global changes.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rcParams, ticker
from matplotlib.colors import to_rgb
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from kvmtrace.analysis.compare import DIMENSIONS, RateTableError, RunRates, _dimension_dtype, natural_key, run_counts

#: Baseline runs when none are named.
BASELINE_RUNS = 3
#: Two-sided coverage of the Poisson part of the band.
POISSON_COVERAGE = 0.999
SIGMAS = 3.0

COLUMNS = ["run", "run_index", "dimension", "key", "count", "rate", "baseline_rate",
           "band_lo", "band_hi", "flagged", "direction", "baseline"]

Y_LABELS = {
    "port": "I/O exits per second (exits/s)",
    "mmio": "I/O exits per second (exits/s)",
    "device": "I/O exits per second (exits/s)",
    "exit": "VM exits per second (exits/s)",
    "userspace_exit": "exits to userspace per second (exits/s)",
    "vcpu": "exits per second (exits/s)",
}
TITLES = {
    "port": "Port I/O exits per run, by port",
    "mmio": "MMIO exits per run, by address",
    "device": "I/O exits per run, by device",
    "exit": "VM exits per run, by exit reason",
    "userspace_exit": "Exits to userspace per run, by KVM_EXIT reason",
    "vcpu": "Exits per run, by vCPU",
}


def _order(runs: Sequence[RunRates], order_by: str, times) -> list[int]:
    if order_by == "label":
        return sorted(range(len(runs)), key=lambda i: natural_key(runs[i].label))
    if order_by == "time":
        if times is None or len(times) != len(runs):
            raise RateTableError("order_by='time' needs one time per run",
                                 "pass times=[...] in the same order as runs (e.g. each trace's start time)")
        return sorted(range(len(runs)), key=lambda i: times[i])
    raise RateTableError(f"unknown order_by={order_by!r}", "use 'label' or 'time'")


def _baseline_mask(labels: list[str], baseline) -> np.ndarray:
    n = len(labels)
    if isinstance(baseline, (int, np.integer)) and not isinstance(baseline, bool):
        if not 1 <= baseline <= n:
            raise RateTableError(f"baseline={baseline} runs, but there are {n} runs",
                                 f"give a baseline between 1 and {n} runs, or name them by label")
        return np.arange(n) < baseline
    names = [baseline] if isinstance(baseline, str) else [str(b) for b in baseline]
    unknown = [b for b in names if b not in labels]
    if unknown or not names:
        raise RateTableError(f"baseline runs {', '.join(unknown) or '(none)'} are not among the runs",
                             f"name baseline runs from: {', '.join(labels)}")
    return np.isin(labels, names)


def trend_frame(runs: Sequence[RunRates], order_by: str = "label", times: Sequence | None = None,
                baseline: int | str | Sequence[str] = BASELINE_RUNS) -> pd.DataFrame:
    """Rates of every (dimension, key) in every run, with the baseline band.

    ``order_by``: "label" (natural order: run2 before run10) or "time"
    (by ``times``, one comparable value per run, in the order of ``runs``).
    ``baseline``: the first N runs in that order, or run labels.

    Long form, one row per run x (dimension, key) seen in any run (a key a
    run lacks has count 0). Columns: run (ordered category of labels),
    run_index (int64, 0-based position in the order), dimension (category),
    key (category), count (int64 events), rate (float64 events/s of guest
    run time), baseline_rate (float64, mean rate over the baseline runs),
    band_lo, band_hi (float64 events/s, see the module docstring),
    flagged (bool, rate > band_hi), direction (category "up", "down" or ""),
    baseline (bool, the run is a baseline run). Sorted by dimension, key,
    run_index; index "row". ``attrs``: order_by, baseline_labels.
    """
    from scipy.stats import poisson

    if not runs:
        raise RateTableError("trend needs at least one run", "give one or more traces")
    labels_in = [str(r.label) for r in runs]
    dup = sorted({lab for lab in labels_in if labels_in.count(lab) > 1})
    if dup:
        raise RateTableError(f"runs share the labels {', '.join(dup)}", "give every run its own label")
    order = _order(runs, order_by, times)
    runs = [runs[i] for i in order]
    labels = [str(r.label) for r in runs]
    is_base = _baseline_mask(labels, baseline)

    counts = [run_counts(r) for r in runs]
    keys = counts[0].index
    for c in counts[1:]:
        keys = keys.union(c.index, sort=False)
    keys = keys.sort_values()
    n_runs, n_keys = len(runs), len(keys)
    mat = np.vstack([c.reindex(keys, fill_value=0).to_numpy(dtype=np.int64) for c in counts]) \
        if n_keys else np.zeros((n_runs, 0), dtype=np.int64)
    dur = np.array([float(r.duration_s) for r in runs])[:, None]
    rate = mat / dur

    base_rates = rate[is_base]
    m = base_rates.mean(axis=0)
    s = base_rates.std(axis=0, ddof=1) if base_rates.shape[0] > 1 else np.zeros(n_keys)
    lam = m[None, :] * dur
    tail = (1.0 - POISSON_COVERAGE) / 2
    q_lo = np.where(lam > 0, poisson.ppf(tail, lam), 0.0)
    q_hi = np.where(lam > 0, poisson.ppf(1.0 - tail, lam), 0.0)
    half_lo = np.maximum(SIGMAS * s[None, :], m[None, :] - q_lo / dur)
    half_hi = np.maximum(SIGMAS * s[None, :], q_hi / dur - m[None, :])
    band_lo = np.maximum(0.0, m[None, :] - half_lo)
    band_hi = m[None, :] + half_hi
    up = rate > band_hi
    down = rate < band_lo

    dims = np.asarray(keys.get_level_values("dimension"), dtype=str) if n_keys else np.array([], dtype=str)
    knames = np.asarray(keys.get_level_values("key"), dtype=str) if n_keys else np.array([], dtype=str)
    direction = np.where(up, "up", np.where(down, "down", ""))
    df = pd.DataFrame({
        "run": pd.Categorical(np.repeat(labels, n_keys), categories=labels, ordered=True),
        "run_index": np.repeat(np.arange(n_runs, dtype=np.int64), n_keys),
        "dimension": pd.Categorical(np.tile(dims, n_runs), dtype=_dimension_dtype(dims)),
        "key": pd.Categorical(np.tile(knames, n_runs),
                              categories=pd.Index(sorted(set(knames), key=natural_key), dtype="str")),
        "count": mat.ravel().astype(np.int64),
        "rate": rate.ravel().astype(np.float64),
        "baseline_rate": np.tile(m, n_runs).astype(np.float64),
        "band_lo": band_lo.ravel().astype(np.float64),
        "band_hi": band_hi.ravel().astype(np.float64),
        "flagged": up.ravel().astype(bool),
        "direction": pd.Categorical(direction.ravel(), categories=["", "up", "down"]),
        "baseline": np.repeat(is_base, n_keys).astype(bool),
    }, columns=COLUMNS)
    df = df.sort_values(["dimension", "key", "run_index"], kind="stable", ignore_index=True)
    df.index.name = "row"
    df.attrs.update(order_by=order_by, baseline_labels=[lab for lab, b in zip(labels, is_base) if b])
    return df


def _pick_keys(sub: pd.DataFrame, keys, max_keys: int) -> list[str]:
    present = list(dict.fromkeys(sub["key"].astype(str)))
    if keys is not None:
        keys = [str(k) for k in keys]
        missing = [k for k in keys if k not in present]
        if missing:
            raise RateTableError(f"keys {', '.join(missing)} are not in this dimension",
                                 f"choose from: {', '.join(present)}")
        return keys
    peak = sub.groupby(sub["key"].astype(str))["rate"].max().sort_values(ascending=False, kind="stable")
    chosen = list(peak.index[:max_keys])
    flagged = sub.loc[sub["flagged"], "key"].astype(str).unique()
    return chosen + [k for k in flagged if k not in chosen]


def _spans(idx: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs of integers as (first, last) pairs."""
    out = []
    for i in sorted(int(v) for v in idx):
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def plot_trend(frame: pd.DataFrame, dimension: str = "port", keys: Sequence[str] | None = None,
               title: str | None = None, log: bool = False, max_keys: int = 8) -> Figure:
    """One line per key of ``dimension`` across the runs of a :func:`trend_frame`.

    x: runs in order (labels as tick labels); y: exits per second. Each
    key's baseline band is shaded in its line's colour; the baseline runs
    have a grey background; a run above the band gets a red ring and a note
    with its rate and change against the baseline mean. ``keys``: which keys
    (default: the ``max_keys`` with the highest peak rate, plus every key
    with a flagged run). ``log``: logarithmic y axis (zero rates are not
    drawn there).
    """
    sub = frame[frame["dimension"].astype(str) == dimension]
    if sub.empty:
        have = sorted(set(frame["dimension"].astype(str)), key=lambda d: (d not in DIMENSIONS, d))
        raise RateTableError(f"the runs have no {dimension!r} rows",
                             f"plot one of the dimensions they have: {', '.join(have) or '(none)'}")
    chosen = _pick_keys(sub, keys, max_keys)
    labels = list(frame["run"].cat.categories)
    n_runs = len(labels)

    fig = Figure(figsize=(10, 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = [c["color"] for c in rcParams["axes.prop_cycle"]]
    by_key = {k: g.sort_values("run_index") for k, g in sub.groupby(sub["key"].astype(str), observed=True)}
    chosen.sort(key=lambda k: -float(by_key[k]["baseline_rate"].iloc[0]))

    base_idx = frame.loc[frame["baseline"], "run_index"].unique()
    for first, last in _spans(base_idx):
        ax.axvspan(first - 0.5, last + 0.5, color="0.93", zorder=0, lw=0)

    handles = []
    ymax, ymin_pos = 0.0, np.inf
    any_down = False
    for i, k in enumerate(chosen):
        g = by_key[k]
        c = colours[i % len(colours)]
        x = g["run_index"].to_numpy()
        # The band's edges are drawn too: at high rates it is thin, and a
        # faint fill alone would vanish.
        ax.fill_between(x, g["band_lo"], g["band_hi"], facecolor=(*to_rgb(c), 0.22),
                        edgecolor=(*to_rgb(c), 0.7), lw=0.7, zorder=1)
        ls = "-" if i < len(colours) else "--"  # past the colour cycle, dashes tell keys apart
        (line,) = ax.plot(x, g["rate"], color=c, ls=ls, marker="o", ms=5, lw=1.8, label=k, zorder=3)
        handles.append(line)
        ymax = max(ymax, float(g["rate"].max()), float(g["band_hi"].max()))
        pos = g["rate"].to_numpy()[g["rate"].to_numpy() > 0]
        ymin_pos = min(ymin_pos, float(pos.min())) if len(pos) else ymin_pos
        low = g[g["direction"] == "down"]
        if len(low):
            any_down = True
            ax.scatter(low["run_index"], low["rate"], s=90, marker="v", facecolors="none", edgecolors="black",
                       linewidths=1.5, zorder=5)
        hit = g[g["flagged"]]
        if len(hit):
            ax.scatter(hit["run_index"], hit["rate"], s=420, facecolors="none", edgecolors="red",
                       linewidths=2.5, zorder=5)
        for _, r in hit.iterrows():
            m = r["baseline_rate"]
            change = f"{100 * (r['rate'] - m) / m:+.0f}% vs baseline" if m > 0 else "new"
            right = r["run_index"] > (n_runs - 1) / 2
            ax.annotate(f"{k}: {r['rate']:,.0f}/s\n{change}", (r["run_index"], r["rate"]),
                        xytext=(-16 if right else 16, 14), textcoords="offset points",
                        ha="right" if right else "left", va="bottom", color="red", fontsize=9,
                        fontweight="bold", zorder=6,
                        bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="red", lw=0.8, alpha=0.9))

    handles += [
        Patch(facecolor=(0.5, 0.5, 0.5, 0.22), edgecolor=(0.5, 0.5, 0.5, 0.7), lw=0.7,
              label="baseline band\nmean ± max(3σ, Poisson 99.9%)"),
        Patch(color="0.93", label="baseline runs"),
        Line2D([], [], ls="none", marker="o", ms=14, mfc="none", mec="red", mew=2.5, label="above band"),
    ]
    if any_down:
        handles.append(Line2D([], [], ls="none", marker="v", ms=9, mfc="none", mec="black", mew=1.5,
                              label="below band"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              title=dimension, fontsize=9, title_fontsize=9, frameon=False)

    ax.set_xlim(-0.5, n_runs - 0.5)
    ax.set_xticks(range(n_runs))
    long = max((len(lab) for lab in labels), default=0) > 6 or n_runs > 12
    ax.set_xticklabels(labels, rotation=30 if long else 0, ha="right" if long else "center")
    order_by = frame.attrs.get("order_by", "label")
    ax.set_xlabel("run (in time order)" if order_by == "time" else "run (in label order)")
    ax.set_ylabel(Y_LABELS.get(dimension, "exits per second (exits/s)"))
    if log:
        ax.set_yscale("log")
        if ymax > 0 and np.isfinite(ymin_pos):  # room above for the notes: half a decade
            ax.set_ylim(ymin_pos / 1.6, ymax * 10 ** 0.5)
    else:
        ax.set_ylim(0, ymax * 1.18 if ymax > 0 else 1.0)
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.grid(True, axis="y", color="0.85", lw=0.8)
    ax.set_axisbelow(True)
    n_flag = int(sub.loc[sub["key"].astype(str).isin(chosen), "flagged"].sum())
    base_labels = frame.attrs.get("baseline_labels") or list(frame.loc[frame["baseline"], "run"].unique())
    ax.set_title(title or TITLES.get(dimension, f"Exits per run, by {dimension}"), loc="left", fontsize=12,
                 fontweight="bold")
    fig.suptitle(f"{n_runs} runs; baseline: {', '.join(map(str, base_labels))}; "
                 f"{n_flag} run(s) above band", x=0.01, ha="left", fontsize=9, color="0.35")
    return fig


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    # Inline in HTML: no XML prolog or DOCTYPE; the RDF <metadata> block only
    # names matplotlib and the Dublin Core vocabulary, so it goes too.
    text = text[text.index("<svg"):]
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.2f}"


def html_table(frame: pd.DataFrame) -> str:
    """The frame as an HTML table: one row per (dimension, key), one column per run (rates, /s)."""
    labels = list(frame["run"].cat.categories)
    base = set(frame.loc[frame["baseline"], "run"].astype(str))
    head = "".join(f'<th{" class=base" if lab in base else ""}>{html.escape(lab)}</th>' for lab in labels)
    rows = []
    for (dim, key), g in frame.groupby(["dimension", "key"], observed=True, sort=True):
        g = g.sort_values("run_index")
        cells = []
        for _, r in g.iterrows():
            d = str(r["direction"])
            cls = f' class="{d}"' if d else ""
            tip = f"count {r['count']:,}; band {_fmt(r['band_lo'])} - {_fmt(r['band_hi'])}/s"
            cells.append(f'<td{cls} title="{html.escape(tip)}">{_fmt(r["rate"])}</td>')
        first = g.iloc[0]
        rows.append(f"<tr><td>{html.escape(str(dim))}</td><td>{html.escape(str(key))}</td>"
                    f"<td>{_fmt(first['baseline_rate'])}</td>"
                    f"<td>{_fmt(g['band_lo'].min())} - {_fmt(g['band_hi'].max())}</td>{''.join(cells)}</tr>")
    return ("<table><thead><tr><th>dimension</th><th>key</th><th>baseline mean /s</th><th>band /s</th>"
            f"{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>")


_CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px;margin-top:1em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}
th.base{background:#eee} td.up{background:#fdd;color:#b00;font-weight:bold} td.down{color:#06c}
svg{max-width:100%;height:auto}"""


def save_trend(fig_or_frame: Figure | pd.DataFrame, path: str | Path, *, frame: pd.DataFrame | None = None,
               **plot_kwargs) -> Path:
    """Write the trend graph to ``path``: .png or .svg (matplotlib), or .html.

    Given a frame, plots it first (``plot_kwargs`` go to :func:`plot_trend`).
    The .html file stands alone: the SVG inline, then (when a frame is given,
    either way) a table of every key's rate per run, runs above their band in
    red; no scripts, no external fonts, styles or images.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".svg", ".html", ".htm"):
        raise RateTableError(f"cannot write a trend graph as {path.name!r}", "name the output .png, .svg or .html")
    if isinstance(fig_or_frame, pd.DataFrame):
        frame = fig_or_frame
        fig = plot_trend(frame, **plot_kwargs)
    else:
        fig = fig_or_frame
    if suffix == ".png":
        fig.savefig(path, format="png", dpi=150, metadata={"Software": None})
    elif suffix == ".svg":
        fig.savefig(path, format="svg", metadata={"Date": None})
    else:
        title = "kvmtrace trend"
        table = html_table(frame) if frame is not None else "<p>(no table: save_trend was given only a figure)</p>"
        doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
               f"<style>{_CSS}</style></head><body>\n<h1>{title}</h1>\n{_svg(fig)}\n"
               f"<h2>Rates per run (exits/s)</h2>\n{table}\n</body></html>\n")
        path.write_text(doc, encoding="utf-8")
    return path
