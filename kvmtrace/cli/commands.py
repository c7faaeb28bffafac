"""What each `kvmtrace` subcommand does, given its parsed arguments.

One handler per subcommand, ``handler(args) -> int`` (an :class:`ExitCode`);
:mod:`kvmtrace.cli.parser` attaches each to its subcommand. Handlers import
what they use when they run, so ``kvmtrace --help`` and the light commands
stay fast and never load bcc or libvirt. ``args.argv`` is the command line
(``["kvmtrace", ...]``), which a recording stores in its trace file.
Results go to stdout or a file, progress to stderr.
"""

from __future__ import annotations

import math
import sys

from kvmtrace.cli.outputs import check_output, emit, output_error
from kvmtrace.errors import ExitCode, UsageError

#: --width 0: no wrap limit (a width no line reaches).
NO_WRAP = 100_000


def _record_options(args, **kw):
    from kvmtrace.record.session import RecordOptions

    return RecordOptions(uri=args.connect, duration=args.duration, output=args.output, capture_values=args.values,
                         progress_interval=0 if args.quiet else 1.0, argv=args.argv, **kw)


def record(args) -> int:
    from kvmtrace.record.session import record

    if args.domain is None and not args.all_domains and not args.dry_run:
        raise UsageError("record needs --domain NAME|UUID|ID or --all", "list domains with virsh list --all")
    if args.mmio_addresses is not None and args.mode != "counts":
        raise UsageError("--mmio-addresses applies to --mode counts only",
                         "add --mode counts, or drop it (events mode keeps every address)")
    opts = _record_options(args, domain=args.domain, all_domains=args.all_domains, dry_run=args.dry_run,
                           mode=args.mode, label=args.label, max_mmio_addresses=args.mmio_addresses,
                           vcpu_time=args.vcpu_time)
    if args.start:
        from kvmtrace.record.launch import start_defined

        if args.domain is None:
            raise UsageError("--start needs --domain NAME|UUID|ID")
        start_defined(opts)
    else:
        record(opts)
    return ExitCode.OK


def launch(args) -> int:
    from kvmtrace.record.launch import launch_xml

    launch_xml(args.xml, _record_options(args))
    return ExitCode.OK


def top(args) -> int:
    from kvmtrace.live.top import run_top

    return run_top(args.domain, args.connect, args.all_domains, args.interval, args.batch, args.iterations,
                   args.log, args.csv)


def serve(args) -> int:
    from kvmtrace.live.serve import run_serve

    return run_serve(args.domain, args.connect, args.all_domains, args.port, args.listen)


def import_(args) -> int:
    from kvmtrace.importer import default_output, import_text

    result = import_text(args.file, args.output or default_output(args.file), fmt=args.fmt, isa=args.isa)
    print(result.message(), file=sys.stderr)
    return ExitCode.OK


def export(args) -> int:
    if args.parquet or args.dataset:
        return _export_parquet(args)
    from kvmtrace.present.perfetto import export_perfetto

    which, out, fmt = (("--perfetto", args.perfetto, "proto") if args.perfetto else
                       ("--chrome-json", args.chrome_json, "json"))
    if len(args.trace) > 1:
        raise UsageError(f"{which} takes one trace, not {len(args.trace)}", "export them one at a time")
    args.trace = args.trace[0]
    if args.start is not None and args.end is not None and args.end < args.start:
        raise UsageError(f"--end {args.end:g} is before --start {args.start:g}", "give --end after --start")
    check_output(out, "the timeline")
    res = export_perfetto(args.trace, out, format=fmt, start_s=args.start, end_s=args.end,
                          max_events=args.max_events)
    where = "ui.perfetto.dev" if fmt == "proto" else "chrome://tracing or ui.perfetto.dev"
    print(f"kvmtrace: wrote {res.path} ({res.bytes:,} bytes) in {res.seconds:.1f} s; open it at {where}",
          file=sys.stderr)
    return ExitCode.OK


def _export_parquet(args) -> int:
    from kvmtrace.present.parquet import export_dataset, export_parquet

    which = "--parquet" if args.parquet else "--dataset"
    for opt, value in (("--start", args.start), ("--end", args.end), ("--max-events", args.max_events)):
        if value is not None:
            raise UsageError(f"{opt} is for --perfetto and --chrome-json; {which} exports every event",
                             f"leave out {opt}")
    if args.parquet:
        if len(args.trace) > 1:
            raise UsageError(f"--parquet takes one trace, not {len(args.trace)}", "use --dataset DIR for several")
        results = [export_parquet(args.trace[0], args.parquet)]
    else:
        results = export_dataset(args.trace, args.dataset)
    for r in results:
        print(f"kvmtrace: wrote {r.path} ({r.events:,} events, {r.bytes:,} bytes) in {r.seconds:.1f} s",
              file=sys.stderr)
    return ExitCode.OK


def _text_width(args) -> int:
    """The text report's wrap width: --width (0: no limit); else the terminal's width on a
    terminal, no limit into a file (-o), and 80 into a pipe (stable for scripts and diffs)."""
    if args.width is not None:
        return args.width or NO_WRAP
    if args.output:
        return NO_WRAP
    if sys.stdout.isatty():
        import shutil

        return shutil.get_terminal_size().columns
    return 80


