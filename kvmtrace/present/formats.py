"""More forms of `kvmtrace report`: Markdown, CSV and one self-contained HTML page.

They sit beside :func:`kvmtrace.present.report.render_text` and ``render_json`` and
show the same numbers (all come from :func:`kvmtrace.present.report.report_dict`):

* :func:`render_markdown` -- the text report's sections as GitHub tables.
* :func:`render_csv` -- every row of every section in one long table.
* :func:`render_html` -- one file, readable offline: the tables and every
  figure of :mod:`kvmtrace.present.plots` as inline SVG (written in
  :mod:`kvmtrace.present.htmlpage`).

Markdown and HTML print the tables of :mod:`kvmtrace.present.sections`.

CSV layout
----------
One header line, then one row per table row of the report. ``section`` says
which table a row belongs to; the other columns are filled where they mean
something for that section and empty elsewhere:

============== ================================================================
column         meaning (sections that fill it)
============== ================================================================
section        userspace_exits, userspace_exit_values, vcpus, exits, pio,
               mmio, vmm_service, exit_handling, vcpu_time, lifecycle,
               memory_slots
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
vcpu, tid      the vCPU and its thread (vcpus, vcpu_time)
pio, mmio      port and MMIO accesses of the vCPU (vcpus; count: its
               userspace exits)
state          where the vCPU thread's time went (vcpu_time: guest, halted,
               vmm, vmm_waiting, preempted, which sum to the recorded time;
               on VMX/SVM hosts also in_guest and exit_handling, the two
               parts of guest)
seconds        the thread's seconds in that state (vcpu_time)
share          seconds / the thread's recorded seconds, 0-1 (vcpu_time)
============== ================================================================

``count`` summed over a section equals the report's total for it, e.g. the
``pio`` rows sum to every kvm_pio access.
"""

from __future__ import annotations

import csv
import html
import io
import math

from kvmtrace.present.htmlpage import PlotSpec, activity_span, html_plots, render_html
from kvmtrace.present.report import render_json, render_text, report_dict
from kvmtrace.present.sections import Section, handled_label, report_facts, report_sections

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
               "tid", "pio", "mmio", "state", "seconds", "share"]


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
                     "size": r["size"], "handled_by": handled_label(r, known), "count": r["count"],
                     "rate_per_s": _rate(r["count"], dur)})
    for r in d["mmio"]:
        rows.append({"section": "mmio", "device": r["device"], "gpa": _hex(r["gpa"]), "direction": r["direction"],
                     "size": r["len"], "handled_by": handled_label(r, known), "count": r["count"],
                     "rate_per_s": _rate(r["count"], dur)})
    lat = ("count", "unpaired", "p50_us", "p90_us", "p99_us", "max_us")
    for r in d.get("vmm_service_by_device", []):
        rows.append({"section": "vmm_service", "reason": r["reason"], "device": r["device"],
                     "direction": r["direction"], **{k: r[k] for k in lat}})
    for r in d.get("exit_handling", []):
        rows.append({"section": "exit_handling", "isa": r["isa"], "reason": r["reason"], **{k: r[k] for k in lat}})
    for r in d.get("vcpu_time", []):
        for key in (k for k in r if k.endswith("_s") and k != "total_s"):
            rows.append({"section": "vcpu_time", "vcpu": r["vcpu"], "tid": r["tid"], "state": key[:-2],
                         "seconds": r[key], "share": round(r[key] / r["total_s"], 6) if r["total_s"] else ""})
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


#: Renderers by format name, for the CLI's --format.
RENDERERS = {"text": render_text, "json": render_json, "markdown": render_markdown, "csv": render_csv,
             "html": render_html}


def render(trace, fmt: str) -> str:
    """The report in ``fmt``: one of :data:`RENDERERS`."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown report format {fmt!r}: use one of {', '.join(RENDERERS)}")
    return RENDERERS[fmt](trace)
