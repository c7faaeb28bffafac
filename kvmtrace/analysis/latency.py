"""Latency statistics and log2 histograms of the run loop's durations.

Pure pandas/numpy.  Durations are int64 nanoseconds where -1 marks an
unpaired event (see :mod:`kvmtrace.analysis.runloop`); every function here
leaves negative values (and NaN) out of the statistics and counts them in
``unpaired`` instead.

Percentiles use one definition: numpy's default, ``method="linear"``
(Hyndman & Fan type 7: the value at virtual index ``q * (n - 1)`` of the
sorted sample, interpolated linearly between its two neighbours).  They are
computed group by group in one vectorised pass and agree exactly, bit for
bit, with ``numpy.percentile(values, p)`` on each group.  (``perf kvm stat``
reports only min/avg/max; those are here too.)

Histograms bucket like bcc's ``print_log2_hist``: a value v >= 1 falls in
the slot of its bit length, ``[2**(slot-1), 2**slot - 1]``; 0 in slot 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from kvmtrace.tables.exits import ExitNames, Isa
from kvmtrace.analysis.runloop import ISAS, correlate, userspace_runs
from kvmtrace.analysis.summary import ThreadOrder, group_codes

__all__ = [
    "PERCENTILES",
    "exit_handling",
    "format_log2_histogram",
    "latency_stats",
    "latency_stats_of_samples",
    "log2_histogram",
    "log2_histograms",
    "percentiles_linear",
    "percentiles_of_samples",
    "vmm_service",
]

#: Percentiles reported by default, as numpy's ``q`` (0-100).
PERCENTILES = (50, 90, 99)


def _check(df: pd.DataFrame, value_col: str, by: Sequence[str]) -> None:
    missing = [c for c in (value_col, *by) if c not in df.columns]
    if missing:
        raise ValueError(
            f"columns {', '.join(missing)} are not in the frame (it has {', '.join(map(str, df.columns))}): "
            "name columns the frame has"
        )
    if not pd.api.types.is_numeric_dtype(df[value_col]) or pd.api.types.is_bool_dtype(df[value_col]):
        raise ValueError(f"column {value_col!r} is {df[value_col].dtype}, not numeric: pass a duration column")


def _group_codes(df: pd.DataFrame, by: Sequence[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Group number of each row and the groups' keys (one row per group, sorted by key).

    The groups of ``df.groupby(by, observed=True, sort=True, dropna=False)``.
    Category, integer and bool keys (every key the reports group by) are
    numbered on numpy arrays (summary.group_codes on the category codes and
    values); other keys go through pandas.
    """
    if not by:
        return np.zeros(len(df), dtype=np.int64), pd.DataFrame(index=pd.RangeIndex(1 if len(df) else 0))
    cols = [df[c] for c in by]
    if len(df) and all(isinstance(c.dtype, pd.CategoricalDtype) or c.dtype.kind in "biu" for c in cols):
        # A category's codes sort as pandas sorts it; read unsigned, NaN's -1
        # is the largest code, last as with dropna=False.
        keys = [_unsigned(c.cat.codes.to_numpy()) if isinstance(c.dtype, pd.CategoricalDtype) else c.to_numpy()
                for c in cols]
        codes, values = group_codes(keys)
        out = {}
        for name, c, v in zip(by, cols, values):
            if isinstance(c.dtype, pd.CategoricalDtype):
                out[name] = pd.Categorical.from_codes(v.view(c.cat.codes.dtype), dtype=c.dtype)
            else:
                out[name] = v.astype(c.dtype, copy=False)
        return codes, pd.DataFrame(out)
    g = df.groupby(list(by), observed=True, sort=True, dropna=False)
    codes = g.ngroup().to_numpy(dtype=np.int64)
    keys = g.size().index.to_frame(index=False)
    for c in by:  # keep the source dtypes (category, unsigned ints)
        keys[c] = keys[c].astype(df[c].dtype)
    return codes, keys


