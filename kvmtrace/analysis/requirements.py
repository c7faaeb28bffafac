"""What an analysis needs from a trace, checked in one place.

Each analysis names the events it needs, as LISA's ``@requires_events``
does; :func:`require_events` checks a trace (or a bare events frame) for
them and raises :class:`~kvmtrace.errors.MissingTraceEventError` naming
what is missing, what the trace holds instead, and how to get a trace that
has it. A counts-mode recording (``record --mode counts``) holds totals per
key and in-kernel latency histograms, no single events: every analysis that
pairs, times or draws single events refuses it here.

Used by analysis and present alike; pure numpy, no kernel access.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from kvmtrace.errors import MissingTraceEventError
from kvmtrace.kernel.events import AGGREGATE, TRACEPOINTS, EventKind

__all__ = ["SINGLE_EVENTS", "event_name", "holdings", "missing_events", "require_events"]

#: What a counts-mode recording lacks, as the refusal names it.
SINGLE_EVENTS = "single events (record --mode events)"

_NAMES = {kind: f"{system}:{name}" for system, name, kind in TRACEPOINTS}
_NAMES[EventKind.RUN] = "kvm:kvm_fpu (KVM_RUN; syscalls:sys_enter_ioctl before Linux 5.15)"
_NAMES[EventKind.IOCTL] = "syscalls:sys_exit_ioctl (KVM ioctls)"
_HW = {EventKind.EXIT, EventKind.ENTRY}  # the events that never fire on nested (PVM) hosts


def event_name(kind: int) -> str:
    """The tracepoint behind an event kind: ``kvm:kvm_exit``, ``kvm:kvm_fpu (KVM_RUN; ...)``."""
    try:
        return _NAMES[EventKind(kind)]
    except (ValueError, KeyError):
        return f"events of kind {int(kind)}"


def _header(data) -> dict:
    """A Trace's header; a bare events frame has none."""
    return {} if isinstance(data, pd.DataFrame) else data.header


def _kinds(data) -> np.ndarray:
    """The kind column of a Trace's events or of an events frame."""
    events = data if isinstance(data, pd.DataFrame) else data.events
    return events["kind"].to_numpy() if "kind" in events.columns else np.zeros(0, np.uint8)


def _counts_mode(header: dict, kind: np.ndarray | None) -> bool:
    """Whether the data is a counts-mode recording: by its header, else by its aggregate or HIST rows."""
    if header.get("mode") == "counts":
        return True
    if kind is None or not len(kind):
        return False
    return bool((((kind & AGGREGATE) != 0) | ((kind & ~np.uint8(AGGREGATE)) == EventKind.HIST)).any())


def holdings(data) -> str:
    """What ``data`` (a Trace or an events frame) holds, as the errors say it: "it holds kvm:kvm_pio, ..."."""
    header, kind = _header(data), _kinds(data)
    present = np.flatnonzero(np.bincount(kind, minlength=256)) if len(kind) else np.zeros(0, np.int64)
    if _counts_mode(header, kind):
        base = [k & ~AGGREGATE for k in present.tolist()]
        totals = [event_name(b) for k, b in zip(present.tolist(), base) if k & AGGREGATE and b != EventKind.HIST]
        what = [f"totals of {', '.join(totals)}"] if totals else []
        if EventKind.HIST in base:
            what.append("in-kernel latency histograms")
        return f"it is a counts-mode recording: {' and '.join(what) or 'no totals'}"
    if not len(present):
        return "it holds no events"
    return "it holds " + ", ".join(event_name(k) for k in present.tolist())


def missing_events(data, needed: Iterable[int | str], analysis: str, *, any_of: bool = False,
                   instead: str | None = None) -> MissingTraceEventError:
    """The error for an analysis that lacks ``needed`` (event kinds, or SINGLE_EVENTS) in ``data``.

    The fix fits how the data was recorded: a counts-mode recording needs
    ``--mode events``; events that were probed did not fire (kvm_exit and
    kvm_entry never do on nested hosts); events not probed need another
    recording. ``instead`` names what works without them.
    """
    header = _header(data)
    needed = list(needed)
    names = [n if isinstance(n, str) else event_name(n) for n in needed]
    kinds = {EventKind(n) for n in needed if not isinstance(n, str)}
    nested = " (kvm_exit and kvm_entry never fire on nested hosts)" if kinds & _HW else ""
    probes = set(header.get("probes", []))
    short = [_NAMES[k].split(":")[-1].split(" ")[0] for k in kinds]
    if SINGLE_EVENTS in names:
        fix = "record again with --mode events (report and plot_exit_mix read this one)"
    elif probes and all(s in probes for s in short):
        fix = f"they were probed but did not fire during the recording{nested}; record on a host where they fire"
    elif probes:
        fix = "record again with these tracepoints (kvmtrace record attaches them where the kernel has them)"
    else:
        fix = f"record on a host where these tracepoints fire{nested}, or import a trace that has them"
    if instead:
        fix += f"; {instead}"
    return MissingTraceEventError(names, analysis, holdings(data), fix, any_of=any_of)


def require_events(data, needed: Iterable[int] = (), analysis: str = "this analysis", *, any_of: bool = False,
                   counts_ok: bool = False, instead: str | None = None) -> None:
    """Raise MissingTraceEventError unless ``data`` holds the events ``analysis`` needs.

    ``data``: a :class:`~kvmtrace.trace.Trace` or an events frame
    (Trace.events). ``needed``: :class:`~kvmtrace.kernel.events.EventKind`
    values, all of them needed (``any_of``: one is enough). Unless
    ``counts_ok``, a counts-mode recording is refused first: it holds no
    single events. ``instead``: what works without them, added to the fix.
    Costs a scan of the kind column per needed event (a trace's header
    tells its mode; only a bare frame is scanned for aggregate rows).
    """
    needed = [EventKind(k) for k in needed]
    if not counts_ok and _counts_mode(_header(data), _kinds(data) if isinstance(data, pd.DataFrame) else None):
        raise missing_events(data, [SINGLE_EVENTS], analysis, instead=instead)
    if not needed:
        return
    kind = _kinds(data)
    if counts_ok:
        kind = kind & ~np.uint8(AGGREGATE)
    have = [bool((kind == k).any()) for k in needed]
    if any(have) if any_of else all(have):
        return
    lacking = needed if any_of else [k for k, h in zip(needed, have) if not h]
    raise missing_events(data, lacking, analysis, any_of=any_of, instead=instead)
