"""More forms of `kvmtrace report`: Markdown, CSV and one self-contained HTML page.

They sit beside :func:`kvmtrace.present.report.render_text` and ``render_json`` and
show the same numbers (all come from :func:`kvmtrace.present.report.report_dict`):

* :func:`render_markdown` -- the text report's sections as GitHub tables.
* :func:`render_csv` -- every row of every section in one long table.
* :func:`render_html` -- one file, readable offline: the tables and every
  figure of :mod:`kvmtrace.present.plots` as inline SVG, a small inline stylesheet,
  no scripts, fonts, images or links outside the file (no ``http://`` at
  all). A figure the trace cannot give (missing events) is replaced by a
  sentence saying why.

CSV layout
----------
One header line, then one row per table row of the report. ``section`` says
which table a row belongs to; the other columns are filled where they mean
something for that section and empty elsewhere:

============== ================================================================
column         meaning (sections that fill it)
============== ================================================================
section        userspace_exits, exits, pio, mmio, vmm_service, exit_handling,
               lifecycle, memory_slots
isa            VMX, SVM or UNKNOWN (exits, exit_handling)
reason         KVM_EXIT_* name without the prefix (userspace_exits,
               vmm_service) or the hardware exit's name (exits, exit_handling)
code           numeric reason: KVM_EXIT_* code, or the basic hardware exit
               code with VMX flag bits masked off (userspace_exits, exits)
exit_flags     VMX flags of the exit, e.g. FAILED_VMENTRY (exits)
member         the kvm_run union member the exit fills (userspace_exits)
fields         that member's fields, space-separated (userspace_exits)
device         device behind the port or address (pio, mmio, vmm_service)
port           I/O port, hex "0x0080" (pio)
gpa            guest-physical address, hex (mmio; memory_slots: slot start)
direction      read or write (pio, mmio, vmm_service)
size           access size in bytes (pio: size, mmio: len)
handled_by     kernel (a KVM in-kernel device), ioeventfd (a write that
               signalled an eventfd), coalesced (buffered in the coalesced
               ring, replayed by QEMU later) or vmm (a userspace exit);
               "unknown" when the kvm_run fields were not read (pio, mmio)
count          events over the recording (every section with counts; the
               latency sections: exits with a measured duration)
rate_per_s     count / recorded seconds (userspace_exits, exits, pio, mmio)
unpaired       exits without a partner at the recording's edges, left out
               of the latency (vmm_service, exit_handling)
p50_us ...     p50_us, p90_us, p99_us, max_us: latency in microseconds
               (vmm_service, exit_handling)
t_ms           milliseconds since virDomainCreateXML was called (lifecycle)
step, detail   the launch step and what it did (lifecycle)
duration_us    how long the step took, microseconds (lifecycle)
slot           KVM memory slot number (memory_slots)
bytes          slot size in bytes (memory_slots)
slot_flags     KVM_MEM_* flags, hex (memory_slots)
values         a kvm_run member's decoded values (userspace_exit_values: one
               row per distinct value of exits other than IO/MMIO)
vcpu, tid      the vCPU and its thread (vcpus)
pio, mmio      port and MMIO accesses of the vCPU (vcpus; count: its
               userspace exits)
============== ================================================================

``count`` summed over a section equals the report's total for it, e.g. the
``pio`` rows sum to every kvm_pio access.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvmtrace.errors import MissingTraceEventError
from kvmtrace.present.report import member_value_rows, render_json, render_text, report_dict, vcpu_rows

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "CSV_COLUMNS",
    "RENDERERS",
    "PlotSpec",
    "Section",
    "activity_span",
    "csv_rows",
    "html_plots",
    "render",
    "render_csv",
    "render_html",
    "render_markdown",
    "report_facts",
    "report_sections",
]

CSV_COLUMNS = ["section", "isa", "reason", "code", "exit_flags", "member", "fields", "device", "port", "gpa",
               "direction", "size", "handled_by", "count", "rate_per_s", "unpaired", "p50_us", "p90_us", "p99_us",
               "max_us", "t_ms", "step", "detail", "duration_us", "slot", "bytes", "slot_flags", "values", "vcpu",
               "tid", "pio", "mmio"]


@dataclass
class Section:
    """One table of the report, as text cells: what Markdown and HTML print."""

    key: str  # stable id: userspace_exits, userspace_exit_values, vcpus, exits, lifecycle, memory_slots, vmm_service, exit_handling, pio, mmio
    title: str
    columns: list[str]
    right: list[bool]  # per column: right-aligned (numbers)
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)  # sentences printed after the table
    empty: str = ""  # printed instead of the table when it has no rows


# ------------------------------------------------------------ shared model

def _num(x, fmt: str = ",.1f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _handled(r: dict, known: bool) -> str:
    """The row's handler (kernel, ioeventfd, coalesced, vmm: analysis.handlers), or "unknown"
    where the trace lacks the kvm_run fields that split kernel from userspace."""
    return r["handled_by"] if known else "unknown"


def report_facts(trace, d: dict) -> list[str]:
    """The report's opening lines: trace, domain and host, time and events, warnings."""
    host = trace.header.get("host", {})
    dom = ", ".join(str(x["name"]) for x in trace.domains) or "?"
    modules = ",".join(m for m in host.get("kvm_modules", []) if m != "kvm") or "?"
    imp = trace.header.get("import")
    lines = [f"trace: {trace.path}"]
    if imp:  # what the imported text could not hold, as the text report says it
        lines += [f"domain {dom}; KVM ISA {host.get('isa', '?')}",
                  f"imported from {imp.get('format', '?')} text {imp.get('path', '?')}"]
        if d.get("domains_note"):
            lines.append(f"note: {d['domains_note']}")
        if d.get("import_left_out"):
            lo = d["import_left_out"]
            lines.append(f"note: the import left out {lo['kvm_exit']:,} of {lo['of_kvm_exit_lines'] or 0:,} "
                         "kvm_exit lines, whose reason has no known name or number")
        if d.get("timestamp_resolution_ns"):
            lines.append(f"timestamps of {d['timestamp_resolution_ns']:,} ns resolution: latencies under it read 0.0")
    else:
        lines.append(f"domain {dom} on {host.get('hostname', '?')}, Linux {host.get('kernel_release', '?')}, "
                     f"KVM ISA {host.get('isa', '?')} ({modules})")
    lines.append(f"{d['duration_s']:.3f} s recorded, {d['events']:,} events, {d['lost_events']:,} lost")
    if not trace.complete:
        lines.append(f"WARNING: the recording was cut short ({trace.data.note}); "
                     "counts cover what was written before it stopped")
    lines.append("guest data values: " + ("captured" + (" (in the imported text)" if imp else " (--values)")
                                          if trace.values_captured else "not captured" if not imp
                                          else "none (the imported text has no kvm_pio or kvm_mmio lines)"))
    if trace.header.get("mode") == "counts":
        lines.append("mode: counts (aggregated in the kernel)")
    if trace.mmio_note():
        lines.append(f"note: {trace.mmio_note()}")
    from kvmtrace.present.report import memory_map_lines

    return lines + memory_map_lines(d)


