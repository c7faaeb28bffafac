"""Bad input: one clear line on stderr naming the problem and the fix, a
non-zero exit (the checks that need no kernel; tests/kernel/test_cli_errors.py
has the rest)."""

from __future__ import annotations

from ..support.cli import one_error_line, run


def test_report_of_missing_file(tmp_path):
    r = run("report", str(tmp_path / "none.kvmtrace"))
    assert r.returncode != 0
    assert "does not exist" in one_error_line(r)


def test_report_of_foreign_file(tmp_path):
    p = tmp_path / "trace.txt"
    p.write_text("qemu-system-x86-1234 [001] d... 1.0: kvm_exit: reason IO_INSTRUCTION\n")
    r = run("report", str(p))
    assert r.returncode != 0
    assert "kvmtrace import" in one_error_line(r)


def test_record_needs_a_domain():
    r = run("record")
    assert r.returncode != 0
    assert "--domain" in one_error_line(r)
