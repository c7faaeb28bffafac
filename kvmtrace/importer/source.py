"""The input: opening a text trace (compressed or not), bounded lines, and telling its format.

Binary traces (trace.dat, perf.data, a kvmtrace file) and other files that
are not text are refused with the command that helps; gzip, xz and bzip2
files are read as they are.  :func:`detect_format` tells the four formats of
:data:`FORMATS` apart from the first lines.

Standard library only; importing this module has no side effects.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Iterable, Iterator
from pathlib import Path

from kvmtrace.errors import TraceFileError
from kvmtrace.importer.rows import _HANDLERS
from kvmtrace.importer.shapes import _BARE, _PERF, _TRACE_CMD_HEADER, _TRACEFS_COLUMNS

__all__ = ["DETECT_LINES", "FORMATS", "MAX_LINE", "detect_format"]

#: Format names :func:`detect_format` returns and ``fmt=`` accepts.
FORMATS = ("trace-cmd", "ftrace", "perf", "bare")
#: Lines :func:`import_text` looks at to detect the format.
DETECT_LINES = 2000

# --------------------------------------------------------------------------
# Opening the input
# --------------------------------------------------------------------------

_COMPRESSED = ((b"\x1f\x8b", gzip.open), (b"\xfd7zXZ\x00", lzma.open), (b"BZh", bz2.open))
#: The command that decompresses each, keeping the compressed file.
_DECOMPRESS = {gzip.open: "gunzip -k", lzma.open: "unxz -k", bz2.open: "bunzip2 -k"}
_BINARY_HINTS = (
    (b"\x17\x08\x44tracing", "a trace-cmd trace.dat (binary)",
     "print it as text first: trace-cmd report -i {p} > {p}.txt (add -N for the kernel's own "
     "event format), then kvmtrace import {p}.txt"),
    (b"PERFILE2", "a perf.data file (binary)",
     "print it as text first: perf script -i {p} > {p}.txt, then kvmtrace import {p}.txt"),
    (b"ARROW1", "already a kvmtrace trace file", "report it directly: kvmtrace report {p}"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first: zstd -d {p}"),
)


#: Longer lines are not trace lines: they are cut here and counted as unknown,
#: so a file of gigabyte lines imports in bounded memory.
MAX_LINE = 1 << 16
OVERLONG = "\0kvmtrace: overlong line\0"


def _bounded(f) -> Iterator[str]:
    """Lines of ``f``, none longer than MAX_LINE: an overlong one becomes OVERLONG."""
    readline = f.readline
    while True:
        line = readline(MAX_LINE)
        if not line:
            return
        if len(line) == MAX_LINE and not line.endswith("\n"):
            while True:  # skip the rest of the line without holding it
                rest = readline(MAX_LINE)
                if not rest or rest.endswith("\n"):
                    break
            yield OVERLONG + "\n"
            continue
        yield line


def _open_text(path: Path):
    """The input as text lines (decompressed if it is gzip, xz or bzip2); errors name the fix."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except FileNotFoundError as e:
        raise TraceFileError(f"{path} does not exist", "check the path") from e
    except IsADirectoryError as e:
        raise TraceFileError(f"{path} is a directory", "give the text file trace-cmd, ftrace or perf wrote") from e
    except OSError as e:
        raise TraceFileError(f"cannot read {path}: {e.strerror}", "check the path and its permissions") from e
    opener = None
    for magic, op in _COMPRESSED:
        if head.startswith(magic) and (magic != b"BZh" or head[4:10] == b"1AY&SY"):
            opener = op
            try:
                with op(path, "rb") as z:
                    head = z.read(65536)
            except (OSError, EOFError, lzma.LZMAError) as e:
                raise TraceFileError(f"{path} is compressed but cannot be decompressed: {e}",
                                     "decompress it yourself and import the text") from e
            break
    if opener is not None and head.startswith(b"ARROW1"):
        # kvmtrace report reads a trace file as it is (memory-mapped): decompress it first.
        plain = path.with_name(path.name.rsplit(".", 1)[0]) if "." in path.name else path
        raise TraceFileError(f"{path} is a compressed kvmtrace trace file, not a text trace",
                             f"decompress it, then report it: {_DECOMPRESS[opener]} {path} && "
                             f"kvmtrace report {plain}")
    for magic, what, fix in _BINARY_HINTS:
        if head.startswith(magic):
            raise TraceFileError(f"{path} is {what}, not a text trace", fix.format(p=path))
    if not head:
        raise TraceFileError(f"{path} is empty",
                             "capture the trace again (trace-cmd record, then trace-cmd report > FILE)")
    if b"\0" in head:
        raise TraceFileError(
            f"{path} is a binary file, not a text trace",
            f"for a trace-cmd trace.dat run trace-cmd report -i {path} > {path}.txt; for perf.data "
            f"run perf script -i {path} > {path}.txt; then import the text")
    if opener is not None:
        return opener(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


# --------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------


def detect_format(lines: Iterable[str]) -> str:
    """The format of trace text: one of :data:`FORMATS`.

    Looks at every line given (pass the first few thousand): ``cpus=N`` or
    ``CPU N is empty`` mean trace-cmd, ``# tracer:`` means ftrace, an
    irq-flags or TGID column means ftrace, a plain ``COMM-PID [CPU] TIME:``
    task column trace-cmd, ``SYSTEM:EVENT:`` after ``COMM PID [CPU] TIME:``
    perf, and ``kvm_exit: ...`` with no task bare lines.  The most votes win.
    Raises TraceFileError if no line has any of these shapes.
    """
    votes = dict.fromkeys(FORMATS, 0)
    for i, raw in enumerate(lines):
        line = raw.rstrip()
        if not line:
            continue
        if i == 0 and line.startswith("cpus="):
            votes["trace-cmd"] += 1000
            continue
        s = line.lstrip()
        if s.startswith("# tracer:"):
            votes["ftrace"] += 1000
            continue
        if s.startswith("#"):
            continue
        if _TRACE_CMD_HEADER.fullmatch(s):
            votes["trace-cmd"] += 100
            continue
        m = _TRACEFS_COLUMNS.match(line)
        if m is not None:
            votes["ftrace" if m.group(1) or m.group(2) else "trace-cmd"] += 1
            continue
        if _PERF.match(line) is not None:
            votes["perf"] += 1
            continue
        m = _BARE.match(line)
        if m is not None and m.group(3) in _HANDLERS:
            votes["bare"] += 1
    best = max(FORMATS, key=lambda f: votes[f])
    if votes[best] == 0:
        raise TraceFileError(
            "no line has the shape of trace-cmd report, ftrace or perf script output",
            "import the text trace-cmd report, /sys/kernel/tracing/trace or perf script printed")
    return best
