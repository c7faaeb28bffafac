"""Parquet export of tiny hand-built traces: decoded names per event, the
header and trailer in the metadata, hive partitions, and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from kvmtrace.errors import OutputError, TraceFileError
from kvmtrace.kernel.events import AGGREGATE, EVENT_DTYPE, EventKind, Latency, MmioOp
from kvmtrace.present.parquet import (COMPRESSION, DECODED, HEADER_KEY, SOURCE_KEY, TRAILER_KEY, export_dataset,
                                      export_parquet, read_metadata)
from kvmtrace.tables.ioctls import KvmIoctl
from kvmtrace.tracefile import TraceWriter

from ..support.evbuild import Ev

HPET = 0xFED00000
START, START_WALL = 1_000, "2026-11-25T23:59:59.999999+00:00"
DOMAIN = {"name": "web1", "uuid": "00000000-0000-0000-0000-000000000001", "pid": 100,
          "vcpu_threads": {"0": 100, "1": 101}}


def _array(frame: pd.DataFrame) -> np.ndarray:
    a = np.zeros(len(frame), EVENT_DTYPE)
    for c in frame.columns:
        a[c] = frame[c].to_numpy()
    return a


def write(path: Path, frame: pd.DataFrame, domains=(DOMAIN,), host="h1", close=True, wall=START_WALL) -> Path:
    w = TraceWriter(path, {"domains": list(domains), "host": {"hostname": host}})
    w.write(_array(frame), {"start_time_ns": START, "start_wall": wall})
    if close:
        w.close({"start_time_ns": START, "start_wall": wall, "end_time_ns": 10**9, "lost_events": 0})
    else:
        w.abandon()  # cut short: no trailer, no footer
    return path


def run_loop() -> pd.DataFrame:
    ev = Ev()
    ev.add(EventKind.IOCTL, reason=int(KvmIoctl.CREATE_VCPU))
    ev.pio(0x80, write=True).uexit_io(0x80, write=True).run()
    ev.mmio(HPET, MmioOp.UNSATISFIED_READ).uexit_mmio(HPET, write=False).run().mmio(HPET, MmioOp.READ)
    ev.pio(0x40, write=False, tid=101)
    ev.exit(30, isa=1, vcpu=1, tid=101).entry(vcpu=1, tid=101)
    ev.pio(0x71, write=False, pid=999, tid=999)  # no recorded domain
    return ev.frame()


@pytest.fixture
def table(tmp_path):
    res = export_parquet(write(tmp_path / "t.kvmtrace", run_loop()), tmp_path / "t.parquet")
    assert res.events == 12 and res.bytes == (tmp_path / "t.parquet").stat().st_size
    return pq.read_table(tmp_path / "t.parquet")


#: kind, domain, reason_name, isa_name, direction, device of each run_loop() event.
NAMES = [
    ["IOCTL", "web1", "KVM_CREATE_VCPU", None, None, None],
    ["PIO", "web1", None, None, "write", "ioport80"],
    ["USERSPACE_EXIT", "web1", "IO", None, "write", "ioport80"],
    ["RUN", "web1", None, None, None, None],
    ["MMIO", "web1", None, None, "unsatisfied-read", "hpet"],
    ["USERSPACE_EXIT", "web1", "MMIO", None, "read", "hpet"],
    ["RUN", "web1", None, None, None, None],
    ["MMIO", "web1", None, None, "read", "hpet"],
    ["PIO", "web1", None, None, "read", "kvm-pit"],
    ["EXIT", "web1", "IO_INSTRUCTION", "VMX", None, None],
    ["ENTRY", "web1", None, None, None, None],
    ["PIO", None, None, None, "read", "rtc"],
]


def _names(df: pd.DataFrame, cols=("kind", "domain", "reason_name", "isa_name", "direction", "device")):
    got = df[list(cols)].astype(object)
    return got.where(got.notna(), None).values.tolist()


def test_one_row_per_event_with_its_names(table):
    assert _names(table.to_pandas()) == NAMES


def test_decoded_columns_are_dictionaries(table):
    for name in DECODED:
        t = table.schema.field(name).type
        assert pa.types.is_dictionary(t) and t.value_type == pa.string(), name
    assert table.column("kind").combine_chunks().dictionary.to_pylist()[:3] == ["EXIT", "ENTRY", "PIO"]


def test_event_columns_keep_their_values_and_types(tmp_path, table):
    frame = run_loop()
    for c in ("pid", "tid", "port", "gpa", "reason", "op", "flags"):
        assert table.column(c).to_pylist() == frame[c].tolist(), c
        assert table.schema.field(c).type == pa.from_numpy_dtype(EVENT_DTYPE[c]), c
    assert table.column("ts_ns").type == pa.int64()
    assert table.column("ts_ns").to_pylist() == frame["ts_ns"].tolist()


def test_vcpu_is_the_threads_where_the_event_has_none(table):
    # tid 100 is vCPU 0 and tid 101 vCPU 1 in the header; pid 999's thread is nobody's
    assert table.column("vcpu").to_pylist() == [0] * 8 + [1, 1, 1, None]


def test_time_is_the_wall_clock(table):
    t = table.column("time").to_pylist()
    start = pd.Timestamp(START_WALL)
    assert table.schema.field("time").type == pa.timestamp("ns", tz="UTC")
    assert pd.Timestamp(t[0]) == start + pd.Timedelta(nanoseconds=int(run_loop()["ts_ns"][0]) - START)


def test_header_and_trailer_in_the_metadata(tmp_path):
    from kvmtrace.trace import load

    src = write(tmp_path / "t.kvmtrace", run_loop())
    export_parquet(src, tmp_path / "t.parquet")
    kv = pq.read_schema(tmp_path / "t.parquet").metadata
    assert {HEADER_KEY.encode(), TRAILER_KEY.encode(), SOURCE_KEY.encode()} <= set(kv)
    meta = read_metadata(tmp_path / "t.parquet")
    trace = load(src)
    assert meta["header"] == trace.header and meta["header"]["host"] == {"hostname": "h1"}
    assert meta["trailer"] == trace.data.trailer and meta["trailer"]["events_written"] == 12
    assert meta["source"]["file"] == "t.kvmtrace" and meta["source"]["complete"] is True
    assert meta["source"]["events"] == 12
    assert pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0).column(0).compression == COMPRESSION.upper()


def test_a_trace_cut_short_has_a_null_trailer(tmp_path):
    src = write(tmp_path / "t.kvmtrace", run_loop(), close=False)
    export_parquet(src, tmp_path / "t.parquet")
    meta = read_metadata(tmp_path / "t.parquet")
    assert meta["trailer"] is None and meta["source"]["complete"] is False
    assert pq.read_table(tmp_path / "t.parquet").num_rows == 12


def test_counts_mode_rows(tmp_path):
    a = np.zeros(3, EVENT_DTYPE)
    a["pid"] = 100
    a["kind"] = [EventKind.PIO | AGGREGATE, EventKind.USERSPACE_EXIT | AGGREGATE, EventKind.HIST | AGGREGATE]
    a["port"] = [0x80, 0x80, 11]
    a["op"] = [1, 1, Latency.VMM_SERVICE]
    a["reason"] = [0, 2, 2]
    a["flags"] = [0, 4, 0]
    a["value"] = [997, 997, 990]
    frame = pd.DataFrame({n: a[n] for n in EVENT_DTYPE.names if not n.startswith("pad")})
    export_parquet(write(tmp_path / "c.kvmtrace", frame), tmp_path / "c.parquet")
    df = pq.read_table(tmp_path / "c.parquet").to_pandas()
    assert _names(df, ("kind", "reason_name", "direction", "device", "latency")) == [
        ["PIO_COUNT", None, "write", "ioport80", None],
        ["USERSPACE_EXIT_COUNT", "IO", "write", "ioport80", None],
        ["HIST_COUNT", "IO", None, None, "VMM_SERVICE"],
    ]
    assert df["value"].tolist() == [997, 997, 990]


def test_unwritable_output_is_an_output_error(tmp_path):
    src = write(tmp_path / "t.kvmtrace", run_loop())
    with pytest.raises(OutputError, match="No such file or directory"):
        export_parquet(src, tmp_path / "no" / "such" / "t.parquet")
    with pytest.raises(OutputError, match="Is a directory"):
        export_parquet(src, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["t.kvmtrace"]  # no temporary file left


def test_not_a_trace_is_a_trace_file_error(tmp_path):
    (tmp_path / "x").write_text("hello")
    with pytest.raises(TraceFileError):
        export_parquet(tmp_path / "x", tmp_path / "x.parquet")


def test_dataset_partitions_by_host_domain_and_date(tmp_path):
    one = write(tmp_path / "one.kvmtrace", run_loop())
    two = write(tmp_path / "two.kvmtrace", run_loop(), domains=({**DOMAIN, "name": "a b/c"},), host="h2",
                wall="2026-11-26T00:00:00.5+00:00")
    out = tmp_path / "ds"
    results = export_dataset([one, two], out)
    files = sorted(str(r.path.relative_to(out).parent) for r in results)
    assert files == ["host=h1/domain=unknown/date=2026-11-25", "host=h1/domain=web1/date=2026-11-25",
                     "host=h2/domain=a%20b%2Fc/date=2026-11-26", "host=h2/domain=unknown/date=2026-11-26"]
    assert sum(r.events for r in results) == 24
    for r in results:
        assert "domain" not in pq.read_schema(r.path).names  # it is the partition's (Spark refuses both)
        assert read_metadata(r.path)["source"]["domain"] in ("web1", "a b/c", "unknown")
    t = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert t.num_rows == 24
    got = pd.Series(t.column("domain").to_pylist()).value_counts().to_dict()
    assert got == {"web1": 11, "a b/c": 11, "unknown": 2}


def test_dataset_export_again_replaces_a_traces_files(tmp_path):
    src = write(tmp_path / "one.kvmtrace", run_loop())
    out = tmp_path / "ds"
    first = export_dataset([src], out)
    again = export_dataset([src], out)
    assert [r.path for r in first] == [r.path for r in again]
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(r.path.name for r in first)
    assert ds.dataset(out, format="parquet", partitioning="hive").count_rows() == 12


def test_dataset_without_host_or_date(tmp_path):
    frame = run_loop()
    w = TraceWriter(tmp_path / "imp.kvmtrace", {"domains": [DOMAIN]})  # as an import: no host, no wall clock
    w.write(_array(frame), {})
    w.close({"lost_events": 0})
    results = export_dataset([tmp_path / "imp.kvmtrace"], tmp_path / "ds")
    assert {str(r.path.relative_to(tmp_path / "ds").parent) for r in results} == {
        "host=unknown/domain=web1/date=unknown", "host=unknown/domain=unknown/date=unknown"}
    assert pq.read_table(results[0].path).column("time").null_count == results[0].events
    assert json.loads(pq.read_schema(results[0].path).metadata[HEADER_KEY.encode()])["domains"][0]["name"] == "web1"
