import json
import os
import stat

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from kvmtrace.errors import OutputError, TraceFileError
from kvmtrace.events import EVENT_DTYPE, EventKind
from kvmtrace.tracefile import FORMAT_VERSION, HEADER_KEY, SCHEMA, TraceWriter, read_trace


def _events(n, start=0):
    a = np.zeros(n, EVENT_DTYPE)
    a["ts_ns"] = np.arange(start, start + n)
    a["kind"] = EventKind.PIO
    a["port"] = 0x80
    return a


def _write(path, batches=3, n=101, close=True):
    w = TraceWriter(path, {"domains": [{"name": "g"}]})
    for i in range(batches):
        w.write(_events(n, i * n), {"lost_events": i, "start_time_ns": 0, "t_ns": 10})
    if close:
        w.close({"lost_events": 5, "stop_reason": "duration", "start_time_ns": 0, "end_time_ns": 2_000_000_000})
    return w


def test_round_trip_is_a_feather_file(tmp_path):
    p = tmp_path / "t.kvmtrace"
    _write(p)
    t = read_trace(p)
    assert t.complete and t.table.num_rows == 303
    assert t.trailer["stop_reason"] == "duration" and t.lost_events == 5
    assert t.trailer["events_written"] == 303
    assert t.header["format_version"] == FORMAT_VERSION
    df = pd.read_feather(p)  # pandas reads it directly
    assert len(df) == 303 and (df["port"] == 0x80).all()


def test_file_is_private(tmp_path):
    p = tmp_path / "t.kvmtrace"
    p.write_text("old")
    os.chmod(p, 0o644)
    _write(p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_unclosed_file_reads_every_flushed_batch(tmp_path):
    p = tmp_path / "t.kvmtrace"
    w = _write(p, close=False)  # as after SIGKILL: flushed batches, no trailer, no footer
    t = read_trace(p)
    assert not t.complete and t.table.num_rows == 303
    assert t.progress["events_written"] == 303 and t.lost_events == 2
    w.abandon()


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_file_reads_whole_batches_only(tmp_path, keep):
    p = tmp_path / "t.kvmtrace"
    _write(p, batches=10)
    data = p.read_bytes()
    cut = tmp_path / "cut.kvmtrace"
    cut.write_bytes(data[: int(len(data) * keep)])
    t = read_trace(cut)
    assert not t.complete
    assert t.table.num_rows % 101 == 0 and t.table.num_rows <= 1010
    assert (np.diff(t.table.column("ts_ns").to_numpy()) == 1).all()


def test_cut_inside_header(tmp_path):
    p = tmp_path / "t.kvmtrace"
    _write(p)
    cut = tmp_path / "cut.kvmtrace"
    cut.write_bytes(p.read_bytes()[:40])
    with pytest.raises(TraceFileError, match="cut short before its header"):
        read_trace(cut)


@pytest.mark.parametrize("content,match", [
    (b"", "is empty"),
    (b"\x00" * 4096, "not a kvmtrace trace file"),
    (b"# tracer: nop\n", "kvmtrace import"),
])
def test_foreign_files(tmp_path, content, match):
    p = tmp_path / "x"
    p.write_bytes(content)
    with pytest.raises(TraceFileError, match=match):
        read_trace(p)


def test_missing_file(tmp_path):
    with pytest.raises(TraceFileError, match="does not exist"):
        read_trace(tmp_path / "nope")


def test_other_arrow_file_is_refused(tmp_path):
    p = tmp_path / "other.arrow"
    pd.DataFrame({"a": [1, 2]}).to_feather(p)
    with pytest.raises(TraceFileError, match="not a kvmtrace trace"):
        read_trace(p)


def test_newer_format_is_refused(tmp_path):
    p = tmp_path / "new.kvmtrace"
    schema = SCHEMA.with_metadata({HEADER_KEY: json.dumps({"format_version": FORMAT_VERSION + 1})})
    with pa.ipc.new_file(str(p), schema) as w:
        w.write_table(pa.Table.from_batches([], schema=schema))
    with pytest.raises(TraceFileError, match="upgrade kvmtrace"):
        read_trace(p)


def test_unwritable_output(tmp_path):
    with pytest.raises(OutputError, match="cannot write the trace file"):
        TraceWriter(tmp_path / "no" / "such" / "dir" / "t.kvmtrace", {})
