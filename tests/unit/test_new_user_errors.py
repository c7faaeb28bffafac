"""What a new user hits (issue 15 items 1 and 4): a bad output path or option
value is one line on stderr that names the problem (and the option), with its
exit code from kvmtrace.errors.ExitCode, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from kvmtrace.errors import ExitCode

from ..support.cli import kvmtrace_cmd, one_error_line, run
from ..support.paths import SAMPLES

TRACE = str(SAMPLES / "demo-finite.kvmtrace")
SERIES = sorted(str(p) for p in (SAMPLES / "series").glob("*.kvmtrace"))


# ------------------------------------------------------------------ item 1: outputs

@pytest.mark.parametrize("args", [
    ["report", TRACE, "-o", "/nonexistent-dir/r.txt"],
    ["report", TRACE, "--format", "html", "-o", "/nonexistent-dir/r.html"],
    ["trend", *SERIES[:3], "-o", "/nonexistent-dir/t.png"],
    ["export", TRACE, "--perfetto", "/nonexistent-dir/t.pftrace"],
    ["export", TRACE, "--chrome-json", "/nonexistent-dir/t.json"],
])
def test_output_into_a_missing_directory(args):
    r = run(*args)
    assert r.returncode == ExitCode.OUTPUT, r.stderr
    line = one_error_line(r)
    assert "/nonexistent-dir" in line and "does not exist" in line


def test_output_is_a_directory(tmp_path):
    for args in (["report", TRACE, "-o", str(tmp_path)], ["trend", *SERIES[:3], "-o", str(tmp_path)]):
        r = run(*args)
        assert r.returncode == ExitCode.OUTPUT, r.stderr
        assert "is a directory" in one_error_line(r)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the CLI as the unprivileged user nobody")
def test_unwritable_output_as_an_unprivileged_user(tmp_path):
    tmp_path.chmod(0o755)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)  # root's, like root's home
    cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
           *kvmtrace_cmd("report", TRACE, "-o", str(locked / "r.txt"))]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == ExitCode.OUTPUT, r.stderr
    line = one_error_line(r)
    assert "permission denied" in line.lower() and str(locked) in line


@pytest.mark.parametrize("args, option", [
    (["export", TRACE, "--perfetto", "x.pftrace", "--start", "5", "--end", "1"], "--end"),
    (["export", TRACE, "--perfetto", "x.pftrace", "--max-events", "-1"], "--max-events"),
    (["serve", "--all", "--port", "99999"], "--port"),
    (["serve", "--all", "--port", "-1"], "--port"),
    (["report", TRACE, "--width", "-3"], "--width"),
])
def test_bad_values_are_one_line(tmp_path, args, option):
    r = run(*args, cwd=tmp_path)
    assert r.returncode == ExitCode.USAGE, r.stderr
    assert option in one_error_line(r)
    assert not list(tmp_path.iterdir())


def test_argparse_errors_are_one_line_too():
    r = run("report")
    assert r.returncode == ExitCode.USAGE
    line = one_error_line(r)
    assert "FILE" in line and "kvmtrace report --help" in line


# ----------------------------------------------------------------- item 4: usage = 2

@pytest.mark.parametrize("args, option", [
    (["compare", TRACE, TRACE, "--alpha", "7"], "--alpha"),
    (["compare", TRACE, TRACE, "--alpha", "0"], "--alpha"),
    (["compare", TRACE, TRACE, "--threshold", "-20"], "--threshold"),
    (["compare", TRACE, TRACE, "--threshold", "nan"], "--threshold"),
    (["record", "--all", "--duration", "nan"], "--duration"),
    (["record", "--all", "--duration", "inf"], "--duration"),
    (["record", "--all", "--duration", "1e308"], "--duration"),
    (["trend", *SERIES, "--baseline", "20"], "--baseline"),
    (["trend", *SERIES, "--baseline", "0"], "--baseline"),
    (["compare", TRACE, TRACE, "--window", "nan"], "--window"),
])
def test_usage_errors_exit_2_and_name_the_option(args, option):
    r = run(*args)
    assert r.returncode == ExitCode.USAGE == 2, r.stderr
    assert option in one_error_line(r)


def test_bootstrap_without_window_answers_in_command_line_spelling():
    r = run("compare", SERIES[0], SERIES[1], "--method", "bootstrap")
    assert r.returncode == ExitCode.USAGE, r.stderr
    line = one_error_line(r)
    assert "--window" in line and "--method poisson" in line
    assert "method=" not in line and "'poisson'" not in line


def test_the_analysis_refuses_a_negative_threshold_too():
    from kvmtrace.analysis.compare import compare
    from kvmtrace.errors import RateTableError
    from kvmtrace.trace import load

    a, b = (load(p).run_rates() for p in SERIES[:2])
    with pytest.raises(RateTableError, match="threshold_pct"):
        compare(a, b, threshold_pct=-20)
    assert RateTableError.exit_code == ExitCode.USAGE
