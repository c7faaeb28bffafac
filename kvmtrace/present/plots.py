"""Figures of a trace for people: the exit mix, rates over time, latency histograms, a vCPU heat map.

Every ``plot_*`` function takes a :class:`~kvmtrace.trace.Trace` and returns a
matplotlib :class:`~matplotlib.figure.Figure` drawn on the Agg canvas, built
with the object API (never pyplot): no display is needed, nothing global
changes, and the caller saves it (``fig.savefig("x.png")``, or
:func:`figure_svg` for a standalone-HTML-ready SVG).

Each figure has a title, axis labels with units, and a legend where it draws
more than one series. Where a trace lacks what a figure needs, the function
raises :class:`~kvmtrace.errors.MissingTraceEventError` naming the events:

==================== =========================================================
figure               needs
==================== =========================================================
plot_exit_mix        any of kvm_userspace_exit, kvm_exit, kvm_pio, kvm_mmio
                     (works on counts-mode recordings too)
plot_rates           per-event records (not ``record --mode counts``) and the
                     events of ``by`` (device: kvm_pio/kvm_mmio, exit:
                     kvm_exit, ...)
plot_latency_hist    per-event records; vmm_service: kvm_userspace_exit and
                     KVM_RUN (sys_enter_ioctl); exit_handling: kvm_exit and
                     kvm_entry
plot_vcpu_heatmap    per-event records with kvm_exit or kvm_userspace_exit
==================== =========================================================

Device colours are the same in every figure of one trace (a device keeps its
colour between the rates and the latency histograms).
"""

from __future__ import annotations

import io
import math
import re
import weakref

import numpy as np
import pandas as pd
from matplotlib import colormaps, ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kvmtrace.errors import MissingTraceEventError

__all__ = [
    "DEFAULT_WINDOW",
    "figure_svg",
    "legend_labels",
    "plot_exit_mix",
    "plot_latency_hist",
    "plot_rates",
    "plot_vcpu_heatmap",
    "window_label",
    "window_seconds",
]

#: Window of the time-series figures when none is given.
DEFAULT_WINDOW = "250ms"

#: Who handled an access: the kernel (KVM's in-kernel devices) or the VMM (KVM_RUN returned to it).
KERNEL_COLOUR = "#4878a8"
VMM_COLOUR = "#e08a3c"
UNKNOWN_COLOUR = "#9a9a9a"
P50_COLOUR = "#222222"
P99_COLOUR = "#c0392b"

#: Events each dimension of Trace.df_rates is counted from.
RATE_EVENTS = {
    "device": ["kvm:kvm_pio", "kvm:kvm_mmio"],
    "port": ["kvm:kvm_pio"],
    "mmio": ["kvm:kvm_mmio"],
    "exit": ["kvm:kvm_exit"],
    "userspace_exit": ["kvm:kvm_userspace_exit"],
    "vcpu": ["kvm:kvm_exit", "kvm:kvm_userspace_exit"],
}
RATE_TITLES = {
    "device": "Exit rate by device (port I/O and MMIO)",
    "port": "Port I/O exit rate by port and direction",
    "mmio": "MMIO exit rate by address and direction",
    "exit": "VM exit rate by exit reason (kvm_exit)",
    "userspace_exit": "Userspace exit rate by KVM_EXIT reason",
    "vcpu": "Exit rate by vCPU",
}
LATENCY_TITLES = {
    "vmm_service": "VMM service time (userspace exit \u2192 next KVM_RUN)",
    "exit_handling": "Exit handling time (kvm_exit \u2192 kvm_entry)",
}
LATENCY_AXES = {
    "vmm_service": "VMM service time (\u00b5s, log scale)",
    "exit_handling": "exit handling time (\u00b5s, log scale)",
}


# ----------------------------------------------------------------- helpers

