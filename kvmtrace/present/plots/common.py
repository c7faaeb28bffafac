"""What every figure shares: the canvas, windows, palettes, number formats, SVG output.

Figures are built on the Agg canvas with matplotlib's object API, never pyplot:
no display is needed and nothing global changes.
"""

from __future__ import annotations

import io
import re
import weakref

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: Window of the time-series figures when none is given.
DEFAULT_WINDOW = "250ms"

#: Who handled an access: the kernel (KVM's in-kernel devices) or the VMM (KVM_RUN returned to it).
KERNEL_COLOUR = "#4878a8"
VMM_COLOUR = "#e08a3c"
UNKNOWN_COLOUR = "#9a9a9a"
P50_COLOUR = "#222222"
P99_COLOUR = "#c0392b"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def window_seconds(freq: str | float) -> float:
    """A window given as "250ms", "1s" or seconds, in seconds."""
    w = pd.Timedelta(freq).total_seconds() if isinstance(freq, str) else float(freq)
    if not w > 0:
        raise ValueError(f"freq must be a positive window (e.g. '250ms' or 0.25), not {freq!r}")
    return w


def window_label(window_s: float) -> str:
    """0.25 -> "250 ms", 2 -> "2 s"."""
    if window_s < 1e-3:
        return f"{window_s * 1e6:.3g} \u00b5s"
    return f"{window_s * 1e3:.3g} ms" if window_s < 1 else f"{window_s:g} s"


def _coverage(n: int, window_s: float, duration_s: float) -> np.ndarray:
    """Seconds of the recording each of ``n`` windows covers (the last one may be partial)."""
    starts = np.arange(n) * window_s
    if duration_s <= 0:
        return np.full(n, window_s)
    cover = np.clip(duration_s - starts, 0.0, window_s)
    return np.where(cover > 0, cover, window_s)


def _fold_windows(counts: np.ndarray, window_s: float, duration_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Counts per window (rows) and the windows' edges in s; the last window ends with the recording.

    A last window covering under half a window joins the one before it:
    alone, its rate would be noise; dropped, its events would be lost.
    """
    n = counts.shape[0]
    cover = _coverage(n, window_s, duration_s)
    edges = np.append(np.arange(n) * window_s, (n - 1) * window_s + cover[-1])
    if n > 1 and cover[-1] < 0.5 * window_s:
        counts = np.concatenate([counts[:-2], counts[-2:].sum(axis=0, keepdims=True)])
        edges = np.delete(edges, -2)
    return counts, edges


def _in_range(edges: np.ndarray, time_range: tuple[float, float]) -> np.ndarray:
    """Windows (between ``edges``) overlapping [t0, t1)."""
    t0, t1 = (float(x) for x in time_range)
    if not t1 > t0:
        raise ValueError(f"time_range must be (start, end) with end > start, not {time_range!r}")
    return (edges[1:] > t0) & (edges[:-1] < t1)


def _crop(trace, edges: np.ndarray, time_range: tuple[float, float]) -> tuple[int, int]:
    """First and last window overlapping ``time_range``."""
    keep = _in_range(edges, time_range)
    if not keep.any():
        raise ValueError(f"time_range {time_range} holds no window of this {trace.duration_s:.3f} s recording")
    first, last = np.flatnonzero(keep)[[0, -1]]
    return int(first), int(last)


def _time_axis(ax, edges: np.ndarray, zoomed: bool) -> None:
    """x: seconds since the recording started; zoomed in, a unit that fits the zoom, counted from
    its first window (``12.300 s`` + ``0, 0.5, 1 ms``, not ``12.3000, 12.3005``)."""
    from matplotlib import ticker

    if not zoomed:
        ax.set_xlabel("seconds since start (s)")
        return
    t0 = float(edges[0])
    width = float(edges[-1]) - t0
    scale, unit = (1e6, "µs") if width < 2e-3 else (1e3, "ms") if width < 2 else (1.0, "s")
    rel = ticker.MaxNLocator(8, steps=[1, 2, 2.5, 5, 10]).tick_values(0, width * scale)
    rel = rel[(rel >= 0) & (rel <= width * scale * (1 + 1e-9))]
    ax.xaxis.set_major_locator(ticker.FixedLocator(t0 + rel / scale))  # round numbers after t0
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{(v - t0) * scale:,.6g}"))
    ax.set_xlabel(f"{unit} after {t0:.6g} s since start (zoomed in)")


def _recording_mean(counts: np.ndarray, duration_s: float) -> float:
    """Exits per second over the whole recording: every window's count over its duration."""
    return float(np.sum(counts)) / duration_s if duration_s > 0 else float("nan")


def _compact(x: float) -> str:
    """1234567 -> "1.23M", 36816 -> "36.8k", 12.3 -> "12.3"."""
    a = abs(x)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            v = x / div
            return f"{v:.3g}{suffix}" if v < 100 else f"{v:.0f}{suffix}"
    return f"{x:.3g}" if a >= 1 else (f"{x:.2g}" if a else "0")


def _us(ns: float) -> str:
    us = ns / 1e3
    return f"{us:,.0f} \u00b5s" if us >= 100 else f"{us:.3g} \u00b5s"


_PALETTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _palette(trace, dimension: str) -> dict[str, str]:
    """A colour per key of ``dimension`` (most frequent first), stable across one trace's figures."""
    cache = _PALETTES.setdefault(trace, {})
    if dimension not in cache:
        k = trace.keyed
        sub = k[k["dimension"] == dimension]
        order = sub.groupby(sub["key"].astype(str))["w"].sum().sort_values(ascending=False, kind="stable")
        colours = [colormaps["tab10"](i % 10) for i in range(10)]
        cache[dimension] = {key: colours[i % 10] for i, key in enumerate(order.index)}
    return cache[dimension]


def _colour(palette: dict, key: str, i: int):
    return palette.get(key, colormaps["tab10"]((len(palette) + i) % 10))


def _subtitle(fig: Figure, text: str) -> None:
    fig.suptitle(text, x=0.01, ha="left", fontsize=9, color="0.35")


def _trace_name(trace) -> str:
    dom = ", ".join(str(d.get("name")) for d in trace.domains) or "?"
    return f"{trace.label} (domain {dom}, {trace.duration_s:.2f} s)"


def figure_svg(fig: Figure) -> str:
    """The figure as an ``<svg>`` element for inlining in HTML: no prolog, no metadata, no URLs.

    HTML's parser puts inline ``<svg>`` in the SVG namespace and understands
    ``xlink:href`` by itself, so the namespace declarations (URLs) go; so do
    the XML prolog, the DOCTYPE and the RDF metadata (matplotlib's own URL).
    """
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)
    head_end = text.index(">")
    head = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text[:head_end])
    return head + text[head_end:]


def legend_labels(ax) -> list[str]:
    """The texts of an axes' legend ([] without one); for tests and callers checking a figure."""
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg is not None else []

