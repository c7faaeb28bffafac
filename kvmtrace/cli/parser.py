"""The `kvmtrace` command line: a subcommand per job, built from shared argument groups.

Options that several subcommands take (which libvirt domains, the libvirt
URI, how to record, the output format) are each declared once, by a
function that adds them to a subcommand's parser; each subcommand names its
handler in :mod:`kvmtrace.cli.commands` with ``set_defaults(run=...)``.
Nothing is parsed, and no handler's modules imported, until ``main`` runs.
"""

from __future__ import annotations

import argparse
import math

from kvmtrace import __version__
from kvmtrace.cli import commands
from kvmtrace.errors import ExitCode, exit_code_table
from kvmtrace.record.domain import DEFAULT_URI
from kvmtrace.record.host import REQUIREMENTS

DESCRIPTION = "Trace a KVM guest's vCPU run loop with eBPF: every exit, named and decoded."


class _Parser(argparse.ArgumentParser):
    """argparse's parser, but a bad command line is one line on stderr (exit 2), as every other error."""

    def error(self, message: str):
        self.exit(int(ExitCode.USAGE), f"kvmtrace: error: {message} (see {self.prog} --help)\n")


def _count(text: str) -> int:
    """A whole number >= 1 (argparse type): anything else is a usage error."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1 or n > 1 << 20:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {1 << 20}")
    return n


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


#: The longest --duration: a year (a trace's times are int64 nanoseconds; 1e308 s is not a duration).
MAX_DURATION_S = 365 * 24 * 3600


def _duration(text: str) -> float:
    value = _positive(text)
    if value > MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"{text} s is more than a year ({MAX_DURATION_S:,} s); "
                                         "leave --duration out to record until Ctrl-C")
    return value


def _probability(text: str) -> float:
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a probability between 0 and 1 (exclusive), e.g. 0.01, not {text}")
    return value


def _non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (a percentage increase), not {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _at_least_one(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text!r}")
    return value


def _port(text: str) -> int:
    value = _count(text) if text.lstrip("-").isdigit() else None
    if value is None or not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port: give a port from 1 to 65535")
    return value


# ------------------------------------------------------------ argument groups

def add_domains(p: argparse.ArgumentParser, all_help: str, required: bool = True) -> None:
    """--domain NAME | --all: which running libvirt domains (one of them, ``required`` or not)."""
    which = p.add_mutually_exclusive_group(required=required)
    which.add_argument("--domain", "-d", help="domain name, UUID or ID (libvirt)")
    which.add_argument("--all", action="store_true", dest="all_domains", help=all_help)


def add_connect(p: argparse.ArgumentParser) -> None:
    """--connect URI: the libvirt connection."""
    p.add_argument("--connect", "-c", default=DEFAULT_URI, metavar="URI", help=f"libvirt URI (default {DEFAULT_URI})")


def add_recording(p: argparse.ArgumentParser, output_help: str) -> None:
    """How long to record, where to, what to keep, how much to say: record and launch."""
    p.add_argument("--duration", type=_duration, metavar="S",
                   help="stop after S seconds, at most a year (default: Ctrl-C, SIGTERM or the domain stopping)")
    p.add_argument("-o", "--output", metavar="FILE", help=output_help)
    p.add_argument("--values", action="store_true",
                   help="also store the data of port and MMIO accesses (guest data: off by default)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")


def add_format(p: argparse.ArgumentParser, choices: list[str], help: str | None = None, dest: str = "format") -> None:
    """--format/-f: the result's format, the first choice by default."""
    p.add_argument("--format", "-f", dest=dest, choices=choices, default=choices[0], help=help)


def _subparser(sub, name: str, help: str, description: str | None, run, requirements: bool = False):
    kw = {"epilog": REQUIREMENTS, "formatter_class": argparse.RawDescriptionHelpFormatter} if requirements else {}
    p = sub.add_parser(name, help=help, description=description, **kw)
    p.set_defaults(run=run)
    return p


# ---------------------------------------------------------------- subcommands

def _record(sub) -> None:
    r = _subparser(sub, "record", "record a running libvirt domain's run loop",
                   "Record a running libvirt domain's run loop into a trace file.", commands.record,
                   requirements=True)
    add_domains(r, "every running domain, kept apart per domain in the file", required=False)
    add_connect(r)
    add_recording(r, "trace file (default kvmtrace-DOMAIN-TIME.kvmtrace)")
    r.add_argument("--mode", choices=["events", "counts"], default="events",
                   help="events: every event to the file (default); counts: aggregate in the kernel, "
                        "written each second (cheapest; no per-event timeline)")
    r.add_argument("--mmio-addresses", type=_count, metavar="N",
                   help="counts mode: count MMIO per exact address for the first N addresses (default 4096), "
                        "any further address per 4 KiB page (counted exactly, and reported)")
    r.add_argument("--start", action="store_true",
                   help="start the defined, inactive --domain paused and record it from its first instruction")
    r.add_argument("--dry-run", action="store_true", help="build, attach and detach the probes, then exit")
    r.add_argument("--label", metavar="TEXT", help="name this run (compare/trend show it; default: the file name)")
    r.add_argument("--no-vcpu-time", dest="vcpu_time", action="store_false",
                   help="leave out the scheduler probes (sched_switch, sched_wakeup): no vcpu_time, and no "
                        "cost to the host's other context switches")


