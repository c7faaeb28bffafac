"""`kvmtrace report`: a trace's summary as text (80 columns) or JSON.

The JSON form is a contract: an object with lists ``userspace_exits``
(reason, code, member, fields, count, rate), ``exits`` (isa, reason, code,
flags, count, rate), ``pio`` (port, direction, size, device, handled_by,
userspace, count), ``mmio`` (gpa, direction, len, device, handled_by,
userspace, count), ``handled_by_method`` (how handled_by was told),
``memory_maps`` (each re-read of QEMU's map: t_s, reason, status), and ``lost_events``,
``duration_s``, ``complete``, ``values_captured``, ``domain``. Latency:
``vmm_service`` (and ``exit_handling``) rows of count and p50/p90/p99/max
in µs for an events trace; ``vmm_service_log2`` (and ``exit_handling_log2``)
for a counts trace, whose quantiles are the upper bounds of the kernel's
log2 buckets. ``vcpu_time`` (recordings with the sched probes): one row per
vCPU thread, ``vcpu``, ``tid``, ``total_s``, ``guest_s``, ``halted_s``,
``vmm_s``, ``vmm_waiting_s``, ``preempted_s`` (seconds), and where the thread
had kvm_exit/kvm_entry (VMX/SVM hosts) ``in_guest_s`` and ``exit_handling_s``,
the two parts of ``guest_s`` (absent on the other threads).
"""

from __future__ import annotations

import io
import json
import math

import pandas as pd
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kvmtrace.analysis.records import plain_records
from kvmtrace.kernel.events import NO_VCPU
from kvmtrace.trace import Trace


def _records(df: pd.DataFrame) -> list[dict]:
    return plain_records(df)


def _name(region) -> str:
    return region.name if region is not None else "unknown"


def report_dict(trace: Trace) -> dict:
    s = trace.summary
    domains = trace.domains
    return {
        "trace": str(trace.path),
        "domain": domains[0]["name"] if len(domains) == 1 else None,
        "domains": [x["name"] for x in domains],
        "complete": trace.complete,
        "duration_s": round(s.duration_s, 6),
        "events": trace.event_count,
        "lost_events": trace.lost_events,
        "values_captured": trace.values_captured,
        "mode": trace.header.get("mode", "events"),
        **_import_dict(trace),
        "userspace_exits": [{**r, "details": trace.exit_details.get(r["code"], [])}
                            for r in _records(s.userspace_exits)],
        "vcpus": trace.vcpu_counts(),
        "exits": _records(s.exits),
        "pio": _records(trace.io_tables["pio"]),
        "mmio": _per_page(s.mmio, _records(trace.io_tables["mmio"])),
        "handled_by_method": _method(trace),
        "memory_maps": memory_map_notes(trace),
        "mmio_granularity": trace.mmio_granularity,
        **({"mmio_note": trace.mmio_note()} if trace.mmio_note() else {}),
        "unpaired_userspace_io": s.unpaired_userspace_io,
        "interrupted_runs": s.interrupted_runs,
        "failed_runs": s.failed_runs,
        **(_launch_dict(trace) if trace.launched else {}),
        **_latency_dict(trace),
        **_vcpu_time_dict(trace),
        **({"by_domain": {d["name"]: _domain_counts(trace.for_domain(str(d["pid"]))) for d in domains}}
           if len(domains) > 1 else {}),
    }


def _import_dict(trace: Trace) -> dict:
    """What an imported text could not hold: the exits it left out, its timestamps' resolution
    (trace-cmd and ftrace print µs), and tasks it could not join into VMs (no tgid)."""
    imp = trace.header.get("import")
    if not imp:
        return {}
    out: dict = {}
    left = imp.get("undecodable_exits") or {}
    if left:
        out["import_left_out"] = {"kvm_exit": sum(left.values()), "of_kvm_exit_lines": imp.get("exit_lines"),
                                  "reasons": left}
    if imp.get("timestamp_resolution_ns", 1) > 1:
        out["timestamp_resolution_ns"] = imp["timestamp_resolution_ns"]
    if imp.get("process_ids") == "thread ids only" and len(trace.domains) > 1:
        out["domains_note"] = (f"{len(trace.domains)} tasks, each listed as its own domain: {imp.get('format')} "
                               "text has no tgid to join the threads of one VM")
    if imp.get("unknown_lines"):
        # examples: the first unreadable lines' numbers in the text
        out["import_unreadable"] = {"lines": imp["unknown_lines"], "examples": imp.get("unknown_examples", [])[:3]}
    if imp.get("truncated_last_line"):
        out["import_truncated_last_line"] = True
    gaps = (imp.get("sched") or {}).get("out_of_sequence", 0)
    if gaps:
        out["vcpu_time_note"] = (f"{gaps:,} switches of vCPU threads out of sequence (in after in, or out after "
                                 "out): the text lacks switch lines (an excerpt, or lost events), and vCPU time "
                                 "across such a gap is the state the last line left")
    return out


