"""Parquet export: a trace as one Parquet file, many traces as one dataset.

Fleets query with DuckDB, Spark or Trino, none of which reads Arrow IPC
(DuckDB only through pyarrow, and none sees the header there). The trace
file stays Arrow IPC, which survives a crash; this writes a copy that those
tools read directly:

* one row per event (an aggregate row of a counts-mode trace stays one row:
  its ``value`` is the count it stands for), with the event columns as
  :meth:`kvmtrace.trace.Trace.df_events` gives them and the names decoded
  beside them as dictionary columns (:data:`DECODED`);
* the header, the trailer (JSON ``null`` for a file cut short) and where the
  copy came from in the file's key-value metadata, under :data:`HEADER_KEY`,
  :data:`TRAILER_KEY` and :data:`SOURCE_KEY`: with DuckDB,
  ``SELECT value FROM parquet_kv_metadata('x.parquet') WHERE key = 'kvmtrace.header'``;
* a dataset is hive-partitioned, ``DIR/host=H/domain=D/date=YYYY-MM-DD/*.parquet``
  (values URI-encoded; ``unknown`` where the trace does not say), one file per
  trace and domain named after the trace, so exporting a trace again
  replaces its files: ``read_parquet('DIR/**/*.parquet', hive_partitioning = true)``.

Compression: zstd, by measurement (:data:`COMPRESSION`). File size and the
CPU time to write the table and to read it back (pyarrow 26, default
levels; median of 5 runs on this project's 2-core test machine) for the
6,072-event sample trace (sample-traces/demo-finite.kvmtrace) and a
797,955-event recording of the steady demo guest (``kvmtrace demo -o``, 3 s;
its Arrow IPC file, lz4, is 4,580,482 bytes):

======  =========  ===============  ============  ===============
codec   6k events  write / read ms  798k events   write / read ms
======  =========  ===============  ============  ===============
zstd    102,441 B  5.6 / 3.0        4,183,793 B   286 / 113
lz4     138,125 B  6.4 / 4.2        8,751,907 B   258 / 100
snappy  138,533 B  4.3 / 2.9        8,813,943 B   254 / 104
gzip    110,600 B  66.5 / 3.4       5,052,844 B   8,505 / 180
none    187,134 B  4.1 / 2.9        15,181,765 B  248 / 80
======  =========  ===============  ============  ===============

zstd makes the smallest file, half the size of lz4's or snappy's, for about
10 % more CPU time to write and to read; gzip is 20 % larger than zstd and
30 times slower to write. (Decoding the names costs 307 ms of the 798k
events' export.) DuckDB, Spark and Trino all read zstd.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kvmtrace.analysis.rates import vcpu_of
from kvmtrace.analysis.summary import group_codes
from kvmtrace.errors import OutputError
from kvmtrace.kernel.events import AGGREGATE, NO_VCPU, EventFlag, EventKind, Latency, MmioOp, PioOp
from kvmtrace.tables.exits import Isa, KvmExit
from kvmtrace.tables.ioctls import ioctl_name
from kvmtrace.trace import Trace, load

__all__ = ["COMPRESSION", "DECODED", "HEADER_KEY", "PARTITIONS", "SOURCE_KEY", "TRAILER_KEY", "ExportResult",
           "events_table", "export_dataset", "export_parquet", "read_metadata"]

#: The codec, chosen by measurement (see the module docstring).
COMPRESSION = "zstd"
HEADER_KEY = "kvmtrace.header"
TRAILER_KEY = "kvmtrace.trailer"
#: What the file was exported from: {"file", "complete", "note", "events",
#: "lost_events", "domain" (a dataset file's partition), "exported_by"}.
SOURCE_KEY = "kvmtrace.source"
#: A dataset's partition keys, in directory order.
PARTITIONS = ("host", "domain", "date")
#: A partition value the trace does not give (an imported trace names no host or date).
UNKNOWN = "unknown"

#: The decoded columns (dictionary of strings; null where they do not apply):
#: domain (the recorded domain of the event's pid), kind (EXIT, PIO, ...,
#: PIO_COUNT for an aggregate row), reason_name (KVM_EXIT_* name of a
#: userspace exit or VMM-service histogram; the kernel's exit name of a
#: kvm_exit or exit-handling histogram; the ioctl of an IOCTL), isa_name
#: (VMX/SVM/UNKNOWN, of kvm_exit and exit handling), direction (read/write;
#: unsatisfied-read for the kvm_mmio that hands a read to the VMM), device
#: (the guest's device at the port or address, "unknown" where its memory
#: map names none), latency (VMM_SERVICE/EXIT_HANDLING, of histogram rows).
DECODED = ("domain", "kind", "reason_name", "isa_name", "direction", "device", "latency")


@dataclass
class ExportResult:
    """One Parquet file written."""

    path: Path
    events: int
    bytes: int
    seconds: float


def _labelled(keys: list[np.ndarray], rows: np.ndarray, n: int, name: Callable[..., str | None]) -> pd.Categorical:
    """A categorical of ``name(*key)`` at ``rows`` (null elsewhere and where
    ``name`` gives None), naming each distinct key tuple once."""
    codes = np.full(n, -1, dtype=np.int32)
    if len(rows):
        group, uniq = group_codes([k[rows] for k in keys])
        labels = [name(*(int(v[i]) for v in uniq)) for i in range(len(uniq[0]))]
        cats = sorted({x for x in labels if x is not None})
        at = {x: i for i, x in enumerate(cats)}
        codes[rows] = np.array([at.get(x, -1) for x in labels], dtype=np.int32)[group]
    else:
        cats = []
    return pd.Categorical.from_codes(codes, categories=pd.Index(cats, dtype=object))


def _merge(parts: Sequence[pd.Categorical]) -> pd.Categorical:
    """Categoricals that are each null where another applies, as one."""
    cats = sorted({str(c) for p in parts for c in p.categories})
    codes = np.full(len(parts[0]), -1, dtype=np.int32)
    for p in parts:
        at = pd.Index(cats).get_indexer(p.categories)
        have = p.codes >= 0
        codes[have] = at[p.codes[have]]
    return pd.Categorical.from_codes(codes, categories=pd.Index(cats, dtype=object))


def _dictionary(cat: pd.Categorical) -> pa.DictionaryArray:
    codes = pa.array(cat.codes, mask=cat.codes < 0, type=pa.int32())
    return pa.DictionaryArray.from_arrays(codes, pa.array(list(cat.categories), type=pa.string()))


def _wall_times(trace: Trace, ts_ns: np.ndarray) -> pa.Array:
    """Wall-clock time of each event (UTC), from the recording's start
    (CLOCK_MONOTONIC and wall clock read together); null where unknown."""
    src = trace.data.trailer or trace.data.progress
    wall, mono = src.get("start_wall"), src.get("start_time_ns")
    if not wall or mono is None:
        return pa.nulls(len(ts_ns), pa.timestamp("ns", tz="UTC"))
    start = pd.Timestamp(wall).tz_convert("UTC").value
    return pa.array(ts_ns - int(mono) + start, type=pa.timestamp("ns", tz="UTC"))


def events_table(trace: Trace) -> pa.Table:
    """Every event of ``trace`` as an Arrow table with decoded names.

    Columns: time (timestamp[ns, UTC]; null when the trace has no wall-clock
    start, as imported ones), ts_ns (int64 ns, CLOCK_MONOTONIC), the
    :data:`DECODED` dictionary columns, then the event columns of
    ``df_events`` (kvmtrace.kernel.events says what each means per kind),
    except that vcpu is the thread's vCPU where the event carries none, null
    when unknown. No metadata: see :func:`export_parquet`.
    """
    ev = trace.df_events()
    n = len(ev)
    raw_kind = trace.events["kind"].to_numpy()
    base = raw_kind & np.uint8(~AGGREGATE & 0xFF)
    op, reason, isa = ev["op"].to_numpy(), ev["reason"].to_numpy(), ev["isa"].to_numpy()
    port, gpa = ev["port"].to_numpy(), ev["gpa"].to_numpy()
    run_fields = (ev["flags"].to_numpy() & EventFlag.RUN_FIELDS) != 0
    hist = base == EventKind.HIST
    uexit = base == EventKind.USERSPACE_EXIT

    pid_domain = {int(d["pid"]): str(d.get("name") or d["pid"]) for d in trace.domains if "pid" in d}
    domain = _labelled([ev["pid"].to_numpy()], np.arange(n), n, lambda pid: pid_domain.get(pid))

    names = trace.names
    reason_name = _merge([
        _labelled([reason], np.flatnonzero(uexit | (hist & (op == Latency.VMM_SERVICE))), n, names.kvm_exit),
        _labelled([isa, reason], np.flatnonzero((base == EventKind.EXIT) | (hist & (op == Latency.EXIT_HANDLING))),
                  n, names.hw),
        _labelled([reason], np.flatnonzero(base == EventKind.IOCTL), n, ioctl_name),
    ])
    isa_name = _labelled([isa], np.flatnonzero((base == EventKind.EXIT) | (hist & (op == Latency.EXIT_HANDLING))),
                         n, lambda i: Isa.coerce(i).name)

    pio_dir = {int(PioOp.READ): "read", int(PioOp.WRITE): "write"}
    mmio_dir = {int(MmioOp.UNSATISFIED_READ): "unsatisfied-read", int(MmioOp.READ): "read", int(MmioOp.WRITE): "write"}
    io_exit = uexit & run_fields & (reason == KvmExit.IO)
    mmio_exit = uexit & run_fields & (reason == KvmExit.MMIO)
    direction = _merge([
        # a userspace IO exit's op is kvm_run.io.direction: KVM_EXIT_IO_IN (0) reads, _OUT (1) writes, as PioOp
        _labelled([op], np.flatnonzero((base == EventKind.PIO) | io_exit), n, pio_dir.get),
        # a userspace MMIO exit's op is kvm_mmio's type: 2 for a write, 0 for a read handed to the VMM
        _labelled([op], np.flatnonzero(base == EventKind.MMIO), n, mmio_dir.get),
        _labelled([op], np.flatnonzero(mmio_exit), n, lambda o: "write" if o == MmioOp.WRITE else "read"),
    ])
    devmap = trace.device_map
    device = _merge([
        _labelled([port], np.flatnonzero((base == EventKind.PIO) | io_exit), n,
                  lambda p: str(devmap.name_ports(np.array([p]))[0])),
        _labelled([gpa], np.flatnonzero((base == EventKind.MMIO) | mmio_exit), n,
                  lambda a: str(devmap.name_gpas(np.array([a], dtype=np.uint64))[0])),
    ])
    latency = _labelled([op], np.flatnonzero(hist), n, lambda o: Latency(o).name if o in set(Latency) else None)

    vcpu = vcpu_of(ev, trace.vcpu_by_tid)
    decoded = {"domain": domain, "kind": ev["kind"].array, "reason_name": reason_name, "isa_name": isa_name,
               "direction": direction, "device": device, "latency": latency}
    columns: dict[str, pa.Array] = {"time": _wall_times(trace, ev["ts_ns"].to_numpy()),
                                    "ts_ns": pa.array(ev["ts_ns"].to_numpy())}
    columns.update({c: _dictionary(decoded[c]) for c in DECODED})
    for c in ev.columns:
        if c in columns:
            continue
        if c == "vcpu":
            columns[c] = pa.array(vcpu.astype(np.uint32), mask=(vcpu < 0) | (vcpu == NO_VCPU), type=pa.uint32())
        else:
            columns[c] = pa.array(ev[c].to_numpy())
    return pa.table(columns)


def _metadata(trace: Trace, events: int, domain: str | None = None) -> dict[str, str]:
    from kvmtrace import __version__

    source = {"file": Path(trace.path).name, "complete": trace.complete, "note": trace.data.note,
              "events": events, "lost_events": trace.lost_events, "exported_by": f"kvmtrace {__version__}"}
    if domain is not None:
        source["domain"] = domain
    return {HEADER_KEY: json.dumps(trace.header), TRAILER_KEY: json.dumps(trace.data.trailer),
            SOURCE_KEY: json.dumps(source)}


def _write(table: pa.Table, meta: dict[str, str], out: Path, compression: str,
           make_dirs: bool = False) -> ExportResult:
    """Write ``table`` to ``out`` through a temporary file beside it, so a
    reader of the dataset never sees half a file."""
    t0 = time.perf_counter()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if make_dirs:
            out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.replace_schema_metadata(meta), tmp, compression=compression)
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        # pyarrow's strerror is a sentence naming the temporary file: say the errno's
        why = os.strerror(e.errno) if e.errno else str(e)
        raise OutputError(f"cannot write {out}: {why}", "choose a writable path") from e
    return ExportResult(out, table.num_rows, out.stat().st_size, time.perf_counter() - t0)


def export_parquet(trace_path: str | os.PathLike, out: str | os.PathLike,
                   compression: str = COMPRESSION) -> ExportResult:
    """Write the trace at ``trace_path`` as one Parquet file ``out``: every
    event (:func:`events_table`), the header and trailer in its metadata."""
    trace = load(trace_path)
    table = events_table(trace)
    return _write(table, _metadata(trace, table.num_rows), Path(out), compression)


def _partition_values(trace: Trace) -> tuple[str, str]:
    """The host and date (UTC, of the recording's start) partitions of a trace."""
    host = str((trace.header.get("host") or {}).get("hostname") or UNKNOWN)
    src = trace.data.trailer or trace.data.progress
    wall = src.get("start_wall")
    if wall:
        date = datetime.fromisoformat(wall).astimezone(timezone.utc).date().isoformat()
    else:
        date = UNKNOWN
    return host, date


def _file_stem(trace: Trace) -> str:
    """The trace's files' name in a dataset: its file name and a digest of
    what identifies the recording (two runs named alike stay apart; the
    same trace exported again replaces its files)."""
    ident = json.dumps([trace.header, trace.start_ns], sort_keys=True, default=str)
    return f"{Path(trace.path).stem}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


def export_dataset(trace_paths: Iterable[str | os.PathLike], directory: str | os.PathLike,
                   compression: str = COMPRESSION) -> list[ExportResult]:
    """Add traces to the hive-partitioned Parquet dataset in ``directory``.

    Each trace gives one file per recorded domain (by name; events of no
    recorded domain go to ``domain=unknown``) under
    ``host=H/domain=D/date=YYYY-MM-DD``. The partition values are in the
    paths only, as hive partitioning has them (Spark refuses a file column
    named like a partition): the files have no ``domain`` column.
    """
    root = Path(directory)
    results = []
    for path in trace_paths:
        trace = load(path)
        table = events_table(trace)
        host, date = _partition_values(trace)
        stem = _file_stem(trace)
        dom = table.column("domain").to_pandas()
        for name in list(dom.cat.categories) + ([None] if dom.isna().any() else []):
            mask = dom.isna().to_numpy() if name is None else (dom == name).to_numpy()
            part = table.filter(pa.array(mask)).drop_columns(["domain"])
            value = UNKNOWN if name is None else name
            where = root.joinpath(*(f"{k}={quote(v, safe='')}" for k, v in zip(PARTITIONS, (host, value, date))))
            results.append(_write(part, _metadata(trace, part.num_rows, value), where / f"{stem}.parquet",
                                  compression, make_dirs=True))
    return results


def read_metadata(path: str | os.PathLike) -> dict:
    """The kvmtrace metadata of an exported Parquet file: {"header", "trailer", "source"}."""
    kv = pq.read_schema(path).metadata or {}
    return {key.split(".", 1)[1]: json.loads(kv[key.encode()])
            for key in (HEADER_KEY, TRAILER_KEY, SOURCE_KEY) if key.encode() in kv}