def _unsigned(a: np.ndarray) -> np.ndarray:
    """Signed integers read as the unsigned ones of their size (a view: -1 becomes the largest)."""
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy's own interpolation (numpy.lib._function_base_impl._lerp), for identical rounding."""
    diff = b - a
    out = np.add(a, diff * t)
    np.subtract(b, diff * (1 - t), out=out, where=t >= 0.5, casting="unsafe")
    return out


def percentiles_linear(values: np.ndarray, codes: np.ndarray, n_groups: int,
                       q: Sequence[float]) -> np.ndarray:
    """Percentiles ``q`` (0-100) of ``values`` per group ``codes`` (0..n_groups-1), shape (n_groups, len(q)).

    Exactly ``numpy.percentile(values[codes == g], q)`` for each group g
    (method "linear"); NaN for an empty group.  ``values`` must hold no NaN.

    No group is sorted: the values are put group by group (a radix sort of
    the group numbers), then each group is partitioned at the ranks its
    percentiles read (``np.partition``, as numpy.percentile does), which
    puts exactly the sorted values at those ranks.
    """
    values = np.asarray(values)
    if values.dtype.kind in "ui":
        values = values.astype(np.int64, copy=False)  # numpy subtracts in the input's integer type
    codes = np.asarray(codes)
    if n_groups <= 1 << 16:  # radix-sorted
        codes = codes.astype(np.uint8 if n_groups <= 1 << 8 else np.uint16)
    sv = values[np.argsort(codes, kind="stable")]
    n = np.bincount(codes, minlength=n_groups).astype(np.int64)
    start = np.zeros(n_groups, dtype=np.int64)
    np.cumsum(n[:-1], out=start[1:])
    out = np.full((n_groups, len(q)), np.nan)
    has = n > 0
    nh = n[has]
    sh = start[has]
    kth, gammas = _ranks(nh, q)
    for s0, m, ranks in zip(sh.tolist(), nh.tolist(), kth):
        sv[s0:s0 + m].partition(np.unique(ranks))
    for j, gamma in enumerate(gammas):
        out[has, j] = _lerp(sv[sh + kth[:, 2 * j]], sv[sh + kth[:, 2 * j + 1]], gamma)
    return out


def _ranks(nh: np.ndarray, q: Sequence[float]) -> tuple[np.ndarray, list[np.ndarray]]:
    """For groups of ``nh`` (> 0) values: the ranks each percentile reads
    (columns 2j and 2j + 1 for q[j]) and its interpolation weights (numpy's)."""
    kth = np.empty((len(nh), 2 * len(q)), dtype=np.int64)
    gammas = []
    for j, p in enumerate(q):
        quantile = np.true_divide(p, 100)
        virtual = (nh - 1) * quantile
        prev = np.floor(virtual)
        gammas.append(virtual - prev)
        prev = prev.astype(np.int64)
        nxt = prev + 1
        top = virtual >= nh - 1
        prev[top] = nh[top] - 1
        nxt[top] = nh[top] - 1
        low = virtual < 0
        prev[low] = 0
        nxt[low] = 0
        kth[:, 2 * j], kth[:, 2 * j + 1] = prev, nxt
    return kth, gammas


def percentiles_of_samples(samples: Sequence[np.ndarray], q: Sequence[float]) -> np.ndarray:
    """:func:`percentiles_linear` of groups given as one array of values each
    (non-negative integers, any integer dtype), shape (len(samples), len(q)).

    The same numbers, bit for bit: the same ranks, the same order statistics
    (each group partitioned on a copy in its own dtype: uint32 durations
    stay 4 bytes a value) and the same interpolation. Nothing is sorted.
    """
    nh = np.array([len(v) for v in samples], dtype=np.int64)
    out = np.full((len(samples), len(q)), np.nan)
    has = nh > 0
    if not has.any():
        return out
    kth, gammas = _ranks(nh[has], q)
    picked = np.empty(kth.shape, dtype=np.int64)  # the order statistic at each rank
    for g, (v, ranks) in enumerate(zip([v for v, h in zip(samples, has) if h], kth)):
        part = np.partition(v, np.unique(ranks))
        picked[g] = part[ranks].astype(np.int64)
        del part
    for j, gamma in enumerate(gammas):
        out[has, j] = _lerp(picked[:, 2 * j], picked[:, 2 * j + 1], gamma)
    return out


