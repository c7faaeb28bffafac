"""Importing a text trace and reading back what the importer wrote."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kvmtrace.importer import import_text
from kvmtrace.kernel.events import EventKind
from kvmtrace.trace import load


def run(tmp_path: Path, text: str | None = None, *, src: Path | None = None, name: str = "in.txt", **kw):
    """Import ``text`` (or the file ``src``); return the result, the loaded trace and its events."""
    if src is None:
        src = tmp_path / name
        src.write_text(text)
    out = tmp_path / "out.kvmtrace"
    result = import_text(src, out, **kw)
    trace = load(out)
    return result, trace, trace.events


def kind(ev: pd.DataFrame, k: EventKind) -> pd.DataFrame:
    return ev[ev["kind"] == int(k)].reset_index(drop=True)


def exit_counts(trace) -> dict[tuple[str, str, int, str], int]:
    """Per-reason kvm_exit counts as the report computes them (summary.exits)."""
    x = trace.summary.exits
    return {(r.isa, r.reason, int(r.code), r.flags): int(r.count) for r in x.itertuples()}
