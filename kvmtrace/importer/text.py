"""`kvmtrace import`: text traces captured elsewhere, as kvmtrace trace files.

Reads the text that other tools print for the kvm tracepoints and writes the
same Arrow trace file ``kvmtrace record`` writes, so every report and analysis
works on it.  Accepted, and told apart by :func:`detect_format`:

``trace-cmd``
    ``trace-cmd report`` output, with or without its kvm plugin (first line
    often ``cpus=N``)::

        CPU 0/KVM-60250 [007] 25135.606865: kvm_exit:  vcpu 0 reason HLT rip 0x...
        qemu-system-x86-3927 [007] 302.533069: kvm_exit:  reason HLT rip 0x... info 0 0

``ftrace``
    ``/sys/kernel/tracing/trace`` or ``trace_pipe``: an irq-flags column
    (``d..1.``, ``d...``) or none, an optional ``(TGID)`` column
    (``options/record-tgid``), ``#`` header lines.

``perf``
    ``perf script`` output of tracepoints: ``comm pid[/tid] [cpu] time:
    kvm:kvm_exit: ...``.

``bare``
    Lines that are only ``kvm_exit: reason ...`` (an optional leading
    timestamp), without a task: pid, tid 0, cpu unknown.

Events read (one row of :data:`kvmtrace.kernel.events.EVENT_DTYPE` each):
``kvm_exit`` in every kernel era and the trace-cmd plugin's form,
``kvm_entry``, ``kvm_pio``, ``kvm_mmio``, ``kvm_userspace_exit`` and
``sys_enter_ioctl`` with cmd ``KVM_RUN`` (a RUN event).  Lines of other
events, ``kvm_nested_vmexit*`` included (those are exits of a nested guest,
not of this one), are counted per event name and left out; lines nobody can
read are counted with their first line numbers; nothing in the text is fatal.

Which task is which: the number after the last ``-`` before the ``[CPU]``
column is the thread; with a ``(TGID)`` column (ftrace) or ``pid/tid`` (perf)
``pid`` is the process, otherwise ``pid`` = ``tid`` = that number, so guests
whose vCPU ids collide stay apart by ``pid``.  The header's ``domains`` has one
entry per ``pid``.

Exit reasons are read by name (``kvmtrace.tables.exits``): VMX names (upper case,
``PENDING_INTERRUPT`` of old kernels included, flag names such as
``FAILED_VMENTRY`` after the name set their bit), SVM names (``npf``, ``io``,
``PF excp``), or a number the kernel printed for a code it has no name for.
The trace's ISA is voted by the names (:func:`kvmtrace.tables.exits.isa_from_names`)
unless given.  An exit whose reason has neither a known name nor a number
(the trace-cmd plugin prints ``UNKNOWN``) cannot be stored: it is counted, by
name, in ``undecodable_exits``.

Timestamps become ``ts_ns`` exactly, from the decimal text (µs or ns
decimals; a whole number, as a counting trace clock prints, is kept as the raw
count and the header's ``clock`` says so).  They are the source's trace clock
(trace-cmd's default is ``local``), not necessarily CLOCK_MONOTONIC.  The
source's lost-event marks (``[LOST N EVENTS]``, ``[N EVENTS DROPPED]``) add up
to the trailer's ``lost_events``.  A last line without its newline (a file cut
short) is not trusted and left out, and said so.  gzip, xz and bzip2 files are
read as they are; binary files (trace.dat, perf.data) are refused with the
command that prints them as text.

Memory stays flat: the input is read line by line, events go to a temporary
file next to the output in batches of :data:`BATCH_EVENTS`, and are copied
into the trace at the end, when the header (counts, domains, ISA) is known.
"""

from __future__ import annotations

import bz2
import gc
import gzip
import itertools
from typing import Iterator
import lzma
import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kvmtrace import __version__
from kvmtrace.errors import OutputError, TraceFileError
from kvmtrace.kernel.events import EVENT_DTYPE, KVM_RUN, NO_VCPU, TRACEPOINTS, EventFlag, EventKind, MmioOp, PioOp
from kvmtrace.tables.exits import (
    SVM_EXIT_NAMES,
    VMX_EXIT_FLAG_NAMES,
    VMX_EXIT_NAMES,
    Isa,
    SvmExit,
    isa_from_names,
)
from kvmtrace.tracefile import TraceWriter

__all__ = ["FORMATS", "BATCH_EVENTS", "ImportResult", "default_output", "detect_format", "import_text"]

#: Format names :func:`detect_format` returns and ``fmt=`` accepts.
FORMATS = ("trace-cmd", "ftrace", "perf", "bare")
#: Events per batch written to the trace file.
BATCH_EVENTS = 65536
#: Unknown lines whose numbers are kept for the message.
UNKNOWN_EXAMPLES = 10
#: Lines :func:`import_text` looks at to detect the format.
DETECT_LINES = 2000

_U32 = 0xFFFF_FFFF
NO_CPU = 0xFFFF_FFFF  # cpu of an event whose line names none (bare lines)

# --------------------------------------------------------------------------
# Line shapes
# --------------------------------------------------------------------------

_HEX = "[0-9a-fA-F]+"

