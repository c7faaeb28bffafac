"""The shapes of trace text: each tool's task columns, each event's own text, and exit reasons.

The regular expressions :mod:`.convert` matches line by line (a task part,
then an event body from its end), and the reading of what ``kvm_exit``
printed as its reason: a name (read back into codes by
:func:`kvmtrace.tables.exits.names.name_codes`), flag names after it, or a
number the kernel printed for a code it has no name for.

Standard library only; importing this module has no side effects.
"""

from __future__ import annotations

import re

from kvmtrace.tables.exits import Isa
from kvmtrace.tables.exits.names import name_codes
from kvmtrace.tables.exits.vmx import VMX_EXIT_FLAG_NAMES

_U32 = 0xFFFF_FFFF

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

# --------------------------------------------------------------------------
# Exit-reason names
# --------------------------------------------------------------------------

_VMX_FLAGS = {name: bit for bit, name in VMX_EXIT_FLAG_NAMES.items()}


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


def _number(text: str) -> int | None:
    m = _NUMBER.fullmatch(text)
    if m is None:
        return None
    return int(m.group(1), 0) & _U32


def _read_reason(text: str, only: Isa | None) -> _Reason:
    """Read what ``kvm_exit`` printed between ``reason`` and ``rip``."""
    text = " ".join(text.split())
    # A whole name first: SVM names hold spaces ("PF excp").
    cands = name_codes(text, only)
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
        cands = name_codes(head, Isa.VMX if flags else only)
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
