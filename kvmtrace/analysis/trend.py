"""Statistics and graph behind `kvmtrace trend TRACE... [-o graph.png|.svg|.html]`.

Many runs of the same guest, in order: every (dimension, key)'s rate per
run, a *baseline band* learnt from the first runs, and the runs whose rate
rose above it.

The band (per key, per run)
---------------------------
From the baseline runs (default: the first 3 in order; or runs named by
label) take the mean rate m and the between-run standard deviation s
(ddof=1; 0 with a single baseline run). Around m the band reaches, on each
side, the wider of

* 3 s: the spread the baseline runs showed between them (boot order, host
  load, timer alignment: what repeated runs really vary by), and
* the Poisson 99.9 % interval of a run of this run's length: counts
  between the 0.05 % and 99.95 % quantiles of Poisson(m * duration_s),
  divided by duration_s. This is the least any run varies by from counting
  alone; it keeps the band honest when the baseline runs agree by chance,
  and is asymmetric (and wider, relatively) for rare keys.

A run whose rate is above ``band_hi`` is ``flagged`` (direction "up");
below ``band_lo`` gives direction "down" and is not flagged (fewer exits is
not a regression). A key absent from every baseline run has m = 0 and a
band of [0, 0]: any later occurrence is flagged, as something new.

Caveat: with 3 baseline runs s is a rough estimate (2 degrees of freedom);
when runs genuinely vary between each other more than Poisson noise, a
band from so few runs will now and then be too narrow. Give 5 or more
baseline runs for a steadier band.

The graph and the html page are drawn by :mod:`kvmtrace.present.trend`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kvmtrace.analysis.compare import RateTableError, RunRates, _dimension_dtype, natural_key, run_counts

#: Baseline runs when none are named.
BASELINE_RUNS = 3
#: Two-sided coverage of the Poisson part of the band.
POISSON_COVERAGE = 0.999
SIGMAS = 3.0

COLUMNS = ["run", "run_index", "dimension", "key", "count", "rate", "baseline_rate",
           "band_lo", "band_hi", "flagged", "direction", "baseline"]

Y_LABELS = {
    "port": "I/O exits per second (exits/s)",
    "mmio": "I/O exits per second (exits/s)",
    "device": "I/O exits per second (exits/s)",
    "exit": "VM exits per second (exits/s)",
    "userspace_exit": "exits to userspace per second (exits/s)",
    "vcpu": "exits per second (exits/s)",
    "vcpu_time": "ms of each state per second of the run (÷10: % of the vCPU's time)",
}
TITLES = {
    "port": "Port I/O exits per run, by port",
    "mmio": "MMIO exits per run, by address",
    "device": "I/O exits per run, by device",
    "exit": "VM exits per run, by exit reason",
    "userspace_exit": "Exits to userspace per run, by KVM_EXIT reason",
    "vcpu": "Exits per run, by vCPU",
    "vcpu_time": "Where each vCPU's time went, per run, by state",
}


def _order(runs: Sequence[RunRates], order_by: str, times) -> list[int]:
    if order_by == "label":
        return sorted(range(len(runs)), key=lambda i: natural_key(runs[i].label))
    if order_by == "time":
        if times is None or len(times) != len(runs):
            raise RateTableError("order_by='time' needs one time per run",
                                 "pass times=[...] in the same order as runs (e.g. each trace's start time)")
        return sorted(range(len(runs)), key=lambda i: times[i])
    raise RateTableError(f"unknown order_by={order_by!r}", "use 'label' or 'time'")


def _baseline_mask(labels: list[str], baseline) -> np.ndarray:
    n = len(labels)
    if isinstance(baseline, (int, np.integer)) and not isinstance(baseline, bool):
        if not 1 <= baseline <= n:
            raise RateTableError(f"baseline={baseline} runs, but there are {n} runs",
                                 f"give a baseline between 1 and {n} runs, or name them by label")
        return np.arange(n) < baseline
    names = [baseline] if isinstance(baseline, str) else [str(b) for b in baseline]
    unknown = [b for b in names if b not in labels]
    if unknown or not names:
        raise RateTableError(f"baseline runs {', '.join(unknown) or '(none)'} are not among the runs",
                             f"name baseline runs from: {', '.join(labels)}")
    return np.isin(labels, names)


def trend_frame(runs: Sequence[RunRates], order_by: str = "label", times: Sequence | None = None,
                baseline: int | str | Sequence[str] = BASELINE_RUNS) -> pd.DataFrame:
    """Rates of every (dimension, key) in every run, with the baseline band.

    ``order_by``: "label" (natural order: run2 before run10) or "time"
    (by ``times``, one comparable value per run, in the order of ``runs``).
    ``baseline``: the first N runs in that order, or run labels.

    Long form, one row per run x (dimension, key) seen in any run (a key a
    run lacks has count 0). Columns: run (ordered category of labels),
    run_index (int64, 0-based position in the order), dimension (category),
    key (category), count (int64 events), rate (float64 events/s of guest
    run time), baseline_rate (float64, mean rate over the baseline runs),
    band_lo, band_hi (float64 events/s, see the module docstring),
    flagged (bool, rate > band_hi), direction (category "up", "down" or ""),
    baseline (bool, the run is a baseline run). Sorted by dimension, key,
    run_index; index "row". ``attrs``: order_by, baseline_labels.
    """
    from scipy.stats import poisson

    if not runs:
        raise RateTableError("trend needs at least one run", "give one or more traces")
    labels_in = [str(r.label) for r in runs]
    dup = sorted({lab for lab in labels_in if labels_in.count(lab) > 1})
    if dup:
        raise RateTableError(f"runs share the labels {', '.join(dup)}", "give every run its own label")
    order = _order(runs, order_by, times)
    runs = [runs[i] for i in order]
    labels = [str(r.label) for r in runs]
    is_base = _baseline_mask(labels, baseline)

    counts = [run_counts(r) for r in runs]
    keys = counts[0].index
    for c in counts[1:]:
        keys = keys.union(c.index, sort=False)
    keys = keys.sort_values()
    n_runs, n_keys = len(runs), len(keys)
    mat = np.vstack([c.reindex(keys, fill_value=0).to_numpy(dtype=np.int64) for c in counts]) \
        if n_keys else np.zeros((n_runs, 0), dtype=np.int64)
    dur = np.array([float(r.duration_s) for r in runs])[:, None]
    rate = mat / dur

    base_rates = rate[is_base]
    m = base_rates.mean(axis=0)
    s = base_rates.std(axis=0, ddof=1) if base_rates.shape[0] > 1 else np.zeros(n_keys)
    lam = m[None, :] * dur
    tail = (1.0 - POISSON_COVERAGE) / 2
    q_lo = np.where(lam > 0, poisson.ppf(tail, lam), 0.0)
    q_hi = np.where(lam > 0, poisson.ppf(1.0 - tail, lam), 0.0)
    half_lo = np.maximum(SIGMAS * s[None, :], m[None, :] - q_lo / dur)
    half_hi = np.maximum(SIGMAS * s[None, :], q_hi / dur - m[None, :])
    band_lo = np.maximum(0.0, m[None, :] - half_lo)
    band_hi = m[None, :] + half_hi
    up = rate > band_hi
    down = rate < band_lo

    dims = np.asarray(keys.get_level_values("dimension"), dtype=str) if n_keys else np.array([], dtype=str)
    knames = np.asarray(keys.get_level_values("key"), dtype=str) if n_keys else np.array([], dtype=str)
    direction = np.where(up, "up", np.where(down, "down", ""))
    df = pd.DataFrame({
        "run": pd.Categorical(np.repeat(labels, n_keys), categories=labels, ordered=True),
        "run_index": np.repeat(np.arange(n_runs, dtype=np.int64), n_keys),
        "dimension": pd.Categorical(np.tile(dims, n_runs), dtype=_dimension_dtype(dims)),
        "key": pd.Categorical(np.tile(knames, n_runs),
                              categories=pd.Index(sorted(set(knames), key=natural_key), dtype="str")),
        "count": mat.ravel().astype(np.int64),
        "rate": rate.ravel().astype(np.float64),
        "baseline_rate": np.tile(m, n_runs).astype(np.float64),
        "band_lo": band_lo.ravel().astype(np.float64),
        "band_hi": band_hi.ravel().astype(np.float64),
        "flagged": up.ravel().astype(bool),
        "direction": pd.Categorical(direction.ravel(), categories=["", "up", "down"]),
        "baseline": np.repeat(is_base, n_keys).astype(bool),
    }, columns=COLUMNS)
    df = df.sort_values(["dimension", "key", "run_index"], kind="stable", ignore_index=True)
    df.index.name = "row"
    df.attrs.update(order_by=order_by, baseline_labels=[lab for lab, b in zip(labels, is_base) if b])
    return df
