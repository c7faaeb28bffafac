"""What :mod:`kvmtrace.analysis.batchwise` keeps of each pid's pieces, and how the pieces' tables merge.

Split from batchwise so that neither module passes 600 lines. Pure numpy/pandas.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kvmtrace.analysis.runfields import DetailGroups, merge_detail_groups
from kvmtrace.analysis.runloop import UNPAIRED_KEYS
from kvmtrace.analysis.vcpus import ThreadCounts

__all__ = ["PidParts", "cat_samples", "concat", "io_merge", "merge_samples"]

#: Detail tables kept per pid before they are merged into one.
DETAIL_PARTS = 64


class PidParts:
    """What one pid's pieces left: small tables to merge and duration samples."""

    def __init__(self):
        self.events = 0
        self.ts_min, self.ts_max = np.iinfo(np.int64).max, -1
        self.userspace: list[pd.DataFrame] = []
        self.exits: list[pd.DataFrame] = []
        self.pio: list[pd.DataFrame] = []
        self.mmio: list[pd.DataFrame] = []
        self.interrupted = self.failed = self.unpaired_io = 0
        self.has_uexit = self.fields_known = False
        self.unpaired: dict[str, int] = dict.fromkeys(UNPAIRED_KEYS, 0)
        self.service: dict[tuple, tuple[list[np.ndarray], int]] = {}
        self.handling: dict[tuple, tuple[list[np.ndarray], int]] = {}
        self.counts: list[pd.DataFrame] = []
        self.windows: list[pd.DataFrame] = []
        self.details: list[DetailGroups] = []  # userspace exits per member value (analysis.runfields)
        self.threads: ThreadCounts = {}  # per (pid, tid) counts (analysis.vcpus)

    def add_details(self, groups: DetailGroups) -> None:
        self.details.append(groups)
        if len(self.details) >= DETAIL_PARTS:
            self.details = [merge_detail_groups(self.details)]

    @staticmethod
    def add_samples(store: dict, key: tuple, values: np.ndarray) -> None:
        """Keep a group's durations >= 0 (uint32 where they fit) and count the rest (unpaired)."""
        ok = values >= 0
        v = values[ok]
        if len(v) and int(v.max()) < 1 << 32:
            v = v.astype(np.uint32)
        arrays, unpaired_n = store.get(key, ([], 0))
        arrays.append(v)
        store[key] = (arrays, unpaired_n + int(len(values) - len(v)))


def merge_samples(stores: list[dict]) -> dict[tuple, tuple[list[np.ndarray], int]]:
    out: dict[tuple, tuple[list[np.ndarray], int]] = {}
    for store in stores:
        for key, (arrays, n) in store.items():
            a, m = out.get(key, ([], 0))
            out[key] = (a + arrays, m + n)
    return out


def cat_samples(arrays: list[list[np.ndarray]]) -> np.ndarray:
    flat = [a for group in arrays for a in group if len(a)]
    if not flat:
        return np.zeros(0, dtype=np.uint32)
    if len(flat) == 1:
        return flat[0]
    dtype = np.uint32 if all(a.dtype == np.uint32 for a in flat) else np.int64
    return np.concatenate([a.astype(dtype, copy=False) for a in flat])


def regroup(groups: dict[tuple, tuple[list[np.ndarray], int]],
            key_of: dict[tuple, tuple]) -> tuple[list[tuple], list[np.ndarray], list[int]]:
    """Merged sample groups (:func:`merge_samples`) gathered again under the
    output keys ``key_of`` gives them (several keys may name one group):
    the output keys in order, each one's samples and its unpaired count."""
    out_keys = sorted(set(key_of.values()))
    samples, unpaired_n = [], []
    for ok in out_keys:
        members = [groups[key] for key in groups if key_of[key] == ok]
        samples.append(cat_samples([m[0] for m in members]))
        unpaired_n.append(sum(m[1] for m in members))
    return out_keys, samples, unpaired_n


def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def io_merge(frames: list[pd.DataFrame], keys_out: list[str]) -> pd.DataFrame:
    """summary._io_rows' table from the tables of the pieces: counts summed per key."""
    nonempty = [f for f in frames if len(f)]
    if not nonempty:
        return frames[0] if frames else pd.DataFrame(columns=[*keys_out, "userspace", "count"])
    df = pd.concat(nonempty, ignore_index=True)
    dtypes = df.dtypes
    df = df.groupby([*keys_out, "userspace"], sort=False, observed=True)["count"].sum().reset_index()
    df = df.astype({c: dtypes[c] for c in df.columns})
    df = df[df["count"] > 0]
    return df.sort_values([*keys_out, "userspace"], ascending=[True] * len(keys_out) + [False],
                          ignore_index=True)