def import_notes(d: dict) -> list[str]:
    """The notes on what an imported text could not hold, as every form prints them."""
    notes = []
    if d.get("domains_note"):
        notes.append(f"note: {d['domains_note']}")
    if d.get("import_left_out"):
        lo = d["import_left_out"]
        notes.append(f"note: the import left out {lo['kvm_exit']:,} of {lo['of_kvm_exit_lines'] or 0:,} kvm_exit "
                     "lines, whose reason has no known name or number: "
                     + ", ".join(f"{k!r} {v:,}" for k, v in lo["reasons"].items()))
    if d.get("import_unreadable"):
        u = d["import_unreadable"]
        where = f" (line {', '.join(f'{n:,}' for n in u['examples'])}{', ...' if u['lines'] > len(u['examples']) else ''})"
        notes.append(f"note: the import could not read {u['lines']:,} line{'s' if u['lines'] != 1 else ''} of the text"
                     f"{where if u['examples'] else ''}")
    if d.get("import_truncated_last_line"):
        notes.append("note: the text's last line was cut short and left out")
    if d.get("vcpu_time_note"):
        notes.append(f"note: {d['vcpu_time_note']}")
    return notes


def _resolution(d: dict) -> str:
    """The latency tables' note on an imported text's timestamp resolution ("" for ns)."""
    ns = d.get("timestamp_resolution_ns")
    if not ns:
        return ""
    unit = {1_000: "1 µs", 1_000_000: "1 ms", 1_000_000_000: "1 s"}.get(ns, f"{ns:,} ns")
    return f"(the imported text's timestamps have {unit} resolution: 0.0 is under {unit})"


def _domain_counts(trace: Trace) -> dict:
    s = trace.summary
    return {"pid": trace.domains[0]["pid"], "userspace_exits": _records(s.userspace_exits),
            "exits": _records(s.exits), "pio": _records(trace.io_tables["pio"]),
            "mmio": _records(trace.io_tables["mmio"])}


def _method(trace: Trace) -> str:
    from kvmtrace.analysis.handlers import DEDUCTION, FROM_IOCTLS

    return FROM_IOCTLS if trace.handled_by_method == "ioctls" else DEDUCTION


def memory_map_notes(trace: Trace) -> list[dict]:
    """Each re-read of QEMU's memory map during the recording: t_s (since the
    start), domain pid, reason, and status ("read", "unchanged", or why it
    could not be read: then the names stay those of the maps read before)."""
    start = trace.start_ns
    out = []
    for m in trace.data.memory_maps:
        status = "read" if m.get("text") else ("unchanged" if m.get("unchanged") else
                                                f"not read: {m.get('error') or 'no answer'}")
        out.append({"t_s": round((int(m.get("t_ns", start)) - start) / 1e9, 3), "pid": m.get("pid"),
                    "reason": m.get("reason", ""), "status": status})
    return out


def memory_map_lines(d: dict) -> list[str]:
    """The report's sentences on the map versions and on how handled_by was told."""
    lines = []
    maps = d.get("memory_maps") or []
    if maps:
        read = sum(1 for m in maps if m["status"] != "unchanged" and not m["status"].startswith("not read"))
        lines.append(f"device names: QEMU's memory map as read at the start, re-read {len(maps)} time(s) "
                     f"({read} changed); each access is named by the map of its time")
        for m in maps:
            if m["status"].startswith("not read"):
                lines.append(f"WARNING: the memory map could not be re-read at {m['t_s']:.3f} s ({m['reason']}): "
                             f"{m['status'][len('not read: '):]}; the names kept are those of the maps read before")
    lines.append("handled by: " + d["handled_by_method"])
    return lines