def report_sections(trace, d: dict | None = None) -> list[Section]:
    """The text report's tables, in its order, as :class:`Section` s of text cells."""
    d = report_dict(trace) if d is None else d
    s = trace.summary
    known = bool(s.userspace_fields_known)
    dur = s.duration_s  # exact, as the JSON's rates use (d["duration_s"] is rounded)
    out: list[Section] = []

    notes = []
    if d.get("interrupted_runs") or d.get("failed_runs"):
        notes.append(f"KVM_RUN interrupted by signals (-EINTR, not exits): {d.get('interrupted_runs', 0):,}; "
                     f"failed: {d.get('failed_runs', 0):,}.")
    if d.get("unpaired_userspace_io"):
        notes.append(f"{d['unpaired_userspace_io']:,} IO/MMIO exit(s) at the recording's edges have their access "
                     "outside it (not in the port I/O and MMIO tables).")
    if not known:
        notes.append("The kvm_run members were not read in this trace: I/O rows cannot be split into kernel "
                     "and userspace.")
    out.append(Section(
        "userspace_exits", "Userspace exits (KVM_RUN returning to the VMM)",
        ["KVM_EXIT_", "code", "kvm_run member", "fields", "count", "/s"],
        [False, True, False, False, True, True],
        [[r["reason"], str(r["code"]), r["member"] or "-", r["fields"].replace(",", ", ") or "-",
          f"{r['count']:,}", _num(r["rate"])] for r in d["userspace_exits"]],
        notes, "No userspace exits in this trace."))
    values = member_value_rows(d)
    if values:
        out.append(Section("userspace_exit_values", "kvm_run members' values (exits other than IO/MMIO, by value)",
                           ["KVM_EXIT_", "member", "values", "count"], [False, False, False, True], values))
    if len(d["vcpus"]) > 1:
        out.append(Section("vcpus", "Per vCPU", ["vcpu", "thread", "userspace exits", "port I/O", "MMIO"],
                           [True, True, True, True, True], vcpu_rows(d)))

    probes = trace.header.get("probes", [])
    why = "did not fire on this host" if "kvm_exit" in probes else "was not recorded"
    out.append(Section(
        "exits", "Hardware exits (kvm_exit)", ["isa", "reason", "code", "count", "/s"],
        [False, False, True, True, True],
        [[r["isa"], r["reason"] + (f" [{r['flags']}]" if r["flags"] else ""), str(r["code"]), f"{r['count']:,}",
          _num(r["rate"])] for r in d["exits"]],
        [], f"None: kvm:kvm_exit {why}."))

    if "lifecycle" in d:
        out.append(Section(
            "lifecycle", "Launch timeline (ms since virDomainCreateXML)", ["t ms", "step", "detail", "took µs"],
            [True, False, False, True],
            [[f"{r['t_ms']:,.3f}", r["step"], r["detail"], "" if r["duration_us"] is None
              else f"{r['duration_us']:,.1f}"] for r in d["lifecycle"]]))
        slots = d.get("memory_slots", [])
        total = sum(r["size"] for r in slots)
        rows = [[str(r["slot"]), f"{r['gpa']:#x}", f"{r['size']:#x}", f"{r['size'] / 1024:,.0f}", f"{r['flags']:#x}"]
                for r in slots]
        rows.append(["total", "", "", f"{total / 1024:,.0f}", ""])
        out.append(Section("memory_slots", "KVM memory slots", ["slot", "gpa", "size", "KiB", "flags"],
                           [True, False, False, True, False], rows))

    if "vmm_service" in d:
        edges = {k: v for k, v in d.get("unpaired", {}).items() if v}
        notes = ["Unpaired at the recording's edges: "
                 + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in edges.items()) + "."] if edges else []
        out.append(Section(
            "vmm_service", "VMM service time, µs (userspace exit -> next KVM_RUN)",
            ["exit", "device", "dir", "count", "p50", "p90", "p99", "max"],
            [False, False, False, True, True, True, True, True],
            [[r["reason"], r["device"] or "-", r["direction"] or "-", f"{r['count']:,}", _num(r["p50_us"]),
              _num(r["p90_us"]), _num(r["p99_us"]), _num(r["max_us"])]
             for r in d["vmm_service_by_device"] if r["count"]],
            notes, "No userspace exit was followed by a KVM_RUN in this trace."))
        if d.get("exit_handling"):
            out.append(Section(
                "exit_handling", "Exit handling time, µs (kvm_exit -> kvm_entry)",
                ["isa", "reason", "count", "p50", "p90", "p99", "max"],
                [False, False, True, True, True, True, True],
                [[r["isa"], r["reason"], f"{r['count']:,}", _num(r["p50_us"]), _num(r["p90_us"]),
                  _num(r["p99_us"]), _num(r["max_us"])] for r in d["exit_handling"] if r["count"]]))

    if "vcpu_time" in d:
        from kvmtrace.analysis.vcpu_time import STATES

        def cell(r, st):
            return f"{r[st + '_s']:,.3f} ({100 * r[st + '_s'] / r['total_s']:.1f}%)" if r["total_s"] else "-"

        out.append(Section(
            "vcpu_time", "Where each vCPU's time went, s (share)",
            ["vcpu", "tid", "total", *(st.replace("_", " ") for st in STATES)], [True] * (3 + len(STATES)),
            [["?" if r["vcpu"] is None else str(r["vcpu"]), str(r["tid"]), f"{r['total_s']:,.3f}",
              *(cell(r, st) for st in STATES)] for r in d["vcpu_time"]],
            ["guest: inside KVM_RUN on a CPU; halted: inside KVM_RUN asleep; vmm: outside it on a CPU; "
             "vmm waiting: outside it asleep; preempted: runnable, waiting for a CPU."]))

    def per_s(n):
        return _num(n / dur if dur else float("nan"))

    out.append(Section(
        "pio", "Port I/O (kvm_pio)", ["port", "device", "dir", "size", "handled by", "count", "/s"],
        [False, False, False, True, False, True, True],
        [[f"{r['port']:#06x}", r["device"], r["direction"], str(r["size"]), _handled(r, known),
          f"{r['count']:,}", per_s(r["count"])] for r in d["pio"]],
        [], "No port I/O in this trace."))
    out.append(Section(
        "mmio", "MMIO (kvm_mmio; a read the VMM answers counts once)",
        ["gpa", "device", "dir", "len", "handled by", "count", "/s"],
        [False, False, False, True, False, True, True],
        [[f"{r['gpa']:#x}", r["device"], r["direction"], str(r["len"]), _handled(r, known),
          f"{r['count']:,}", per_s(r["count"])] for r in d["mmio"]],
        [], "No MMIO in this trace."))
    return out


