"""The `kvmtrace` command: record, report, demo."""

from __future__ import annotations

import argparse
import math
import sys

from kvmtrace import __version__
from kvmtrace.errors import KvmtraceError
from kvmtrace.record.host import REQUIREMENTS

DESCRIPTION = "Trace a KVM guest's vCPU run loop with eBPF: every exit, named and decoded."


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from kvmtrace.record.domain import DEFAULT_URI

    p = argparse.ArgumentParser(prog="kvmtrace", description=DESCRIPTION, epilog=REQUIREMENTS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"kvmtrace {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    r = sub.add_parser("record", help="record a running libvirt domain's run loop",
                       description="Record a running libvirt domain's run loop into a trace file.",
                       epilog=REQUIREMENTS, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = r.add_mutually_exclusive_group()
    which.add_argument("--domain", "-d", help="domain name, UUID or ID (libvirt)")
    which.add_argument("--all", action="store_true", dest="all_domains",
                       help="every running domain, kept apart per domain in the file")
    r.add_argument("--connect", "-c", default=DEFAULT_URI, metavar="URI", help=f"libvirt URI (default {DEFAULT_URI})")
    r.add_argument("--duration", type=_positive, metavar="S", help="stop after S seconds (default: Ctrl-C, SIGTERM or the domain stopping)")
    r.add_argument("-o", "--output", metavar="FILE", help="trace file (default kvmtrace-DOMAIN-TIME.kvmtrace)")
    r.add_argument("--mode", choices=["events", "counts"], default="events",
                   help="events: every event to the file (default); counts: aggregate in the kernel, "
                        "written each second (cheapest; no per-event timeline)")
    r.add_argument("--values", action="store_true", help="also store the data of port and MMIO accesses (guest data: off by default)")
    r.add_argument("--start", action="store_true",
                   help="start the defined, inactive --domain paused and record it from its first instruction")
    r.add_argument("--dry-run", action="store_true", help="build, attach and detach the probes, then exit")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    r.add_argument("--label", metavar="TEXT", help="name this run (compare/trend show it; default: the file name)")

    la = sub.add_parser("launch", help="create a domain from XML (as virsh create) and trace it from the start",
                        description="Create a domain from its XML through libvirt (virDomainCreateXML), "
                                    "paused, with the probes attached; record its creation (the VMM's KVM "
                                    "ioctls) and its run from the first instruction until it stops.",
                        epilog=REQUIREMENTS, formatter_class=argparse.RawDescriptionHelpFormatter)
    la.add_argument("xml", metavar="DOM.xml")
    la.add_argument("--connect", "-c", default=DEFAULT_URI, metavar="URI")
    la.add_argument("--duration", type=_positive, metavar="S")
    la.add_argument("-o", "--output", metavar="FILE")
    la.add_argument("--values", action="store_true")
    la.add_argument("--quiet", "-q", action="store_true")

    t = sub.add_parser("top", help="live exit rates per reason, device and vCPU",
                       description="Live exit rates, counted in the kernel, refreshed every interval.",
                       epilog=REQUIREMENTS, formatter_class=argparse.RawDescriptionHelpFormatter)
    tw = t.add_mutually_exclusive_group(required=True)
    tw.add_argument("--domain", "-d")
    tw.add_argument("--all", action="store_true", dest="all_domains", help="every running domain")
    t.add_argument("--connect", "-c", default=DEFAULT_URI, metavar="URI")
    t.add_argument("--interval", "-i", type=_positive, default=1.0, metavar="S", help="refresh every S seconds (default 1)")
    t.add_argument("--batch", "-b", action="store_true", help="print one snapshot after one interval and exit")
    t.add_argument("--iterations", "-n", type=int, metavar="N", help="stop after N refreshes")
    t.add_argument("--log", "-l", metavar="FILE", help="append every interval to FILE (for a service)")
    t.add_argument("--csv", action="store_true", help="with --log: CSV rows (time_s,domain,dimension,key,rate,total)")

    sv = sub.add_parser("serve", help="expose per-domain metrics for Prometheus",
                        description="Serve per-domain exit, I/O and latency metrics at /metrics, counted in the "
                                    "kernel; every scrape reads exact cumulative counts.",
                        epilog=REQUIREMENTS, formatter_class=argparse.RawDescriptionHelpFormatter)
    sw = sv.add_mutually_exclusive_group(required=True)
    sw.add_argument("--domain", "-d")
    sw.add_argument("--all", action="store_true", dest="all_domains", help="every running domain (rescanned)")
    sv.add_argument("--connect", "-c", default=DEFAULT_URI, metavar="URI")
    sv.add_argument("--port", "-p", type=int, default=9464, help="TCP port (default 9464)")
    sv.add_argument("--listen", default="127.0.0.1", metavar="ADDR",
                    help="address to listen on (default 127.0.0.1; 0.0.0.0 for a remote Prometheus)")

    cmp_ = sub.add_parser("compare", help="compare exit rates of two traces; exit 1 on a regression",
                          description="Side by side per exit reason, port, MMIO address, device and vCPU: rates "
                                      "per second of guest run time and per exit, the change, and whether it is "
                                      "significant (exact Poisson rate test, Holm-corrected; or a bootstrap over "
                                      "time windows). Exits 1 when a significant increase above the threshold "
                                      "exists, so CI can gate on it.")
    cmp_.add_argument("base", metavar="BASE")
    cmp_.add_argument("new", metavar="NEW")
    cmp_.add_argument("--threshold", type=float, default=10.0, metavar="PCT",
                      help="flag increases above PCT percent (default 10)")
    cmp_.add_argument("--alpha", type=float, default=0.01, help="significance level after Holm (default 0.01)")
    cmp_.add_argument("--method", choices=["poisson", "bootstrap"], default="poisson")
    cmp_.add_argument("--window", type=_positive, default=0.25, metavar="S",
                      help="window length for --method bootstrap (default 0.25 s)")
    cmp_.add_argument("--format", "-f", choices=["text", "json"], default="text")

    tr = sub.add_parser("trend", help="graph I/O exit rates across many runs, flag the outliers",
                        description="One line per device or port across runs (ordered by label or recording "
                                    "time), the baseline runs' band, and the runs above it marked.")
    tr.add_argument("traces", metavar="TRACE", nargs="+")
    tr.add_argument("-o", "--output", metavar="FILE", help="graph: .png, .svg or .html (default: table only)")
    tr.add_argument("--dimension", default="device",
                    choices=["userspace_exit", "exit", "port", "mmio", "device", "vcpu"])
    tr.add_argument("--order", choices=["label", "time"], default="label")
    tr.add_argument("--baseline", type=int, default=3, metavar="N", help="the first N runs are the baseline (3)")
    tr.add_argument("--log", action="store_true", help="logarithmic rate axis")
    tr.add_argument("--format", "-f", choices=["text", "json"], default="text")

    im = sub.add_parser("import", help="convert a text trace (trace-cmd, ftrace, perf script) to a kvmtrace trace",
                        description="Read kvm_exit, kvm_entry, kvm_pio, kvm_mmio and kvm_userspace_exit lines "
                                    "from `trace-cmd report`, raw ftrace (trace, trace_pipe) or `perf script` "
                                    "output of any kernel era, and write a trace every command reads. Lines of "
                                    "other events are counted, unreadable lines counted and reported.")
    im.add_argument("file", metavar="FILE")
    im.add_argument("-o", "--output", metavar="TRACE", help="default: FILE with .kvmtrace")
    im.add_argument("--format", dest="fmt", choices=["trace-cmd", "ftrace", "perf", "bare"],
                    help="the input's format (default: detected)")
    im.add_argument("--isa", choices=["vmx", "svm"], help="the host's ISA (default: from the exit names)")

    ex = sub.add_parser("export", help="export a trace as a Perfetto / chrome://tracing timeline",
                        description="Write the run loop as Chrome trace-event JSON for ui.perfetto.dev: a "
                                    "track per vCPU thread, exits as slices named by reason with the kvm_run "
                                    "fields as arguments, VMM service time nested inside.")
    ex.add_argument("trace", metavar="FILE")
    ex.add_argument("--perfetto", metavar="OUT", required=True, help="output .json or .json.gz")
    ex.add_argument("--start", type=float, metavar="S", help="from S seconds after the recording start")
    ex.add_argument("--end", type=float, metavar="S", help="up to S seconds after the recording start")
    ex.add_argument("--max-events", type=int, metavar="N", help="stop after N slices")

    rep = sub.add_parser("report", help="summarize a trace file",
                         description="Exits by reason, port I/O and MMIO, split into kernel and userspace.")
    rep.add_argument("trace", metavar="FILE")
    rep.add_argument("--format", "-f", choices=["text", "json", "markdown", "csv", "html"], default="text",
                     help="html: one self-contained file with every table and plot, readable offline")
    rep.add_argument("--domain", "-d", help="only this domain of a multi-domain trace (record --all)")
    rep.add_argument("-o", "--output", metavar="FILE", help="write the report here instead of stdout")

    d = sub.add_parser("demo", help="start the demo guest, record it, report",
                       description="Build the demo guest's ROM, start it through libvirt as "
                                   "linux10.0421, record it, print the report.",
                       epilog=REQUIREMENTS, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--connect", "-c", default=DEFAULT_URI, metavar="URI")
    d.add_argument("--duration", type=_positive, default=3.0, metavar="S", help="seconds to record the steady guest (default 3)")
    d.add_argument("--finite", action="store_true", help="run the guest's workload once instead of looping")
    d.add_argument("-o", "--output", metavar="FILE", default="kvmtrace-demo.kvmtrace")
    return p


def _cmd_record(args, argv) -> int:
    from kvmtrace.record.session import RecordOptions, record

    if args.domain is None and not args.all_domains and not args.dry_run:
        raise KvmtraceError("record needs --domain NAME|UUID|ID or --all", "list domains with virsh list --all")
    opts = RecordOptions(domain=args.domain, all_domains=args.all_domains, uri=args.connect,
                         duration=args.duration, output=args.output,
                         capture_values=args.values, dry_run=args.dry_run, mode=args.mode,
                         progress_interval=0 if args.quiet else 1.0, argv=argv, label=args.label)
    if args.start:
        from kvmtrace.record.launch import start_defined

        if args.domain is None:
            raise KvmtraceError("--start needs --domain NAME|UUID|ID")
        start_defined(opts)
    else:
        record(opts)
    return 0


def _cmd_launch(args, argv) -> int:
    from kvmtrace.record.launch import launch_xml
    from kvmtrace.record.session import RecordOptions

    launch_xml(args.xml, RecordOptions(uri=args.connect, duration=args.duration, output=args.output,
                                       capture_values=args.values,
                                       progress_interval=0 if args.quiet else 1.0, argv=argv))
    return 0


def _emit(text: str, output: str | None) -> None:
    if output:
        with open(output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


def _cmd_report(args) -> int:
    import gc

    # Importing pandas makes some 10^5 objects, all of them kept: the cyclic
    # collector would walk them again and again while they are made, and once
    # more at exit (80 ms of every report). Frozen, it leaves them alone.
    gc.disable()
    from kvmtrace.present.report import render_json, render_text
    from kvmtrace.trace import load, load_for_report, reuse_memory
    from kvmtrace.tracefile import count_events

    gc.freeze()
    gc.enable()
    reuse_memory(count_events(args.trace))
    trace = load_for_report(args.trace) if args.format in ("text", "json") else load(args.trace)
    if args.domain:
        trace = trace.for_domain(args.domain)
    if args.format in ("text", "json"):
        text = render_json(trace) if args.format == "json" else render_text(trace)
    else:
        from kvmtrace.present.formats import render

        text = render(trace, args.format)
    _emit(text, args.output)
    return 0


def _cmd_compare(args) -> int:
    import json

    from kvmtrace.analysis.compare import compare, format_text, has_regression, to_json
    from kvmtrace.trace import load

    window = args.window if args.method == "bootstrap" else None
    base, new = load(args.base).run_rates(window), load(args.new).run_rates(window)
    df = compare(base, new, threshold_pct=args.threshold, alpha=args.alpha, method=args.method)
    regression = has_regression(df)
    causes = _regression_causes(df)
    if args.format == "json":
        print(json.dumps({"base": base.label, "new": new.label, "method": args.method, "alpha": args.alpha,
                          "threshold_pct": args.threshold, "regression": regression,
                          "causes": [{"dimension": str(r["dimension"]), "key": str(r["key"]),
                                      "change_pct": round(float(r["change_pct"]), 3)
                                      if math.isfinite(r["change_pct"]) else None}
                                     for r in causes.to_dict("records")],
                          "rows": to_json(df)}, indent=2, allow_nan=False))
    else:
        if len(causes):
            print("regression in " + "; ".join(f"{r['dimension']} {r['key']} ({r['change_pct']:+.1f}%)"
                                               for r in causes.to_dict("records"))
                  + " (rows that contain it, by device, exit reason or vCPU, rose with it)")
        sys.stdout.write(format_text(df))
    return 1 if regression else 0


def _regression_causes(df):
    """The finest-grained regressions: port, MMIO and hardware-exit rows.

    A port whose rate rose also raises its device, its KVM_EXIT reason and
    its vCPU's totals; the cause is the port. Where no fine row rose, the
    coarser rows are the causes.
    """
    reg = df[df["regression"]]
    fine = reg[reg["dimension"].astype(str).isin(["port", "mmio", "exit"])]
    return fine if len(fine) else reg


def _cmd_trend(args) -> int:
    import json

    from kvmtrace.analysis.trend import save_trend, trend_frame
    from kvmtrace.trace import load

    traces = [load(p) for p in args.traces]
    times = [(t.data.trailer or t.data.progress).get("start_wall", "") for t in traces]
    frame = trend_frame([t.run_rates() for t in traces], order_by=args.order, times=times,
                        baseline=min(args.baseline, len(traces)))
    if args.output:
        save_trend(frame, args.output, dimension=args.dimension, log=args.log)
        print(f"kvmtrace: trend graph of {len(traces)} runs in {args.output}", file=sys.stderr)
    flagged = frame[frame["flagged"]]
    if args.format == "json":
        cols = ["run", "dimension", "key", "rate", "band_lo", "band_hi", "flagged"]
        print(json.dumps({"runs": [str(r) for r in frame["run"].cat.categories],
                          "flagged": [{c: (v.item() if hasattr(v, "item") else str(v)) for c, v in r.items()}
                                      for r in flagged[cols].to_dict("records")]}, indent=2))
    else:
        if len(flagged) == 0:
            print(f"no run above its baseline band ({len(traces)} runs)")
        for r in flagged.to_dict("records"):
            print(f"{r['run']}: {r['dimension']} {r['key']} at {r['rate']:,.1f}/s, above the baseline band "
                  f"{r['band_lo']:,.1f}..{r['band_hi']:,.1f}/s")
    return 0


def _cmd_demo(args, argv) -> int:
    from kvmtrace.demo.run import resume, start_demo, stop_demo
    from kvmtrace.demo.guest import Workload
    from kvmtrace.record.host import check_privileges
    from kvmtrace.record.session import RecordOptions, record
    from kvmtrace.present.report import render_text
    from kvmtrace.trace import load

    check_privileges()
    workload = Workload(steady=not args.finite)
    print(f"kvmtrace: starting the demo guest ({'finite' if args.finite else 'steady'} workload)", file=sys.stderr)
    conn, dom = start_demo(workload, args.connect, paused=True)
    try:
        opts = RecordOptions(domain=dom.UUIDString(), uri=args.connect, output=args.output,
                             duration=None if args.finite else args.duration, argv=argv)
        record(opts, on_attached=lambda _guests: resume(dom))
    finally:
        stop_demo(dom)
    sys.stdout.write(render_text(load(args.output)))
    print(f"kvmtrace: the trace is in {args.output}; report it again with: kvmtrace report {args.output}",
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "record":
            return _cmd_record(args, ["kvmtrace", *argv])
        if args.command == "top":
            from kvmtrace.live.top import run_top

            return run_top(args.domain, args.connect, args.all_domains, args.interval, args.batch,
                           args.iterations, args.log, args.csv)
        if args.command == "serve":
            from kvmtrace.live.serve import run_serve

            return run_serve(args.domain, args.connect, args.all_domains, args.port, args.listen)
        if args.command == "launch":
            return _cmd_launch(args, ["kvmtrace", *argv])
        if args.command == "import":
            from kvmtrace.importer.text import default_output, import_text

            result = import_text(args.file, args.output or default_output(args.file), fmt=args.fmt, isa=args.isa)
            print(result.message(), file=sys.stderr)
            return 0
        if args.command == "export":
            from kvmtrace.present.perfetto import export_perfetto

            res = export_perfetto(args.trace, args.perfetto, start_s=args.start, end_s=args.end,
                                  max_events=args.max_events)
            print(f"kvmtrace: wrote {res.path} ({res.bytes:,} bytes) in {res.seconds:.1f} s; "
                  "open it at ui.perfetto.dev", file=sys.stderr)
            return 0
        if args.command == "compare":
            return _cmd_compare(args)
        if args.command == "trend":
            return _cmd_trend(args)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "demo":
            return _cmd_demo(args, ["kvmtrace", *argv])
    except KvmtraceError as e:
        print(f"kvmtrace: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("kvmtrace: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    return 2


if __name__ == "__main__":
    sys.exit(main())