def report(args) -> int:
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
    check_output(args.output, "the report")
    reuse_memory(count_events(args.trace))
    # Every form but html (its figures plot the events) is made batch by batch.
    trace = load(args.trace) if args.format == "html" else load_for_report(args.trace)
    if args.domain:
        trace = trace.for_domain(args.domain)
    if args.format in ("text", "json"):
        text = render_json(trace) if args.format == "json" else render_text(trace, width=_text_width(args))
    else:
        from kvmtrace.present.formats import render

        text = render(trace, args.format)
    emit(text, args.output, "the report")
    return ExitCode.OK


def compare(args) -> int:
    import json

    from kvmtrace.analysis.compare import (VCPU_TIME, compare, describe_cause, has_regression, regression_causes,
                                           to_json)
    from kvmtrace.present.compare import format_text
    from kvmtrace.trace import load_for_report

    window = args.window if args.method == "bootstrap" else None
    tb, tn = (load_for_report(p, rates=True, window_s=window) for p in (args.base, args.new))
    # MMIO by page in both when one run kept no addresses (an old counts recording).
    mmio = "page" if "page" in (tb.mmio_granularity, tn.mmio_granularity) else None
    # Each run's rate tables gathered batch by batch: memory independent of the runs' lengths.
    base, new = tb.run_rates(window, mmio), tn.run_rates(window, mmio)
    if window is not None:
        _check_windows(base, new, window)
    df = compare(base, new, threshold_pct=args.threshold, alpha=args.alpha, method=args.method)
    regression = has_regression(df)
    causes = regression_causes(df)
    if args.format == "json":
        print(json.dumps({"base": base.label, "new": new.label, "method": args.method, "alpha": args.alpha,
                          "threshold_pct": args.threshold, "regression": regression,
                          "mmio_granularity": base.mmio_granularity, "left_out": df.attrs.get("left_out", []),
                          "causes": [{"dimension": str(r["dimension"]), "key": str(r["key"]),
                                      "change_pct": round(float(r["change_pct"]), 3)
                                      if math.isfinite(r["change_pct"]) else None,
                                      **({"base_share_pct": round(r["base_rate"] / 10, 3),
                                          "new_share_pct": round(r["new_rate"] / 10, 3)}
                                         if r["dimension"] == VCPU_TIME else {})}
                                     for r in causes.to_dict("records")],
                          "rows": to_json(df)}, indent=2, allow_nan=False))
    else:
        if len(causes):
            print("regression in " + "; ".join(describe_cause(r) for r in causes.to_dict("records"))
                  + " (rows that contain it, by device, exit reason or vCPU, rose with it)")
        if mmio == "page":
            coarse = " and ".join(t.label for t in (tb, tn) if t.mmio_granularity == "page")
            print(f"note: MMIO compared per 4 KiB page ({coarse} counted no finer)")
        sys.stdout.write(format_text(df))
    return ExitCode.REGRESSION if regression else ExitCode.OK


def _check_windows(base, new, window: float) -> None:
    """--method bootstrap needs MIN_WINDOWS complete windows in each run: say so in options."""
    from kvmtrace.analysis.compare import MIN_WINDOWS

    for run in (base, new):
        n = int(math.floor(run.duration_s / window + 1e-9))
        if n < MIN_WINDOWS:
            longest = math.floor(min(base.duration_s, new.duration_s) / MIN_WINDOWS * 1000) / 1000
            fix = (f"give --window {longest:g} or less, or use --method poisson" if longest > 0
                   else "use --method poisson")
            raise UsageError(f"--method bootstrap needs at least {MIN_WINDOWS} windows of --window {window:g} s "
                             f"in each run, and run {run.label!r} lasts {run.duration_s:.3f} s ({n} windows)", fix)


def trend(args) -> int:
    import json

    from kvmtrace.analysis.trend import trend_frame
    from kvmtrace.present.trend import save_trend
    from kvmtrace.trace import load

    if args.baseline is not None and args.baseline > len(args.traces):
        raise UsageError(f"--baseline {args.baseline} is more runs than the {len(args.traces)} given",
                         f"give --baseline between 1 and {len(args.traces)}")
    check_output(args.output, "the trend graph")
    traces = [load(p) for p in args.traces]
    times = [(t.data.trailer or t.data.progress).get("start_wall", "") for t in traces]
    frame = trend_frame([t.run_rates() for t in traces], order_by=args.order, times=times,
                        baseline=args.baseline or min(3, len(traces)))
    if args.output:
        try:
            save_trend(frame, args.output, dimension=args.dimension, log=args.log)
        except OSError as e:
            raise output_error(args.output, e, "the trend graph") from e
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
    return ExitCode.OK


def demo(args) -> int:
    from kvmtrace.demo.guest import Workload
    from kvmtrace.demo.run import resume, start_demo, stop_demo
    from kvmtrace.present.report import render_text
    from kvmtrace.record.host import check_privileges
    from kvmtrace.record.session import RecordOptions, record
    from kvmtrace.trace import load

    check_privileges()
    workload = Workload(steady=not args.finite)
    print(f"kvmtrace: starting the demo guest ({'finite' if args.finite else 'steady'} workload)", file=sys.stderr)
    _conn, dom = start_demo(workload, args.connect, paused=True)
    try:
        opts = RecordOptions(domain=dom.UUIDString(), uri=args.connect, output=args.output,
                             duration=None if args.finite else args.duration, argv=args.argv)
        record(opts, on_attached=lambda _guests: resume(dom))
    finally:
        stop_demo(dom)
    sys.stdout.write(render_text(load(args.output)))
    print(f"kvmtrace: the trace is in {args.output}; report it again with: kvmtrace report {args.output}",
          file=sys.stderr)
    return ExitCode.OK