def _us(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x) / 1e3, 3)


def _latency_rows(df: pd.DataFrame, keys: list[str]) -> list[dict]:
    rows = []
    for r in df.to_dict("records"):
        row = {k: (r[k].item() if hasattr(r[k], "item") else (str(r[k]) if not isinstance(r[k], (int, float)) else r[k]))
               for k in keys}
        row.update(count=int(r["count"]), unpaired=int(r["unpaired"]),
                   **{f"{q}_us": _us(r[q]) for q in ("p50", "p90", "p99", "max")})
        rows.append(row)
    return rows


def _log2_rows(df: pd.DataFrame) -> list[dict]:
    return [{"isa": r["isa"], "reason": r["reason"], "count": int(r["count"]),
             **{f"{q}_us": _us(r[q]) for q in ("p50", "p90", "p99", "max")}} for r in df.to_dict("records")]


def _latency_dict(trace: Trace) -> dict:
    """VMM service time per reason and per device; exit handling where kvm_exit fired.

    A counts-mode trace has the kernel's log2 histograms instead: per
    reason, quantiles as bucket upper bounds (``latency_resolution``)."""
    if trace.header.get("mode") == "counts":
        from kvmtrace.analysis.histograms import log2_latency
        from kvmtrace.kernel.events import Latency

        out = {"latency_resolution": "log2 buckets: each quantile is its bucket's upper bound",
               "vmm_service_log2": _log2_rows(log2_latency(trace.events, trace.names, Latency.VMM_SERVICE))}
        handling = log2_latency(trace.events, trace.names, Latency.EXIT_HANDLING)
        if len(handling):
            out["exit_handling_log2"] = _log2_rows(handling)
        return out
    out = {"vmm_service": _latency_rows(trace.df_latency("vmm_service", ("reason",)), ["reason"]),
           "vmm_service_by_device": _latency_rows(
               trace.df_latency("vmm_service", ("reason", "device", "direction")), ["reason", "device", "direction"]),
           "unpaired": trace.unpaired()}
    if len(trace.summary.exits):
        out["exit_handling"] = _latency_rows(trace.df_latency("exit_handling", ("isa", "reason")), ["isa", "reason"])
    return out


def _vcpu_time_dict(trace: Trace) -> dict:
    """``vcpu_time``: one row per vCPU thread, seconds per state (absent without the sched probes),
    and ``in_guest_s`` and ``exit_handling_s`` on the threads whose guest time splits (VMX/SVM)."""
    from kvmtrace.analysis.vcpu_time import has_vcpu_time

    header = trace.header
    # A recording's header says whether it can: its events are read only when it does not
    # (a ReportTrace reads them whole on first use: memory as the trace's length).
    says = "probes" in header or header.get("vcpu_states")
    if not has_vcpu_time(header, pd.DataFrame({"kind": []}) if says else trace.events):
        return {}
    df = trace.df_vcpu_time()
    rows = []
    for r in df.to_dict("records"):
        rows.append({"vcpu": None if r["vcpu"] == NO_VCPU else int(r["vcpu"]), "tid": int(r["tid"]),
                     **{k: round(float(r[k]), 6) for k in df.columns if k.endswith("_s") and not pd.isna(r[k])}})
        if "in_guest_s" in rows[-1]:  # the two parts of guest sum to its rounded value
            rows[-1]["exit_handling_s"] = round(rows[-1]["guest_s"] - rows[-1]["in_guest_s"], 6)
    return {"vcpu_time": rows}


def _vcpu_time_text(con: Console, d: dict) -> None:
    """One section per vCPU thread: seconds and share of each state, with a bar."""
    from kvmtrace.analysis.vcpu_time import STATES

    meaning = {"guest": "in KVM_RUN, on a CPU", "halted": "in KVM_RUN, asleep", "vmm": "VMM, on a CPU",
               "vmm_waiting": "VMM, asleep", "preempted": "runnable, no CPU"}
    for r in d["vcpu_time"]:
        total = r["total_s"]
        rows = []
        for st in STATES:
            share = r[st + "_s"] / total if total else 0.0
            rows.append([st, meaning[st], f"{r[st + '_s']:,.3f}", f"{100 * share:5.1f}%", "#" * round(20 * share)])
            if st == "guest" and "in_guest_s" in r:  # VMX/SVM: kvm_exit/kvm_entry split it
                for part, what in (("in_guest", "after kvm_entry"), ("exit_handling", "KVM handling exits")):
                    share = r[part + "_s"] / total if total else 0.0
                    rows.append([f"  {part}", what, f"{r[part + '_s']:,.3f}", f"{100 * share:5.1f}%", ""])
        rows.append(["total", "", f"{total:,.3f}", "", ""])
        vcpu = "?" if r["vcpu"] is None else r["vcpu"]
        con.print(_table(f"Where vCPU {vcpu}'s time went (thread {r['tid']})",
                         [("state", "left"), ("meaning", "left"), ("s", "right"), ("share", "right"),
                          ("", "left")], rows))


