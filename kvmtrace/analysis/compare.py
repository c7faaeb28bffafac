"""Statistics behind `kvmtrace compare BASE NEW`: which exit rates changed.

Input: one "rate table" per run (:class:`RunRates`): counts by
``dimension`` ("userspace_exit", "exit", "port", "mmio", "device", "vcpu")
and ``key`` ("IO", "0x0080 write", "hpet", "0", ...), the guest run time
recorded (``duration_s``) and the total number of exits (``exits``,
userspace + hardware, the denominator of the "per exit" shares).

Each (dimension, key) row is tested on its own, then the family of tests is
corrected for multiplicity; a row is a *regression* when its rate went up
significantly AND by more than ``threshold_pct`` percent. Statistical
significance answers "is this more than noise?", the threshold answers "is it
big enough to care?": with tens of thousands of events per second a 0.5 %
change is already significant, and not worth a red line.

Tests (``method``)
------------------
``"poisson"`` (default): the exact conditional test for two Poisson rates.
  With counts k1 ~ Poisson(r1 t1) and k2 ~ Poisson(r2 t2) over exposures
  t1, t2 (the runs' ``duration_s``), given n = k1 + k2 the new count is
  k2 ~ Binomial(n, t2 / (t1 + t2)) when r1 == r2. The p-value is the
  two-sided exact binomial test of that (``scipy.stats.binomtest``). It is
  exact at any count, zeros included, needs nothing but the totals, and is
  right when events are independent, i.e. their count variance equals their
  mean.

``"bootstrap"``: needs ``windows`` (counts per time window of equal length
  ``window_s``) in both runs. Real exit counts are *overdispersed*: timer
  ticks, device polling loops and guest I/O come in bursts, so counts vary
  between windows far more than Poisson allows, and the Poisson test then
  calls noise significant. The bootstrap measures the variability each run
  actually had: windows are resampled with replacement (the same windows
  for every key of a run, ``resamples`` = 2000 times, fixed ``seed``,
  each run on its own) and give the bootstrap distribution of the log rate
  ratio log(new rate / base rate), each rate with 0.5 added to its count so
  a key absent from one run keeps a finite ratio. Its variance is the sum
  of the two runs' bootstrap variances, each times W/(W-1) for W windows
  (the bootstrap's known shrinkage). The p-value is two-sided from
  z = observed log ratio / bootstrap standard error (normal reference).
  Why not the percentile p-value (twice the share of resampled ratios on
  the far side of 1)? With 2000 resamples it cannot go below about 1/1000,
  and Holm over more than ten rows at alpha = 0.01 needs smaller: it could
  never flag anything. The standard error is floored at the Poisson one,
  sqrt(1/(k1+0.5) + 1/(k2+0.5)), so the bootstrap is never more confident
  than the Poisson test: a bootstrap over a few tens of windows can
  underestimate the spread, and a perfectly periodic source (the same count
  in every window) would otherwise give a zero error.

Which to use: "poisson" for short runs, few events, or traces without
windows; its answers are exact but too confident for bursty sources.
"bootstrap" when the runs were recorded with windows and are long enough
for at least :data:`MIN_WINDOWS` (better 30+) windows: its p-values hold
for overdispersed counts. Neither sees run-to-run variation (boot order,
host load, another guest): for that, compare against several baseline runs
with `kvmtrace trend`.

Multiplicity: ``significant`` is p < alpha after the Holm-Bonferroni
step-down correction across all tested rows of the comparison (``p_adjusted``).
Holm controls the family-wise error rate (the chance of even one false
flag) at alpha under any dependence between rows, which matters because
rows overlap (a port's exits are also "IO" userspace exits); it is uniformly
more powerful than plain Bonferroni. Rows with no events in either run are
not tests (they cannot be significant) and do not count in the family.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kvmtrace.errors import RateTableError
from kvmtrace.analysis.records import plain_records

#: Dimensions of a rate table, in the order reports show them.
DIMENSIONS = ["userspace_exit", "exit", "port", "mmio", "device", "vcpu", "vcpu_time"]
#: The "vcpu_time" rows (analysis.vcpu_time.rate_rows) count milliseconds of a
#: vCPU's state, not events: rate / 10 is the state's share in percent. Their
#: tests treat each millisecond as an event (too confident: use "bootstrap"
#: with windows where it matters), so a regression there also needs the share
#: to rise by at least this many percentage points.
VCPU_TIME = "vcpu_time"
VCPU_TIME_MIN_POINTS = 5.0
METHODS = ("poisson", "bootstrap")
#: Fewest complete windows per run the bootstrap accepts.
MIN_WINDOWS = 10
RESAMPLES = 2000
SEED = 20240607

COLUMNS = ["dimension", "key", "base_count", "new_count", "base_rate", "new_rate",
           "base_share", "new_share", "change_pct", "p_value", "p_adjusted", "significant", "regression"]


@dataclass
class RunRates:
    """One run's counts, as compare and trend consume them.

    ``counts``: columns dimension, key, count (int64, >= 0); a key missing from
    a run counts 0. ``duration_s``: guest run time recorded (s, > 0).
    ``exits``: total userspace + hardware exits of the run (denominator of
    the shares). ``windows``: optional counts per time window, columns window
    (int, 0-based), dimension, key, count; windows 0 .. W-1 with
    W = floor(duration_s / window_s) are the complete ones, a window missing
    from the table had no events, later (partial) windows are ignored.
    """

    label: str
    counts: pd.DataFrame
    duration_s: float
    exits: int
    windows: pd.DataFrame | None = None
    window_s: float | None = None
    mmio_granularity: str = "address"  # or "page": MMIO keys are 4 KiB pages
    #: The dimensions this run could have counted (its probes); None: every one.
    dimensions: tuple[str, ...] | None = None


def _dimension_dtype(values) -> pd.CategoricalDtype:
    extra = sorted({str(v) for v in values} - set(DIMENSIONS))
    return pd.CategoricalDtype(DIMENSIONS + extra, ordered=True)


def _need_columns(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise RateTableError(f"{what} lacks the columns {', '.join(missing)}",
                             f"give it the columns {', '.join(cols)}")


def _guest_parts(c: pd.Series) -> np.ndarray:
    """Which rows of a run's counts are the parts of a vCPU's guest time
    (analysis.vcpu_time.GUEST_PARTS: "vcpu N in_guest", "vcpu N exit_handling")."""
    if not len(c):
        return np.zeros(0, dtype=bool)
    dims, keys = c.index.get_level_values("dimension"), c.index.get_level_values("key").astype(str)
    return np.asarray((dims == VCPU_TIME) & (keys.str.endswith(" in_guest") | keys.str.endswith(" exit_handling")),
                      dtype=bool)


def run_counts(run: RunRates) -> pd.Series:
    """The run's counts as an int64 Series indexed by (dimension, key) strings.

    Checks the table: columns present, counts whole and >= 0, duration > 0.
    Duplicate (dimension, key) rows are summed.
    """
    what = f"the rate table of run {run.label!r}"
    if not (isinstance(run.duration_s, (int, float)) and math.isfinite(run.duration_s) and run.duration_s > 0):
        raise RateTableError(f"{what} has duration_s={run.duration_s!r}",
                             "give the guest run time recorded, in seconds (> 0)")
    if run.exits is None or int(run.exits) < 0:
        raise RateTableError(f"{what} has exits={run.exits!r}", "give the total number of exits (>= 0)")
    c = run.counts
    _need_columns(c, ["dimension", "key", "count"], what)
    counts = pd.to_numeric(c["count"], errors="coerce")
    if counts.isna().any() or (counts < 0).any() or (counts != np.floor(counts)).any():
        raise RateTableError(f"{what} has counts that are not whole numbers >= 0",
                             "count events per (dimension, key) as int64")
    s = pd.Series(counts.to_numpy(dtype=np.int64),
                  index=pd.MultiIndex.from_arrays([c["dimension"].astype(str).to_numpy(),
                                                   c["key"].astype(str).to_numpy()], names=["dimension", "key"]))
    return s.groupby(level=["dimension", "key"], sort=False).sum()


def _run_windows(run: RunRates, keys: pd.MultiIndex) -> tuple[np.ndarray, float]:
    """(W x K count matrix over the complete windows, their total time in s)."""
    what = f"run {run.label!r}"
    if run.windows is None or run.window_s is None:
        raise RateTableError(f"method='bootstrap' needs per-window counts, and {what} has none",
                             "load the runs with their time windows, or use method='poisson'")
    if not (run.window_s > 0):
        raise RateTableError(f"{what} has window_s={run.window_s!r}", "give the window length in seconds (> 0)")
    n_win = int(math.floor(run.duration_s / run.window_s + 1e-9))
    if n_win < MIN_WINDOWS:
        raise RateTableError(
            f"{what} has {n_win} complete windows of {run.window_s} s in {run.duration_s} s; "
            f"the bootstrap needs at least {MIN_WINDOWS}",
            "use shorter windows or longer runs, or method='poisson'")
    w = run.windows
    _need_columns(w, ["window", "dimension", "key", "count"], f"the windows table of {what}")
    win = pd.to_numeric(w["window"]).to_numpy(dtype=np.int64)
    keep = (win >= 0) & (win < n_win)
    idx = pd.MultiIndex.from_arrays([w["dimension"].astype(str).to_numpy()[keep],
                                     w["key"].astype(str).to_numpy()[keep]])
    col = keys.get_indexer(idx)
    ok = col >= 0
    mat = np.zeros((n_win, len(keys)), dtype=np.float64)
    np.add.at(mat, (win[keep][ok], col[ok]), pd.to_numeric(w["count"]).to_numpy(dtype=np.float64)[keep][ok])
    return mat, n_win * run.window_s


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, family = all of ``p``).

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) =
    max over j <= i of min(1, (m - j + 1) p_(j)). Rejecting where adjusted
    < alpha is Holm's procedure at level alpha. NaN entries are not tests:
    they stay NaN and do not count in m.
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    if m == 0:
        return out
    order = tested[np.argsort(p[tested], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def poisson_rate_test(k1: int, t1: float, k2: int, t2: float) -> float:
    """Two-sided p-value of H0 "equal rates" for Poisson counts k1 over t1, k2 over t2.

    Conditional exact test: given n = k1 + k2, k2 ~ Binomial(n, t2/(t1+t2)).
    NaN when n == 0 (nothing to test).
    """
    from scipy.stats import binomtest

    n = int(k1) + int(k2)
    if n == 0:
        return float("nan")
    return float(binomtest(int(k2), n, t2 / (t1 + t2), alternative="two-sided").pvalue)


def _bootstrap_p(base: RunRates, new: RunRates, keys: pd.MultiIndex, resamples: int, seed: int) -> np.ndarray:
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    observed, variance, sums = [], [], []
    for run in (base, new):
        mat, t = _run_windows(run, keys)
        n_win = mat.shape[0]
        # Resampling W windows with replacement = multinomial weights on the
        # windows; weights @ counts gives every key's resampled total at once.
        weights = rng.multinomial(n_win, np.full(n_win, 1.0 / n_win), size=resamples).astype(np.float64)
        total = mat.sum(axis=0)
        sums.append(total)
        observed.append(np.log((total + 0.5) / t))
        # The runs are resampled independently, so the variance of the log
        # ratio is the sum of theirs. W/(W-1) undoes the bootstrap's known
        # shrinkage of a sum's variance over W windows.
        variance.append(np.log((weights @ mat + 0.5) / t).var(axis=0, ddof=1) * n_win / (n_win - 1))
    obs = observed[1] - observed[0]
    se_boot = np.sqrt(variance[0] + variance[1])
    se_pois = np.sqrt(1.0 / (sums[0] + 0.5) + 1.0 / (sums[1] + 0.5))
    se = np.maximum(se_boot, se_pois)
    p = 2.0 * norm.sf(np.abs(obs) / se)
    p[(sums[0] + sums[1]) == 0] = np.nan
    return p


def compare(base: RunRates, new: RunRates, threshold_pct: float = 10.0, alpha: float = 0.01,
            method: str = "poisson", *, resamples: int = RESAMPLES, seed: int = SEED) -> pd.DataFrame:
    """Per (dimension, key): rates of both runs, the change, and whether it is a regression.

    Columns:
      dimension (category), key (category),
      base_count, new_count (int64 events),
      base_rate, new_rate (float64, events per second of guest run time),
      base_share, new_share (float64, events per exit of the run; NaN if the
      run had no exits),
      change_pct (float64, 100 (new_rate - base_rate) / base_rate; +inf
      when base is 0 and new > 0; 0 when both are 0),
      p_value (float64, the test's two-sided p; NaN when neither run has
      the key's events: not a test),
      p_adjusted (float64, Holm-Bonferroni over the tested rows),
      significant (bool, p_adjusted < alpha),
      regression (bool, significant and change_pct > threshold_pct).
    Sorted: regressions, other significant rows, then the rest; each group by
    largest |change_pct| first. Index: "row" (0..n-1). ``attrs`` hold
    base_label, new_label, method, alpha, threshold_pct.
    """
    if method not in METHODS:
        raise RateTableError(f"unknown comparison method {method!r}", f"use one of {', '.join(METHODS)}")
    if not (0 < alpha < 1):
        raise RateTableError(f"alpha={alpha!r} is not a probability", "give alpha between 0 and 1, e.g. 0.01")
    if not (threshold_pct >= 0 and math.isfinite(threshold_pct)):
        # A negative threshold would call a drop a regression (-20: a 16 % drop "rose").
        raise RateTableError(f"threshold_pct={threshold_pct!r} is not a percentage increase",
                             "give threshold_pct 0 or more, e.g. 10")
    b, n = run_counts(base), run_counts(new)
    b, n, left_out = common_ground(base, new, b, n)
    # A run recorded without the sched probes has no vcpu_time rows: that is
    # not "0 % of the time", so the dimension is compared only when both have it.
    has = [(VCPU_TIME in c.index.get_level_values("dimension")) for c in (b, n)]
    if has[0] != has[1]:
        b, n = (c[c.index.get_level_values("dimension") != VCPU_TIME] for c in (b, n))
    # Nor is a guest time not split (no kvm_exit/kvm_entry on that host) "0 % in the guest".
    split = [_guest_parts(c) for c in (b, n)]
    if split[0].any() != split[1].any():
        b, n = b[~split[0]], n[~split[1]]
    keys = b.index.union(n.index, sort=False)
    keys = keys.sort_values() if len(keys) else keys
    bc = b.reindex(keys, fill_value=0).to_numpy(dtype=np.int64)
    nc = n.reindex(keys, fill_value=0).to_numpy(dtype=np.int64)
    t1, t2 = float(base.duration_s), float(new.duration_s)
    br, nr = bc / t1, nc / t2
    with np.errstate(divide="ignore", invalid="ignore"):
        change = np.where(br > 0, 100.0 * (nr - br) / np.where(br > 0, br, 1.0),
                          np.where(nr > 0, np.inf, 0.0))
    share = [c / float(r.exits) if r.exits else np.full(len(c), np.nan) for c, r in ((bc, base), (nc, new))]

    if method == "poisson":
        p = np.array([poisson_rate_test(k1, t1, k2, t2) for k1, k2 in zip(bc, nc)], dtype=np.float64)
    else:
        p = _bootstrap_p(base, new, keys, resamples, seed)
    p_adj = holm(p)
    significant = np.nan_to_num(p_adj, nan=1.0) < alpha
    regression = significant & (change > threshold_pct)
    dims = keys.get_level_values("dimension") if len(keys) else pd.Index([], dtype=str)
    vt = np.asarray(dims == VCPU_TIME, dtype=bool)
    if vt.any():  # ms per s -> percentage points of the vCPU's time
        regression &= ~vt | ((nr - br) / 10.0 >= VCPU_TIME_MIN_POINTS)

    knames = keys.get_level_values("key") if len(keys) else pd.Index([], dtype=str)
    df = pd.DataFrame({
        "dimension": pd.Categorical(dims, dtype=_dimension_dtype(dims)),
        "key": pd.Categorical(knames, categories=pd.Index(sorted(set(knames), key=natural_key), dtype="str")),
        "base_count": bc, "new_count": nc,
        "base_rate": br.astype(np.float64), "new_rate": nr.astype(np.float64),
        "base_share": share[0].astype(np.float64), "new_share": share[1].astype(np.float64),
        "change_pct": change.astype(np.float64),
        "p_value": p, "p_adjusted": p_adj,
        "significant": significant.astype(bool), "regression": regression.astype(bool),
    }, columns=COLUMNS)
    df["_abs"] = np.abs(df["change_pct"])
    df = df.sort_values(["regression", "significant", "_abs", "dimension", "key"],
                        ascending=[False, False, False, True, True], kind="stable", ignore_index=True)
    df = df.drop(columns="_abs")
    df.index.name = "row"
    df.attrs.update(base_label=str(base.label), new_label=str(new.label), method=method,
                    alpha=float(alpha), threshold_pct=float(threshold_pct), left_out=left_out)
    return df


def common_ground(base: RunRates, new: RunRates, b: pd.Series, n: pd.Series) -> tuple[pd.Series, pd.Series, list[str]]:
    """The counts both runs can be compared on, and a sentence per thing left out.

    A dimension only one run could count (kvm_exit recorded in one only)
    would show every key as new or gone: it is left out, as
    is MMIO when one run keyed it by address and the other by 4 KiB page
    (Trace.run_rates(mmio="page") gives both the same keys instead).
    """
    left: list[str] = []
    drop: set[str] = set()
    if base.mmio_granularity != new.mmio_granularity:
        drop.add("mmio")
        coarse = base.label if base.mmio_granularity == "page" else new.label
        left.append(f"mmio: {coarse} counted MMIO per 4 KiB page, the other run per address")
    have = [set(r.dimensions) if r.dimensions is not None else set(DIMENSIONS) for r in (base, new)]
    for dim in sorted((have[0] ^ have[1]) - drop, key=lambda d: DIMENSIONS.index(d) if d in DIMENSIONS else 99):
        only, other = (base.label, new.label) if dim in have[0] else (new.label, base.label)
        drop.add(dim)
        left.append(f"{dim}: only {only} could count it ({other} did not record what it needs)")
    if drop:
        b = b[~b.index.get_level_values("dimension").isin(drop)] if len(b) else b
        n = n[~n.index.get_level_values("dimension").isin(drop)] if len(n) else n
    return b, n, left


def has_regression(df: pd.DataFrame) -> bool:
    """True when any row of a :func:`compare` frame is a regression."""
    return bool(df["regression"].any())


#: The dimensions whose rows name a cause; a device, KVM_EXIT reason or vCPU only adds them up.
FINE_DIMENSIONS = ("port", "mmio", "exit")


def regression_causes(df: pd.DataFrame) -> pd.DataFrame:
    """The finest-grained regressions of a :func:`compare` frame: port, MMIO and hardware-exit rows.

    A port whose rate rose also raises its device, its KVM_EXIT reason and
    its vCPU's totals; the cause is the port. Where no fine row rose, the
    coarser rows are the causes. A vCPU state's rise (vcpu_time) is always
    one. Rows as in the frame, in its order.
    """
    reg = df[df["regression"]]
    dim = reg["dimension"].astype(str)
    exits = reg[dim != VCPU_TIME]
    fine = exits[dim[dim != VCPU_TIME].isin(FINE_DIMENSIONS)]
    # A vCPU state's rise is a cause of its own (the host, not the guest's exits).
    return reg[(dim == VCPU_TIME) | dim.index.isin((fine if len(fine) else exits).index)]


def describe_cause(row) -> str:
    """One cause as CI prints it: "port 0x0080 write (+42.0%)", or for a
    vCPU state "vcpu_time vcpu 0 preempted rose from 2% to 30%"."""
    if row["dimension"] == VCPU_TIME:
        return f"{row['dimension']} {row['key']} rose from {row['base_rate'] / 10:.0f}% to {row['new_rate'] / 10:.0f}%"
    return f"{row['dimension']} {row['key']} ({row['change_pct']:+.1f}%)"


def natural_key(s: str) -> tuple:
    """Sort key putting "run2" before "run10" (digit runs compare as numbers)."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", str(s)))


def to_json(df: pd.DataFrame) -> list[dict]:
    """A :func:`compare` frame as a list of dicts of plain Python types.

    Strict-JSON safe: non-finite floats become None (change_pct is None for a
    key new in NEW, i.e. base_count 0 and new_count > 0; p_value and
    p_adjusted are None for rows with no events in either run).
    """
    return plain_records(df)
