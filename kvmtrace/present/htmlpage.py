"""`kvmtrace report --format html`: one self-contained page.

The tables of :func:`kvmtrace.present.sections.report_sections` and every
figure of :mod:`kvmtrace.present.plots` as inline SVG, a small inline
stylesheet, no scripts, fonts, images or links outside the file (no
``http://`` at all). A figure the trace cannot give (missing events) is
replaced by a sentence saying why.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvmtrace.errors import MissingTraceEventError
from kvmtrace.present.report import report_dict
from kvmtrace.present.sections import Section, report_facts, report_sections

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PlotSpec", "activity_span", "html_plots", "render_html"]

_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d8dee4;--head:#f3f5f7;--accent:#2f5d8a}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue","DejaVu Sans",Arial,sans-serif;
color:var(--fg);max-width:1120px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:26px;margin:8px 0 4px}
h2{font-size:20px;margin:40px 0 10px;padding-bottom:4px;border-bottom:2px solid var(--line)}
h3{font-size:16px;margin:24px 0 6px}
ul.facts{list-style:none;padding:0;margin:6px 0 12px;color:var(--muted)}
ul.facts li{margin:2px 0} ul.facts li.warn{color:#9a3412;font-weight:600}
nav{margin:14px 0 8px;padding:10px 14px;background:var(--head);border-radius:6px;font-size:14px}
nav a{color:var(--accent);text-decoration:none;margin-right:14px;white-space:nowrap}
nav a:hover{text-decoration:underline}
table{border-collapse:collapse;font-size:14px;margin:6px 0 10px;font-variant-numeric:tabular-nums}
th,td{padding:4px 12px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--head);border-bottom:2px solid #c3cbd3;font-weight:600}
th.r,td.r{text-align:right;white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfc}
tr.total td{font-weight:600;border-top:2px solid #c3cbd3}
p.note{color:var(--muted);font-size:14px;margin:4px 0}
figure{margin:16px 0 28px}
figure svg{display:block;max-width:100%;height:auto}
figcaption{color:var(--muted);font-size:13.5px;margin-top:4px}
figure.missing{padding:10px 16px;background:#fff8e6;border-left:4px solid #e0a800;border-radius:4px}
figure.missing p{margin:4px 0}
footer{margin-top:48px;color:var(--muted);font-size:12.5px}
code{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.93em}
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _html_table(sec: Section) -> str:
    def cls(i):
        return ' class="r"' if sec.right[i] else ""

    head = "".join(f"<th{cls(i)}>{_esc(c)}</th>" for i, c in enumerate(sec.columns))
    body = []
    for row in sec.rows:
        tr = ' class="total"' if row and row[0] == "total" else ""
        body.append(f"<tr{tr}>" + "".join(f"<td{cls(i)}>{_esc(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody></table>"


def _html_section(sec: Section, level: int = 2) -> str:
    parts = [f'<h{level} id="{_esc(sec.key)}">{_esc(sec.title)}</h{level}>']
    parts.append(_html_table(sec) if sec.rows else f'<p class="note">{_esc(sec.empty or "None.")}</p>')
    parts += [f'<p class="note">{_esc(n)}</p>' for n in sec.notes]
    return "\n".join(parts)


def _auto_window(duration_s: float) -> float:
    """A window giving about 60 points over ``duration_s``, on a 1-2-5 step (at least 10 µs)."""
    target = max(duration_s / 60, 1e-5)
    exp = math.floor(math.log10(target))
    for m in (1, 2, 5, 10):
        w = m * 10 ** exp
        if w >= target * 0.999:
            return float(f"{w:.6g}")
    return target


@dataclass
class PlotSpec:
    """One figure of the HTML report: its id (``plot-<key>``), title, caption and how to draw it."""

    key: str
    title: str
    caption: str
    make: Callable[[], Figure]


def _why_not_drawn(e: MissingTraceEventError) -> str:
    """The refusal in words for a reader of the page (the exception names the Python call)."""
    names = ", ".join(e.needed)
    if len(e.needed) > 1:
        names = ("one of " if e.any_of else "the events ") + names
    held = f" ({e.holds})" if e.holds else ""
    fix = f"; {e.fix.rstrip('.')}" if e.fix else ""
    return f"it needs {names}, which this trace does not hold{held}{fix}."


def _figure_html(p: PlotSpec) -> str:
    from kvmtrace.present.plots import figure_svg

    try:
        fig = p.make()
    except MissingTraceEventError as e:
        return (f'<figure class="plot missing" id="plot-{p.key}"><figcaption><b>{_esc(p.title)}</b></figcaption>'
                f"<p>Not drawn for this trace: {_esc(_why_not_drawn(e))}</p></figure>")
    svg = figure_svg(fig)
    return (f'<figure class="plot" id="plot-{p.key}" aria-label="{_esc(p.title)}">\n{svg}\n'
            f"<figcaption>{_esc(p.caption)}</figcaption></figure>")


def activity_span(trace) -> tuple[float, float] | None:
    """First and last exit-like event, in seconds since the recording started (None without any)."""
    k = trace.keyed
    if not len(k) or trace.header.get("mode") == "counts":
        return None
    ts = k["ts_ns"].to_numpy()
    return (float(ts.min()) - trace.start_ns) / 1e9, (float(ts.max()) - trace.start_ns) / 1e9


def _zoom(trace) -> tuple[float, float] | None:
    """The time range to show when the exits fill under a fifth of the recording (a launch, a burst)."""
    dur = float(trace.duration_s)
    span = activity_span(trace)
    if span is None or dur <= 0:
        return None
    first, last = max(span[0], 0.0), min(span[1], dur)
    width = max(last - first, 1e-4)
    if width >= 0.2 * dur:
        return None
    return max(first - 0.1 * width, 0.0), min(last + 0.1 * width, dur)


def html_plots(trace, freq: str | float | None = None) -> dict[str, list[PlotSpec]]:
    """The figures of the HTML report by the section they follow (exit_mix, over_time, latency).

    Without ``freq``, time series get about 60 windows; when every exit
    falls in under a fifth of the recording (a launch trace: the guest runs
    only at its end), they zoom in on that stretch.
    """
    from kvmtrace.analysis.vcpu_time import has_vcpu_time
    from kvmtrace.present import plots

    zoom = _zoom(trace) if freq is None else None
    if freq is not None:
        window = freq
    elif zoom is not None:
        window = _auto_window(zoom[1] - zoom[0])
    else:
        window = _auto_window(float(trace.duration_s))
    wl = plots.window_label(plots.window_seconds(window))
    where = ""
    if zoom is not None:
        digits = max(0, 1 - math.floor(math.log10(zoom[1] - zoom[0])))
        where = (f" Zoomed in on {zoom[0]:.{digits}f}-{zoom[1]:.{digits}f} s, where every exit of this "
                 f"{trace.duration_s:.3g} s recording happened.")
    return {
        "exit_mix": [
            PlotSpec("exit-mix", "Exit mix", "Exits by reason and port/MMIO accesses by device, split into handled "
                  "in the kernel and by the VMM; each bar gives its count and rate.",
                  lambda: plots.plot_exit_mix(trace)),
        ],
        "over_time": [
            PlotSpec("rates-device", "Exit rate by device over time",
                  f"Port I/O and MMIO exits per second, per device, in {wl} windows.{where}",
                  lambda: plots.plot_rates(trace, "device", window, time_range=zoom)),
            PlotSpec("rates-userspace-exit", "Userspace exit rate by reason over time",
                  f"Exits to the VMM per second, per KVM_EXIT reason, in {wl} windows.{where}",
                  lambda: plots.plot_rates(trace, "userspace_exit", window, time_range=zoom)),
            PlotSpec("rates-exit", "VM exit rate by exit reason over time",
                  f"Hardware exits (kvm_exit) per second, per exit reason, in {wl} windows.{where}",
                  lambda: plots.plot_rates(trace, "exit", window, time_range=zoom)),
            PlotSpec("vcpu-heatmap", "Exit rate per vCPU over time",
                  f"Each row a vCPU, each cell a {wl} window, coloured by exits per second.{where}",
                  lambda: plots.plot_vcpu_heatmap(trace, window, time_range=zoom)),
        ] + ([
            PlotSpec("vcpu-time", "Where each vCPU's time went",
                  f"Each vCPU's share of every {wl} window in the guest, halted, in the VMM, waiting in the "
                  "VMM, and preempted (runnable with no CPU).",
                  lambda: plots.plot_vcpu_time(trace, window)),
        ] if has_vcpu_time(trace.header, trace.events) else []),
        "latency": [
            PlotSpec("latency-vmm-service", "VMM service time by device",
                  "How long the VMM took to answer each exit (userspace exit to the next KVM_RUN), as log2 "
                  "histograms; dashed: median, dotted: 99th percentile.",
                  lambda: plots.plot_latency_hist(trace, "vmm_service", "device")),
            PlotSpec("latency-exit-handling", "Exit handling time by exit reason",
                  "How long each hardware exit kept the vCPU out of the guest (kvm_exit to kvm_entry), as log2 "
                  "histograms; dashed: median, dotted: 99th percentile.",
                  lambda: plots.plot_latency_hist(trace, "exit_handling", "reason")),
        ],
    }


def render_html(trace, freq: str | float | None = None) -> str:
    """The report as one self-contained HTML page: facts, tables and every figure inline (SVG).

    ``freq``: the window of the time-series figures (default: about 60
    windows over the recording, on a 1-2-5 step, zoomed in where the exits
    fill under a fifth of it; see :func:`html_plots`). Nothing outside the file
    is referenced: no scripts, stylesheets, fonts, images or links.
    """
    from kvmtrace import __version__

    d = report_dict(trace)
    sections = {s.key: s for s in report_sections(trace, d)}
    figs = html_plots(trace, freq)

    def figures(group: str) -> str:
        return "\n".join(_figure_html(p) for p in figs[group])

    body: list[tuple[str, str, str]] = []  # (anchor, nav label, html)
    body.append(("userspace_exits", "Userspace exits", _html_section(sections["userspace_exits"])))
    for key in ("userspace_exit_values", "vcpus"):
        if key in sections:
            body.append((key, sections[key].title.split(" (")[0], _html_section(sections[key])))
    body.append(("exits", "Hardware exits", _html_section(sections["exits"])))
    body.append(("exit-mix", "Exit mix", '<h2 id="exit-mix">Exit mix</h2>\n' + figures("exit_mix")))
    body.append(("over-time", "Exits over time", '<h2 id="over-time">Exits over time</h2>\n' + figures("over_time")))
    if "vcpu_time" in sections:
        body.append(("vcpu_time", "vCPU time", _html_section(sections["vcpu_time"])))
    if "lifecycle" in sections:
        body.append(("lifecycle", "Launch timeline", _html_section(sections["lifecycle"])))
        body.append(("memory_slots", "Memory slots", _html_section(sections["memory_slots"])))
    lat = ['<h2 id="latency">Latency</h2>']
    if "vmm_service" in sections:
        lat.append(_html_section(sections["vmm_service"], 3))
    if "exit_handling" in sections:
        lat.append(_html_section(sections["exit_handling"], 3))
    lat.append(figures("latency"))
    body.append(("latency", "Latency", "\n".join(lat)))
    body.append(("pio", "Port I/O", _html_section(sections["pio"])))
    body.append(("mmio", "MMIO", _html_section(sections["mmio"])))

    facts = "".join(f'<li class="warn">{_esc(f)}</li>' if f.startswith("WARNING") else f"<li>{_esc(f)}</li>"
                    for f in report_facts(trace, d))
    nav = "".join(f'<a href="#{_esc(a)}">{_esc(label)}</a>' for a, label, _ in body)
    title = f"kvmtrace report: {trace.label}"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_esc(title)}</h1>\n<ul class=\"facts\">{facts}</ul>\n<nav>{nav}</nav>\n"
        + "\n".join(f"<section>\n{h}\n</section>" for _, _, h in body)
        + f"\n<footer>Made by kvmtrace {_esc(__version__)} from {_esc(trace.path)}; this page is self-contained "
        "and works offline.</footer>\n</body>\n</html>\n"
    )
