"""The report's tables as text cells (:class:`Section`) and its opening facts.

What Markdown (:mod:`kvmtrace.present.formats`) and HTML
(:mod:`kvmtrace.present.htmlpage`) print: both build their tables from
:func:`report_sections` of one :func:`kvmtrace.present.report.report_dict`,
so every form shows the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kvmtrace.present.report import import_notes, member_value_rows, report_dict, vcpu_rows

__all__ = ["Section", "report_facts", "report_sections"]


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


def handled_label(r: dict, known: bool) -> str:
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
        lines += import_notes(d)
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
        from kvmtrace.analysis.vcpu_time import GUEST_PARTS, STATES

        def cell(r, st):
            if st + "_s" not in r:  # a guest part on a thread without kvm_exit/kvm_entry
                return "-"
            return f"{r[st + '_s']:,.3f} ({100 * r[st + '_s'] / r['total_s']:.1f}%)" if r["total_s"] else "-"

        # guest's two parts (VMX/SVM: kvm_exit/kvm_entry fired), after the states that sum to total.
        cols = STATES + tuple(p for p in GUEST_PARTS if any(p + "_s" in r for r in d["vcpu_time"]))
        out.append(Section(
            "vcpu_time", "Where each vCPU's time went, s (share)",
            ["vcpu", "tid", "total", *(st.replace("_", " ") for st in cols)], [True] * (3 + len(cols)),
            [["?" if r["vcpu"] is None else str(r["vcpu"]), str(r["tid"]), f"{r['total_s']:,.3f}",
              *(cell(r, st) for st in cols)] for r in d["vcpu_time"]],
            ["guest: inside KVM_RUN on a CPU; halted: inside KVM_RUN asleep; vmm: outside it on a CPU; "
             "vmm waiting: outside it asleep; preempted: runnable, waiting for a CPU."
             + (" in guest (after kvm_entry) and exit handling (the rest) are the two parts of guest."
                if len(cols) > len(STATES) else "")]))

    def per_s(n):
        return _num(n / dur if dur else float("nan"))

    out.append(Section(
        "pio", "Port I/O (kvm_pio)", ["port", "device", "dir", "size", "handled by", "count", "/s"],
        [False, False, False, True, False, True, True],
        [[f"{r['port']:#06x}", r["device"], r["direction"], str(r["size"]), handled_label(r, known),
          f"{r['count']:,}", per_s(r["count"])] for r in d["pio"]],
        [], "No port I/O in this trace."))
    out.append(Section(
        "mmio", "MMIO (kvm_mmio; a read the VMM answers counts once)",
        ["gpa", "device", "dir", "len", "handled by", "count", "/s"],
        [False, False, False, True, False, True, True],
        [[f"{r['gpa']:#x}", r["device"], r["direction"], str(r["len"]), handled_label(r, known),
          f"{r['count']:,}", per_s(r["count"])] for r in d["mmio"]],
        [], "No MMIO in this trace."))
    return out
