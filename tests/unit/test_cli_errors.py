"""Bad input: one clear line on stderr naming the problem and the fix, a
non-zero exit (the checks that need no kernel; tests/kernel/test_cli_errors.py
has the rest)."""

from __future__ import annotations

from kvmtrace.errors import ExitCode

from ..support.cli import one_error_line, run
from ..support.paths import SAMPLES


def test_report_of_missing_file(tmp_path):
    r = run("report", str(tmp_path / "none.kvmtrace"))
    assert r.returncode == ExitCode.TRACE_FILE
    assert "does not exist" in one_error_line(r)


def test_report_of_foreign_file(tmp_path):
    p = tmp_path / "trace.txt"
    p.write_text("qemu-system-x86-1234 [001] d... 1.0: kvm_exit: reason IO_INSTRUCTION\n")
    r = run("report", str(p))
    assert r.returncode == ExitCode.TRACE_FILE
    assert "kvmtrace import" in one_error_line(r)


def test_record_needs_a_domain():
    r = run("record")
    assert r.returncode == ExitCode.USAGE
    assert "--domain" in one_error_line(r)


def test_missing_events_are_not_a_damaged_file(tmp_path):
    r = run("export", str(SAMPLES / "demo-counts.kvmtrace"), "--perfetto", str(tmp_path / "t.json"))
    assert r.returncode == ExitCode.MISSING_EVENTS == 6
    line = one_error_line(r)
    assert "counts-mode recording" in line and "--mode events" in line


def test_bad_option_values_are_usage_errors(tmp_path):
    trace = str(SAMPLES / "demo-finite.kvmtrace")
    for args in (["report", trace, "--domain", "no-such-domain"],
                 ["export", trace, "--perfetto", str(tmp_path / "t.json"), "--start", "2", "--end", "1"],
                 ["compare", trace, trace, "--alpha", "2"]):
        r = run(*args)
        assert r.returncode == ExitCode.USAGE, (args, r.stderr)
        one_error_line(r)