def _launch_dict(trace: Trace) -> dict:
    life = trace.df_lifecycle()
    slots = trace.df_memslots().reset_index()
    return {
        "lifecycle": [{"t_ms": round(r["t_ns"] / 1e6, 3), "step": str(r["step"]), "tid": int(r["tid"]),
                       "detail": str(r["detail"]),
                       "duration_us": None if r["duration_ns"] < 0 else round(r["duration_ns"] / 1e3, 1)}
                      for r in life.to_dict("records")],
        "memory_slots": _records(slots),
    }


def _per_page(m: pd.DataFrame, rows: list[dict]) -> list[dict]:
    """Mark the MMIO rows a counts recording counted per 4 KiB page (``per_page``),
    where its table of exact addresses overflowed; rows as they are otherwise."""
    if "per_page" not in m.columns or not m["per_page"].any():
        return rows
    pages = {(int(r["gpa"]), r["direction"], int(r["len"])) for r in m[m["per_page"]].to_dict("records")}
    return [{**r, "per_page": (int(r["gpa"]), r["direction"], int(r["len"])) in pages} for r in rows]


def member_value_rows(d: dict) -> list[list[str]]:
    """The report's userspace exits other than IO/MMIO, one row per distinct value of their member."""
    return [[r["reason"], x["member"], x["text"] + ("" if x["bytes"] >= 40 else f" (first {x['bytes']} bytes)"),
             f"{x['count']:,}"]
            for r in d["userspace_exits"] if r["reason"] not in ("IO", "MMIO") for x in r["details"]]


def vcpu_rows(d: dict) -> list[list[str]]:
    """The report's per-vCPU counts as text cells ("-" where a counts trace has none)."""
    def n(x):
        return "-" if x is None else f"{x:,}"

    return [[str(v["vcpu"]), str(v["tid"] or "-"), n(v["userspace_exits"]), n(v["pio"]), n(v["mmio"])]
            for v in d["vcpus"]]


def render_json(trace: Trace) -> str:
    return json.dumps(report_dict(trace), indent=2) + "\n"


def _table(title: str, columns: list[tuple[str, str]], rows: list[list[str]]):
    if not rows:  # an empty table says nothing: say so in one line
        return f"{title}: none\n"
    t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for name, justify in columns:
        # Text columns wrap rather than lose their ends; numbers never wrap.
        t.add_column(name, justify=justify, overflow="fold", no_wrap=justify == "right")
    for r in rows:
        t.add_row(*r)
    return t


def _rate(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.1f}"


