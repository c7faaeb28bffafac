"""Bad input to every reader: a clear error or a clean partial result with a
count of what was skipped; never a traceback, a hang or unbounded memory."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmtrace.errors import KvmtraceError, TraceFileError
from kvmtrace.kernel.events import EVENT_DTYPE, EventKind
from kvmtrace.importer import import_text
from kvmtrace.trace import load
from kvmtrace.tracefile import TraceWriter, read_trace

from ..support.cli import kvmtrace_cmd

FUZZ = settings(max_examples=int(os.environ.get("KVMTRACE_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

GOOD_LINES = [
    " qemu-system-x86-3927  [007]   302.533069: kvm_exit:             reason EPT_VIOLATION rip 0xffffffff8b360413 info d82 0\n",
    "       CPU 0/KVM-60250 [007] 25135.606872: kvm_entry:            vcpu 0, rip 0xffffffffbb533d40\n",
    " qemu-system-x86-3927  [007] d..1.   302.533070: kvm_pio: pio_write at 0x80 size 1 count 1 val 0x0 \n",
    " qemu-system-x86-3927  [007]   302.533071: kvm_userspace_exit: reason KVM_EXIT_IO (2)\n",
]


def _valid_trace(path, n=5000):
    w = TraceWriter(path, {"domains": []})
    for i in range(4):
        a = np.zeros(n // 4, EVENT_DTYPE)
        a["ts_ns"] = np.arange(len(a)) + i * len(a)
        a["kind"] = EventKind.PIO
        w.write(a, {"start_time_ns": 0, "t_ns": 1})
    w.close({"start_time_ns": 0, "end_time_ns": 10**9, "lost_events": 0})
    return path.read_bytes()


def _read_cleanly(path):
    """read_trace and a full report: TraceFileError, or a result whose report renders."""
    try:
        t = load(path)
    except TraceFileError as e:
        assert str(e) and e.fix
        return None
    from kvmtrace.present.report import render_json, render_text

    try:
        render_text(t)
        render_json(t)
    except KvmtraceError:
        pass
    return t


@pytest.mark.parametrize("content", [b"", b"\0" * 65536, os.urandom(65536), b"ARROW1\0\0" + os.urandom(1000),
                                     b"ARROW1", b"PAR1" + os.urandom(100)])
def test_trace_reader_on_garbage(tmp_path, content):
    p = tmp_path / "x.kvmtrace"
    p.write_bytes(content)
    with pytest.raises(TraceFileError):
        read_trace(p)


@FUZZ
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8))
def test_trace_reader_on_truncated_and_edited_files(tmp_path, cut, flips):
    good = tmp_path / "good.kvmtrace"
    data = bytearray(good.read_bytes() if good.exists() else _valid_trace(good))
    data = data[: int(len(data) * cut)]
    for pos, byte in flips:
        if data:
            data[int(pos * (len(data) - 1))] = byte
    p = tmp_path / "bad.kvmtrace"
    p.write_bytes(bytes(data))
    t = _read_cleanly(p)
    if t is not None:
        assert len(t.events) <= 5000


def test_hand_edited_header_is_refused(tmp_path):
    p = tmp_path / "t.kvmtrace"
    data = _valid_trace(p)
    p.write_bytes(data.replace(b'"format_version": 1', b'"format_version": 9'))
    with pytest.raises(TraceFileError, match="upgrade kvmtrace"):
        read_trace(p)


@FUZZ
@given(lines=st.lists(st.one_of(st.sampled_from(GOOD_LINES), st.text(max_size=200)), max_size=60),
       raw=st.binary(max_size=200), encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_importer_on_garbage_text(tmp_path, lines, raw, encoding):
    p = tmp_path / "in.txt"
    try:
        text = "".join(lines).encode(encoding, errors="replace")
    except UnicodeEncodeError:
        text = b""
    p.write_bytes(text + raw)
    out = tmp_path / "out.kvmtrace"
    out.unlink(missing_ok=True)
    try:
        r = import_text(p, out)
    except TraceFileError as e:
        assert str(e) and e.fix
        assert not out.exists()
        return
    assert r.events >= 1 and r.lines >= r.events
    assert r.unknown_lines >= 0
    t = load(out)
    assert len(t.events) == r.events


def test_gigabyte_line_imports_in_bounded_memory(tmp_path):
    p = tmp_path / "huge.txt"
    chunk = b"x" * (1 << 20)
    with open(p, "wb") as f:
        f.write(GOOD_LINES[0].encode())
        for _ in range(1024):  # one line of 1 GiB
            f.write(chunk)
        f.write(b"\n")
        f.write(GOOD_LINES[0].encode())
    out = tmp_path / "huge.kvmtrace"
    # The peak is the child's own VmHWM (its mm's high-water mark, new at exec): ru_maxrss
    # would carry over the forking pytest's RSS across exec, which grows as the suite runs.
    code = ("from kvmtrace.importer import import_text; "
            f"r = import_text({str(p)!r}, {str(out)!r}); "
            "hwm = [int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM:')][0]; "
            "print(r.events, r.unknown_lines, hwm)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    events, unknown, maxrss_kib = map(int, res.stdout.split())
    assert (events, unknown) == (2, 1)
    assert maxrss_kib < 400 * 1024, f"peak memory {maxrss_kib / 1024:.0f} MiB"
    p.unlink()


def test_cli_gives_one_line_and_non_zero_exit_on_bad_files(tmp_path):
    cases = {"empty.kvmtrace": b"", "random.bin": os.urandom(4096), "text.txt": b"hello\nworld\n"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        for cmd in (["report", name], ["import", name, "-o", "o.kvmtrace"], ["export", name, "--perfetto", "o.json"],
                    ["compare", name, name], ["trend", name]):
            r = subprocess.run(kvmtrace_cmd(*cmd), capture_output=True, text=True, cwd=tmp_path, timeout=60)
            if cmd[0] == "import" and name == "random.bin":
                pass  # random bytes may hold a NUL: binary; either way one clear line
            assert r.returncode != 0, (cmd, r.stdout)
            lines = [l for l in r.stderr.splitlines() if l.strip()]
            assert len(lines) == 1 and lines[0].startswith("kvmtrace: error: "), (cmd, r.stderr)
