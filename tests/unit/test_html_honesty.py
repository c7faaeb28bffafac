"""The html report's figures say what they show (issue 15 item 9): a zoomed
time series gives the recording's mean rate and ticks from the zoom's start;
a figure the trace cannot give says why in words, not in Python calls."""

from __future__ import annotations

import re

import numpy as np

from kvmtrace.present import plots
from kvmtrace.present.htmlpage import _zoom, html_plots, render_html
from kvmtrace.present.plots.common import _compact, legend_labels
from kvmtrace.trace import load

from ..support.paths import SAMPLES

LAUNCH = SAMPLES / "demo-launch.kvmtrace"


def test_zoomed_legend_gives_the_recordings_mean_and_ticks_start_at_the_zoom():
    trace = load(LAUNCH)
    zoom = _zoom(trace)
    assert zoom is not None and zoom[0] > 0  # the launch trace's exits fill its end only
    fig = plots.plot_rates(trace, "userspace_exit", 0.001, time_range=zoom)
    ax = fig.axes[0]
    counts = trace.df_userspace_exits()["code"].map(lambda c: trace.names.kvm[int(c)]).value_counts()
    labels = legend_labels(ax)
    assert len(labels) == len(counts) == 2
    for key, n in counts.items():
        label = next(label for label in labels if label.startswith(f"{key}  "))
        assert f"(mean {_compact(n / trace.duration_s)}/s over the recording)" in label, label
    # ticks count from the zoom's first window, in a unit that fits it
    assert "after" in ax.get_xlabel()
    left = ax.get_xlim()[0]
    assert ax.xaxis.get_major_formatter()(left, 0) == "0"
    heat = plots.plot_vcpu_heatmap(trace, 0.001, time_range=zoom).axes[0]
    assert "after" in heat.get_xlabel()


def test_unzoomed_legend_mean_is_the_recordings_too():
    trace = load(SAMPLES / "demo-finite.kvmtrace")
    fig = plots.plot_rates(trace, "userspace_exit", 0.007)
    n = len(trace.df_userspace_exits())
    assert any(f"{_compact(n / trace.duration_s)}/s" in label for label in legend_labels(fig.axes[0])) or \
        len(legend_labels(fig.axes[0])) > 1
    assert "after" not in fig.axes[0].get_xlabel()


def test_not_drawn_boxes_say_why_in_words():
    trace = load(SAMPLES / "demo-finite.kvmtrace")  # no kvm_exit on this host
    page = render_html(trace)
    boxes = re.findall(r"<p>Not drawn for this trace: (.*?)</p>", page)
    assert boxes, "the sample lacks kvm_exit: some figure must be refused"
    for text in boxes:
        assert not re.search(r"\w+\(\w+=", text) and "plot_" not in text and "&#x27;" not in text, text
        assert "kvm_exit" in text
    assert html_plots(trace)["over_time"]


def test_zoom_caption_and_mean_agree_with_the_table():
    trace = load(LAUNCH)
    zoom = _zoom(trace)
    fig = plots.plot_rates(trace, "device", 0.001, time_range=zoom)
    assert np.isfinite(fig.axes[0].get_xlim()).all()