# ftrace and trace-cmd: "COMM-TID [(TGID)] [CPU] [FLAGS] SECS.FRAC: EVENT: ".
# COMM may hold spaces, slashes and dashes: the thread id is the number after
# the last "-" that is followed by the CPU (or TGID) column.  Groups, the same
# for both task patterns: comm, id1, id2, cpu, sec, frac, event; the event's
# own text starts at match.end().
_TRACEFS = re.compile(
    r" *(.*?)-(\d+) +"  # COMM-TID
    r"(?:\( *(\d+|-+) *\) +)?"  # (TGID) with options/record-tgid
    r"\[(\d+)\] +"  # [CPU]
    r"(?:[^ :\[\]]{4,5} +)?"  # irq flags d..1. / d...
    r"(\d+)(?:\.(\d+))?: +"  # timestamp
    r"(\w+): *"  # event
)
# perf script: "COMM PID[/TID] [CPU] SECS.FRAC: [PERIOD] SYSTEM:EVENT: ".
_PERF = re.compile(
    r" *(.*?) +(\d+)(?:/(\d+))?"
    r"(?: +\[(\d+)\])? +"
    r"(\d+)(?:\.(\d+))?: +"
    r"(?:\d+ +)?\w+:(\w+): *"
)
# No task at all: "[SECS.FRAC: ][system:]EVENT: ", taken for kvmtrace's events only.
_BARE = re.compile(r" *(?:(\d+)\.(\d+): +)?(?:\w+:)?(\w+): *")
# The same, telling whether the optional (TGID) and irq-flags columns are there.
_TRACEFS_COLUMNS = re.compile(r" *.*?-\d+ +(\( *(?:\d+|-+) *\) +)?\[\d+\] +([^ :\[\]]{4,5} +)?\d+(?:\.\d+)?: +\w+:")
# Lost-event marks: ftrace "CPU:2 [LOST 3 EVENTS]", trace-cmd "CPU:2 [3 EVENTS DROPPED]"; either without a count.
_LOST = re.compile(r"\[\s*(?:LOST\s+(\d+)?\s*EVENTS|(\d+)?\s*EVENTS\s+DROPPED)\s*\]")
_TRACE_CMD_HEADER = re.compile(r"cpus=\d+|version\s*=\s*\S+|CPU\s*\d+ is empty")

# Event bodies, matched from the end of the task part to the end of the line.
# Every optional part is one kernel era's addition; a kernel that appends more
# "name 0x.." pairs is read too.
_MORE = rf"(?: [a-z_]+ (?:0x)?{_HEX})*"
_EXIT = re.compile(
    rf"(?:vcpu (\d+) )?reason (.+?) rip 0x({_HEX})"
    rf"(?: info ({_HEX}) ({_HEX}))?"  # <= 5.x and trace-cmd's plugin: hex without 0x
    rf"(?: info1 0x({_HEX}) info2 0x({_HEX}))?"
    rf"(?: intr_info 0x({_HEX}))?(?: error_code 0x({_HEX}))?{_MORE}\s*"
)
# The two shapes nearly every kvm_exit line has, tried before the general one:
# Linux 5.10-6.x (vcpu, info1/info2, intr_info, error_code [, requests]) and
# trace-cmd's plugin / older kernels (info A B).
_EXIT_6X = re.compile(
    rf"vcpu (\d+) reason (\w+) rip 0x({_HEX}) info1 0x({_HEX}) info2 0x({_HEX}) "
    rf"intr_info 0x({_HEX}) error_code 0x({_HEX})(?: requests 0x{_HEX})?\s*"
)
_EXIT_PLUGIN = re.compile(rf"reason (\w+) rip 0x({_HEX}) info ({_HEX}) ({_HEX})\s*")
# Hex texts that are zero in most lines: a set lookup is cheaper than int().
_ZEROS = frozenset({"0", "00000000", "0000000000000000"})
_ENTRY = re.compile(
    rf"vcpu (\d+)(?:,? rip 0x({_HEX}))?(?: intr_info 0x({_HEX}))?(?: error_code 0x({_HEX}))?"
    rf"{_MORE} *(\[immediate exit\])?\s*"
)
_PIO = re.compile(rf"pio_(read|write) at 0x({_HEX}) size (\d+) count (\d+)(?: val 0x({_HEX}))? *(?:\(\.\.\.\))?\s*")
_MMIO = re.compile(rf"mmio (unsatisfied-read|read|write) len (\d+) gpa 0x({_HEX})(?: val 0x({_HEX}))?\s*")
_UEXIT = re.compile(r"reason (\S+) \((-?\d+)\)\s*")
_IOCTL = re.compile(rf"fd: 0x({_HEX}), cmd: 0x({_HEX}), arg: 0x({_HEX})\s*")
# A code printed as a number: "0x4e" (the kernel), "UNKNOWN (78)" (trace-cmd's plugin), "UNKNOWN(0x4e)".
_NUMBER = re.compile(r"(?:UNKNOWN ?)?\(?(0x[0-9a-fA-F]+|\d+)\)?")

_EVENT_OF_KIND = {kind: event for _system, event, kind in TRACEPOINTS}
_FRAC_SCALE = {n: 10 ** (9 - n) for n in range(10)}
_PIO_OP = {"read": int(PioOp.READ), "write": int(PioOp.WRITE)}
_MMIO_OP = {"unsatisfied-read": int(MmioOp.UNSATISFIED_READ), "read": int(MmioOp.READ), "write": int(MmioOp.WRITE)}
_EINTR = 4

# --------------------------------------------------------------------------
# Exit-reason names
# --------------------------------------------------------------------------

