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
                     KVM_RUN (kvm_fpu); exit_handling: kvm_exit and
                     kvm_entry
plot_vcpu_heatmap    per-event records with kvm_exit or kvm_userspace_exit
plot_vcpu_time       the sched probes (sched_switch; both modes)
==================== =========================================================

Each module declares these needs once (RATE_EVENTS, LATENCY_EVENTS, ...) and
checks them with :func:`kvmtrace.analysis.requirements.require_events`, whose
error also says what the trace holds instead.

Device colours are the same in every figure of one trace (a device keeps its
colour between the rates and the latency histograms).

One module per figure (exit_mix, rates, latency, heatmap, vcpu_time) and ``common``,
their shared helpers: windows, palettes, number formats, SVG output.
"""

from kvmtrace.present.plots.common import DEFAULT_WINDOW, figure_svg, legend_labels, window_label, window_seconds
from kvmtrace.present.plots.exit_mix import plot_exit_mix
from kvmtrace.present.plots.heatmap import plot_vcpu_heatmap
from kvmtrace.present.plots.latency import plot_latency_hist
from kvmtrace.present.plots.rates import plot_rates
from kvmtrace.present.plots.vcpu_time import plot_vcpu_time

__all__ = [
    "DEFAULT_WINDOW",
    "figure_svg",
    "legend_labels",
    "plot_exit_mix",
    "plot_latency_hist",
    "plot_rates",
    "plot_vcpu_heatmap",
    "plot_vcpu_time",
    "window_label",
    "window_seconds",
]
