"""How many: counter tracks of exits per window, a sample where any series changes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from kvmtrace.present.perfetto.sources import _Names

def _window_counts(ts: np.ndarray, keys: np.ndarray, origin: int, lo: int, hi: int,
                   window_ns: int) -> tuple[int, dict[str, np.ndarray]]:
    """Counts of ``ts`` in [lo, hi) per window of ``window_ns`` since ``origin``, per key; the first window."""
    w0 = (lo - origin) // window_ns
    w1 = max((hi - 1 - origin) // window_ns, w0)
    n = int(w1 - w0 + 1)
    sel = (ts >= lo) & (ts < hi)
    w = (ts[sel] - origin) // window_ns - w0
    k = keys[sel]
    return int(w0), {str(key): np.bincount(w[k == key], minlength=n)[:n] for key in pd.unique(k)}


def _counters(frames: list[tuple[pd.DataFrame | None, str, Callable[[pd.DataFrame], np.ndarray]]],
              origin: int, lo: int, hi: int, window_ns: int, q: _Names) -> list[str]:
    """``C`` events per guest and frame: a sample where any series changes, and the last window.

    Each sample holds until the next, as both viewers draw counters, so the
    unchanged windows between need no event.
    """
    lines = []
    for frame, label, keys_of in frames:
        if frame is None or frame.empty:
            continue
        qn = q(label)
        for pid in pd.unique(frame["pid"].to_numpy()).tolist():
            f = frame[frame["pid"].to_numpy() == pid]
            first, series = _window_counts(f["ts_ns"].to_numpy(np.int64), keys_of(f), origin, lo, hi, window_ns)
            keys = sorted(series)
            if not keys:
                continue
            m = np.vstack([series[k] for k in keys])  # keys x windows
            change = np.ones(m.shape[1], dtype=bool)
            change[1:] = (m[:, 1:] != m[:, :-1]).any(axis=0)
            change[-1] = True
            qk = [q(k) for k in keys]
            for w in np.flatnonzero(change).tolist():
                args = ",".join(f"{k}:{v}" for k, v in zip(qk, m[:, w].tolist()))
                lines.append(f'{{"ph":"C","ts":{(first + w) * window_ns / 1000:.3f},"pid":{pid},"name":{qn},'
                             f'"args":{{{args}}}}}')
    return lines