def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _missing(trace, needed: list[str], analysis: str, fix: str | None = None) -> MissingTraceEventError:
    """The error for events this trace lacks, with a fix that fits how it was recorded."""
    err = MissingTraceEventError(needed, analysis)
    if fix is not None:
        err.fix = fix
        return err
    probes = set(trace.header.get("probes", []))
    short = [n.split(":")[-1].split(" ")[0] for n in needed]
    if probes and all(s in probes for s in short):
        nested = (" (on nested hosts kvm_exit and kvm_entry never do)"
                  if {"kvm_exit", "kvm_entry"} & set(short) else "")
        err.fix = f"they were probed but did not fire during the recording{nested}; record on a host where they fire"
    elif probes:
        err.fix = "record again with these tracepoints (kvmtrace record attaches them where the kernel has them)"
    return err


def _need_event_records(trace, analysis: str) -> None:
    """Refuse a counts-mode recording: it keeps totals per interval, not each event's time."""
    if trace.header.get("mode") == "counts":
        raise _missing(trace, ["per-event records (record --mode events)"], analysis,
                       "this is a counts-mode recording (record --mode counts), which keeps totals, not each "
                       "event; plot_exit_mix works on it, or record again with --mode events")


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


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


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


# --------------------------------------------------------------- exit mix

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
        raise _missing(trace, ["kvm:kvm_userspace_exit", "kvm:kvm_exit", "kvm:kvm_pio", "kvm:kvm_mmio"],
                       "plot_exit_mix")
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


# ------------------------------------------------------------------ rates

def _rate_table(trace, by: str, freq) -> tuple[pd.DataFrame, np.ndarray, float]:
    """Exits/s per window (rows) and key (columns), the windows' edges (s) and the window length."""
    window = window_seconds(freq)
    table = trace.df_rates(window, by)
    if not len(table) or not table.shape[1]:
        return table, np.zeros(1), window
    counts, edges = _fold_windows(table.to_numpy() * window, window, float(trace.duration_s))
    return pd.DataFrame(counts / np.diff(edges)[:, None], columns=[str(c) for c in table.columns]), edges, window


def _crop(trace, edges: np.ndarray, time_range: tuple[float, float]) -> tuple[int, int]:
    """First and last window overlapping ``time_range``."""
    keep = _in_range(edges, time_range)
    if not keep.any():
        raise ValueError(f"time_range {time_range} holds no window of this {trace.duration_s:.3f} s recording")
    first, last = np.flatnonzero(keep)[[0, -1]]
    return int(first), int(last)


def plot_rates(trace, by: str = "device", freq: str | float = DEFAULT_WINDOW, max_series: int = 10,
               log: bool = False, time_range: tuple[float, float] | None = None) -> Figure:
    """Exits per second over time, one line per key of ``by``.

    ``by``: "device", "port", "mmio", "exit", "userspace_exit" or "vcpu" (the
    dimensions of Trace.df_rates); ``freq``: window length ("250ms", "1s" or
    seconds). Each line is a step per window (the window's mean rate; the
    last window ends with the recording, and joins the one before when it
    would cover under half a window). The ``max_series`` busiest keys get their
    own line; the rest are summed into one "other" line. The legend gives
    each line's mean rate over the windows shown. x: seconds since the
    recording started (``time_range``: only the windows overlapping
    [t0, t1) s, to zoom in); y: exits per second (``log``: log scale).
    Raises MissingTraceEventError on a counts-mode recording or when the
    trace has no events of ``by``.
    """
    if by not in RATE_EVENTS:
        raise ValueError(f"by must be one of {', '.join(RATE_EVENTS)}, not {by!r}")
    analysis = f"plot_rates(by={by!r})"
    _need_event_records(trace, analysis)
    table, edges, window = _rate_table(trace, by, freq)
    if table.shape[1] == 0 or not table.to_numpy().any():
        raise _missing(trace, RATE_EVENTS[by], analysis)
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
    series = [(k, table[k].to_numpy(), _colour(palette, k, i), "-") for i, k in enumerate(shown)]
    if rest:
        series.append((f"other ({len(rest)} keys)", table[rest].sum(axis=1).to_numpy(), "0.55", "--"))
    for key, v, colour, ls in series:
        mean = v.mean()
        ax.plot(edges, np.append(v, v[-1]), drawstyle="steps-post", color=colour, ls=ls, lw=1.8,
                label=f"{key}  (mean {_compact(mean)}/s)")  # mean over the windows shown
        ymax = max(ymax, float(v.max()))
    ax.set_xlim(edges[0], edges[-1])
    ax.xaxis.set_major_locator(ticker.MaxNLocator(8, steps=[1, 2, 2.5, 5, 10]))
    if log:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, ymax * 1.1 if ymax > 0 else 1)
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.set_xlabel("seconds since start (s)")
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


