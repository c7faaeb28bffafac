"""The trace file: an Arrow IPC (Feather v2) file of events, self-describing.

Layout, chosen so that a recording interrupted at any moment stays readable:

* The schema's metadata holds the header (``kvmtrace.header``, JSON): format
  version, kvmtrace version, host, tracepoint formats, domains, start time.
* Events follow in record batches, each flushed to the file as written, each
  carrying ``kvmtrace.progress`` metadata (events written, lost so far).
* A last batch carries ``kvmtrace.trailer`` (end time, stop reason, exact lost
  counts), then the Arrow footer.

A complete file is an ordinary Feather v2 file: ``pandas.read_feather`` reads
it. A file cut short (SIGKILL, power loss, a full disk) has no footer, but an
Arrow IPC file is an IPC *stream* after its 8-byte magic, so :func:`read_trace`
reads every batch that was written whole and says the file is incomplete.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from kvmtrace.errors import OutputError, TraceFileError
from kvmtrace.kernel.events import EVENT_DTYPE, PADDING

FORMAT_VERSION = 1
HEADER_KEY = b"kvmtrace.header"
PROGRESS_KEY = b"kvmtrace.progress"
TRAILER_KEY = b"kvmtrace.trailer"
ARROW_MAGIC = b"ARROW1"

COLUMNS = tuple(n for n in EVENT_DTYPE.names if n not in PADDING)


def _arrow_type(dt: np.dtype) -> pa.DataType:
    return pa.from_numpy_dtype(dt)


SCHEMA = pa.schema([pa.field(n, _arrow_type(EVENT_DTYPE[n]), nullable=False) for n in COLUMNS])


def empty_events() -> np.ndarray:
    return np.zeros(0, dtype=EVENT_DTYPE)


class TraceWriter:
    """Write events to ``path`` as they arrive; every batch lands on disk.

    The file is created mode 0600 (guest activity is private) before any probe
    is attached, so an unwritable path fails early.
    """

    def __init__(self, path: str | os.PathLike, header: dict, compression: str | None = "lz4"):
        self.path = Path(path)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise OutputError(
                f"cannot write the trace file {self.path}: {e.strerror}",
                "choose a writable path with -o",
            ) from e
        os.fchmod(fd, 0o600)
        self._file = os.fdopen(fd, "wb")
        header = {"format_version": FORMAT_VERSION, **header}
        schema = SCHEMA.with_metadata({HEADER_KEY: json.dumps(header)})
        options = pa.ipc.IpcWriteOptions(compression=compression)
        self.events_written = 0
        self.closed = False
        self._writer = self._guard(lambda: pa.ipc.new_file(self._file, schema, options=options))
        self._guard(self._file.flush)

    def _guard(self, op):
        """Run a write; turn a full disk or I/O error into OutputError."""
        try:
            return op()
        except OSError as e:
            # Nothing more can be written after a failed write; what was
            # flushed before it stays readable (read_trace reads a footerless file).
            self.abandon()
            code = e.errno or errno.EIO
            what = "the disk is full" if code == errno.ENOSPC else os.strerror(code)
            raise OutputError(
                f"writing {self.path} failed: {what}; the events written so far "
                f"({self.events_written}) are kept and readable",
                "free space or record to another file system with -o",
            ) from e

    def write(self, events: np.ndarray, progress: dict) -> None:
        """Append a batch of EVENT_DTYPE records and flush it to the file."""
        # A field of a structured array is a strided view; pyarrow converts a
        # contiguous copy of it about 4x faster than the view itself.
        batch = pa.RecordBatch.from_arrays([pa.array(np.ascontiguousarray(events[n])) for n in COLUMNS],
                                           schema=SCHEMA)
        meta = {PROGRESS_KEY: json.dumps({**progress, "events_written": self.events_written + len(events)})}
        self._guard(lambda: self._writer.write_batch(batch, custom_metadata=meta))
        self._guard(self._file.flush)
        self.events_written += len(events)

    def close(self, trailer: dict) -> None:
        """Write the trailer and the footer: the file is then complete."""
        if self.closed:
            return
        self.closed = True
        trailer = {**trailer, "events_written": self.events_written}
        batch = pa.RecordBatch.from_arrays([pa.array(empty_events()[n]) for n in COLUMNS], schema=SCHEMA)
        try:
            self._guard(lambda: self._writer.write_batch(batch, custom_metadata={TRAILER_KEY: json.dumps(trailer)}))
            self._guard(self._writer.close)
            self._guard(self._file.flush)
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Close the file without a footer (what was flushed stays readable)."""
        self.closed = True
        try:
            self._file.close()
        except OSError:
            pass