def _latency_text(con: Console, d: dict) -> None:
    def fmt(x):
        return "-" if x is None else f"{x:,.1f}"

    rows = [[r["reason"], r["device"] or "-", r["direction"] or "-", f"{r['count']:,}", fmt(r["p50_us"]),
             fmt(r["p90_us"]), fmt(r["p99_us"]), fmt(r["max_us"])] for r in d["vmm_service_by_device"]
            if r["count"]]
    con.print(_table("VMM service time, µs (userspace exit -> next KVM_RUN)",
                     [("exit", "left"), ("device", "left"), ("dir", "left"), ("count", "right"), ("p50", "right"),
                      ("p90", "right"), ("p99", "right"), ("max", "right")], rows))
    if d.get("exit_handling"):
        rows = [[r["isa"], r["reason"], f"{r['count']:,}", fmt(r["p50_us"]), fmt(r["p90_us"]), fmt(r["p99_us"]),
                 fmt(r["max_us"])] for r in d["exit_handling"] if r["count"]]
        con.print(_table("Exit handling time, µs (kvm_exit -> kvm_entry)",
                         [("isa", "left"), ("reason", "left"), ("count", "right"), ("p50", "right"),
                          ("p90", "right"), ("p99", "right"), ("max", "right")], rows))
    if _resolution(d) and (rows or any(r["count"] for r in d["vmm_service_by_device"])):
        con.print(_resolution(d))
    edges = {k: v for k, v in d["unpaired"].items() if v}
    if edges:
        con.print("unpaired at the edges: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in edges.items()))


def _log2_latency_text(con: Console, d: dict) -> None:
    def fmt(x):
        return "-" if x is None else f"<{x:,.1f}"

    cols = [("count", "right"), ("p50", "right"), ("p90", "right"), ("p99", "right"), ("max", "right")]
    rows = [[r["reason"], f"{r['count']:,}", *(fmt(r[f"{q}_us"]) for q in ("p50", "p90", "p99", "max"))]
            for r in d["vmm_service_log2"]]
    con.print(_table("VMM service time, µs (userspace exit -> next KVM_RUN)", [("exit", "left"), *cols], rows))
    if d.get("exit_handling_log2"):
        rows = [[r["isa"], r["reason"], f"{r['count']:,}", *(fmt(r[f"{q}_us"]) for q in ("p50", "p90", "p99", "max"))]
                for r in d["exit_handling_log2"]]
        con.print(_table("Exit handling time, µs (kvm_exit -> kvm_entry)",
                         [("isa", "left"), ("reason", "left"), *cols], rows))
    con.print("(in-kernel log2 histograms: each figure is the upper bound of its bucket)\n")


def _launch_text(con: Console, d: dict) -> None:
    rows = [[f"{r['t_ms']:,.3f}", r["step"], r["detail"],
             "" if r["duration_us"] is None else f"{r['duration_us']:,.1f}"] for r in d["lifecycle"]]
    con.print(_table("Launch timeline (ms since virDomainCreateXML)",
                     [("t ms", "right"), ("step", "left"), ("detail", "left"), ("took µs", "right")], rows))
    total = sum(r["size"] for r in d["memory_slots"])
    rows = [[str(r["slot"]), f"{r['gpa']:#x}", f"{r['size']:#x}", f"{r['size'] / 1024:,.0f}", f"{r['flags']:#x}"]
            for r in d["memory_slots"]]
    rows.append(["total", "", "", f"{total / 1024:,.0f}", ""])
    con.print(_table("KVM memory slots", [("slot", "right"), ("gpa", "left"), ("size", "left"),
                                          ("KiB", "right"), ("flags", "left")], rows))


def _phrases(con: Console, parts: list[str], sep: str = ", ") -> None:
    """Print ``parts`` joined by ``sep``, breaking lines only between parts (continuations
    indented by two spaces): a phrase such as "KVM ISA VMX (kvm_intel)" is never split,
    unless it alone is wider than the console."""
    line = ""
    for i, part in enumerate(parts):
        piece = part + (sep.rstrip() if i < len(parts) - 1 else "")
        joined = f"{line} {piece}" if line else piece
        if line and len(joined) > con.width:
            con.print(line, soft_wrap=len(line) <= con.width)
            line = "  " + piece
        else:
            line = joined
    if line:
        con.print(line, soft_wrap=len(line) <= con.width)


def render_text(trace: Trace, width: int = 80) -> str:
    s = trace.summary
    d = report_dict(trace)
    buf = io.StringIO()
    con = Console(file=buf, width=width, no_color=True, highlight=False, force_terminal=False)
    dom = ", ".join(x["name"] for x in trace.domains) or "?"
    host = trace.header.get("host", {})
    con.print(f"kvmtrace report: {trace.path}")
    if "import" in trace.header:
        imp = trace.header["import"]
        _phrases(con, [f"domain {dom}", f"KVM ISA {host.get('isa', '?')}"], "; ")
        con.print(f"imported from {imp.get('format', '?')} text {imp.get('path', '?')}")
        for note in import_notes(d):
            con.print(note)
    else:
        modules = ",".join(m for m in host.get("kvm_modules", []) if m != "kvm") or "?"
        _phrases(con, [f"domain {dom} on {host.get('hostname', '?')}", f"Linux {host.get('kernel_release', '?')}",
                       f"KVM ISA {host.get('isa', '?')} ({modules})"])
    con.print(f"{d['duration_s']:.3f} s recorded, {d['events']:,} events, {d['lost_events']:,} lost")
    if not trace.complete:
        con.print(f"WARNING: the recording was cut short ({trace.data.note}); "
                  "counts cover what was written before it stopped")
    con.print("guest data values: " + ("captured" + (" (--values)" if "import" not in trace.header else
                                                     " (in the imported text)")
                                        if trace.values_captured else "not captured" if "import" not in trace.header
                                        else "none (the imported text has no kvm_pio or kvm_mmio lines)"))
    if trace.header.get("mode") == "counts":
        con.print("mode: counts (aggregated in the kernel)")
    if trace.mmio_note():
        con.print(f"note: {trace.mmio_note()}")

    rows = [[r["reason"], str(r["code"]), r["member"] or "-", r["fields"].replace(",", ", ") or "-", f"{r['count']:,}", _rate(r["rate"])]
            for r in d["userspace_exits"]]
    con.print(_table("Userspace exits (KVM_RUN returning to the VMM)",
                     [("KVM_EXIT_", "left"), ("code", "right"), ("kvm_run member", "left"),
                      ("fields", "left"), ("count", "right"), ("/s", "right")], rows))
    rows = [[escape(c) for c in r] for r in member_value_rows(d)]  # "[cc fa ...]" is not rich markup
    if rows:
        con.print(_table("kvm_run members' values (exits other than IO/MMIO, by value)",
                         [("KVM_EXIT_", "left"), ("member", "left"), ("values", "left"), ("count", "right")], rows))
    if s.interrupted_runs or s.failed_runs:
        con.print(f"KVM_RUN interrupted by signals (-EINTR, not exits): {s.interrupted_runs:,}; "
                  f"failed: {s.failed_runs:,}")
    if s.unpaired_userspace_io:
        con.print(f"note: {s.unpaired_userspace_io:,} IO/MMIO exit(s) at the recording's edges have their access "
                  "outside it (not in the rows below)")
    if not s.userspace_fields_known:
        con.print("note: the kvm_run members were not read in this trace; "
                  "I/O rows cannot be split into kernel and userspace")

    if len(d["vcpus"]) > 1:
        con.print(_table("Per vCPU", [("vcpu", "right"), ("thread", "right"), ("userspace exits", "right"),
                                      ("port I/O", "right"), ("MMIO", "right")], vcpu_rows(d)))
    if d["exits"]:
        rows = [[r["isa"], r["reason"] + (f" [{r['flags']}]" if r["flags"] else ""), str(r["code"]),
                 f"{r['count']:,}", _rate(r["rate"])] for r in d["exits"]]
        con.print(_table("Hardware exits (kvm_exit)", [("isa", "left"), ("reason", "left"),
                                                       ("code", "right"), ("count", "right"), ("/s", "right")], rows))
    else:
        probes = trace.header.get("probes", [])
        why = "did not fire on this host" if "kvm_exit" in probes else "was not recorded"
        con.print(f"Hardware exits: none (kvm:kvm_exit {why})\n")

    if trace.launched:
        _launch_text(con, d)
    if "vmm_service" in d:
        _latency_text(con, d)
    if "vmm_service_log2" in d:
        _log2_latency_text(con, d)

    if "vcpu_time" in d:
        _vcpu_time_text(con, d)

    dur = d["duration_s"]
    for line in memory_map_lines(d):
        con.print(line)
    rows = [[f"{r['port']:#06x}", r["device"], r["direction"], str(r["size"]), r["handled_by"],
             f"{r['count']:,}", _rate(r["count"] / dur if dur else float("nan"))] for r in d["pio"]]
    con.print(_table("Port I/O (kvm_pio)", [("port", "left"), ("device", "left"), ("dir", "left"),
                                            ("size", "right"), ("handled by", "left"), ("count", "right"),
                                            ("/s", "right")], rows))
    rows = [[f"{r['gpa']:#x}", r["device"], r["direction"], str(r["len"]), r["handled_by"],
             f"{r['count']:,}", _rate(r["count"] / dur if dur else float("nan"))] for r in d["mmio"]]
    con.print(_table("MMIO (kvm_mmio; a read the VMM answers counts once)",
                     [("gpa", "left"), ("device", "left"), ("dir", "left"), ("len", "right"),
                      ("handled by", "left"), ("count", "right"), ("/s", "right")], rows))
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