# --------------------------------------------------------------- Markdown

#: Characters Markdown (or the HTML inside it) would read as markup, escaped in text from outside
#: kvmtrace (domain names, paths, labels, device names).
_MD_SPECIAL = "\\`*_[]|~"
_CONTROL = {i: f"\\x{i:02x}" for i in range(32)} | {10: "\\n", 13: "\\r", 9: "\\t"}


def _md_text(text) -> str:
    """``text`` as literal Markdown: control characters shown as escapes (a newline cannot end a
    list item or start a heading), HTML escaped (``<script>`` stays text), markup backslashed."""
    t = html.escape(str(text).translate(_CONTROL), quote=False)
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in t)


def _md_cell(text: str) -> str:
    t = html.escape(str(text).translate(_CONTROL), quote=False)
    return t.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`").replace("*", "\\*") or " "


def _md_table(sec: Section) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(c) for c in sec.columns) + " |",
             "| " + " | ".join("---:" if r else ":---" for r in sec.right) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in sec.rows]
    return lines


def render_markdown(trace) -> str:
    """The report as GitHub-flavoured Markdown: the text report's facts, then one table per section."""
    d = report_dict(trace)
    lines = [f"# kvmtrace report: {_md_text(trace.label)}", ""]
    for fact in report_facts(trace, d):
        lines.append(f"- {_md_text(fact)}")
    for sec in report_sections(trace, d):
        lines += ["", f"## {sec.title}", ""]
        if sec.rows:
            lines += _md_table(sec)
        else:
            lines.append(sec.empty or "None.")
        for n in sec.notes:
            lines += ["", n]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------- CSV

def _hex(x, width: int = 0) -> str:
    return "" if x is None else f"{int(x):#0{width}x}" if width else f"{int(x):#x}"


def _rate(count, dur) -> float | str:
    return round(count / dur, 6) if dur else ""


def csv_rows(trace, d: dict | None = None) -> list[dict]:
    """The rows :func:`render_csv` writes, as dicts keyed by :data:`CSV_COLUMNS` (missing = empty)."""
    d = report_dict(trace) if d is None else d
    dur = trace.summary.duration_s  # exact, as the JSON's rates use (d["duration_s"] is rounded)
    known = bool(trace.summary.userspace_fields_known)
    rows: list[dict] = []
    for r in d["userspace_exits"]:
        rows.append({"section": "userspace_exits", "reason": r["reason"], "code": r["code"], "member": r["member"],
                     "fields": r["fields"].replace(",", " "), "count": r["count"],
                     "rate_per_s": _rate(r["count"], dur)})
    for r in d["userspace_exits"]:
        if r["reason"] not in ("IO", "MMIO"):
            for x in r["details"]:
                rows.append({"section": "userspace_exit_values", "reason": r["reason"], "code": r["code"],
                             "member": x["member"], "values": x["text"], "count": x["count"]})
    for v in d["vcpus"]:
        rows.append({"section": "vcpus", "vcpu": v["vcpu"], "tid": v["tid"], "count": v["userspace_exits"],
                     "pio": v["pio"], "mmio": v["mmio"]})
    for r in d["exits"]:
        rows.append({"section": "exits", "isa": r["isa"], "reason": r["reason"], "code": r["code"],
                     "exit_flags": r["flags"], "count": r["count"], "rate_per_s": _rate(r["count"], dur)})
    for r in d["pio"]:
        rows.append({"section": "pio", "device": r["device"], "port": _hex(r["port"], 6), "direction": r["direction"],
                     "size": r["size"], "handled_by": _handled(r, known), "count": r["count"],
                     "rate_per_s": _rate(r["count"], dur)})
    for r in d["mmio"]:
        rows.append({"section": "mmio", "device": r["device"], "gpa": _hex(r["gpa"]), "direction": r["direction"],
                     "size": r["len"], "handled_by": _handled(r, known), "count": r["count"],
                     "rate_per_s": _rate(r["count"], dur)})
    lat = ("count", "unpaired", "p50_us", "p90_us", "p99_us", "max_us")
    for r in d.get("vmm_service_by_device", []):
        rows.append({"section": "vmm_service", "reason": r["reason"], "device": r["device"],
                     "direction": r["direction"], **{k: r[k] for k in lat}})
    for r in d.get("exit_handling", []):
        rows.append({"section": "exit_handling", "isa": r["isa"], "reason": r["reason"], **{k: r[k] for k in lat}})
    for r in d.get("lifecycle", []):
        rows.append({"section": "lifecycle", "t_ms": r["t_ms"], "step": r["step"], "detail": r["detail"],
                     "duration_us": r["duration_us"]})
    for r in d.get("memory_slots", []):
        rows.append({"section": "memory_slots", "slot": r["slot"], "gpa": _hex(r["gpa"]), "bytes": r["size"],
                     "slot_flags": _hex(r["flags"])})
    return rows


def render_csv(trace) -> str:
    """Every table of the report as one long CSV table (columns: :data:`CSV_COLUMNS`, see the module doc)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n", restval="", extrasaction="raise")
    w.writeheader()
    for row in csv_rows(trace):
        w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()})
    return buf.getvalue()


# ------------------------------------------------------------------- HTML

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


#: Renderers by format name, for the CLI's --format.
RENDERERS = {"text": render_text, "json": render_json, "markdown": render_markdown, "csv": render_csv,
             "html": render_html}


def render(trace, fmt: str) -> str:
    """The report in ``fmt``: one of :data:`RENDERERS`."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown report format {fmt!r}: use one of {', '.join(RENDERERS)}")
    return RENDERERS[fmt](trace)
