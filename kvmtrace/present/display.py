"""Frames shown as the reports show them: ports and addresses in hex, durations in µs.

The ``df_*`` frames keep their dtypes (ports uint32, addresses uint64, times
int64 nanoseconds: what computing needs); :func:`styled` wraps one in an
object that only *displays* it the way ``kvmtrace report`` prints, for a
notebook::

    from kvmtrace.present.display import styled
    styled(trace.df_userspace_exits().head())
    styled(trace.df_latency("vmm_service", by=("device", "direction")))

Columns, and index levels, by name:

=============================== ==============================================
``port``                        ``0x03f8`` (4 hex digits, as the reports)
``gpa``, ``rip``, ``info1``,    ``0xfed00000``
``info2``, ``intr_info``,
``error_code``, ``value``
``*_ns`` durations              µs with one decimal (``service_ns``,
(``service_ns``, ``handling_ns``) ``handling_ns``); -1 ("none traced") as ``-``
latency statistics              ``min``, ``mean``, ``p50``, ``p90``, ``p99``,
                                ``max`` of a ``df_latency`` frame, in µs
=============================== ==============================================

Timestamps (``ts_ns``, ``run_ts_ns``, ``entry_ts_ns``) stay as they are: they
are points in the host's clock, not durations. :data:`FORMATTERS` holds the
same rules as plain functions, for ``DataFrame.to_string(formatters=...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

__all__ = ["FORMATTERS", "Styled", "formatters_for", "styled"]

_HEX = ("gpa", "rip", "info1", "info2", "intr_info", "error_code", "value")
_DURATION_NS = ("service_ns", "handling_ns", "duration_ns")
_LATENCY = ("min", "mean", "p50", "p90", "p99", "max")


def _port(x) -> str:
    return "-" if _missing(x) else f"{int(x):#06x}"


def _hex(x) -> str:
    return "-" if _missing(x) else f"{int(x):#x}"


def _us(x) -> str:
    return "-" if _missing(x) or float(x) < 0 else f"{float(x) / 1e3:,.1f} µs"


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


#: Formatters by column name (the latency statistics only where the frame is a df_latency one).
FORMATTERS: dict[str, Callable[[object], str]] = {"port": _port, **{c: _hex for c in _HEX},
                                                   **{c: _us for c in _DURATION_NS}}


def formatters_for(df: pd.DataFrame) -> dict[str, Callable[[object], str]]:
    """The formatters that apply to ``df``'s columns (df_latency's statistics included)."""
    out = {c: f for c, f in FORMATTERS.items() if c in df.columns}
    if "p50" in df.columns:  # a df_latency frame: its statistics are nanoseconds
        out.update({c: _us for c in _LATENCY if c in df.columns})
    return out


class Styled:
    """A frame shown with :data:`FORMATTERS`: ``data`` is the frame itself (untouched),
    ``shown`` a copy of text cells; notebooks display it as HTML, ``repr`` as text.
    (No ``pandas.Styler``: that needs jinja2, which kvmtrace does not.)"""

    def __init__(self, data: pd.DataFrame):
        self.data = data
        fmts = formatters_for(data)
        shown = data.copy()
        for c, f in fmts.items():
            shown[c] = [f(x) for x in data[c].tolist()]
        names = list(data.index.names)
        if any(str(n) in FORMATTERS for n in names):
            levels = [[FORMATTERS[str(n)](x) for x in data.index.get_level_values(i)] if str(n) in FORMATTERS
                      else data.index.get_level_values(i) for i, n in enumerate(names)]
            shown.index = (pd.MultiIndex.from_arrays(levels, names=names) if len(names) > 1
                           else pd.Index(levels[0], name=names[0]))
        self.shown = shown

    def to_html(self) -> str:
        return self.shown.to_html()

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return repr(self.shown)


def styled(obj: pd.DataFrame | pd.Series) -> Styled:
    """``obj`` (a Series becomes a one-column frame) shown with ports and addresses in hex and
    durations in µs, in columns and index levels; the data itself is untouched (``.data``)."""
    return Styled(obj.to_frame() if isinstance(obj, pd.Series) else obj)
