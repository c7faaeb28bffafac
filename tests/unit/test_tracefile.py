import json
import os
import stat

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from kvmtrace.errors import OutputError, TraceFileError
from kvmtrace.kernel.events import EVENT_DTYPE, EventKind
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


def _same_events(a, b):
    """read_trace(arrays=True)'s columns against the Arrow table of read_trace()."""
    assert a.table is None and b.arrays is None
    assert list(a.arrays) == b.table.column_names
    for name, col in a.arrays.items():
        assert col.dtype == b.table.schema.field(name).type.to_pandas_dtype()
        assert (col == b.table.column(name).to_numpy()).all()
    assert (a.complete, a.trailer, a.progress, a.note) == (b.complete, b.trailer, b.progress, b.note)


@pytest.mark.parametrize("keep", [None, 0.5, 0.8, 0.97])
def test_events_read_into_arrays_as_into_a_table(tmp_path, keep):
    p = tmp_path / "t.kvmtrace"
    w = _write(p, batches=10, close=keep != 0.97)
    if keep is not None:  # cut short: read as a stream, the row count unknown
        p.write_bytes(p.read_bytes()[: int(p.stat().st_size * keep)])
    _same_events(read_trace(p, ["ts_ns", "kind", "port"], arrays=True), read_trace(p, ["ts_ns", "kind", "port"]))
    _same_events(read_trace(p, arrays=True), read_trace(p))
    w.abandon()


def test_a_damaged_batch_ends_the_arrays_too(tmp_path):
    p = tmp_path / "t.kvmtrace"
    _write(p, batches=10)
    data = bytearray(p.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
    p.write_bytes(bytes(data))
    table = read_trace(p)
    assert "damaged" in table.note and 0 < table.table.num_rows < 1010
    _same_events(read_trace(p, arrays=True), table)


def test_a_row_count_no_array_can_hold_is_not_trusted():
    from kvmtrace.tracefile import _Batches

    b = _Batches(SCHEMA, True, rows=2**62)
    batch = pa.RecordBatch.from_arrays([pa.array(_events(5)[n]) for n in SCHEMA.names], schema=SCHEMA)
    b.add(batch)
    b.add(batch)
    out = b.result()["arrays"]
    assert (out["ts_ns"] == np.r_[np.arange(5), np.arange(5)]).all() and len(out["kind"]) == 10


@pytest.mark.parametrize("exits", [False, True])
def test_report_reads_exit_columns_only_for_traces_with_exits(tmp_path, exits):
    """load_for_report leaves out what no table of the trace uses, and reports the same."""
    from kvmtrace.present.report import render_json, render_text
    from kvmtrace.trace import EXIT_COLUMNS, load, load_for_report

    from ..support.evbuild import Ev

    e = Ev()
    for i in range(50):
        if exits:
            e.exit(30, vcpu=0)
        e.pio(0x80, True).uexit_io(0x80, True).run()
        if exits:
            e.entry(vcpu=0)
    f = e.frame()
    a = np.zeros(len(f), EVENT_DTYPE)
    for name in f.columns:
        a[name] = f[name].to_numpy()
    p = tmp_path / "t.kvmtrace"
    w = TraceWriter(p, {"domains": [{"name": "g", "pid": 100, "vcpu_threads": {"0": 100}}]})
    w.write(a[:60], {})
    w.write(a[60:], {})
    w.close({"start_time_ns": 0, "end_time_ns": 10**9})
    t = load_for_report(p)
    assert render_text(t) == render_text(load(p)) and render_json(t) == render_json(load(p))
    # A header without "probes" makes the vCPU-time section read the events whole (to look for
    # sched events); the other tables come from the batch-by-batch reduction (test_batchwise).
    del EXIT_COLUMNS


def test_count_events_reads_only_the_footer(tmp_path):
    from kvmtrace.tracefile import count_events

    p = tmp_path / "t.kvmtrace"
    _write(p, batches=4)
    assert count_events(p) == 404
    cut = tmp_path / "cut.kvmtrace"
    cut.write_bytes(p.read_bytes()[:-100])  # no footer: nothing to count from
    assert count_events(cut) == 0 and count_events(tmp_path / "nope") == 0
