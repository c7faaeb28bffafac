"""Exit rate per vCPU over time: a heat map, one row per vCPU, one cell per window."""

from __future__ import annotations

import math

import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from kvmtrace.analysis.requirements import missing_events, require_events
from kvmtrace.kernel.events import NO_VCPU, EventKind
from kvmtrace.present.plots.common import (
    DEFAULT_WINDOW,
    _compact,
    _crop,
    _figure,
    _fold_windows,
    _subtitle,
    _time_axis,
    _trace_name,
    window_label,
    window_seconds,
)

__all__ = ["plot_vcpu_heatmap"]

#: What the heat map counts: kvm_exit where it fired, else the userspace exits.
HEATMAP_EVENTS = (EventKind.EXIT, EventKind.USERSPACE_EXIT)


def _vcpu_counts(trace, window: float) -> tuple[np.ndarray, list[str], np.ndarray, str]:
    """Counts per (vCPU, window), row labels, window edges (s) and what was counted."""
    from kvmtrace.analysis.rates import vcpu_of

    ev = trace.events
    kind = ev["kind"].to_numpy()
    hw = kind == EventKind.EXIT
    ue = (kind == EventKind.USERSPACE_EXIT) & (ev["err"].to_numpy() >= 0)
    if hw.any():
        sel, what = hw, "VM exits (kvm_exit)"
    elif ue.any():
        sel, what = ue, "exits to userspace (kvm_userspace_exit; kvm_exit did not fire)"
    else:
        raise missing_events(trace, HEATMAP_EVENTS, "plot_vcpu_heatmap", any_of=True)
    sub = ev[sel]
    v = vcpu_of(sub, trace.vcpu_by_tid)
    v = np.where((v < 0) | (v == NO_VCPU), -1, v)
    w = (sub["ts_ns"].to_numpy(np.int64) - int(trace.start_ns)) // int(round(window * 1e9))
    keep = w >= 0
    v, w = v[keep], w[keep]
    n = max(int(math.ceil(float(trace.duration_s) / window - 1e-9)), int(w.max()) + 1 if len(w) else 1, 1)
    rows = sorted(set(v.tolist()), key=lambda x: (x < 0, x))
    pos = {r: i for i, r in enumerate(rows)}
    counts = np.zeros((len(rows), n), dtype=np.int64)
    if len(v):
        np.add.at(counts, (np.array([pos[x] for x in v.tolist()], dtype=np.int64), w), 1)
    labels = [f"vCPU {r}" if r >= 0 else "vCPU ?" for r in rows]
    counts, edges = _fold_windows(counts.T, window, float(trace.duration_s))
    return counts.T, labels, edges, what


def plot_vcpu_heatmap(trace, freq: str | float = DEFAULT_WINDOW, annotate: bool | None = None,
                      time_range: tuple[float, float] | None = None) -> Figure:
    """Exit rate per vCPU over time: one row per vCPU, one cell per window, colour = exits/s.

    Counts VM exits (kvm_exit) where the trace has them, else exits to
    userspace (kvm_userspace_exit) — never both, so an I/O exit is not
    counted twice. A vCPU comes from the event, else from the recorded vCPU
    threads; "vCPU ?" collects the rest. Windows (and ``time_range``) are
    as in plot_rates.
    Cells carry their rate as text when ``annotate`` (default: at most 20
    windows and 16 vCPUs, where the text fits). The colour bar is in exits
    per second. Raises MissingTraceEventError on a counts-mode recording or
    without exit events.
    """
    require_events(trace, HEATMAP_EVENTS, "plot_vcpu_heatmap", any_of=True)
    window = window_seconds(freq)
    counts, labels, edges, what = _vcpu_counts(trace, window)
    rate = counts / np.diff(edges)[None, :]
    if time_range is not None:
        first, last = _crop(trace, edges, time_range)
        rate, edges = rate[:, first:last + 1], edges[first:last + 2]
    n_rows, n_win = rate.shape
    row_h = 0.55 if n_rows <= 16 else max(0.12, 8.0 / n_rows)
    fig = _figure(10, 2.3 + row_h * n_rows)
    ax = fig.add_subplot()
    # Thin white gaps tell cells apart while there are few; with many they would stripe the map.
    gaps = n_win <= 40
    mesh = ax.pcolormesh(edges, np.arange(n_rows + 1) - 0.5, rate, cmap="viridis", vmin=0,
                         vmax=max(float(rate.max()), 1.0), shading="flat", edgecolors="white" if gaps else "face",
                         linewidth=0.3 if gaps else 0,
                         rasterized=n_rows * n_win > 4000)
    ax.set_ylim(n_rows - 0.5, -0.5)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(8, steps=[1, 2, 2.5, 5, 10]))
    ax.set_yticks(np.arange(n_rows), labels if n_rows <= 40 else None)
    if annotate is None:
        annotate = n_win <= 20 and n_rows <= 16
    if annotate:
        norm = mesh.norm
        cmap = mesh.get_cmap()
        for r in range(n_rows):
            for c in range(n_win):
                rgb = cmap(norm(rate[r, c]))[:3]
                light = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
                ax.text((edges[c] + edges[c + 1]) / 2, r, _compact(rate[r, c]), ha="center", va="center",
                        fontsize=7.5, color="black" if light > 0.5 else "white")
    cbar = fig.colorbar(mesh, ax=ax, pad=0.01, aspect=max(4, 12 * min(n_rows, 4) / 4))
    cbar.set_label("exits per second\n(exits/s)", fontsize=9)
    cbar.ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _compact(v)))
    cbar.ax.yaxis.set_major_locator(ticker.MaxNLocator(4))
    _time_axis(ax, edges, time_range is not None)
    ax.set_ylabel("vCPU")
    ax.set_title(f"Exit rate per vCPU over time, {window_label(window)} windows", loc="left", fontsize=12,
                 fontweight="bold")
    _subtitle(fig, f"{_trace_name(trace)}; counted: {what}")
    return fig