def _launch(sub) -> None:
    la = _subparser(sub, "launch", "create a domain from XML (as virsh create) and trace it from the start",
                    "Create a domain from its XML through libvirt (virDomainCreateXML), paused, with the probes "
                    "attached; record its creation (the VMM's KVM ioctls) and its run from the first instruction "
                    "until it stops.", commands.launch, requirements=True)
    la.add_argument("xml", metavar="DOM.xml")
    add_connect(la)
    add_recording(la, "trace file (default kvmtrace-DOMAIN-TIME.kvmtrace)")


def _top(sub) -> None:
    t = _subparser(sub, "top", "live exit rates per reason, device and vCPU",
                   "Live exit rates, counted in the kernel, refreshed every interval.", commands.top,
                   requirements=True)
    add_domains(t, "every running domain")
    add_connect(t)
    t.add_argument("--interval", "-i", type=_positive, default=1.0, metavar="S",
                   help="refresh every S seconds (default 1)")
    t.add_argument("--batch", "-b", action="store_true", help="print one snapshot after one interval and exit")
    t.add_argument("--iterations", "-n", type=_at_least_one, metavar="N", help="stop after N refreshes")
    t.add_argument("--log", "-l", metavar="FILE", help="append every interval to FILE (for a service)")
    t.add_argument("--csv", action="store_true", help="with --log: CSV rows (time_s,domain,dimension,key,rate,total)")


def _serve(sub) -> None:
    sv = _subparser(sub, "serve", "expose per-domain metrics for Prometheus",
                    "Serve per-domain exit, I/O and latency metrics at /metrics, counted in the kernel; every "
                    "scrape reads exact cumulative counts.", commands.serve, requirements=True)
    add_domains(sv, "every running domain (rescanned)")
    add_connect(sv)
    sv.add_argument("--port", "-p", type=_port, default=9464, help="TCP port (default 9464)")
    sv.add_argument("--listen", default="127.0.0.1", metavar="ADDR",
                    help="address to listen on (default 127.0.0.1; 0.0.0.0 for a remote Prometheus)")


def _compare(sub) -> None:
    c = _subparser(sub, "compare", "compare exit rates of two traces; exit 1 on a regression",
                   "Side by side per exit reason, port, MMIO address, device and vCPU: rates per second of guest "
                   "run time and per exit, the change, and whether it is significant (exact Poisson rate test, "
                   "Holm-corrected; or a bootstrap over time windows). Exits 1 when a significant increase above "
                   "the threshold exists, so CI can gate on it.", commands.compare)
    c.add_argument("base", metavar="BASE")
    c.add_argument("new", metavar="NEW")
    c.add_argument("--threshold", type=_non_negative, default=10.0, metavar="PCT",
                   help="flag increases above PCT percent, 0 or more (default 10)")
    c.add_argument("--alpha", type=_probability, default=0.01,
                   help="significance level after Holm, between 0 and 1 (default 0.01)")
    c.add_argument("--method", choices=["poisson", "bootstrap"], default="poisson")
    c.add_argument("--window", type=_positive, default=0.25, metavar="S",
                   help="window length for --method bootstrap (default 0.25 s)")
    add_format(c, ["text", "json"])


def _trend(sub) -> None:
    tr = _subparser(sub, "trend", "graph I/O exit rates across many runs, flag the outliers",
                    "One line per device or port across runs (ordered by label or recording time), the baseline "
                    "runs' band, and the runs above it marked.", commands.trend)
    tr.add_argument("traces", metavar="TRACE", nargs="+")
    tr.add_argument("-o", "--output", metavar="FILE", help="graph: .png, .svg or .html (default: table only)")
    tr.add_argument("--dimension", default="device",
                    choices=["userspace_exit", "exit", "port", "mmio", "device", "vcpu", "vcpu_time"],
                    help="what to graph (vcpu_time: each vCPU state's ms per second of the run, "
                         "traces recorded with the sched probes)")
    tr.add_argument("--order", choices=["label", "time"], default="label")
    tr.add_argument("--baseline", type=_at_least_one, metavar="N",
                    help="the first N runs are the baseline, at most the number of runs (default 3, or all runs "
                         "when fewer)")
    tr.add_argument("--log", action="store_true", help="logarithmic rate axis")
    add_format(tr, ["text", "json"])


