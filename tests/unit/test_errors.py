"""One error hierarchy with one exit-code table (kvmtrace.errors), and the one
refusal of an analysis whose events a trace lacks (analysis.requirements)."""

from __future__ import annotations

import ast
import inspect
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from kvmtrace import errors
from kvmtrace.analysis.requirements import SINGLE_EVENTS, require_events
from kvmtrace.cli import build_parser
from kvmtrace.errors import ExitCode, KvmtraceError, MissingTraceEventError
from kvmtrace.kernel.events import AGGREGATE, EventKind
from kvmtrace.tables.tpformat import parse_format, read_format

from ..support.cli import run
from ..support.evbuild import Ev

PACKAGE = Path(errors.__file__).resolve().parent


def error_classes() -> list[type]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, BaseException)]


def test_every_error_is_a_kvmtrace_error_whose_code_is_in_the_table():
    assert len(error_classes()) > 20
    for cls in error_classes():
        assert issubclass(cls, KvmtraceError), cls
        assert isinstance(cls.exit_code, ExitCode), cls
        assert cls.exit_code not in (ExitCode.OK, ExitCode.REGRESSION), cls


def test_exceptions_are_defined_in_errors_only():
    """A module of kvmtrace raises the errors of kvmtrace.errors; it defines none of its own."""
    defined = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                if any(b.endswith(("Error", "Exception")) for b in bases):
                    defined.append(f"{path.relative_to(PACKAGE)}: {node.name}({', '.join(bases)})")
    assert defined == []


def test_exit_codes_are_distinct_and_scripts_keep_3_4_5():
    values = [int(c) for c in ExitCode]
    assert len(set(values)) == len(values)
    assert (errors.LibvirtError.exit_code, errors.OutputError.exit_code, errors.TraceFileError.exit_code) == (3, 4, 5)
    # once shared: usage and preflight (2), a damaged file and missing events (5)
    assert errors.PreflightError.exit_code == 7 != ExitCode.USAGE
    assert MissingTraceEventError.exit_code == 6 != errors.TraceFileError.exit_code
    assert errors.GuestBuildError.exit_code == errors.NotPrivilegedError.exit_code == ExitCode.PREFLIGHT


def test_builtin_bases_are_kept_for_callers_that_catch_them(tmp_path):
    with pytest.raises(FileNotFoundError) as missing:
        read_format("kvm", "kvm_exit", tmp_path)
    assert isinstance(missing.value, errors.TracefsError) and "mount -t tracefs" in str(missing.value)
    with pytest.raises(ValueError) as bad:
        parse_format("not a format file")
    assert isinstance(bad.value, errors.TraceFileError)
    assert issubclass(errors.TracefsPermissionError, PermissionError)


def test_help_lists_every_exit_code():
    text = build_parser().format_help()
    for code in ExitCode:
        assert f"{int(code):>3}  {code.meaning}" in text


def test_demo_without_nasm_ends_in_one_error_line(tmp_path):
    r = run("demo", env=dict(os.environ, PATH=str(tmp_path)), cwd=tmp_path)
    assert r.returncode == ExitCode.PREFLIGHT, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("kvmtrace: error: ")
    if os.geteuid() == 0:  # else the missing privileges are named first, with the same code
        assert last == "kvmtrace: error: nasm not found: apt-get install nasm"


# -------------------------------------------------------------- require_events

def io_loop() -> Ev:
    """A nested host's run loop: port writes, userspace exits, KVM_RUN; no kvm_exit."""
    e = Ev()
    for _ in range(3):
        e.pio(0x80, True).uexit_io(0x80, True).run()
    return e


def test_missing_events_are_named_with_what_the_trace_holds():
    frame = io_loop().frame()
    require_events(frame, [EventKind.PIO, EventKind.RUN], "ok")
    require_events(frame, [EventKind.EXIT, EventKind.PIO], "ok", any_of=True)
    with pytest.raises(MissingTraceEventError) as err:
        require_events(frame, [EventKind.EXIT, EventKind.PIO], "df_exits")
    e = err.value
    assert e.needed == ["kvm:kvm_exit"] and e.exit_code == ExitCode.MISSING_EVENTS
    assert str(e).startswith("df_exits needs kvm:kvm_exit, which this trace does not hold (it holds kvm:kvm_pio, "
                             "kvm:kvm_userspace_exit, kvm:kvm_fpu (KVM_RUN; syscalls:sys_enter_ioctl before Linux 5.15)): ")
    assert "nested hosts" in e.fix and "\n" not in str(e)
    with pytest.raises(MissingTraceEventError, match="needs one of kvm:kvm_exit, kvm:kvm_entry") as err:
        require_events(frame, [EventKind.EXIT, EventKind.ENTRY], "x", any_of=True, instead="try y")
    assert err.value.fix.endswith("; try y")


def test_the_fix_follows_what_was_probed():
    trace = SimpleNamespace(header={"probes": ["kvm_exit", "kvm_entry", "kvm_pio"]}, events=io_loop().frame())
    with pytest.raises(MissingTraceEventError, match="probed but did not fire") as err:
        require_events(trace, [EventKind.EXIT, EventKind.ENTRY], "plot")
    assert err.value.needed == ["kvm:kvm_exit", "kvm:kvm_entry"] and "nested hosts" in err.value.fix
    trace.header["probes"] = ["kvm_pio"]
    with pytest.raises(MissingTraceEventError, match="record again with these tracepoints"):
        require_events(trace, [EventKind.EXIT], "plot")


def test_a_counts_mode_recording_is_refused_unless_counts_do():
    counts = Ev().add(EventKind.PIO | AGGREGATE, port=0x80, value=23).add(EventKind.HIST, op=0, value=5).frame()
    with pytest.raises(MissingTraceEventError) as err:
        require_events(counts, (), "userspace_runs")
    assert err.value.needed == [SINGLE_EVENTS] and "--mode events" in err.value.fix
    assert err.value.holds == "it is a counts-mode recording: totals of kvm:kvm_pio and in-kernel latency histograms"
    require_events(counts, [EventKind.PIO], "plot_exit_mix", counts_ok=True)
    # a trace says its mode in its header: its events are not scanned for that
    trace = SimpleNamespace(header={"mode": "counts"}, events=io_loop().frame())
    with pytest.raises(MissingTraceEventError, match="record --mode events"):
        require_events(trace, (), "df_latency")
