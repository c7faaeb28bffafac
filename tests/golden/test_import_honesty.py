"""Imports that say what they are (issue 15 items 5-7): a compressed trace gets
advice that works, a foreign Arrow file is "not a kvmtrace trace", --isa
that contradicts the names is refused, nothing is dropped silently, and the
report of an imported trace labels what the text could not hold."""

from __future__ import annotations

import gzip
import json
import subprocess

import pyarrow as pa
import pyarrow.feather as feather
import pytest

from kvmtrace.errors import ExitCode

from ..support.cli import one_error_line, run
from ..support.paths import REAL_TRACES, SAMPLES

EXIT_ONLY = REAL_TRACES / "hip24-vmx-6x-kvm-exit-only.txt"
TWO_VMS = REAL_TRACES / "hip24-vmx-6.5-2vm-tracedat.native-render.txt"
real = pytest.mark.skipif(not EXIT_ONLY.exists(), reason="the real Intel traces (../shared/real-traces) are absent")


# -------------------------------------------------------------------- item 5

def test_compressed_trace_gets_advice_that_works(tmp_path):
    gz = tmp_path / "trace.kvmtrace.gz"
    gz.write_bytes(gzip.compress((SAMPLES / "demo-finite.kvmtrace").read_bytes()))
    r = run("import", str(gz))
    assert r.returncode == ExitCode.TRACE_FILE
    line = one_error_line(r)
    assert f"kvmtrace report {gz}" not in line and "gunzip -k" in line
    # and the advice works
    subprocess.run(["gunzip", "-k", str(gz)], check=True)
    assert run("report", str(tmp_path / "trace.kvmtrace")).returncode == 0


@pytest.mark.parametrize("compression", ["lz4", "uncompressed"])
@pytest.mark.parametrize("fmt", ["text", "json", "html"])
def test_foreign_feather_is_not_a_kvmtrace_trace(tmp_path, compression, fmt):
    p = tmp_path / "foreign.feather"
    feather.write_feather(pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]}), str(p), compression=compression)
    r = run("report", str(p), "--format", fmt)
    assert r.returncode == ExitCode.TRACE_FILE
    line = one_error_line(r)
    assert "not a kvmtrace trace" in line and "cut short" not in line


# -------------------------------------------------------------------- item 6

@real
def test_isa_that_contradicts_the_names_is_an_error(tmp_path):
    out = tmp_path / "svm.kvmtrace"
    r = run("import", str(EXIT_ONLY), "--isa", "svm", "-o", str(out))
    assert r.returncode == ExitCode.USAGE, r.stderr
    line = one_error_line(r)
    assert "--isa svm" in line and "VMX" in line and "--isa vmx" in line
    assert not out.exists()
    r = run("import", str(EXIT_ONLY), "--isa", "vmx", "-o", str(out))
    assert r.returncode == 0 and "14,132 kvm_exit" in r.stderr


def test_dropped_exits_are_counted_in_the_message_and_the_report(tmp_path):
    src = tmp_path / "plugin.txt"
    # the trace-cmd kvm plugin prints UNKNOWN for a code it has no name for: such an exit cannot be stored
    src.write_text("".join(f"qemu-system-x86-3927 [007] 302.5330{i:02d}: kvm_exit: reason HLT rip 0x1 info 0 0\n"
                           for i in range(7))
                   + "qemu-system-x86-3927 [007] 302.533080: kvm_exit: reason UNKNOWN rip 0x1 info 0 0\n" * 3)
    out = tmp_path / "t.kvmtrace"
    r = run("import", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "left out 3 of 10 kvm_exit lines" in r.stderr
    rep = run("report", str(out))
    assert "left out 3 of 10 kvm_exit lines" in rep.stdout
    assert json.loads(run("report", str(out), "--format", "json").stdout)["import_left_out"]["kvm_exit"] == 3


# -------------------------------------------------------------------- item 7

@real
def test_exit_only_import_has_no_guest_data(tmp_path):
    out = tmp_path / "t.kvmtrace"
    assert run("import", str(EXIT_ONLY), "-o", str(out)).returncode == 0
    text = run("report", str(out)).stdout
    assert "guest data values: captured" not in text
    assert "guest data values: none" in text
    assert json.loads(run("report", str(out), "--format", "json").stdout)["values_captured"] is False
    for fmt in ("markdown", "html"):
        assert "guest data values: captured" not in run("report", str(out), "--format", fmt).stdout


@real
def test_latency_says_the_texts_resolution_and_the_domains_say_no_tgid(tmp_path):
    out = tmp_path / "t.kvmtrace"
    r = run("import", str(TWO_VMS), "-o", str(out))
    assert r.returncode == 0
    assert "no tgid" in r.stderr
    text = run("report", str(out)).stdout
    assert "1 µs resolution" in text
    assert "no tgid" in text and "3 tasks" in text
    d = json.loads(run("report", str(out), "--format", "json").stdout)
    assert d["timestamp_resolution_ns"] == 1000
    for fmt in ("markdown", "html"):
        page = run("report", str(out), "--format", fmt).stdout
        assert "no tgid" in page and "1,000 ns resolution" in page, fmt
    recorded = json.loads(run("report", str(SAMPLES / "demo-finite.kvmtrace"), "--format", "json").stdout)
    assert "timestamp_resolution_ns" not in recorded


def test_unreadable_lines_are_in_the_report_not_only_the_import_message(tmp_path):
    """An unreadable line of the text is counted, and its line number given, in every form of the report."""
    src = tmp_path / "t.txt"
    good = "qemu-system-x86-3927 [007] 302.5330{:02d}: kvm_exit: reason HLT rip 0x1 info 0 0\n"
    src.write_text(good.format(1) + "qemu-system-x86-3927 [007] garbled beyond reading\n" + good.format(2)
                   + "qemu-system-x86-3927 [007] 302.533003: kvm_exit: reason\n" + good.format(4))
    out = tmp_path / "t.kvmtrace"
    r = run("import", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    d = json.loads(run("report", str(out), "--format", "json").stdout)
    assert d["import_unreadable"] == {"lines": 2, "examples": [2, 4]}
    note = "could not read 2 lines of the text (line 2, 4)"
    assert note in " ".join(run("report", str(out)).stdout.split())
    assert note in run("report", str(out), "--format", "markdown").stdout


def test_an_excerpts_sched_gaps_are_a_note_beside_the_vcpu_time(tmp_path):
    """The real trace-cmd excerpt lacks switch lines (19 out of sequence): the report says its vCPU time is partly a guess."""
    src = REAL_TRACES / "hip24-vmx-6x-tcreport-mixed-events.txt"
    if not src.exists():
        pytest.skip("the real Intel traces (../shared/real-traces) are absent")
    out = tmp_path / "t.kvmtrace"
    assert run("import", str(src), "-o", str(out)).returncode == 0
    d = json.loads(run("report", str(out), "--format", "json").stdout)
    assert d["vcpu_time"] and d["vcpu_time_note"].startswith("19 switches of vCPU threads out of sequence")
    assert "19 switches of vCPU threads out of sequence" in " ".join(run("report", str(out)).stdout.split())