_VMX_EXACT = {name: code for code, name in VMX_EXIT_NAMES.items()} | {"PENDING_INTERRUPT": 7}
_SVM_EXACT = {name: code & _U32 for code, name in SVM_EXIT_NAMES.items()}
_VMX_UPPER = dict(_VMX_EXACT)
_SVM_UPPER = {name.upper(): code for name, code in _SVM_EXACT.items()} | {e.name: int(e) & _U32 for e in SvmExit}
_VMX_FLAGS = {name: bit for bit, name in VMX_EXIT_FLAG_NAMES.items()}
_PREFIXES = ("KVM_EXIT_REASON_", "VMX_EXIT_REASON_", "EXIT_REASON_", "SVM_EXIT_", "SVM_", "VMX_", "EXIT_")


class _Reason:
    """A kvm_exit reason text, read once per distinct text.

    ``isa``/``code`` are final when ``isa`` is set (``final``); otherwise the
    trace's ISA decides at the end: ``code`` (a number) is then taken as is,
    and ``by_isa`` holds the code a name has in each ISA it could mean.
    ``vote`` is the name counted for the ISA vote (None for numbers);
    ``count`` how many lines printed this text.
    """

    __slots__ = ("isa", "code", "by_isa", "vote", "final", "decodable", "count")

    def __init__(self, isa: int = 0, code: int | None = None, by_isa: tuple = (), vote: str | None = None):
        self.isa = isa
        self.code = code
        self.by_isa = by_isa
        self.vote = vote
        self.final = isa != 0
        self.decodable = isa != 0 or code is not None or bool(by_isa)
        self.count = 0


def _name_codes(name: str, only: Isa | None) -> list[tuple[int, int]]:
    """(isa, code) a reason name can mean; exact spellings first, then any case and prefix."""
    if only in (None, Isa.VMX) and name in _VMX_EXACT:
        return [(int(Isa.VMX), _VMX_EXACT[name])]
    if only in (None, Isa.SVM) and name in _SVM_EXACT:
        return [(int(Isa.SVM), _SVM_EXACT[name])]
    upper = name.upper()
    for prefix in _PREFIXES:
        if upper.startswith(prefix):
            upper = upper[len(prefix):]
            break
    out = []
    if only in (None, Isa.VMX) and upper in _VMX_UPPER:
        out.append((int(Isa.VMX), _VMX_UPPER[upper]))
    if only in (None, Isa.SVM) and upper in _SVM_UPPER:
        out.append((int(Isa.SVM), _SVM_UPPER[upper]))
    return out


def _number(text: str) -> int | None:
    m = _NUMBER.fullmatch(text)
    if m is None:
        return None
    return int(m.group(1), 0) & _U32


def _read_reason(text: str, only: Isa | None) -> _Reason:
    """Read what ``kvm_exit`` printed between ``reason`` and ``rip``."""
    text = " ".join(text.split())
    # A whole name first: SVM names hold spaces ("PF excp").
    cands = _name_codes(text, only)
    flags = 0
    if not cands and (n := _number(text)) is not None:
        return _Reason(int(only), n) if only is not None else _Reason(code=n)
    if not cands:
        head, _, tail = text.partition(" ")
        # VMX prints flag names (or, for a flag it cannot name, a number) after the reason.
        for word in tail.split():
            if word in _VMX_FLAGS:
                flags |= _VMX_FLAGS[word]
            elif (n := _number(word)) is not None and (n & 0xFFFF) == 0:
                flags |= n
            else:
                return _Reason()
        cands = _name_codes(head, Isa.VMX if flags else only)
        if not cands:
            n = _number(head)
            if n is None:
                return _Reason()
            if flags or only is not None:
                return _Reason(int(Isa.VMX) if flags else int(only), n | flags)
            return _Reason(code=n)
        text = head
    if len(cands) == 1:
        isa, code = cands[0]
        return _Reason(isa, code | flags if isa == Isa.VMX else code, vote=text)
    return _Reason(by_isa=tuple(cands), vote=text)


# --------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------


@dataclass
class ImportResult:
    """What :func:`import_text` read and wrote."""

    input: Path
    output: Path
    format: str
    isa: str  # "VMX", "SVM" or "unknown"
    lines: int
    events: int  # rows written
    events_by_probe: dict[str, int]  # {"kvm_exit": n, ...}
    skipped_by_event: dict[str, int]  # lines of events kvmtrace does not store
    unknown_lines: int  # lines nobody could read
    unknown_examples: list[int]  # their first line numbers
    undecodable_exits: dict[str, int]  # kvm_exit lines whose reason has no code, by printed name
    truncated_last_line: bool
    lost_events: int  # the sum of the source's "[LOST N EVENTS]" markers
    lost_marks_without_count: int  # "[LOST EVENTS]" markers (some lost, how many unknown)
    domains: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else float("inf")

    def message(self) -> str:
        """A few lines for a person: what was imported and what was left out, and why."""
        probes = ", ".join(f"{n:,} {p}" for p, n in self.events_by_probe.items()) or "none"
        out = [f"imported {self.events:,} events from {self.lines:,} lines of {self.format} text "
               f"({probes}); ISA {self.isa}; trace in {self.output}"]
        skipped = sum(self.skipped_by_event.values())
        if skipped:
            top = sorted(self.skipped_by_event.items(), key=lambda kv: (-kv[1], kv[0]))
            names = ", ".join(f"{k} {v:,}" for k, v in top[:6]) + (", ..." if len(top) > 6 else "")
            out.append(f"skipped: not kvmtrace events: {skipped:,} lines ({names})")
        if self.undecodable_exits:
            names = ", ".join(f"{k!r} {v:,}" for k, v in sorted(self.undecodable_exits.items()))
            out.append(f"left out: kvm_exit lines whose reason has no known name or number: {names} "
                       "(give --isa vmx|svm if the names are of one vendor, or print the trace "
                       "with the kernel's own format, trace-cmd report -N)")
        if self.unknown_lines:
            where = ", ".join(map(str, self.unknown_examples))
            more = ", ..." if self.unknown_lines > len(self.unknown_examples) else ""
            out.append(f"unknown: {self.unknown_lines:,} lines could not be read (lines {where}{more})")
        if self.truncated_last_line:
            out.append("the last line has no end (the file was cut short?): it was left out")
        if self.lost_events:
            out.append(f"the source reports {self.lost_events:,} lost events")
        if self.lost_marks_without_count:
            out.append(f"the source marks {self.lost_marks_without_count:,} places where events were lost "
                       "without saying how many")
        return "\n".join(out)