@dataclass
class TraceData:
    """A trace file as read: header, trailer (None if cut short), events.

    The events are ``table`` (Arrow), or ``arrays`` (one numpy array per
    column) when read with ``read_trace(..., arrays=True)``; the other is None.
    """

    path: Path
    header: dict
    table: pa.Table | None
    trailer: dict | None = None
    progress: dict = field(default_factory=dict)
    complete: bool = True
    note: str = ""  # why the file is incomplete
    arrays: dict[str, np.ndarray] | None = None

    @property
    def lost_events(self) -> int:
        src = self.trailer if self.trailer is not None else self.progress
        return int(src.get("lost_events", 0))


def _meta(kv, key: bytes) -> dict | None:
    if kv is None:
        return None
    raw = dict(kv).get(key)
    return json.loads(raw) if raw is not None else None


def _check_header(path: Path, schema: pa.Schema, options=None) -> dict:
    header = _meta(schema.metadata, HEADER_KEY)
    if header is None:
        raise TraceFileError(
            f"{path} is an Arrow file but not a kvmtrace trace (no kvmtrace header)",
            "give a file written by kvmtrace record or kvmtrace import",
        )
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise TraceFileError(
            f"{path} has trace format {version!r}; this kvmtrace reads up to {FORMAT_VERSION}",
            "upgrade kvmtrace to read it",
        )
    if schema.remove_metadata() != _projected(SCHEMA, options):
        raise TraceFileError(
            f"{path} has unexpected columns for trace format {version}",
            "the file was edited or damaged; record it again",
        )
    return header


def _refuse_foreign(path: Path, source) -> None:
    """A complete Arrow file of other columns fails a column projection: say it is not a trace
    (rather than "cut short"), reading its schema without the projection."""
    source.seek(0)
    try:
        schema = pa.ipc.open_file(source).schema
    except pa.ArrowException:
        schema = None  # no footer: a trace cut short, read as a stream
    source.seek(0)
    if schema is not None:
        _check_header(path, schema)


#: What a damaged file can make pyarrow, zstd or the JSON metadata raise.
_DAMAGE = (pa.ArrowException, OSError, ValueError, KeyError, TypeError, IndexError, OverflowError)


def read_trace(path: str | os.PathLike, columns: Sequence[str] | None = None, arrays: bool = False) -> TraceData:
    """Read a trace file, complete or cut short. Raises TraceFileError.

    ``columns`` reads only those event columns: only their buffers are
    decompressed, which is most of the cost of loading a large trace.
    ``arrays`` gives the events as numpy arrays instead of an Arrow table
    (see :class:`_Batches`).
    """
    path = Path(path)
    try:
        return _read_trace(path, _options(columns), arrays)
    except TraceFileError:
        raise
    except _DAMAGE as e:
        raise TraceFileError(f"{path} is damaged and cannot be read ({type(e).__name__}: {e})",
                             "record it again, or give another copy") from e


def count_events(path: str | os.PathLike) -> int:
    """How many events a complete trace file holds, from its footer (its
    batches' metadata: nothing is decompressed); 0 when it has none."""
    try:
        with pa.memory_map(str(path), "r") as source:
            return pa.ipc.open_file(source).count_rows()
    except _DAMAGE:
        return 0


def _options(columns: Sequence[str] | None) -> pa.ipc.IpcReadOptions | None:
    if columns is None:
        return None
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"no event columns {unknown}")
    return pa.ipc.IpcReadOptions(included_fields=sorted(COLUMNS.index(c) for c in columns))


def _projected(schema: pa.Schema, options) -> pa.Schema:
    if options is None:
        return schema
    names = [COLUMNS[i] for i in options.included_fields]
    return pa.schema([schema.field(n) for n in names], metadata=schema.metadata)


