"""The text table of `kvmtrace compare`, from :func:`kvmtrace.analysis.compare.compare`'s frame."""

from __future__ import annotations

import io
import math

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from kvmtrace.analysis.compare import VCPU_TIME


def _fmt_rate(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 1:
        return f"{x:.1f}"
    return "0" if x == 0 else f"{x:.2g}"


def _fmt_change(row) -> str:
    c = row["change_pct"]
    if math.isinf(c):
        return "new"
    if row["base_count"] == 0 and row["new_count"] == 0:
        return "-"
    return f"{c:+.1f}%"


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "-"
    if p < 1e-4:
        return "<1e-4"
    return f"{p:.4f}"


def _verdict(row) -> str:
    if row["regression"]:
        return "REGRESSION"
    if row["significant"]:
        return "up" if row["change_pct"] > 0 else "down"
    return ""


def format_text(df: pd.DataFrame, width: int = 80, max_rows: int | None = None) -> str:
    """A :func:`compare` frame as a text table that fits ``width`` columns.

    Shows dimension, key, both rates (/s), the change, the Holm-adjusted p
    and a verdict: REGRESSION, "up" (significant, below the threshold),
    "down" (significant decrease) or blank. ``max_rows`` cuts the table
    (the frame is sorted with regressions first) and says how many it left out.
    """
    a = df.attrs
    buf = io.StringIO()
    con = Console(file=buf, width=width, no_color=True, highlight=False, force_terminal=False)
    n_reg, n_sig = int(df["regression"].sum()), int(df["significant"].sum())
    if a:
        con.print(f"compare: {a.get('base_label', 'BASE')} (base) -> {a.get('new_label', 'NEW')} (new)")
        con.print(f"{a.get('method', '?')} test, Holm-corrected alpha {a.get('alpha', float('nan')):g}; "
                  f"regression = significant rise above {a.get('threshold_pct', float('nan')):g}%")
    con.print(f"{n_reg} regression(s), {n_sig} significant change(s) in {len(df)} rows")
    for note in a.get("left_out", []) if a else []:
        con.print(f"left out: {note}")
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name, justify in [("dimension", "left"), ("key", "left"), ("base/s", "right"), ("new/s", "right"),
                          ("change", "right"), ("p (Holm)", "right"), ("verdict", "left")]:
        t.add_column(name, justify=justify, overflow="fold", no_wrap=justify == "right")
    shown = df if max_rows is None else df.head(max_rows)
    for _, r in shown.iterrows():
        if r["dimension"] == VCPU_TIME:  # a state's share of the vCPU's time, not a rate
            base, new = f"{r['base_rate'] / 10:.1f}%", f"{r['new_rate'] / 10:.1f}%"
        else:
            base, new = _fmt_rate(r["base_rate"]), _fmt_rate(r["new_rate"])
        t.add_row(str(r["dimension"]), str(r["key"]), base, new, _fmt_change(r), _fmt_p(r["p_adjusted"]),
                  _verdict(r))
    con.print(t)
    if len(shown) < len(df):
        rest = df.iloc[len(shown):]
        con.print(f"... {len(rest)} more rows not shown ({int(rest['significant'].sum())} significant)")
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()).rstrip("\n") + "\n"