# --------------------------------------------------------------------------
# Opening the input
# --------------------------------------------------------------------------

_COMPRESSED = ((b"\x1f\x8b", gzip.open), (b"\xfd7zXZ\x00", lzma.open), (b"BZh", bz2.open))
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


# --------------------------------------------------------------------------
# Event bodies -> rows
# --------------------------------------------------------------------------

# Events are kept as tuples until a batch is full, then become EVENT_DTYPE
# records.  The two events of every exit, kvm_exit and kvm_entry, have narrow
# tuples of their own (numpy builds records from tuples at a cost per field);
# the rest have one wide shape.  The first field is the event's place in the batch.
_EXIT_ROW = np.dtype([
    ("seq", "<u4"), ("ts_ns", "<u8"), ("tid", "<u4"), ("pid", "<u4"), ("cpu", "<u4"), ("vcpu", "<u4"),
    ("reason", "<u4"), ("isa", "<u4"), ("rip", "<u8"), ("info1", "<u8"), ("info2", "<u8"),
    ("intr_info", "<u4"), ("error_code", "<u4"),
])
_ENTRY_ROW = np.dtype([
    ("seq", "<u4"), ("ts_ns", "<u8"), ("tid", "<u4"), ("pid", "<u4"), ("cpu", "<u4"), ("vcpu", "<u4"),
    ("rip", "<u8"), ("intr_info", "<u4"), ("error_code", "<u4"), ("flags", "u1"),
])
_OTHER_ROW = np.dtype([
    ("seq", "<u4"), ("ts_ns", "<u8"), ("tid", "<u4"), ("pid", "<u4"), ("cpu", "<u4"), ("kind", "u1"),
    ("reason", "<u4"), ("gpa", "<u8"), ("value", "<u8"), ("port", "<u4"), ("size", "<u4"),
    ("count", "<u4"), ("err", "<i4"), ("op", "u1"), ("flags", "u1"),
])
_EXIT_K, _ENTRY_K, _PIO_K, _MMIO_K, _UEXIT_K, _RUN_K = (
    int(EventKind.EXIT), int(EventKind.ENTRY), int(EventKind.PIO), int(EventKind.MMIO),
    int(EventKind.USERSPACE_EXIT), int(EventKind.RUN))
_IMMEDIATE = int(EventFlag.IMMEDIATE_EXIT)
_VALUE = int(EventFlag.VALUE)
# What a handler returns besides True (an event kept).
_SKIP = "skip"  # a line of a read event that kvmtrace does not store (an ioctl other than KVM_RUN)
_LEFT_OUT = "left out"  # an exit whose reason has no code: counted in undecodable_exits


def _h_exit(line, pos, ts, tid, pid, cpu, st):
    m = _EXIT.fullmatch(line, pos)
    if m is None:
        return None
    vcpu, text, rip, i1, i2, info1, info2, ii, ec = m.groups()
    r = st.reasons.get(text)
    if r is None:
        r = st.reasons[text] = _read_reason(text, st.isa_override)
    r.count += 1
    if not r.final:
        if not r.decodable:
            return _LEFT_OUT
        st.pending.append((st.rows_total + st.n, r))
    if info1 is None:
        info1, info2 = i1, i2
    st.exits.append((st.n, ts, tid, pid, cpu, int(vcpu) if vcpu else NO_VCPU, r.code or 0, r.isa, int(rip, 16),
                     int(info1, 16) if info1 else 0, int(info2, 16) if info2 else 0,
                     int(ii, 16) if ii else 0, int(ec, 16) if ec else 0))
    st.n += 1
    return True


def _h_entry(line, pos, ts, tid, pid, cpu, st):
    m = _ENTRY.fullmatch(line, pos)
    if m is None:
        return None
    vcpu, rip, ii, ec, imm = m.groups()
    st.entries.append((st.n, ts, tid, pid, cpu, int(vcpu), int(rip, 16) if rip else 0,
                       int(ii, 16) if ii else 0, int(ec, 16) if ec else 0, _IMMEDIATE if imm else 0))
    st.n += 1
    return True


def _other(st, ts, tid, pid, cpu, kind, reason=0, gpa=0, value=0, port=0, size=0, count=0, err=0, op=0, flags=0):
    st.others.append((st.n, ts, tid, pid, cpu, kind, reason, gpa, value, port, size, count, err, op, flags))
    st.n += 1
    return True


