"""The Trace API: ``kvmtrace.load(path)`` and its typed ``df_*`` frames.

:mod:`~kvmtrace.trace.core` holds the :class:`Trace` object,
:mod:`~kvmtrace.trace.loading` the loaders (whole, or batch by batch for the
report) and :func:`trend`.
"""

from kvmtrace.trace.core import EXIT_COLUMNS, Trace
from kvmtrace.trace.loading import ReportTrace, load, load_for_report, reuse_memory, trend

__all__ = ["EXIT_COLUMNS", "ReportTrace", "Trace", "load", "load_for_report", "reuse_memory", "trend"]
