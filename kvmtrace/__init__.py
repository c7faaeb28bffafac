"""kvmtrace: trace a KVM guest's vCPU run loop with eBPF.

``kvmtrace.load(path)`` reads a trace file into a :class:`kvmtrace.trace.Trace`;
``trace.compare(other)`` and ``kvmtrace.trend(traces)`` compare runs.
Importing the package loads nothing else (pandas and pyarrow come with the
first ``load``).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load", "Trace", "trend"]


def __getattr__(name: str):
    if name in ("load", "Trace", "trend"):
        from kvmtrace import trace

        return getattr(trace, name)
    raise AttributeError(f"module 'kvmtrace' has no attribute {name!r}")
