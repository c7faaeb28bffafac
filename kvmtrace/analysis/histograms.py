"""Latency from a counts-mode recording's in-kernel log2 histograms.

`record --mode counts` keeps no single event: the probes fold each interval
(userspace exit -> the thread's next KVM_RUN; kvm_exit -> kvm_entry) into a
log2 histogram in the kernel, written as HIST rows (``op`` the
:class:`~kvmtrace.kernel.events.Latency`, ``reason`` the exit reason, ``isa``,
``port`` the bucket b, ``value`` the count). The bucket is bcc's
``bpf_log2l(ns)``, which is floor(log2(ns)) + 1: bucket b holds
[2^(b-1), 2^b) ns (and 0 ns in bucket 1). The quantiles here are therefore
bucket bounds: the q-quantile is the upper bound 2^b ns of the bucket
holding it, never more than 2x the true value and never less.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kvmtrace.kernel.events import AGGREGATE, EventKind, Latency
from kvmtrace.tables.exits import ExitNames, Isa

#: Columns of :func:`log2_latency` (ns columns are bucket upper bounds).
LOG2_LATENCY_COLUMNS = ("isa", "reason", "count", "p50", "p90", "p99", "max")


def _quantile_bound(buckets: np.ndarray, counts: np.ndarray, q: float) -> int:
    """Upper bound (ns) of the bucket holding the q-quantile of a histogram."""
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, q * cum[-1], side="left"))
    return upper_bound(int(buckets[min(i, len(buckets) - 1)]))


def upper_bound(bucket: int) -> int:
    """The exclusive upper bound (ns) of in-kernel log2 bucket ``bucket``: 2^bucket.

    The probes bucket an interval with bcc's ``bpf_log2l(v)`` = floor(log2 v) + 1
    (1 for v = 0), so bucket b holds [2^(b-1), 2^b).
    """
    return 1 << bucket


def log2_latency(ev: pd.DataFrame, names: ExitNames, which: Latency) -> pd.DataFrame:
    """Count and quantile bounds (ns) per exit reason of one in-kernel histogram.

    Columns: isa ("VMX"/"SVM"/"UNKNOWN"; "" for VMM service time), reason
    (KVM_EXIT_* name for VMM service time, the kernel's exit name for exit
    handling), count, p50, p90, p99, max (int64 ns, upper bound of the
    bucket holding that quantile). Sorted by count, largest first.
    """
    hist = ev[(ev["kind"].to_numpy() == (EventKind.HIST | AGGREGATE)) & (ev["op"].to_numpy() == which)]
    rows = []
    for (isa, reason), part in hist.groupby(["isa", "reason"], sort=True):
        per = part.groupby("port")["value"].sum().sort_index()
        b, n = per.index.to_numpy(), per.to_numpy(np.int64)
        if which == Latency.VMM_SERVICE:
            isa_name, reason_name = "", names.kvm_exit(int(reason))
        else:
            isa_name, reason_name = Isa.coerce(int(isa)).name, names.hw(int(isa), int(reason))
        rows.append({"isa": isa_name, "reason": reason_name, "count": int(n.sum()),
                     **{f"p{int(q * 100)}": _quantile_bound(b, n, q) for q in (0.5, 0.9, 0.99)},
                     "max": upper_bound(int(b[n > 0].max()))})
    df = pd.DataFrame(rows, columns=list(LOG2_LATENCY_COLUMNS))
    return df.sort_values(["count", "reason"], ascending=[False, True], ignore_index=True)
