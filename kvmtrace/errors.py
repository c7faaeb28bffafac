"""kvmtrace's exceptions, and the exit codes of the ``kvmtrace`` command.

Every exception kvmtrace raises on purpose is a :class:`KvmtraceError`: it
says what is wrong (``problem``) and how to fix it (``fix``). The CLI prints
``str(error)`` on one line of stderr and exits with ``error.exit_code``, a
member of :class:`ExitCode`; nothing else is needed to act on it. The
errors that stand for a builtin one (a missing tracepoint is a
FileNotFoundError, an unparsable format a ValueError) keep that base too, so
callers catching the builtin still catch them.

This module imports nothing of kvmtrace's: every layer may raise its errors.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """The exit status of ``kvmtrace``: one code per kind of failure.

    3, 4 and 5 keep the values they always had (scripts test them).
    """

    OK = 0
    REGRESSION = 1
    USAGE = 2
    LIBVIRT = 3
    OUTPUT = 4
    TRACE_FILE = 5
    MISSING_EVENTS = 6
    PREFLIGHT = 7
    INTERRUPTED = 130
    BROKEN_PIPE = 141

    @property
    def meaning(self) -> str:
        """One line on when ``kvmtrace`` exits with this code."""
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.REGRESSION: "compare or trend found a regression",
    ExitCode.USAGE: "bad command line: an unknown option, or a value that cannot work",
    ExitCode.LIBVIRT: "libvirt: libvirtd unreachable, a domain not found or not running, bad domain XML",
    ExitCode.OUTPUT: "an output file cannot be written",
    ExitCode.TRACE_FILE: "a trace file is damaged, or not a kvmtrace trace",
    ExitCode.MISSING_EVENTS: "the trace lacks the events an analysis needs",
    ExitCode.PREFLIGHT: "the host cannot record: privileges, tracefs, kernel headers, bcc, nasm",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
    ExitCode.BROKEN_PIPE: "the output pipe closed early",
}


def exit_code_table() -> str:
    """The exit codes as ``--help`` lists them, one line each."""
    return "Exit status:\n" + "\n".join(f"  {int(c):>3}  {c.meaning}" for c in ExitCode)


class KvmtraceError(Exception):
    """Base class. ``fix`` is the action that resolves the problem."""

    exit_code = ExitCode.USAGE

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem}: {self.fix}" if self.fix else self.problem


class UsageError(KvmtraceError):
    """A request that cannot be done as given: a missing option, a value that names nothing."""

    exit_code = ExitCode.USAGE


# ------------------------------------------------------------------ preflight

class PreflightError(KvmtraceError):
    """The host cannot record: privileges, tracefs, KVM, headers, bcc."""

    exit_code = ExitCode.PREFLIGHT


class NotPrivilegedError(PreflightError):
    pass


class TracefsError(PreflightError):
    pass


class TracepointNotFoundError(TracefsError, FileNotFoundError):
    """A tracepoint's ``format`` file does not exist: tracefs not mounted or event not compiled in."""


class TracefsPermissionError(TracefsError, PermissionError):
    """tracefs exists but may not be read by this user."""


class KernelHeadersError(PreflightError):
    pass


class BccError(PreflightError):
    """bcc is missing, or compiling/attaching the probes failed."""


class GuestBuildError(PreflightError):
    """The demo guest's ROM cannot be built: nasm missing or failing, no writable directory."""


# -------------------------------------------------------------------- libvirt

class LibvirtError(KvmtraceError):
    """libvirtd is unreachable, or a domain cannot be resolved."""

    exit_code = ExitCode.LIBVIRT


class LibvirtUnreachableError(LibvirtError):
    pass


class DomainNotFoundError(LibvirtError):
    pass


class DomainNotRunningError(LibvirtError):
    pass


class DomainXmlError(LibvirtError):
    """A domain XML for ``launch`` cannot be read, or is not a libvirt domain."""


# ---------------------------------------------------------------------- files

class OutputError(KvmtraceError):
    """An output file (a trace, a report, a timeline) cannot be written (checked before attaching)."""

    exit_code = ExitCode.OUTPUT


class TraceFileError(KvmtraceError):
    """A file is not a kvmtrace trace, or is damaged beyond reading."""

    exit_code = ExitCode.TRACE_FILE


class FormatParseError(TraceFileError, ValueError):
    """The text is not a tracepoint format file (no ``name:`` line, a bad ``field:`` line...)."""


class MemoryMapError(KvmtraceError):
    """A memory map text cannot give device names."""

    exit_code = ExitCode.TRACE_FILE


# ------------------------------------------------------------------- analyses

class RateTableError(KvmtraceError):
    """What compare/trend were asked cannot be done with these runs: an option value
    (alpha, method, baseline, order), too few windows, runs without a duration,
    rate tables without the needed columns."""

    exit_code = ExitCode.USAGE


class MissingTraceEventError(KvmtraceError):
    """An analysis needs events the trace does not hold.

    ``needed``: the events (``kvm:kvm_exit``, or "single events (record
    --mode events)" for a counts-mode recording); ``any_of``: one of them
    would do; ``holds``: what the trace holds instead, as a phrase ("it
    holds kvm:kvm_pio, kvm:kvm_userspace_exit"). Raised through
    :func:`kvmtrace.analysis.requirements.require_events`, which fills them in.
    """

    exit_code = ExitCode.MISSING_EVENTS

    def __init__(self, needed: list[str], analysis: str, holds: str | None = None, fix: str | None = None,
                 any_of: bool = False):
        names = ", ".join(needed)
        if len(needed) > 1:
            names = (f"one of {names}" if any_of else f"the events {names}")
        held = f" ({holds})" if holds else ""
        super().__init__(
            f"{analysis} needs {names}, which this trace does not hold{held}",
            fix or "record on a host where these tracepoints fire, or import a trace that has them",
        )
        self.needed = list(needed)
        self.analysis = analysis
        self.holds = holds
        self.any_of = any_of