def _h_pio(line, pos, ts, tid, pid, cpu, st):
    m = _PIO.fullmatch(line, pos)
    if m is None:
        return None
    rw, port, size, count, val = m.groups()
    return _other(st, ts, tid, pid, cpu, _PIO_K, value=int(val, 16) if val else 0, port=int(port, 16),
                  size=int(size), count=int(count), op=_PIO_OP[rw], flags=_VALUE if val else 0)


def _h_mmio(line, pos, ts, tid, pid, cpu, st):
    m = _MMIO.fullmatch(line, pos)
    if m is None:
        return None
    op, size, gpa, val = m.groups()
    return _other(st, ts, tid, pid, cpu, _MMIO_K, gpa=int(gpa, 16), value=int(val, 16) if val else 0,
                  size=int(size), op=_MMIO_OP[op], flags=_VALUE if val else 0)


def _h_uexit(line, pos, ts, tid, pid, cpu, st):
    m = _UEXIT.fullmatch(line, pos)
    if m is None:
        return None
    name, num = m.groups()
    n = int(num)
    # errno < 0 prints "restart" (-EINTR) or "error", with -errno in the parentheses.
    if name == "restart":
        reason, err = 0, -(abs(n) or _EINTR)
    elif name == "error":
        reason, err = 0, -abs(n)
    else:
        reason, err = n & _U32, 0
    return _other(st, ts, tid, pid, cpu, _UEXIT_K, reason=reason, err=err)


def _h_ioctl(line, pos, ts, tid, pid, cpu, st):
    m = _IOCTL.fullmatch(line, pos)
    if m is None:
        return None
    if int(m.group(2), 16) & _U32 != KVM_RUN:
        return _SKIP
    return _other(st, ts, tid, pid, cpu, _RUN_K)


_HANDLERS = {
    "kvm_exit": _h_exit,
    "kvm_entry": _h_entry,
    "kvm_pio": _h_pio,
    "kvm_mmio": _h_mmio,
    "kvm_userspace_exit": _h_uexit,
    "sys_enter_ioctl": _h_ioctl,
}


# --------------------------------------------------------------------------
# The import
# --------------------------------------------------------------------------


class _State:
    """Counts and the current batch of one import."""

    def __init__(self, isa_override: Isa | None, spill):
        self.isa_override = isa_override
        self.spill = spill
        self.exits: list[tuple] = []
        self.entries: list[tuple] = []
        self.others: list[tuple] = []
        self.n = 0  # events in the current batch
        self.rows_total = 0  # events spilled so far
        self.reasons: dict[str, _Reason] = {}
        self.pending: list[tuple[int, _Reason]] = []  # (event index, reason) the trace's ISA decides
        self.skipped: dict[str, int] = {}
        self.unknown = 0
        self.unknown_examples: list[int] = []
        self.truncated = False
        self.lost = 0
        self.comms: dict[int, str] = {}  # pid -> first task name
        self.threads: dict[tuple[int, int, int], None] = {}  # (pid, tid, vcpu) seen, in order
        self.pid_order: dict[int, None] = {}
        self.kinds = np.zeros(256, dtype=np.int64)
        self.ts_min: int | None = None
        self.ts_max: int | None = None
        self.cpus: int | None = None
        self.lost_marks_without_count = 0  # "[LOST EVENTS]": events lost, how many unknown
        self.raw_clock = False  # whole-number timestamps: a counter, not seconds

    def undecodable(self) -> dict[str, int]:
        return {t: r.count for t, r in sorted(self.reasons.items()) if not r.decodable}

    def flush(self) -> None:
        if not self.n:
            return
        out = np.zeros(self.n, dtype=EVENT_DTYPE)
        out["vcpu"] = NO_VCPU  # events whose tracepoint has no vCPU id
        for rows, dtype, kind in ((self.exits, _EXIT_ROW, _EXIT_K), (self.entries, _ENTRY_ROW, _ENTRY_K),
                                  (self.others, _OTHER_ROW, None)):
            if not rows:
                continue
            a = np.array(rows, dtype=dtype)
            seq = a["seq"]
            for name in dtype.names[1:]:
                out[name][seq] = a[name]
            if kind is not None:
                out["kind"][seq] = kind
        self.rows_total += self.n
        self.n = 0
        # Emptied in place: the parse loop holds their append methods.
        self.exits.clear()
        self.entries.clear()
        self.others.clear()
        self.kinds += np.bincount(out["kind"], minlength=256)
        ts = out["ts_ns"]
        lo, hi = int(ts.min()), int(ts.max())
        self.ts_min = lo if self.ts_min is None else min(self.ts_min, lo)
        self.ts_max = hi if self.ts_max is None else max(self.ts_max, hi)
        # Processes in order of appearance, and each one's threads and vCPUs
        # (hash-based uniques: a batch has few distinct values).
        for p in pd.unique(out["pid"]).tolist():
            self.pid_order.setdefault(p, None)
        codes, threads = pd.factorize((out["pid"].astype(np.uint64) << np.uint64(32)) | out["tid"], sort=False)
        pairs = pd.unique((codes.astype(np.uint64) << np.uint64(32)) | out["vcpu"])
        for t, v in zip(threads[(pairs >> np.uint64(32)).astype(np.int64)].tolist(),
                        (pairs & np.uint64(_U32)).tolist()):
            self.threads.setdefault((t >> 32, t & _U32, v), None)
        try:
            out.tofile(self.spill)
        except OSError as e:
            raise OutputError(f"writing the temporary event file failed: {e.strerror}",
                              "free space next to the output file or choose another -o") from e

    def unknown_line(self, lineno: int, line: str) -> None:
        if line[-1:] != "\n":
            self.truncated = True
            return
        self.unknown += 1
        if len(self.unknown_examples) < UNKNOWN_EXAMPLES:
            self.unknown_examples.append(lineno)


