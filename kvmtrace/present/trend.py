"""The trend graph and page behind `kvmtrace trend ... -o graph.png|.svg|.html`.

:func:`kvmtrace.analysis.trend.trend_frame` computes the rates, the baseline
band and the flagged runs; this module draws them. Plots use matplotlib's
object API with the Agg canvas (never pyplot): no display is needed and
nothing global changes.
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

from kvmtrace.analysis.compare import DIMENSIONS, RateTableError
from kvmtrace.analysis.trend import TITLES, Y_LABELS


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
