"""kvmtrace.tables.exits against the live tracefs of the machine running the
tests (skipped, saying why, if tracefs cannot be read); tests/unit/test_exits.py
has every other check of the tables."""

from __future__ import annotations

import pytest

from kvmtrace.tables.tpformat import EventFormat, TracefsPermissionError, TracepointNotFoundError, read_format

from ..support.exit_tables import disagreements as _disagreements

TRACEFS_ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def _live_format(name: str) -> EventFormat:
    missing: list[str] = []
    for root in TRACEFS_ROOTS:
        try:
            return read_format("kvm", name, root)
        except TracepointNotFoundError as exc:
            missing.append(str(exc))
        except TracefsPermissionError as exc:
            pytest.skip(f"tracefs not readable: {exc}")
    pytest.skip("live kvm tracepoints unavailable: " + "; ".join(missing))


def test_builtin_tables_match_live_kernel() -> None:
    """Every code this kernel's kvm_exit / kvm_userspace_exit names has the same built-in name."""
    kvm_exit = _live_format("kvm_exit")
    userspace = _live_format("kvm_userspace_exit")
    assert _disagreements(kvm_exit, userspace) == []