class _Batches:
    """Where the record batches read go: an Arrow table, or numpy arrays.

    For arrays, with the row count known (a complete file's footer gives
    it), each batch is copied into one preallocated array per column as it
    is read, while it is hot in cache, and then dropped: the events are in
    memory once, never as batches and arrays both. Otherwise (a stream cut
    short, or a count no array can hold) the batches are kept and
    concatenated at the end.
    """

    def __init__(self, schema: pa.Schema, arrays: bool, rows: int | None = None):
        self.schema = schema
        self.arrays = arrays
        self.batches: list[pa.RecordBatch] = []
        self.rows = 0
        self.out = None
        if arrays and rows is not None:
            try:
                self.out = {f.name: np.empty(rows, dtype=f.type.to_pandas_dtype()) for f in schema}
            except (MemoryError, ValueError):
                pass  # a damaged file can claim any number of rows: read what is there

    def add(self, batch: pa.RecordBatch) -> None:
        if self.out is None:
            self.batches.append(batch)
        else:
            for a, col in zip(self.out.values(), batch.columns):
                a[self.rows:self.rows + batch.num_rows] = col.to_numpy()
        self.rows += batch.num_rows

    def result(self) -> dict:
        """TraceData's ``table`` and ``arrays``."""
        if not self.arrays:
            return {"table": pa.Table.from_batches(self.batches, schema=self.schema)}
        if self.out is None:
            self.out = {f.name: np.concatenate([b.column(i).to_numpy() for b in self.batches])
                        if self.batches else np.zeros(0, dtype=f.type.to_pandas_dtype())
                        for i, f in enumerate(self.schema)}
        return {"table": None, "arrays": {name: a[:self.rows] for name, a in self.out.items()}}


def _read_trace(path: Path, options=None, arrays: bool = False) -> TraceData:
    try:
        source = pa.memory_map(str(path), "r")
    except FileNotFoundError as e:
        raise TraceFileError(f"{path} does not exist", "check the path") from e
    except (OSError, pa.ArrowException) as e:
        raise TraceFileError(f"cannot open {path}: {e}") from e
    size = source.size()
    if size == 0:
        raise TraceFileError(f"{path} is empty", "the recording wrote nothing; record again")
    if source.read(len(ARROW_MAGIC)) != ARROW_MAGIC:
        raise TraceFileError(
            f"{path} is not a kvmtrace trace file (no Arrow magic at its start)",
            "for text traces from trace-cmd, ftrace or perf use kvmtrace import",
        )
    source.seek(0)
    try:
        reader = pa.ipc.open_file(source, options=options)
    except pa.ArrowException:
        _refuse_foreign(path, source)
        return _read_partial(path, source, options, arrays)
    header = _check_header(path, reader.schema, options)
    rows = None
    if arrays:
        try:
            rows = reader.count_rows()  # from the batches' metadata, not their data
        except _DAMAGE:
            pass  # the damaged batch is found below
    batches = _Batches(reader.schema, arrays, rows)
    progress, trailer, note = {}, None, ""
    for i in range(reader.num_record_batches):
        try:
            batch, meta = reader.get_batch_with_custom_metadata(i)
            _check_batch(batch)
            progress = _meta(meta, PROGRESS_KEY) or progress
            trailer = _meta(meta, TRAILER_KEY) or trailer
        except _DAMAGE:
            note = f"damaged from batch {i} on; the batches before it are read"
            trailer = None
            break
        batches.add(batch)
    return TraceData(path, header, trailer=trailer, progress=progress, complete=trailer is not None and not note,
                     note=note or ("" if trailer is not None else "no trailer"), **batches.result())


def _check_batch(batch: pa.RecordBatch) -> None:
    """A batch as written has valid buffers and no nulls; a damaged one may not."""
    batch.validate(full=True)
    if any(col.null_count for col in batch.columns):
        raise ValueError("null values in a column that never holds any")


def _read_partial(path: Path, source, options=None, arrays: bool = False) -> TraceData:
    """Read the batches of a file that lacks its footer (cut short)."""
    buf = source.read_buffer()
    if buf.size <= 8:
        raise TraceFileError(f"{path} is cut short before its header was complete",
                             "nothing was recorded in it; record again")
    stream = pa.BufferReader(buf.slice(8))  # after "ARROW1\0\0"
    try:
        reader = pa.ipc.open_stream(stream, options=options)
    except pa.ArrowException as e:
        raise TraceFileError(
            f"{path} is cut short before its header was complete",
            "nothing was recorded in it; record again",
        ) from e
    header = _check_header(path, reader.schema, options)
    batches = _Batches(reader.schema, arrays)
    progress, trailer, note = {}, None, "cut short"
    while True:
        try:
            batch, meta = reader.read_next_batch_with_custom_metadata()
            _check_batch(batch)
        except StopIteration:
            note = "no footer"
            break
        except _DAMAGE:
            note = "cut short in a batch; the batches before it are read"
            break
        batches.add(batch)
        progress = _meta(meta, PROGRESS_KEY) or progress
        trailer = _meta(meta, TRAILER_KEY) or trailer
    # The trailer is written after the last event: with it, no event is missing.
    return TraceData(path, header, trailer=trailer, progress=progress, complete=trailer is not None, note=note,
                     **batches.result())
