"""kvmtrace's exceptions: each says what is wrong and how to fix it.

The CLI prints ``str(error)`` on one line of stderr and exits with
``error.exit_code``; nothing else is needed to act on it.
"""

from __future__ import annotations


class KvmtraceError(Exception):
    """Base class. ``fix`` is the action that resolves the problem."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem}: {self.fix}" if self.fix else self.problem


class PreflightError(KvmtraceError):
    """The host cannot record: privileges, tracefs, KVM, headers, bcc."""

    exit_code = 2


class NotPrivilegedError(PreflightError):
    pass


class TracefsError(PreflightError):
    pass


class KernelHeadersError(PreflightError):
    pass


class BccError(PreflightError):
    """bcc is missing, or compiling/attaching the probes failed."""


class LibvirtError(KvmtraceError):
    """libvirtd is unreachable, or a domain cannot be resolved."""

    exit_code = 3


class LibvirtUnreachableError(LibvirtError):
    pass


class DomainNotFoundError(LibvirtError):
    pass


class DomainNotRunningError(LibvirtError):
    pass


class OutputError(KvmtraceError):
    """The trace file cannot be written (checked before attaching)."""

    exit_code = 4


class TraceFileError(KvmtraceError):
    """A file is not a kvmtrace trace, or is damaged beyond reading."""

    exit_code = 5


class RateTableError(KvmtraceError):
    """Rate tables that compare/trend cannot work with (bad columns, too few windows)."""

    exit_code = 5


class MissingTraceEventError(KvmtraceError):
    """An analysis needs events the trace does not hold."""

    exit_code = 5

    def __init__(self, needed: list[str], analysis: str):
        names = ", ".join(needed)
        super().__init__(
            f"{analysis} needs the events {names}, which this trace does not hold",
            "record on a host where these tracepoints fire, or import a trace that has them",
        )
        self.needed = needed