# ---------------------------------------------------------------- latency

def _latency_frame(trace, which: str) -> tuple[pd.DataFrame, str]:
    """The per-exit frame and its duration column, with ``reason`` names."""
    analysis = f"plot_latency_hist({which!r})"
    _need_event_records(trace, analysis)
    if which == "vmm_service":
        frame = trace.df_userspace_exits()
        if not len(frame):
            raise _missing(trace, ["kvm:kvm_userspace_exit"], analysis)
        if not (frame["service_ns"] >= 0).any():
            raise _missing(trace, ["syscalls:sys_enter_ioctl (KVM_RUN)"], analysis)
        return frame, "service_ns"
    if which == "exit_handling":
        try:
            frame = trace.df_exits()
        except MissingTraceEventError as e:
            raise _missing(trace, e.needed, analysis, e.fix) from e
        if not len(frame):
            raise _missing(trace, ["kvm:kvm_exit"], analysis)
        if not (frame["handling_ns"] >= 0).any():
            raise _missing(trace, ["kvm:kvm_entry"], analysis)
        names = trace.names
        isa = frame["isa"].astype(str).to_numpy()
        code = frame["code"].to_numpy()
        pairs = pd.MultiIndex.from_arrays([isa, code])
        inv, uniq = pairs.factorize()
        labels = np.array([names.hw(i, int(c)) for i, c in uniq], dtype=object)
        frame = frame.assign(reason=pd.Categorical(labels[inv].astype(str)))
        return frame, "handling_ns"
    raise ValueError(f"which must be 'vmm_service' or 'exit_handling', not {which!r}")


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
        return np.array([f"vCPU {int(v)}" if int(v) != 0xFFFFFFFF else "vCPU ?" for v in col.to_numpy()],
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
    data = pd.DataFrame({"group": pd.Categorical(labels.astype(str), categories=groups), "ns": values})
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


# ----------------------------------------------------------------- heat map

def _vcpu_counts(trace, window: float) -> tuple[np.ndarray, list[str], np.ndarray, str]:
    """Counts per (vCPU, window), row labels, window edges (s) and what was counted."""
    from kvmtrace.analysis.rates import vcpu_of
    from kvmtrace.kernel.events import EventKind

    ev = trace.events
    kind = ev["kind"].to_numpy()
    hw = kind == EventKind.EXIT
    ue = (kind == EventKind.USERSPACE_EXIT) & (ev["err"].to_numpy() >= 0)
    if hw.any():
        sel, what = hw, "VM exits (kvm_exit)"
    elif ue.any():
        sel, what = ue, "exits to userspace (kvm_userspace_exit; kvm_exit did not fire)"
    else:
        raise _missing(trace, ["kvm:kvm_exit", "kvm:kvm_userspace_exit"], "plot_vcpu_heatmap")
    sub = ev[sel]
    v = vcpu_of(sub, trace.vcpu_by_tid)
    v = np.where((v < 0) | (v == 0xFFFFFFFF), -1, v)
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
    _need_event_records(trace, "plot_vcpu_heatmap")
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
    ax.set_xlabel("seconds since start (s)")
    ax.set_ylabel("vCPU")
    ax.set_title(f"Exit rate per vCPU over time, {window_label(window)} windows", loc="left", fontsize=12,
                 fontweight="bold")
    _subtitle(fig, f"{_trace_name(trace)}; counted: {what}")
    return fig


def legend_labels(ax) -> list[str]:
    """The texts of an axes' legend ([] without one); for tests and callers checking a figure."""
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg is not None else []