def _parse(f, fmt: str, st: _State, auto: bool) -> int:
    """Read every line of ``f`` into ``st``; returns the number of lines.

    The loop is the hot path: one match for the task part, one for the
    event's own text, a few ints; kvm_exit and kvm_entry, nearly every line of
    a kvm trace, are read inline.
    """
    handlers = _HANDLERS
    skipped = st.skipped
    comms = st.comms
    reasons = st.reasons
    exits_append = st.exits.append
    entries_append = st.entries.append
    exit_6x = _EXIT_6X.fullmatch
    exit_plugin = _EXIT_PLUGIN.fullmatch
    zeros = _ZEROS
    entry_match = _ENTRY.fullmatch
    perf = fmt == "perf"
    primary = _PERF.match if perf else _TRACEFS.match if fmt in ("trace-cmd", "ftrace") else None
    scale = _FRAC_SCALE
    ints = _Ints()
    batch = BATCH_EVENTS
    n = st.n  # events in the batch; st.n is kept in step around calls that use it
    lineno = 0
    for lineno, line in enumerate(f, 1):
        m = primary(line) if primary is not None else None
        if m is not None:
            comm, id1, id2, cpu, sec, frac, event = m.groups()
            h = handlers.get(event)
            if h is None:
                if line[-1:] != "\n":
                    st.truncated = True
                    continue
                skipped[event] = skipped.get(event, 0) + 1
                continue
            if perf:  # PID[/TID]
                pid = ints[id1]
                tid = ints[id2] if id2 else pid
            else:  # COMM-TID [(TGID)]
                tid = ints[id1]
                pid = ints[id2] if id2 and id2[0] != "-" else tid
            cpu = ints[cpu] if cpu else NO_CPU
            # Exact nanoseconds from the decimal text, no float on the way.
            if frac:
                ts = int(sec + frac[:9]) * scale[len(frac) if len(frac) < 9 else 9]
            else:
                ts = int(sec)  # a clock that counts (trace_clock counter, x86-tsc): raw
                st.raw_clock = True
            pos = m.end()
        else:
            task = _slow_line(line, lineno, fmt, st, auto)
            if task is None:
                continue
            comm, pid, tid, cpu, ts, event, pos = task
            h = handlers[event]
        if line[-1:] != "\n":
            st.truncated = True  # a last line without its end may be cut anywhere: not trusted
            continue
        if pid not in comms:
            comms[pid] = comm.strip()
        # The common shapes inline; the handler (same result) for the rest.
        if h is _h_exit:
            mm = exit_6x(line, pos)
            if mm is not None:
                vcpu, text, rip, info1, info2, ii, ec = mm.groups()
                vcpu = ints[vcpu]
            else:
                mm = exit_plugin(line, pos)
                if mm is not None:
                    text, rip, info1, info2 = mm.groups()
                    vcpu, ii, ec = NO_VCPU, "0", "0"
            if mm is not None:
                r = reasons.get(text)
                if r is not None and r.final:
                    r.count += 1
                    exits_append((n, ts, tid, pid, cpu, vcpu, r.code, r.isa, int(rip, 16),
                                  0 if info1 in zeros else int(info1, 16), 0 if info2 in zeros else int(info2, 16),
                                  0 if ii in zeros else int(ii, 16), 0 if ec in zeros else int(ec, 16)))
                    n += 1
                    if n >= batch:
                        st.n = n
                        st.flush()
                        n = 0
                    continue
        elif h is _h_entry:
            mm = entry_match(line, pos)
            if mm is not None:
                vcpu, rip, ii, ec, imm = mm.groups()
                entries_append((n, ts, tid, pid, cpu, ints[vcpu], int(rip, 16) if rip else 0,
                                0 if not ii or ii in zeros else int(ii, 16), 0 if not ec or ec in zeros else int(ec, 16),
                                _IMMEDIATE if imm else 0))
                n += 1
                if n >= batch:
                    st.n = n
                    st.flush()
                    n = 0
                continue
        st.n = n
        done = h(line, pos, ts, tid, pid, cpu, st)
        n = st.n
        if done is True:
            if n >= batch:
                st.flush()
                n = 0
        elif done is None:
            st.unknown_line(lineno, line)
        elif done is _SKIP:
            skipped[event] = skipped.get(event, 0) + 1
    st.n = n
    return lineno


class _Ints(dict):
    """Decimal text -> int, remembered: task ids and CPUs repeat on every line."""

    def __missing__(self, text: str) -> int:
        value = self[text] = int(text)
        return value


