"""Exit counts by dimension and key, whole-run or per time window.

The common currency of `compare`, `trend`, ``Trace.df_rates`` and the
notebooks: every exit-like event is keyed once per dimension it belongs to

- ``userspace_exit``: KVM_EXIT_* reason of a real userspace exit ("IO")
- ``exit``: hardware exit, "ISA reason" ("VMX EPT_MISCONFIG")
- ``port``: "0x0080 write"; ``mmio``: "0xfed00000 read" (a VMM-answered
  read counted once)
- ``device``: the device behind a port or MMIO address ("hpet", "ioport80")
- ``vcpu``: "vcpu 0", for every userspace and hardware exit

Pure pandas; device names come in as a DeviceMap, exit names as ExitNames.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kvmtrace.kernel.events import NO_VCPU, EventKind, MmioOp, PioOp
from kvmtrace.tables.exits import ExitNames, Isa
from kvmtrace.analysis.summary import dense_codes, mmio_completions, weighted

DIMENSIONS = ["userspace_exit", "exit", "port", "mmio", "device", "vcpu"]
DIMENSION_DTYPE = pd.CategoricalDtype(DIMENSIONS)


def vcpu_of(ev: pd.DataFrame, vcpu_threads: dict[int, int]) -> np.ndarray:
    """Each row's vCPU: the event's own vcpu field, else the thread's from the header."""
    v = ev["vcpu"].to_numpy().astype(np.int64)
    missing = v == NO_VCPU
    if missing.any() and vcpu_threads:
        codes, tids = dense_codes(ev["tid"].to_numpy())  # a few threads: look each up once
        mapped = np.array([vcpu_threads.get(int(t), -1) for t in tids], dtype=np.int64)[codes]
        v = np.where(missing & (mapped >= 0), mapped, v)
    return v


def _labels(sub: pd.DataFrame, cols: list[str], fmt) -> pd.Categorical:
    """A categorical of fmt(*values) per row, formatting each distinct value once."""
    codes, uniques = pd.MultiIndex.from_frame(sub[cols]).factorize()
    labels = [fmt(*u) for u in uniques]
    cats = pd.Index(labels)
    if not cats.is_unique:  # e.g. two codes both UNKNOWN-named: merge them
        cats_u = pd.Index(pd.unique(np.asarray(labels, dtype=object)))
        codes = cats_u.get_indexer(np.asarray(labels, dtype=object)[codes])
        cats = cats_u
    return pd.Categorical.from_codes(codes, categories=cats)


def keyed(ev: pd.DataFrame, names: ExitNames, devmap=None, vcpu_threads: dict[int, int] | None = None,
          mmio_page: bool = False) -> pd.DataFrame:
    """One row per (event, dimension): ts_ns (int64), dimension (category), key (category), w (int64).

    ``mmio_page``: key MMIO by its 4 KiB page (to compare with a recording that kept no more).
    """
    ev = weighted(ev)
    parts = []

    def part(mask, dimension, keys):
        sub = ev[mask]
        if len(sub):
            parts.append(pd.DataFrame({"ts_ns": sub["ts_ns"].to_numpy(np.int64), "dimension": dimension,
                                       "key": pd.Categorical(keys), "w": sub["w"].to_numpy(np.int64)}))

    k = ev["k"].to_numpy()
    uexit = (k == EventKind.USERSPACE_EXIT) & (ev["err"].to_numpy() >= 0)
    part(uexit, "userspace_exit", _labels(ev[uexit], ["reason"], lambda r: names.kvm_exit(int(r))))

    hw = k == EventKind.EXIT
    part(hw, "exit", _labels(ev[hw], ["isa", "reason"],
                             lambda i, r: f"{Isa.coerce(int(i)).name} {names.hw(int(i), int(r))}"))

    pio = k == EventKind.PIO
    sub = ev[pio]
    part(pio, "port", _labels(sub, ["port", "op"],
                              lambda p, o: f"{int(p):#06x} {'write' if o == PioOp.WRITE else 'read'}"))
    if devmap is not None and len(sub):
        part(pio, "device", devmap.name_ports(sub["port"].to_numpy()))

    mm = (k == EventKind.MMIO) & ~mmio_completions(ev)
    sub = ev[mm]
    if mmio_page:
        sub = sub.assign(gpa=sub["gpa"].to_numpy() & ~np.uint64(0xFFF))
    part(mm, "mmio", _labels(sub.assign(write=sub["op"] == MmioOp.WRITE), ["gpa", "write"],
                             lambda g, w: f"{int(g):#x} {'write' if w else 'read'}"))
    if devmap is not None and len(sub):
        part(mm, "device", devmap.name_gpas(sub["gpa"].to_numpy()))

    # A vCPU's exits: the hardware exits where kvm_exit fired (an I/O exit that
    # reached the VMM is one of them), else the userspace exits.
    exits = hw if hw.any() else uexit
    if exits.any():
        v = pd.Series(vcpu_of(ev[exits], vcpu_threads or {}), name="v").to_frame()
        part(exits, "vcpu", _labels(v, ["v"], lambda x: f"vcpu {x}" if x >= 0 else "vcpu ?"))

    if not parts:
        return pd.DataFrame({"ts_ns": pd.Series(dtype="int64"), "dimension": pd.Series(dtype=DIMENSION_DTYPE),
                             "key": pd.Series(dtype="category"), "w": pd.Series(dtype="int64")})
    df = pd.concat(parts, ignore_index=True)
    df["dimension"] = df["dimension"].astype(DIMENSION_DTYPE)
    df["key"] = df["key"].astype("category")
    return df


def counts(keyed_df: pd.DataFrame) -> pd.DataFrame:
    """Whole-run counts: dimension, key, count (int64)."""
    c = keyed_df.groupby(["dimension", "key"], observed=True)["w"].sum().rename("count").reset_index()
    return c.astype({"count": "int64"})


def windows(keyed_df: pd.DataFrame, start_ns: int, window_s: float) -> pd.DataFrame:
    """Counts per time window: window (int64, from start_ns), dimension, key, count."""
    win = ((keyed_df["ts_ns"] - start_ns) // int(window_s * 1e9)).astype("int64")
    c = keyed_df.assign(window=win).groupby(["window", "dimension", "key"], observed=True)["w"].sum()
    return c.rename("count").reset_index().astype({"count": "int64"})
