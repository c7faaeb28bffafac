"""Where each vCPU's time went, over time: one stacked panel per vCPU thread."""

from __future__ import annotations

import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from kvmtrace.analysis.vcpu_time import GUEST_PARTS, STATES
from kvmtrace.present.plots.common import DEFAULT_WINDOW, _figure, _subtitle, _trace_name, window_label, window_seconds

__all__ = ["STATE_COLOURS", "plot_vcpu_time"]

#: One colour per state, the same in every figure: running ones in greens and
#: blues, waiting ones in greys, preempted (the host's fault) in red.
#: guest's two parts (VMX/SVM hosts) in the same green, the exit handling lighter.
STATE_COLOURS = {"guest": "#2ca02c", "in_guest": "#2ca02c", "exit_handling": "#98df8a", "halted": "#c7c7c7",
                 "vmm": "#1f77b4", "vmm_waiting": "#7f7f7f", "preempted": "#d62728"}


def plot_vcpu_time(trace, freq: str | float = DEFAULT_WINDOW) -> Figure:
    """Each vCPU's time per state over time, stacked to 100 % of each window.

    One panel per vCPU thread, x in seconds since the start, y the share of
    each ``freq`` window spent guest, halted, vmm, vmm_waiting and
    preempted (see Trace.df_vcpu_time_intervals); where kvm_exit/kvm_entry
    fired (VMX/SVM) guest is drawn as its two parts, in_guest and
    exit_handling. Both modes (a counts-mode
    trace's windows follow its read-outs). Raises MissingTraceEventError for
    a recording without the sched probes.
    """
    window = window_seconds(freq)
    df = trace.df_vcpu_time_intervals(window)
    threads = df[["vcpu", "tid"]].drop_duplicates().to_records(index=False).tolist()
    n = max(len(threads), 1)
    fig = _figure(10, 1.2 + 1.6 * n)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    for ax, (vcpu, tid) in zip(axes, threads):
        mine = df[(df["vcpu"] == vcpu) & (df["tid"] == tid)].sort_values("t_s")
        t = mine["t_s"].to_numpy()
        total = mine["total_s"].to_numpy()
        split = "in_guest_s" in mine.columns and mine["in_guest_s"].notna().all() and len(mine)
        bands = (*GUEST_PARTS, *STATES[1:]) if split else STATES
        share = [np.divide(mine[f"{s}_s"].to_numpy(), total, out=np.zeros(len(t)), where=total > 0) * 100
                 for s in bands]
        ax.stackplot(np.r_[t, t[-1] + window] if len(t) else t, *[np.r_[y, y[-1]] if len(y) else y for y in share],
                     labels=bands, colors=[STATE_COLOURS[s] for s in bands], step="post", linewidth=0)
        ax.set_ylim(0, 100)
        ax.yaxis.set_major_locator(ticker.MultipleLocator(50))
        name = f"vCPU {vcpu}" if vcpu != 0xFFFFFFFF else "vCPU ?"
        ax.set_ylabel(f"{name}\n(tid {tid}), %", fontsize=9)
    legend = {}  # every panel's bands, once each (a panel with the guest split has two more)
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, h)
    order = sorted(legend, key=lambda x: list(STATE_COLOURS).index(x))
    axes[0].legend([legend[x] for x in order], order, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8,
                   frameon=False)
    axes[-1].set_xlabel("seconds since start (s)")
    axes[0].set_title(f"Where each vCPU's time went, {window_label(window)} windows", loc="left", fontsize=12,
                      fontweight="bold")
    _subtitle(fig, f"{_trace_name(trace)}; share of each window, % (guest and halted: inside KVM_RUN)")
    return fig