def _import(sub) -> None:
    im = _subparser(sub, "import", "convert a text trace (trace-cmd, ftrace, perf script) to a kvmtrace trace",
                    "Read kvm_exit, kvm_entry, kvm_pio, kvm_mmio and kvm_userspace_exit lines from `trace-cmd "
                    "report`, raw ftrace (trace, trace_pipe) or `perf script` output of any kernel era, and write "
                    "a trace every command reads. Lines of other events are counted, unreadable lines counted and "
                    "reported.", commands.import_)
    im.add_argument("file", metavar="FILE")
    im.add_argument("-o", "--output", metavar="TRACE", help="default: FILE with .kvmtrace")
    im.add_argument("--format", dest="fmt", choices=["trace-cmd", "ftrace", "perf", "bare"],
                    help="the input's format (default: detected)")
    im.add_argument("--isa", choices=["vmx", "svm"], help="the host's ISA (default: from the exit names)")


def _export(sub) -> None:
    ex = _subparser(sub, "export", "export a trace as a Perfetto timeline, or traces as Parquet",
                    "--perfetto: the run loop as a native Perfetto trace (protobuf) for ui.perfetto.dev and "
                    "trace_processor: a track per vCPU thread, exits as slices named by reason with the kvm_run "
                    "fields as arguments, VMM service time nested inside. --chrome-json: the same timeline as "
                    "Chrome trace-event JSON, for chrome://tracing. --parquet / --dataset: every event with its "
                    "names decoded, and the header and trailer in the file metadata, for DuckDB, Spark or Trino; "
                    "--dataset adds any number of traces to a dataset partitioned by host, domain and date.",
                    commands.export)
    ex.add_argument("trace", metavar="FILE", nargs="+", help="trace file (several with --dataset)")
    out = ex.add_mutually_exclusive_group(required=True)
    out.add_argument("--perfetto", metavar="OUT", help="Perfetto protobuf trace (.pftrace; .gz compresses it)")
    out.add_argument("--chrome-json", metavar="OUT", help="Chrome trace-event JSON (.json or .json.gz)")
    out.add_argument("--parquet", metavar="OUT", help="one Parquet file of the trace's events")
    out.add_argument("--dataset", metavar="DIR",
                     help="add the traces to the Parquet dataset in DIR (host=/domain=/date= partitions)")
    ex.add_argument("--start", type=_number, metavar="S", help="from S seconds after the recording start")
    ex.add_argument("--end", type=_number, metavar="S", help="up to S seconds after the recording start")
    ex.add_argument("--max-events", type=_count, metavar="N", help="stop after N slices")


def _report(sub) -> None:
    rep = _subparser(sub, "report", "summarize a trace file",
                     "Exits by reason, port I/O and MMIO, split into kernel and userspace.", commands.report)
    rep.add_argument("trace", metavar="FILE")
    add_format(rep, ["text", "json", "markdown", "csv", "html"],
               help="html: one self-contained file with every table and plot, readable offline")
    rep.add_argument("--domain", "-d", help="only this domain of a multi-domain trace (record --all)")
    rep.add_argument("-o", "--output", metavar="FILE", help="write the report here instead of stdout")
    rep.add_argument("--width", type=_count, metavar="COLUMNS",
                     help="text: wrap at COLUMNS, 0 for no limit (default: the terminal's width on a terminal, "
                          "no limit with -o, 80 into a pipe)")


def _demo(sub) -> None:
    d = _subparser(sub, "demo", "start the demo guest, record it, report",
                   "Build the demo guest's ROM, start it through libvirt as linux10.0421, record it, print the "
                   "report.", commands.demo, requirements=True)
    add_connect(d)
    d.add_argument("--duration", type=_positive, default=3.0, metavar="S",
                   help="seconds to record the steady guest (default 3)")
    d.add_argument("--finite", action="store_true", help="run the guest's workload once instead of looping")
    d.add_argument("-o", "--output", metavar="FILE", default="kvmtrace-demo.kvmtrace")


#: The subcommands, in the order ``kvmtrace --help`` lists them.
SUBCOMMANDS = (_record, _launch, _top, _serve, _compare, _trend, _import, _export, _report, _demo)


def build_parser() -> argparse.ArgumentParser:
    """The `kvmtrace` parser; each subcommand's namespace carries its handler as ``run``."""
    p = _Parser(prog="kvmtrace", description=DESCRIPTION,
                                epilog=f"{REQUIREMENTS}\n\n{exit_code_table()}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"kvmtrace {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return p
