"""Exits per second over time, one line per key of a dimension (device, port, exit reason...)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure

from kvmtrace.analysis.requirements import missing_events, require_events
from kvmtrace.kernel.events import EventKind
from kvmtrace.present.plots.common import (
    DEFAULT_WINDOW,
    _colour,
    _compact,
    _crop,
    _figure,
    _fold_windows,
    _palette,
    _recording_mean,
    _subtitle,
    _time_axis,
    _trace_name,
    window_label,
    window_seconds,
)

__all__ = ["RATE_EVENTS", "RATE_TITLES", "plot_rates"]

#: Events each dimension of Trace.df_rates is counted from (any one of them will do).
RATE_EVENTS = {
    "device": [EventKind.PIO, EventKind.MMIO],
    "port": [EventKind.PIO],
    "mmio": [EventKind.MMIO],
    "exit": [EventKind.EXIT],
    "userspace_exit": [EventKind.USERSPACE_EXIT],
    "vcpu": [EventKind.EXIT, EventKind.USERSPACE_EXIT],
}
RATE_TITLES = {
    "device": "Exit rate by device (port I/O and MMIO)",
    "port": "Port I/O exit rate by port and direction",
    "mmio": "MMIO exit rate by address and direction",
    "exit": "VM exit rate by exit reason (kvm_exit)",
    "userspace_exit": "Userspace exit rate by KVM_EXIT reason",
    "vcpu": "Exit rate by vCPU",
}


def _rate_table(trace, by: str, freq) -> tuple[pd.DataFrame, np.ndarray, float]:
    """Exits/s per window (rows) and key (columns), the windows' edges (s) and the window length."""
    window = window_seconds(freq)
    table = trace.df_rates(window, by)
    if not len(table) or not table.shape[1]:
        return table, np.zeros(1), window
    counts, edges = _fold_windows(table.to_numpy() * window, window, float(trace.duration_s))
    return pd.DataFrame(counts / np.diff(edges)[:, None], columns=[str(c) for c in table.columns]), edges, window


def plot_rates(trace, by: str = "device", freq: str | float = DEFAULT_WINDOW, max_series: int = 10,
               log: bool = False, time_range: tuple[float, float] | None = None) -> Figure:
    """Exits per second over time, one line per key of ``by``.

    ``by``: "device", "port", "mmio", "exit", "userspace_exit" or "vcpu" (the
    dimensions of Trace.df_rates); ``freq``: window length ("250ms", "1s" or
    seconds). Each line is a step per window (the window's mean rate; the
    last window ends with the recording, and joins the one before when it
    would cover under half a window). The ``max_series`` busiest keys get their
    own line; the rest are summed into one "other" line. The legend gives
    each line's mean rate over the whole recording (count / duration), zoomed in or not. x: seconds since the
    recording started (``time_range``: only the windows overlapping
    [t0, t1) s, to zoom in, with ticks in ms or µs after the first of them); y: exits per second (``log``: log scale).
    Raises MissingTraceEventError on a counts-mode recording or when the
    trace has no events of ``by``.
    """
    if by not in RATE_EVENTS:
        raise ValueError(f"by must be one of {', '.join(RATE_EVENTS)}, not {by!r}")
    analysis = f"plot_rates(by={by!r})"
    require_events(trace, RATE_EVENTS[by], analysis, any_of=True)
    table, edges, window = _rate_table(trace, by, freq)
    if table.shape[1] == 0 or not table.to_numpy().any():  # e.g. only "restart" userspace exits
        raise missing_events(trace, RATE_EVENTS[by], analysis, any_of=True)
    # The legend's mean is over the whole recording, zoomed in or not: count / duration.
    full = table.mul(np.diff(edges), axis=0)
    if time_range is not None:
        first, last = _crop(trace, edges, time_range)
        table, edges = table.iloc[first:last + 1], edges[first:last + 2]
    totals = table.sum().sort_values(ascending=False, kind="stable")
    keys = [str(k) for k in totals.index]
    if len(keys) > max_series:
        shown, rest = keys[:max_series - 1], keys[max_series - 1:]
    else:
        shown, rest = keys, []
    palette = _palette(trace, by)

    fig = _figure(10, 5.2)
    ax = fig.add_subplot()
    ymax = 0.0
    dur = float(trace.duration_s)
    series = [(k, table[k].to_numpy(), _recording_mean(full[k].to_numpy(), dur), _colour(palette, k, i), "-")
              for i, k in enumerate(shown)]
    if rest:
        series.append((f"other ({len(rest)} keys)", table[rest].sum(axis=1).to_numpy(),
                       _recording_mean(full[rest].to_numpy(), dur), "0.55", "--"))
    over = " over the recording" if time_range is not None else ""
    for key, v, mean, colour, ls in series:
        ax.plot(edges, np.append(v, v[-1]), drawstyle="steps-post", color=colour, ls=ls, lw=1.8,
                label=f"{key}  (mean {_compact(mean)}/s{over})")
        ymax = max(ymax, float(v.max()))
    ax.set_xlim(edges[0], edges[-1])
    ax.xaxis.set_major_locator(ticker.MaxNLocator(8, steps=[1, 2, 2.5, 5, 10]))
    if log:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, ymax * 1.1 if ymax > 0 else 1)
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    _time_axis(ax, edges, time_range is not None)
    ax.set_ylabel("exits per second (exits/s)" + (", log scale" if log else ""))
    ax.set_title(f"{RATE_TITLES[by]}, {window_label(window)} windows", loc="left", fontsize=12,
                 fontweight="bold")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=9, title=by,
              title_fontsize=9, frameon=False)
    ax.grid(True, color="0.88", lw=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    _subtitle(fig, _trace_name(trace))
    return fig

