"""The trace file: an Arrow IPC (Feather v2) file of events, self-describing.

Layout, chosen so that a recording interrupted at any moment stays readable:

* The schema's metadata holds the header (``kvmtrace.header``, JSON): format
  version, kvmtrace version, host, tracepoint formats, domains, start time.
* Events follow in record batches, each flushed to the file as written, each
  carrying ``kvmtrace.progress`` metadata (events written, lost so far).
* A last batch carries ``kvmtrace.trailer`` (end time, stop reason, exact lost
  counts), then the Arrow footer.
* QEMU's memory map, read again while recording (a device the firmware maps
  after the start, and once at the end), goes in an empty batch of its own
  carrying ``kvmtrace.memory_map`` (domain pid, monotonic time, the text or
  why it could not be read), flushed at once: a file cut short keeps every
  version written before the cut. The header holds the version read at the
  start (``domains[i]["memory_map_text"]``).

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
MEMORY_MAP_KEY = b"kvmtrace.memory_map"
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

    def __init__(self, path: str | os.PathLike, header: dict, compression: str | None = "lz4",
                 defer_header: bool = False):
        """``defer_header``: write the header with the first batch (or at close),
        so that :meth:`amend_header` can add what is only known once the
        probes are attached; the file is still created here."""
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
        self.header = {"format_version": FORMAT_VERSION, **header}
        self._options = pa.ipc.IpcWriteOptions(compression=compression)
        self.events_written = 0
        self.closed = False
        self._writer = None
        if not defer_header:
            self._start()

    @property
    def header_written(self) -> bool:
        return self._writer is not None

    def amend_header(self, extra: dict) -> None:
        """Add ``extra`` to a deferred header not written yet."""
        if self._writer is not None:
            raise RuntimeError(f"the header of {self.path} is written already")
        self.header.update(extra)

    def _start(self) -> None:
        if self._writer is not None:
            return
        schema = SCHEMA.with_metadata({HEADER_KEY: json.dumps(self.header)})
        self._writer = self._guard(lambda: pa.ipc.new_file(self._file, schema, options=self._options))
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
        self._start()
        batch = pa.RecordBatch.from_arrays([pa.array(np.ascontiguousarray(events[n])) for n in COLUMNS],
                                           schema=SCHEMA)
        meta = {PROGRESS_KEY: json.dumps({**progress, "events_written": self.events_written + len(events)})}
        self._guard(lambda: self._writer.write_batch(batch, custom_metadata=meta))
        self._guard(self._file.flush)
        self.events_written += len(events)

    def write_memory_map(self, version: dict) -> None:
        """Append one re-read of a guest's memory map (an empty batch carrying it) and flush it.

        ``version``: ``pid``, ``t_ns`` (CLOCK_MONOTONIC), ``reason`` and either
        ``text`` (QEMU's ``info mtree -f``), ``unchanged`` or ``error`` (why it
        was not read).
        """
        batch = pa.RecordBatch.from_arrays([pa.array(empty_events()[n]) for n in COLUMNS], schema=SCHEMA)
        meta = {MEMORY_MAP_KEY: json.dumps(version)}
        self._start()  # a deferred header goes first, as with write()
        self._guard(lambda: self._writer.write_batch(batch, custom_metadata=meta))
        self._guard(self._file.flush)

    def close(self, trailer: dict) -> None:
        """Write the trailer and the footer: the file is then complete."""
        if self.closed:
            return
        self._start()
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
    memory_maps: list[dict] = field(default_factory=list)  # re-reads of QEMU's map, in file order

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


class TraceBatches:
    """A trace file's record batches, read one at a time (``for batch in tb``).

    Opening reads the header (errors as :func:`read_trace`'s); iterating
    yields each validated ``pyarrow.RecordBatch`` (the trailer's empty one
    included) and stops at the first damaged one, as :func:`read_trace`
    does. After the iteration ``progress``, ``trailer``, ``note`` and
    ``complete`` say what was read. Only one batch is held at a time, so a
    caller that reduces each batch as it comes needs memory for one batch,
    whatever the length of the trace. ``columns`` as for :func:`read_trace`.

    The file is read, not memory-mapped: a mapped file's pages stay in the
    process's resident set once touched (reclaimable, but counted), so a
    pass over a long trace would look, and be limited, as large as the file.
    """

    def __init__(self, path: str | os.PathLike, columns: Sequence[str] | None = None):
        self.path = Path(path)
        try:
            self._open(_options(columns))
        except TraceFileError:
            raise
        except _DAMAGE as e:
            raise TraceFileError(f"{self.path} is damaged and cannot be read ({type(e).__name__}: {e})",
                                 "record it again, or give another copy") from e

    def _open(self, options) -> None:
        path = self.path
        try:
            source = pa.OSFile(str(path), "r")
        except FileNotFoundError as e:
            raise TraceFileError(f"{path} does not exist", "check the path") from e
        except (OSError, pa.ArrowException) as e:
            raise TraceFileError(f"cannot open {path}: {e}") from e
        if source.size() == 0:
            raise TraceFileError(f"{path} is empty", "the recording wrote nothing; record again")
        if source.read(len(ARROW_MAGIC)) != ARROW_MAGIC:
            raise TraceFileError(
                f"{path} is not a kvmtrace trace file (no Arrow magic at its start)",
                "for text traces from trace-cmd, ftrace or perf use kvmtrace import",
            )
        source.seek(0)
        self.progress, self.trailer, self.note = {}, None, ""
        self.memory_maps: list[dict] = []
        self.footer, self._damaged = True, False
        try:
            self._reader = pa.ipc.open_file(source, options=options)
        except pa.ArrowException:
            _refuse_foreign(path, source)
            self.footer = False
            buf = source.read_buffer()
            if buf.size <= 8:
                raise TraceFileError(f"{path} is cut short before its header was complete",
                                     "nothing was recorded in it; record again")
            stream = pa.BufferReader(buf.slice(8))  # after "ARROW1\0\0"
            try:
                self._reader = pa.ipc.open_stream(stream, options=options)
            except pa.ArrowException as e:
                raise TraceFileError(
                    f"{path} is cut short before its header was complete",
                    "nothing was recorded in it; record again",
                ) from e
        self.schema = self._reader.schema
        self.header = _check_header(path, self.schema, options)

    def count_rows(self) -> int | None:
        """Rows of a complete file, from its batches' metadata (None for a file cut short)."""
        if not self.footer:
            return None
        try:
            return self._reader.count_rows()
        except _DAMAGE:
            return None  # the damaged batch is found when it is read

    @property
    def complete(self) -> bool:
        if self.footer:
            return self.trailer is not None and not self._damaged
        return self.trailer is not None

    def __iter__(self):
        try:
            yield from (self._file_batches() if self.footer else self._stream_batches())
        except TraceFileError:
            raise
        except _DAMAGE as e:  # not in a batch (those end the iteration): in the file itself
            raise TraceFileError(f"{self.path} is damaged and cannot be read ({type(e).__name__}: {e})",
                                 "record it again, or give another copy") from e

    def _file_batches(self):
        reader = self._reader
        self._damaged = False
        for i in range(reader.num_record_batches):
            try:
                batch, meta = reader.get_batch_with_custom_metadata(i)
                _check_batch(batch)
                self.progress = _meta(meta, PROGRESS_KEY) or self.progress
                self.trailer = _meta(meta, TRAILER_KEY) or self.trailer
                mm = _meta(meta, MEMORY_MAP_KEY)
            except _DAMAGE:
                self.note = f"damaged from batch {i} on; the batches before it are read"
                self.trailer = None
                self._damaged = True
                break
            if mm is not None:
                self.memory_maps.append(mm)
            yield batch
        self.note = self.note or ("" if self.trailer is not None else "no trailer")

    def _stream_batches(self):
        self.note = "cut short"
        while True:
            try:
                batch, meta = self._reader.read_next_batch_with_custom_metadata()
                _check_batch(batch)
            except StopIteration:
                self.note = "no footer"
                break
            except _DAMAGE:
                self.note = "cut short in a batch; the batches before it are read"
                break
            yield batch
            self.progress = _meta(meta, PROGRESS_KEY) or self.progress
            self.trailer = _meta(meta, TRAILER_KEY) or self.trailer
            mm = _meta(meta, MEMORY_MAP_KEY)
            if mm is not None:
                self.memory_maps.append(mm)

    def data(self, **events) -> TraceData:
        """The TraceData of what was read (``events``: its table or arrays)."""
        return TraceData(self.path, self.header, trailer=self.trailer, progress=self.progress,
                         complete=self.complete, note=self.note, memory_maps=self.memory_maps,
                         **{"table": None, **events})


def batch_arrays(batch: pa.RecordBatch) -> dict[str, np.ndarray]:
    """A record batch's columns as numpy arrays (no copy where Arrow allows)."""
    return {name: col.to_numpy() for name, col in zip(batch.schema.names, batch.columns)}


def scan_batches(path: str | os.PathLike) -> tuple[TraceBatches, list[int], np.ndarray]:
    """A first pass over a trace, reading only ts_ns and kind: the
    TraceBatches read (header, trailer, progress), the earliest ts_ns of each
    batch that holds events (in order), and how many events of each
    ``kind`` value (0-255) it holds."""
    tb = TraceBatches(path, ("ts_ns", "kind"))
    floors, kinds = [], np.zeros(256, dtype=np.int64)
    for batch in tb:
        if batch.num_rows:
            floors.append(int(batch.column(0).to_numpy().min()))
            kinds += np.bincount(batch.column(1).to_numpy(), minlength=256)
    return tb, floors, kinds


def _read_trace(path: Path, options=None, arrays: bool = False) -> TraceData:
    tb = TraceBatches.__new__(TraceBatches)
    tb.path = path
    tb._open(options)
    batches = _Batches(tb.schema, arrays, tb.count_rows() if arrays else None)
    for batch in tb:
        batches.add(batch)
    return tb.data(**batches.result())


def _check_batch(batch: pa.RecordBatch) -> None:
    """A batch as written has valid buffers and no nulls; a damaged one may not."""
    batch.validate(full=True)
    if any(col.null_count for col in batch.columns):
        raise ValueError("null values in a column that never holds any")


def reuse_memory(heap_bytes: int = 0) -> None:
    """For a one-shot command on a big trace: memory faulted in once, at once, and used again.

    Memory a process touches for the first time is dear: a page fault per
    page, and in a VM whose host takes freed pages back (free page
    reporting) one in the host too: 800 MB took 0.4-1.2 s to fault in
    there, 0.03 s to use again. So: one malloc arena (pyarrow's threads'
    too), no mmap below 1 GiB and no trim, so that a freed array's pages
    serve the next one; no transparent huge pages for numpy (a 2 MiB page
    the host has taken back costs 4 times as much as 512 small ones); and
    ``heap_bytes`` of heap (up to 1 GiB) faulted in up front by one
    madvise(MADV_POPULATE_WRITE) (Linux 5.14; older kernels refuse it,
    harmlessly). Process-wide: only the CLI calls it, never import.
    """
    import ctypes
    import mmap

    import pyarrow as pa

    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _set_madvise_hugepage

    pa.set_memory_pool(pa.system_memory_pool())
    _set_madvise_hugepage(False)
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        return  # not glibc: nothing to tune
    heap_max = 1 << 30  # larger blocks are mmap'ed, and unmapped when freed
    libc.mallopt(-3, heap_max)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD
    size = min(heap_bytes, heap_max - 1)
    libc.malloc.restype = ctypes.c_void_p
    block = libc.malloc(ctypes.c_size_t(size)) if size else None
    if block:
        page = -block % mmap.PAGESIZE
        libc.madvise(ctypes.c_void_p(block + page), ctypes.c_size_t(size - page), 23)  # MADV_POPULATE_WRITE
        libc.free(ctypes.c_void_p(block))  # back to the heap, which keeps it
