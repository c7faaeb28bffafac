"""Log2 histograms of a run-loop latency: VMM service time or exit handling time, per group."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib import colormaps, ticker
from matplotlib.figure import Figure

from kvmtrace.analysis.requirements import missing_events, require_events
from kvmtrace.kernel.events import NO_VCPU, EventKind
from kvmtrace.present.plots.common import (
    P50_COLOUR,
    P99_COLOUR,
    _colour,
    _compact,
    _figure,
    _palette,
    _trace_name,
    _us,
)

__all__ = ["LATENCY_AXES", "LATENCY_TITLES", "plot_latency_hist"]

LATENCY_TITLES = {
    "vmm_service": "VMM service time (userspace exit \u2192 next KVM_RUN)",
    "exit_handling": "Exit handling time (kvm_exit \u2192 kvm_entry)",
}
LATENCY_AXES = {
    "vmm_service": "VMM service time (\u00b5s, log scale)",
    "exit_handling": "exit handling time (\u00b5s, log scale)",
}
#: The events each latency is measured between.
LATENCY_EVENTS = {
    "vmm_service": [EventKind.USERSPACE_EXIT, EventKind.RUN],
    "exit_handling": [EventKind.EXIT, EventKind.ENTRY],
}


def _latency_frame(trace, which: str) -> tuple[pd.DataFrame, str]:
    """The per-exit frame and its duration column, with ``reason`` names."""
    if which not in LATENCY_EVENTS:
        raise ValueError(f"which must be 'vmm_service' or 'exit_handling', not {which!r}")
    analysis = f"plot_latency_hist({which!r})"
    needed = LATENCY_EVENTS[which]
    if which == "vmm_service":
        require_events(trace, needed, analysis)
        frame = trace.df_userspace_exits()
        if not len(frame):  # only "restart" userspace exits
            raise missing_events(trace, [EventKind.USERSPACE_EXIT], analysis)
        if not (frame["service_ns"] >= 0).any():  # no KVM_RUN of the exits' threads
            raise missing_events(trace, [EventKind.RUN], analysis)
        return frame, "service_ns"
    require_events(trace, needed, analysis, instead="the vmm_service histograms need only kvm_userspace_exit "
                                                    "and KVM_RUN")
    frame = trace.df_exits()
    if not (frame["handling_ns"] >= 0).any():  # no kvm_entry after any kvm_exit
        raise missing_events(trace, [EventKind.ENTRY], analysis)
    names = trace.names
    isa = frame["isa"].astype(str).to_numpy()
    code = frame["code"].to_numpy()
    pairs = pd.MultiIndex.from_arrays([isa, code])
    inv, uniq = pairs.factorize()
    labels = np.array([names.hw(i, int(c)) for i, c in uniq], dtype=object)
    frame = frame.assign(reason=pd.Categorical(labels[inv].astype(str)))
    return frame, "handling_ns"


def _group_labels(trace, frame: pd.DataFrame, by: str | None, which: str) -> np.ndarray:
    """A text label per row: its group of ``by``."""
    n = len(frame)
    if not by:
        return np.full(n, "all exits", dtype=object)
    reason = frame["reason"].astype(str).to_numpy()
    if by == "device":
        if which == "vmm_service":
            dev = frame["device"].astype(str).to_numpy()
        else:
            dev = np.full(n, "", dtype=object)
            pio = (frame["access"] == "pio").to_numpy()
            mm = (frame["access"] == "mmio").to_numpy()
            if pio.any():
                dev[pio] = np.asarray(trace.device_map.name_ports(frame.loc[pio, "port"].to_numpy()), dtype=str)
            if mm.any():
                dev[mm] = np.asarray(trace.device_map.name_gpas(frame.loc[mm, "gpa"].to_numpy()), dtype=str)
        dev = dev.astype(object)
        none = dev == ""
        dev[none] = "(" + reason[none].astype(object) + ", no device)"
        return dev
    if by not in frame.columns:
        choices = ["device", *[c for c in ("reason", "isa", "direction", "port", "gpa", "vcpu", "handled", "access")
                               if c in frame.columns]]
        raise ValueError(f"by={by!r} is not a column of the {which} frame: use one of {', '.join(choices)}")
    col = frame[by]
    if by == "port":
        return np.array([f"port {int(p):#06x}" for p in col.to_numpy()], dtype=object)
    if by == "gpa":
        return np.array([f"{int(g):#x}" for g in col.to_numpy()], dtype=object)
    if by == "vcpu":
        return np.array([f"vCPU {int(v)}" if int(v) != NO_VCPU else "vCPU ?" for v in col.to_numpy()],
                        dtype=object)
    out = col.astype(str).to_numpy().astype(object)
    out[out == ""] = "(none)"
    return out


def plot_latency_hist(trace, which: str = "vmm_service", by: str | None = "device", max_groups: int = 6) -> Figure:
    """Log2 histograms of a run-loop latency, one panel per group of ``by``.

    ``which``: "vmm_service" (userspace exit -> the thread's next KVM_RUN)
    or "exit_handling" (kvm_exit -> kvm_entry). ``by``: "device" (the device
    of the port or MMIO access; other exits are grouped by reason), any
    column of Trace.df_userspace_exits / df_exits ("reason", "direction",
    "port", "vcpu", ...), or None for one panel. The ``max_groups`` groups
    with the most exits get a panel each; the rest share an "other" panel.

    Bars are bcc-style log2 buckets ([2**(k-1), 2**k - 1] ns) drawn on a log
    x axis in microseconds; y is the number of exits per bucket (log scale,
    so the tail shows). Each panel marks its exact p50 and p99 (numpy's
    linear percentiles, as Trace.df_latency). Unpaired exits (no partner at
    the recording's edges) are left out and counted in the subtitle.
    """
    from kvmtrace.analysis.latency import latency_stats, log2_histograms

    frame, col = _latency_frame(trace, which)
    labels = _group_labels(trace, frame, by, which)
    values = frame[col].to_numpy(np.int64)
    ok = values >= 0
    unpaired = int((~ok).sum())
    sizes = pd.Series(labels[ok]).value_counts(sort=True)
    groups = [str(g) for g in sizes.index]
    if len(groups) > max_groups:
        keep = set(groups[:max_groups - 1])
        other = f"other ({len(groups) - max_groups + 1} groups)"
        labels = np.where(pd.Series(labels).isin(keep).to_numpy(), labels, other)
        groups = groups[:max_groups - 1] + [other]
    # A group whose every exit is unpaired (an exit that ended the guest) has nothing to draw.
    lab = labels.astype(str)
    drawn = np.isin(lab, groups)
    data = pd.DataFrame({"group": pd.Categorical(lab[drawn], categories=groups), "ns": values[drawn]})
    hist = log2_histograms(data, "ns", ["group"])
    stats = latency_stats(data, "ns", ["group"], percentiles=(50, 99)).set_index("group")
    palette = _palette(trace, "device") if by == "device" else {}

    lo_us = max(float(hist["lower"].clip(lower=1).min()) / 1e3 / 1.5, 1e-3)
    hi_us = float(hist["upper"].max() + 1) / 1e3 * 1.5
    n = len(groups)
    fig = _figure(10, 1.25 + 1.85 * n)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    for i, (ax, g) in enumerate(zip(axes, groups)):
        h = hist[hist["group"].astype(str) == g]
        lower = h["lower"].to_numpy(float)
        lower = np.where(lower > 0, lower, 0.5)  # slot 0 (0 ns) has no place on a log axis: draw it below 1 ns
        upper = h["upper"].to_numpy(float) + 1
        colour = _colour(palette, g, i) if by == "device" else colormaps["tab10"](i % 10)
        ax.bar(lower / 1e3, h["count"].to_numpy(), width=(upper - lower) / 1e3, align="edge", color=colour,
               edgecolor="white", linewidth=0.6, label="exits per log2 bucket")
        st = stats.loc[g]
        for q, colour_q, ls in (("p50", P50_COLOUR, "--"), ("p99", P99_COLOUR, ":")):
            if not math.isnan(st[q]):
                ax.axvline(max(st[q], 0.5) / 1e3, color=colour_q, ls=ls, lw=1.6, label=f"{q} {_us(st[q])}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(0.7, max(float(h["count"].max()), 1) * 3)
        ax.set_xlim(lo_us, hi_us)
        ax.set_title(f"{g}: {int(st['count']):,} exits, max {_us(st['max'])}", loc="left", fontsize=10,
                     fontweight="bold")
        ax.set_ylabel("exits\n(log scale)")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _compact(v)))
        ax.legend(loc="upper right", fontsize=8.5, frameon=True, framealpha=0.9)
        ax.grid(True, axis="x", which="major", color="0.88", lw=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    if math.log10(hi_us / lo_us) <= 4:  # a narrow range: label 1-2-5 steps, not just the decades
        axes[-1].xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes[-1].xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axes[-1].set_xlabel(LATENCY_AXES[which] + "; bars are log2 buckets of ns")
    by_text = f", by {by}" if by else ""
    fig.suptitle(f"{LATENCY_TITLES[which]}{by_text}", x=0.01, ha="left", fontsize=12, fontweight="bold")
    edge = f"; {unpaired:,} unpaired at the recording's edges left out" if unpaired else ""
    # Under the x label, left-aligned with the axes; an axes child, so the layout makes room for it.
    axes[-1].annotate(f"{_trace_name(trace)}{edge}", xy=(0, 0), xycoords=("axes fraction", axes[-1].xaxis.label),
                      xytext=(0, -4), textcoords="offset points", ha="left", va="top", fontsize=8.5, color="0.35")
    fig.get_layout_engine().set(h_pad=0.06)
    return fig