def _slow_line(line: str, lineno: int, fmt: str, st: _State, auto: bool):
    """A line the format's own pattern does not take: headers, markers, other shapes.

    Returns (comm, pid, tid, cpu, ts, event, pos) for a line of an event
    kvmtrace reads, None otherwise (counted here).
    """
    s = line.strip()
    if not s or s.startswith("#"):
        return None  # ftrace's header, "##### CPU 2 buffer started ####"
    lost = _LOST.search(s)
    if lost is not None and (s.startswith("CPU") or s.startswith("[")):
        count = lost.group(1) or lost.group(2)
        if count is None:
            st.lost_marks_without_count += 1
        else:
            st.lost += int(count)
        return None
    if _TRACE_CMD_HEADER.fullmatch(s):
        if s.startswith("cpus="):
            st.cpus = int(s[5:])
        return None
    if auto:
        for rx, perf in ((_TRACEFS, False), (_PERF, True)):
            m = rx.match(line)
            if m is None:
                continue
            comm, id1, id2, cpu, sec, frac, event = m.groups()
            if event not in _HANDLERS:
                if line[-1:] != "\n":
                    st.truncated = True
                else:
                    st.skipped[event] = st.skipped.get(event, 0) + 1
                return None
            if perf:
                pid = int(id1)
                tid = int(id2) if id2 else pid
            else:
                tid = int(id1)
                pid = int(id2) if id2 and id2[0] != "-" else tid
            return comm, pid, tid, int(cpu) if cpu else NO_CPU, _ns(st, sec, frac), event, m.end()
    if auto or fmt == "bare":
        # Lenient: an event kvmtrace reads with no task in front of it.
        m = _BARE.match(line)
        if m is not None and m.group(3) in _HANDLERS:
            sec, frac, event = m.groups()
            return "", 0, 0, NO_CPU, _ns(st, sec, frac) if sec else 0, event, m.end()
    st.unknown_line(lineno, line)
    return None


def _ns(st: _State, sec: str, frac: str | None) -> int:
    """Exact nanoseconds from a decimal timestamp's text (no float); a whole number is a raw count."""
    if not frac:
        st.raw_clock = True
        return int(sec)
    return int(sec + frac[:9]) * _FRAC_SCALE[min(len(frac), 9)]


def _trace_isa(st: _State, override: Isa | None) -> Isa:
    if override is not None:
        return override
    return isa_from_names(n for r in st.reasons.values() if r.vote is not None for n in (r.vote,) * r.count)


def _domains(st: _State) -> list[dict]:
    per_pid: dict[int, dict] = {}
    for pid in st.pid_order:
        per_pid[pid] = {"name": st.comms.get(pid, ""), "pid": pid, "vcpus": set(), "tids": set(), "vcpu_threads": {}}
    for pid, tid, vcpu in st.threads:
        d = per_pid[pid]
        d["tids"].add(tid)
        if vcpu != NO_VCPU:
            d["vcpus"].add(vcpu)
            d["vcpu_threads"].setdefault(str(vcpu), tid)
    out = []
    for d in per_pid.values():
        d["vcpus"] = sorted(d["vcpus"])
        d["tids"] = sorted(d["tids"])
        d["vcpu_threads"] = dict(sorted(d["vcpu_threads"].items(), key=lambda kv: int(kv[0])))
        out.append(d)
    return out


def default_output(path: str | os.PathLike) -> Path:
    """Where ``kvmtrace import FILE`` writes without ``-o``: FILE's name with ``.kvmtrace``."""
    p = Path(path)
    name = p.name
    for ext in (".gz", ".xz", ".bz2"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    stem = name[: -len(".txt")] if name.endswith(".txt") else name
    return p.with_name(stem + ".kvmtrace")


def _check_output(path: Path, output: Path) -> None:
    try:
        if output.exists() and os.path.samefile(path, output):
            raise OutputError(f"the output {output} is the input file", "choose another path with -o")
    except OSError:
        pass
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write the trace file {output}: no directory {parent}",
                          "create the directory or choose another path with -o")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the trace file {output}: {parent} is not writable",
                          "choose a writable path with -o")


def import_text(path: str | os.PathLike, output: str | os.PathLike, *, fmt: str | None = None,
                isa: str | Isa | None = None) -> ImportResult:
    """Import the text trace ``path`` into the kvmtrace trace file ``output``.

    ``fmt`` is one of :data:`FORMATS` or None to detect it (:func:`detect_format`);
    ``isa`` (``"vmx"``, ``"svm"`` or an :class:`~kvmtrace.tables.exits.Isa`) overrides the ISA
    the exit-reason names vote for.  Raises TraceFileError when the input is
    binary, empty or holds no kvm event, OutputError when ``output`` cannot be
    written, ValueError for a bad ``fmt``/``isa``.  Lines that cannot be read
    are counted in the result, never fatal.
    """
    t0 = time.perf_counter()
    path, output = Path(path), Path(output)
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    override = None
    if isa is not None:
        override = Isa.coerce(isa)
        if override == Isa.UNKNOWN:
            raise ValueError(f"unknown ISA {isa!r}; vmx or svm")
    with _open_text(path) as f:  # checks the file (binary, empty) even when fmt is given
        head = list(itertools.islice(_bounded(f), DETECT_LINES if fmt is None else 1))
    if fmt is None:
        try:
            detected = detect_format(head)
        except TraceFileError as e:
            raise TraceFileError(f"{path} holds no kvm events: {e.problem}", e.fix) from None
    else:
        detected = fmt
    _check_output(path, output)
    try:
        spill = tempfile.TemporaryFile(dir=output.parent if str(output.parent) else ".", prefix=".kvmtrace-import-")
    except OSError as e:
        raise OutputError(f"cannot write next to {output}: {e.strerror}", "choose a writable path with -o") from e
    with spill:
        st = _State(override, spill)
        # Millions of small tuples of ints: the cycle collector would walk them
        # again and again for nothing (about 6 % of the time).
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            with _open_text(path) as f:
                lines = _parse(_bounded(f), detected, st, auto=fmt is None)
        finally:
            if gc_was_on:
                gc.enable()
        st.flush()
        return _write(path, output, detected, st, lines, override, spill, t0)


