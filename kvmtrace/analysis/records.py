"""DataFrames as lists of plain dicts, for JSON output."""

from __future__ import annotations

import math

import pandas as pd


def plain_records(df: pd.DataFrame) -> list[dict]:
    """Rows as dicts of plain Python types, strict-JSON safe.

    numpy scalars become Python ones, non-finite floats None, anything else
    that is not a bool, int or float (categories, strings) a str.
    """
    out = []
    for row in df.to_dict("records"):
        clean = {}
        for k, v in row.items():
            if hasattr(v, "item"):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            elif not isinstance(v, (bool, int, float)) and v is not None:
                v = str(v)
            clean[k] = v
        out.append(clean)
    return out