def latency_stats_of_samples(keys: pd.DataFrame, samples: Sequence[np.ndarray], unpaired: Sequence[int],
                             percentiles: Sequence[float] = PERCENTILES) -> pd.DataFrame:
    """:func:`latency_stats`' frame from groups made already: ``keys`` (one
    row per group, sorted, the ``by`` columns), each group's values >= 0
    (``samples``, integer ns) and its number of unpaired rows.

    The frame :func:`latency_stats` gives for the rows these groups came
    from: the percentiles bit for bit (:func:`percentiles_of_samples`), and
    the mean too, a sum of integer nanoseconds, exact in float64 in any
    order (below 2**53 ns: 104 days of summed durations).
    """
    out = keys.reset_index(drop=True)
    count = np.array([len(v) for v in samples], dtype=np.int64)
    out["count"] = count
    out["unpaired"] = np.asarray(unpaired, dtype=np.int64).reshape(len(count))
    total = np.array([float(v.sum(dtype=np.int64)) if len(v) else 0.0 for v in samples], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    pct = percentiles_of_samples(samples, [0, *percentiles, 100])
    out["min"] = pct[:, 0]
    out["mean"] = mean
    for j, p in enumerate(percentiles, start=1):
        out[f"p{p:g}"] = pct[:, j]
    out["max"] = pct[:, -1]
    out.index = pd.RangeIndex(len(out), name="group")
    return out


def latency_stats(df: pd.DataFrame, value_col: str, by: Sequence[str] = (),
                  percentiles: Sequence[float] = PERCENTILES) -> pd.DataFrame:
    """Count, min, mean, percentiles and max of ``value_col`` per group of ``by``.

    Columns: the ``by`` columns (their dtypes kept), ``count`` (int64: rows
    with a value >= 0), ``unpaired`` (int64: rows left out, value < 0 or
    NaN), then float64 nanoseconds ``min``, ``mean``, ``p50``, ``p90``,
    ``p99`` (one ``p<q>`` per entry of ``percentiles``, numpy's linear
    definition, see the module doc) and ``max``; all NaN for a group with
    count 0.  One row per group present in ``df``, sorted by the keys;
    index named ``group`` (0..n-1).  ``by=()`` gives one row for the whole
    frame (none for an empty one).
    """
    by = list(by)
    _check(df, value_col, by)
    codes, keys = _group_codes(df, by)
    n_groups = len(keys)
    v = df[value_col].to_numpy()
    ok = np.flatnonzero(v >= 0)  # NaN compares False
    vc = v[ok]
    cc = codes[ok]
    count = np.bincount(cc, minlength=n_groups).astype(np.int64)
    out = keys.reset_index(drop=True)
    out["count"] = count
    out["unpaired"] = np.bincount(codes, minlength=n_groups).astype(np.int64) - count
    has = count > 0
    total = np.bincount(cc, weights=vc.astype(np.float64), minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(has, total / np.maximum(count, 1), np.nan)
    # min and max are the 0th and 100th percentiles: one sort gives all.
    pct = percentiles_linear(vc, cc, n_groups, [0, *percentiles, 100])
    out["min"] = pct[:, 0]
    out["mean"] = mean
    for j, p in enumerate(percentiles, start=1):
        out[f"p{p:g}"] = pct[:, j]
    out["max"] = pct[:, -1]
    out.index = pd.RangeIndex(len(out), name="group")
    return out


def _slots(values: np.ndarray) -> np.ndarray:
    """bcc's log2 slot of each value >= 0: its bit length (0 for 0)."""
    v = np.asarray(values)
    if v.dtype.kind == "f":
        v = np.floor(v)
    u = v.astype(np.uint64)
    _, e = np.frexp(u.astype(np.float64))
    e = e.astype(np.int64)
    # float64 rounds values above 2**53 up to the next power of two at worst.
    big = e > 53
    if big.any():
        over = (u[big] >> (e[big] - 1).astype(np.uint64)) == 0
        e[np.flatnonzero(big)[over]] -= 1
    return e


def _bounds(slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    slot = slot.astype(np.int64)
    lower = np.where(slot > 0, np.left_shift(np.int64(1), np.maximum(slot - 1, 0)), 0)
    upper = np.where(slot > 0, np.left_shift(np.int64(1), np.minimum(slot, 62)) - 1, 0)
    upper = np.where(slot >= 63, np.iinfo(np.int64).max, upper)  # 2**63 - 1, the largest int64
    return lower.astype(np.int64), upper.astype(np.int64)


def log2_histograms(df: pd.DataFrame, value_col: str, by: Sequence[str] = ()) -> pd.DataFrame:
    """A log2 histogram of ``value_col`` (ns) per group of ``by``, as one long frame.

    Columns: the ``by`` columns, ``slot`` (int64, bit length of the values
    in the bucket), ``lower`` and ``upper`` (int64 ns, inclusive bounds:
    ``[2**(slot-1), 2**slot - 1]``, ``[0, 0]`` for slot 0), ``count`` (int64).
    Each group's buckets run without gaps from its lowest to its highest
    non-empty one (empty ones in between have count 0).  Negative and NaN
    values (unpaired) are left out; groups with none left have no rows.
    Index named ``row`` (0..n-1).
    """
    by = list(by)
    _check(df, value_col, by)
    codes, keys = _group_codes(df, by)
    v = df[value_col].to_numpy()
    ok = v >= 0
    slot = _slots(v[ok])
    cc = codes[ok]
    n_groups = len(keys)
    cols = [*by, "slot", "lower", "upper", "count"]
    if not len(slot):
        out = keys.iloc[:0].reset_index(drop=True)
        for c in ("slot", "lower", "upper", "count"):
            out[c] = np.zeros(0, dtype=np.int64)
        out.index = pd.RangeIndex(0, name="row")
        return out[cols]
    n_slots = int(slot.max()) + 1
    counts = np.bincount(cc * n_slots + slot, minlength=n_groups * n_slots).reshape(n_groups, n_slots)
    present = counts > 0
    has = present.any(axis=1)
    lo = np.argmax(present, axis=1)
    hi = n_slots - 1 - np.argmax(present[:, ::-1], axis=1)
    groups = np.flatnonzero(has)
    width = (hi - lo + 1)[groups]
    g = np.repeat(groups, width)
    offset = np.arange(len(g)) - np.repeat(np.cumsum(width) - width, width)
    s = lo[g] + offset
    lower, upper = _bounds(s)
    out = keys.iloc[g].reset_index(drop=True)
    out["slot"] = s.astype(np.int64)
    out["lower"] = lower
    out["upper"] = upper
    out["count"] = counts[g, s].astype(np.int64)
    out.index = pd.RangeIndex(len(out), name="row")
    return out[cols]


def log2_histogram(values: Iterable | np.ndarray | pd.Series) -> pd.DataFrame:
    """A log2 histogram of durations (ns), like bcc's ``print_log2_hist``.

    Index ``slot`` (int64, the values' bit length); columns ``lower`` and
    ``upper`` (int64 ns, inclusive: ``[2**(slot-1), 2**slot - 1]``, ``[0, 0]``
    for slot 0) and ``count`` (int64), without gaps from the lowest to the
    highest non-empty bucket.  Negative and NaN values are left out.
    """
    v = np.asarray(values)
    h = log2_histograms(pd.DataFrame({"value": v}), "value")
    return h.set_index("slot")[["lower", "upper", "count"]]


def format_log2_histogram(hist: pd.DataFrame, label: str = "ns", width: int = 40) -> str:
    """Text of a :func:`log2_histogram` frame in bcc's ``print_log2_hist`` layout."""
    lines = [f"{label:>21} : count     distribution"]
    peak = int(hist["count"].max()) if len(hist) else 0
    for lower, upper, n in zip(hist["lower"], hist["upper"], hist["count"]):
        stars = int(width * n / peak) if peak else 0
        bar = "*" * stars
        lines.append(f"{int(lower):>10} -> {int(upper):<10}: {int(n):<9} |{bar:<{width}}|")
    return "\n".join(lines)


def _with_exit_names(cor: pd.DataFrame, names: ExitNames) -> pd.DataFrame:
    """``cor`` with a ``reason`` category column: the hardware exit's name for its ISA."""
    isa_code = pd.Categorical(cor["isa"]).codes.astype(np.int64)
    pairs = isa_code * (1 << 32) + cor["code"].to_numpy().astype(np.int64)
    uniq, inv = np.unique(pairs, return_inverse=True)
    labels = [names.hw(Isa[ISAS[int(p >> 32)]], int(p & 0xFFFF_FFFF)) for p in uniq]
    cats = sorted(set(labels))
    pos = {n: i for i, n in enumerate(cats)}
    codes = np.array([pos[n] for n in labels], dtype=np.int32)[inv] if len(uniq) else np.zeros(0, np.int32)
    return cor.assign(reason=pd.Categorical.from_codes(codes, categories=cats))


def _with_kvm_names(runs: pd.DataFrame, names: ExitNames) -> pd.DataFrame:
    """``runs`` with a ``reason`` category column: the KVM_EXIT_* name of ``code``."""
    code = runs["code"].to_numpy()
    uniq, inv = np.unique(code, return_inverse=True)
    labels = [names.kvm_exit(int(c)) for c in uniq]
    cats = sorted(set(labels))
    pos = {n: i for i, n in enumerate(cats)}
    codes = np.array([pos[n] for n in labels], dtype=np.int32)[inv] if len(uniq) else np.zeros(0, np.int32)
    return runs.assign(reason=pd.Categorical.from_codes(codes, categories=cats))


def exit_handling(events: pd.DataFrame, names: ExitNames, by: Sequence[str] = ("isa", "reason"),
                  order: ThreadOrder | None = None) -> pd.DataFrame:
    """Hardware exit handling time (kvm_exit -> kvm_entry, ``handling_ns``) per exit reason.

    :func:`latency_stats` of :func:`~kvmtrace.analysis.runloop.correlate`'s
    ``handling_ns`` grouped by ``by``: any of its columns plus ``reason``
    (category: the kernel's name of the exit, e.g. "IO_INSTRUCTION", "io").
    Exits without an entry are counted in ``unpaired``.  Needs kvm_exit and
    kvm_entry events (raises MissingTraceEventError without kvm_exit).  ``order``:
    the frame's thread order (summary.ThreadOrder), when the caller has it.
    """
    cor = _with_exit_names(correlate(events, order), names)
    return latency_stats(cor, "handling_ns", list(by))


def vmm_service(events: pd.DataFrame, names: ExitNames, by: Sequence[str] = ("reason",),
                domains: Iterable | None = None) -> pd.DataFrame:
    """VMM service time (userspace exit -> next KVM_RUN, ``service_ns``) per group.

    :func:`latency_stats` of
    :func:`~kvmtrace.analysis.runloop.userspace_runs`' ``service_ns`` grouped
    by ``by``: any of its columns plus ``reason`` (category: KVM_EXIT_* name),
    e.g. ``("reason",)``, ``("port", "direction")``, ``("gpa", "direction")``,
    ``("vcpu",)``.  Userspace exits without a KVM_RUN after them are counted
    in ``unpaired``.  Works without kvm_exit/kvm_entry.
    """
    runs = _with_kvm_names(userspace_runs(events, domains=domains), names)
    return latency_stats(runs, "service_ns", list(by))