def _write(path: Path, output: Path, detected: str, st: _State, lines: int, override: Isa | None,
           spill, t0: float) -> ImportResult:
    trace_isa = _trace_isa(st, override)
    # Exits whose ISA the whole trace decides: numbers, and names two vendors share.
    fixes: list[tuple[int, int, int]] = []  # (row, isa, code); isa -1: cannot be decoded, dropped
    undecodable = st.undecodable()
    for row, r in st.pending:
        by = dict(r.by_isa)
        if by:
            if trace_isa in by:
                fixes.append((row, int(trace_isa), by[trace_isa]))
            else:
                fixes.append((row, -1, 0))
                undecodable[r.vote] = undecodable.get(r.vote, 0) + 1
        else:
            fixes.append((row, int(trace_isa), r.code))
    dropped = sum(1 for _, i, _ in fixes if i < 0)
    events = st.rows_total - dropped
    kinds = {_EVENT_OF_KIND[k]: int(st.kinds[k]) for k in _EVENT_OF_KIND if st.kinds[k]}
    if dropped:
        kinds["kvm_exit"] -= dropped
        kinds = {k: v for k, v in kinds.items() if v}
    if events == 0:
        raise _no_events(path, detected, st, lines, undecodable)
    domains = _domains(st)
    isa_name = trace_isa.name if trace_isa != Isa.UNKNOWN else "unknown"
    info = {
        "path": str(path),
        "format": detected,
        "lines": lines,
        "events": events,
        "events_by_probe": kinds,
        "skipped_by_event": dict(sorted(st.skipped.items())),
        "unknown_lines": st.unknown,
        "unknown_examples": st.unknown_examples,
        "undecodable_exits": dict(sorted(undecodable.items())),
        "truncated_last_line": st.truncated,
        "lost_marks_without_count": st.lost_marks_without_count,
        "isa_from": "--isa" if override is not None else "exit-reason names",
    }
    host = {"isa": isa_name}
    if st.cpus is not None:
        host["cpus"] = st.cpus
    header = {
        "kvmtrace_version": __version__,
        "source": "import",
        "import": info,
        "host": host,
        "tracepoint_formats": {},
        "probes": list(kinds),
        "domains": domains,
        "values_captured": True,
        "clock": ("the source's trace clock, raw counts (not nanoseconds)" if st.raw_clock
                  else "the source's trace clock"),
    }
    writer = TraceWriter(output, header)
    try:
        spill.seek(0)
        fi = 0
        start = 0
        while start < st.rows_total:
            batch = np.fromfile(spill, dtype=EVENT_DTYPE, count=BATCH_EVENTS)
            if len(batch) == 0:
                break
            end = start + len(batch)
            keep = None
            while fi < len(fixes) and fixes[fi][0] < end:
                row, i, code = fixes[fi]
                if i < 0:
                    if keep is None:
                        keep = np.ones(len(batch), dtype=bool)
                    keep[row - start] = False
                else:
                    batch["isa"][row - start] = i
                    batch["reason"][row - start] = code
                fi += 1
            if keep is not None:
                batch = batch[keep]
            writer.write(batch, {"source": "import"})
            start = end
        writer.close({
            "start_time_ns": st.ts_min or 0,
            "end_time_ns": st.ts_max or 0,
            "stop_reason": "import",
            "lost_events": st.lost,
            "lost_by_kind": {},
            "matched_by_kind": {},
        })
    except BaseException:
        # Half a trace is worse than none: the input is still there to import again.
        writer.abandon()
        output.unlink(missing_ok=True)
        raise
    return ImportResult(
        input=path, output=output, format=detected, isa=isa_name, lines=lines, events=events,
        events_by_probe=kinds, skipped_by_event=info["skipped_by_event"], unknown_lines=st.unknown,
        unknown_examples=list(st.unknown_examples), undecodable_exits=info["undecodable_exits"],
        truncated_last_line=st.truncated, lost_events=st.lost,
        lost_marks_without_count=st.lost_marks_without_count, domains=domains,
        seconds=time.perf_counter() - t0,
    )


def _no_events(path: Path, detected: str, st: _State, lines: int, undecodable: dict[str, int]) -> TraceFileError:
    seen = sorted(st.skipped.items(), key=lambda kv: -kv[1])[:5]
    parts = []
    if seen:
        parts.append("events seen: " + ", ".join(f"{k} {v:,}" for k, v in seen))
    if undecodable:
        parts.append("kvm_exit lines with reasons no name or number gives: "
                     + ", ".join(f"{k!r} {v:,}" for k, v in undecodable.items()))
    if st.unknown:
        parts.append(f"{st.unknown:,} unreadable lines (first: line {st.unknown_examples[0]})")
    detail = f" ({'; '.join(parts)})" if parts else ""
    return TraceFileError(
        f"{path} holds no kvm events kvmtrace can import: {lines:,} lines of {detected} text{detail}",
        "capture kvm:kvm_exit, kvm:kvm_entry, kvm:kvm_pio, kvm:kvm_mmio or kvm:kvm_userspace_exit "
        "(e.g. trace-cmd record -e kvm, then trace-cmd report > FILE)")
