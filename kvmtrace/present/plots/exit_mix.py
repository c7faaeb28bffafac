"""The exit mix: what the guest exited for, as horizontal bars of exits and of I/O by device."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure

from kvmtrace.analysis.requirements import missing_events
from kvmtrace.kernel.events import EventKind
from kvmtrace.present.plots.common import (
    KERNEL_COLOUR,
    UNKNOWN_COLOUR,
    VMM_COLOUR,
    _compact,
    _figure,
    _subtitle,
    _trace_name,
)

__all__ = ["plot_exit_mix"]

#: What plot_exit_mix draws from: any one of these will do.
EXIT_MIX_EVENTS = (EventKind.USERSPACE_EXIT, EventKind.EXIT, EventKind.PIO, EventKind.MMIO)


def _io_by_device(trace) -> pd.DataFrame:
    """Port and MMIO accesses per device: label, kernel, vmm, unknown, total (int64)."""
    s = trace.summary
    dm = trace.device_map
    parts = []
    for frame, space, names in ((s.pio, "PIO", dm.name_ports), (s.mmio, "MMIO", dm.name_gpas)):
        if not len(frame):
            continue
        key = frame["port"] if space == "PIO" else frame["gpa"]
        dev = np.asarray(names(key.to_numpy(np.uint64 if space == "MMIO" else np.uint32)), dtype=str)
        parts.append(pd.DataFrame({"device": dev, "space": space, "userspace": frame["userspace"].to_numpy(bool),
                                   "count": frame["count"].to_numpy(np.int64)}))
    cols = ["label", "kernel", "vmm", "unknown", "total"]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c != "label" else "str") for c in cols})
    df = pd.concat(parts, ignore_index=True)
    known = s.userspace_fields_known
    df["who"] = np.where(df["userspace"], "vmm", "kernel" if known else "unknown")
    df["label"] = df["device"] + " (" + df["space"] + ")"
    t = df.pivot_table(index="label", columns="who", values="count", aggfunc="sum", fill_value=0)
    t = t.reindex(columns=["kernel", "vmm", "unknown"], fill_value=0).astype("int64")
    t["total"] = t.sum(axis=1)
    t = t.sort_values("total", ascending=False, kind="stable").reset_index()
    return t[cols]


def _hbar_panel(ax, labels: list[str], segments: list[tuple[str, np.ndarray, str]], duration_s: float,
                title: str, xlabel: str) -> None:
    """Horizontal (stacked) bars, biggest at the top, each labelled with its count and rate."""
    y = np.arange(len(labels))[::-1]
    left = np.zeros(len(labels))
    for name, values, colour in segments:
        values = np.asarray(values, dtype=float)
        if not values.any():
            continue
        ax.barh(y, values, left=left, color=colour, label=name, height=0.65, edgecolor="white", linewidth=0.5)
        left += values
    peak = float(left.max()) if len(left) else 0.0
    for yi, total in zip(y, left):
        rate = f"{total / duration_s:,.0f}/s" if duration_s > 0 else "-/s"
        ax.text(total + peak * 0.01, yi, f"{total:,.0f}  ({rate})", va="center", ha="left", fontsize=8.5)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, peak * 1.42 if peak > 0 else 1)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _compact(v)))
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ax.set_xlabel(xlabel)
    ax.grid(True, axis="x", color="0.88", lw=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def plot_exit_mix(trace, max_reasons: int = 12) -> Figure:
    """What the guest exited for: horizontal bars of exits and of I/O by device.

    Panels (each drawn when the trace has its events): userspace exits by
    KVM_EXIT reason; hardware exits (kvm_exit) by reason, the ``max_reasons``
    most frequent; port I/O and MMIO accesses by device, each bar stacked
    into handled in the kernel (KVM's in-kernel devices) and by the VMM
    (returned to userspace). Bars are labelled with their count over the
    recording and their rate (per second). Works on counts-mode recordings.
    Raises MissingTraceEventError when the trace holds none of these events.
    """
    s = trace.summary
    dur = float(trace.duration_s)
    io_dev = _io_by_device(trace)
    ue, hw = s.userspace_exits, s.exits
    if not len(ue) and not len(hw) and not len(io_dev):
        raise missing_events(trace, EXIT_MIX_EVENTS, "plot_exit_mix", any_of=True)
    panels = []
    if len(ue):
        panels.append("userspace")
    if len(hw):
        panels.append("hardware")
    if len(io_dev):
        panels.append("io")

    hw_rows = None
    if len(hw):
        hw_l = (hw["isa"].astype(str) + " " + hw["reason"].astype(str)
                + np.where(hw["flags"].astype(str) != "", " [" + hw["flags"].astype(str) + "]", ""))
        hw_rows = pd.DataFrame({"label": hw_l, "count": hw["count"].astype("int64")})
        hw_rows = hw_rows.groupby("label", sort=False)["count"].sum().sort_values(ascending=False, kind="stable")
        if len(hw_rows) > max_reasons:
            rest = hw_rows.iloc[max_reasons - 1:]
            hw_rows = pd.concat([hw_rows.iloc[:max_reasons - 1],
                                 pd.Series({f"other ({len(rest)} reasons)": int(rest.sum())})])

    sizes = {"userspace": len(ue), "hardware": len(hw_rows) if hw_rows is not None else 0, "io": len(io_dev)}
    heights = [max(sizes[p], 1) * 0.42 + 1.0 for p in panels]
    fig = _figure(10, sum(heights) + 0.7)
    axes = fig.subplots(len(panels), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    for ax, p in zip(axes, panels):
        if p == "userspace":
            _hbar_panel(ax, list(ue["reason"].astype(str)), [("VMM (userspace)", ue["count"].to_numpy(), VMM_COLOUR)],
                        dur, "Userspace exits (KVM_RUN returning to the VMM), by KVM_EXIT reason",
                        "exits (count over the recording; rate per second at the bar's end)")
        elif p == "hardware":
            _hbar_panel(ax, list(hw_rows.index), [("kvm_exit", hw_rows.to_numpy(), "#6b6b9a")], dur,
                        "Hardware VM exits (kvm_exit), by exit reason",
                        "exits (count over the recording; rate per second at the bar's end)")
        else:
            _hbar_panel(ax, list(io_dev["label"]),
                        [("handled in the kernel (KVM)", io_dev["kernel"].to_numpy(), KERNEL_COLOUR),
                         ("handled by the VMM (userspace)", io_dev["vmm"].to_numpy(), VMM_COLOUR),
                         ("handler unknown (kvm_run not read)", io_dev["unknown"].to_numpy(), UNKNOWN_COLOUR)],
                        dur, "Port I/O and MMIO accesses by device, kernel vs VMM",
                        "accesses (count over the recording; rate per second at the bar's end)")
            ax.legend(loc="lower right", fontsize=8.5, frameon=True, framealpha=0.9)
    note = "" if len(hw) else "; no kvm_exit events (hardware exits not shown)"
    _subtitle(fig, f"Exit mix of {_trace_name(trace)}{note}")
    return fig

