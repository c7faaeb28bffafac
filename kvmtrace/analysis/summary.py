"""Counts behind `kvmtrace report`: pure pandas on a trace's events.

No bcc, no libvirt, no kernel: everything comes from the events frame and the
trace header. Frames returned here have fixed columns (documented per
function) and are what the text and JSON reports print.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..events import AGGREGATE, EventFlag, EventKind, MmioOp, PioOp
from ..exits import ExitNames, Isa, KvmExit, kvm_exit_info

EINTR = 4


def weighted(ev: pd.DataFrame) -> pd.DataFrame:
    """``ev`` with ``k`` (the event kind) and ``w`` (how many events a row stands for).

    An event row stands for itself (w = 1). An aggregate row of a counts-mode
    recording (kind | AGGREGATE) stands for ``value`` events of kind
    ``kind & ~AGGREGATE`` that share its key. Every count below sums ``w``,
    so both kinds of trace give the same tables.
    """
    if "w" in ev.columns:
        return ev
    agg = (ev["kind"].to_numpy() & AGGREGATE) != 0
    return ev.assign(
        k=ev["kind"].to_numpy() & ~np.uint8(AGGREGATE),
        w=np.where(agg, ev["value"].to_numpy(), 1).astype(np.int64),
    )


def mmio_completions(ev: pd.DataFrame) -> np.ndarray:
    """Mask of kvm_mmio "read" events that complete an earlier "unsatisfied-read".

    A read the VMM answers shows twice: "unsatisfied-read" when KVM hands it
    to the VMM, and "read" with the value when KVM_RUN resumes. The second is
    the same access; it follows the first on the same thread with no other
    MMIO event between and names the same address.
    """
    m = ev[ev["kind"] == EventKind.MMIO].sort_values(["tid", "ts_ns"], kind="stable")
    prev_op = m["op"].shift(1)
    prev_gpa = m["gpa"].shift(1)
    prev_tid = m["tid"].shift(1)
    comp = (
        (m["op"] == MmioOp.READ)
        & (prev_op == MmioOp.UNSATISFIED_READ)
        & (prev_gpa == m["gpa"])
        & (prev_tid == m["tid"])
    )
    mask = np.zeros(len(ev), dtype=bool)
    mask[ev.index.get_indexer(m.index[comp.to_numpy()])] = True
    return mask


@dataclass
class Summary:
    duration_s: float
    userspace_exits: pd.DataFrame
    exits: pd.DataFrame
    pio: pd.DataFrame
    mmio: pd.DataFrame
    interrupted_runs: int  # KVM_RUN returning -EINTR ("restart"): not exits
    failed_runs: int  # KVM_RUN returning another error
    userspace_fields_known: bool  # kvm_run members were read (record) or not (import)
    unpaired_userspace_io: int = 0  # IO/MMIO exits whose access lies outside the recording


def userspace_exits(ev: pd.DataFrame, names: ExitNames, duration_s: float) -> pd.DataFrame:
    """KVM_RUN returns to the VMM, by KVM_EXIT_* reason.

    Columns: reason (KVM_EXIT_* name), code, member (the kvm_run union member
    it fills, "" for none), fields (that member's fields, comma-separated),
    count, rate (per second of recording).
    """
    ev = weighted(ev)
    u = ev[(ev["k"] == EventKind.USERSPACE_EXIT) & (ev["err"] >= 0)]
    counts = u.groupby("reason")["w"].sum()
    rows = []
    for code, n in counts.items():
        info = kvm_exit_info(int(code))
        rows.append({
            "reason": names.kvm_exit(int(code)),
            "code": int(code),
            "member": info.member or "",
            "fields": ",".join(info.fields),
            "count": int(n),
            "rate": n / duration_s if duration_s > 0 else float("nan"),
        })
    cols = ["reason", "code", "member", "fields", "count", "rate"]
    return pd.DataFrame(rows, columns=cols).sort_values(["count", "code"], ascending=[False, True], ignore_index=True)


def hardware_exits(ev: pd.DataFrame, names: ExitNames, duration_s: float) -> pd.DataFrame:
    """VM exits (kvm:kvm_exit) by ISA and reason.

    Columns: isa ("VMX"/"SVM"/"UNKNOWN"), reason (the kernel's name), code
    (basic reason: VMX flag bits masked off), flags (e.g. "FAILED_VMENTRY"),
    count, rate.
    """
    ev = weighted(ev)
    x = ev[ev["k"] == EventKind.EXIT]
    cols = ["isa", "reason", "code", "flags", "count", "rate"]
    if x.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (isa, raw), n in x.groupby(["isa", "reason"])["w"].sum().items():
        isa_e = Isa.coerce(int(isa))
        code, flags = int(raw), ()
        if isa_e == Isa.VMX:
            code, flags = names.decode_vmx(int(raw))
        rows.append({
            "isa": isa_e.name,
            "reason": names.hw(int(isa), int(raw)),
            "code": code,
            "flags": " ".join(flags),
            "count": int(n),
        })
    df = pd.DataFrame(rows)
    df = df.groupby(["isa", "reason", "code", "flags"], as_index=False, observed=True)["count"].sum()
    df["rate"] = df["count"] / duration_s if duration_s > 0 else float("nan")
    return df[cols].sort_values(["count", "code"], ascending=[False, True], ignore_index=True)


def _split_user(total: pd.Series, user: pd.Series, keys: list[str]) -> pd.DataFrame:
    """Rows (keys..., userspace, count) from total and userspace counts (counts mode)."""
    user = user.reindex(total.index, fill_value=0)
    kernel = (total - user).clip(lower=0)
    return _rows(user, kernel, keys)


def _rows(user: pd.Series, kernel: pd.Series, keys: list[str]) -> pd.DataFrame:
    parts = []
    for flag, series in ((True, user), (False, kernel)):
        df = series[series > 0].rename("count").reset_index()
        df["userspace"] = flag
        parts.append(df)
    out = pd.concat(parts, ignore_index=True)
    out = out[keys + ["userspace", "count"]].astype({"count": "int64"})
    return out.sort_values(keys + ["userspace"], ascending=[True] * len(keys) + [False], ignore_index=True)


@dataclass
class Pairing:
    """Which port/MMIO events went to the VMM, paired with their userspace exits."""

    to_vmm: np.ndarray  # bool per row of the events frame
    unpaired_exits: int  # userspace IO/MMIO exits with no access event (at the recording's edges)


def pair_userspace(ev: pd.DataFrame) -> Pairing:
    """Pair each KVM_EXIT_IO / KVM_EXIT_MMIO (with its kvm_run fields) with the access it carried.

    On one vCPU thread, among its port, MMIO and userspace-exit events:
    a port write traces before its exit, so the exit's access is the event
    just before it; a port read the VMM answers traces only on completion,
    after KVM_RUN re-enters, so it is the event just after; an MMIO access
    (a write, or a read's "unsatisfied-read") traces before its exit. The
    access must also match the exit's kvm_run port or address and direction.
    An exit left unpaired is at an edge of the recording (its access happened
    before the start or completes after the end).
    """
    to_vmm = np.zeros(len(ev), dtype=bool)
    k = ev["kind"].to_numpy()
    err = ev["err"].to_numpy()
    uexit = (k == EventKind.USERSPACE_EXIT) & (err >= 0) & np.isin(ev["reason"].to_numpy(), [KvmExit.IO, KvmExit.MMIO])
    uexit &= (ev["flags"].to_numpy() & int(EventFlag.RUN_FIELDS)) != 0
    sel = np.flatnonzero(uexit | (k == EventKind.PIO) | ((k == EventKind.MMIO) & ~mmio_completions(ev)))
    if not uexit.any():
        return Pairing(to_vmm, 0)
    sub = ev.iloc[sel]
    order = np.lexsort((sub["ts_ns"].to_numpy(), sub["tid"].to_numpy()))
    rows = sel[order]
    kk, tid = k[rows], ev["tid"].to_numpy()[rows]
    port, op, gpa = ev["port"].to_numpy()[rows], ev["op"].to_numpy()[rows], ev["gpa"].to_numpy()[rows]
    reason = ev["reason"].to_numpy()[rows]
    is_exit = kk == EventKind.USERSPACE_EXIT
    n = len(rows)
    prev_i, next_i = np.arange(n) - 1, np.arange(n) + 1
    prev_ok = (prev_i >= 0) & (tid[np.maximum(prev_i, 0)] == tid)
    next_ok = (next_i < n) & (tid[np.minimum(next_i, n - 1)] == tid)
    pv, nx = np.maximum(prev_i, 0), np.minimum(next_i, n - 1)
    io = is_exit & (reason == KvmExit.IO)
    # kvm_run.io.direction is 1 for out (write), as kvm_pio's rw.
    io_w = io & (op == 1) & prev_ok & (kk[pv] == EventKind.PIO) & (op[pv] == PioOp.WRITE) & (port[pv] == port)
    io_r = io & (op == 0) & next_ok & (kk[nx] == EventKind.PIO) & (op[nx] == PioOp.READ) & (port[nx] == port)
    mm = is_exit & (reason == KvmExit.MMIO) & prev_ok & (kk[pv] == EventKind.MMIO) & (gpa[pv] == gpa)
    mm &= np.where(op == MmioOp.WRITE, op[pv] == MmioOp.WRITE, op[pv] == MmioOp.UNSATISFIED_READ)
    to_vmm[rows[pv[io_w | mm]]] = True
    to_vmm[rows[nx[io_r]]] = True
    return Pairing(to_vmm, int(is_exit.sum() - (io_w | io_r | mm).sum()))


def _is_aggregate(ev: pd.DataFrame) -> bool:
    return bool(((ev["kind"].to_numpy() & AGGREGATE) != 0).any())


def port_io(ev: pd.DataFrame) -> pd.DataFrame:
    """Port I/O accesses (kvm:kvm_pio) by port, direction and size.

    Each (port, direction, size) gives one row per place it was handled:
    ``userspace`` True for accesses KVM_RUN returned to the VMM as
    KVM_EXIT_IO (counted from the kvm_run.io of those exits), False for the
    rest, handled in the kernel. Columns: port, direction ("read"/"write"),
    size (bytes), userspace, count.
    """
    keys = ["port", "direction", "size"]
    ev = weighted(ev)
    if not _is_aggregate(ev):
        pio = ev["k"].to_numpy() == EventKind.PIO
        p = ev[pio]
        p = p.assign(direction=np.where(p["op"] == PioOp.WRITE, "write", "read"),
                     vmm=pair_userspace(ev).to_vmm[pio])
        if p.empty:
            return pd.DataFrame(columns=keys + ["userspace", "count"])
        return _rows(p[p["vmm"]].groupby(keys)["w"].sum(), p[~p["vmm"]].groupby(keys)["w"].sum(), keys)
    p = ev[ev["k"] == EventKind.PIO]
    total = p.assign(direction=np.where(p["op"] == PioOp.WRITE, "write", "read")).groupby(keys)["w"].sum()
    u = ev[(ev["k"] == EventKind.USERSPACE_EXIT) & (ev["reason"] == KvmExit.IO) & (ev["err"] >= 0)
           & ((ev["flags"] & int(EventFlag.RUN_FIELDS)) != 0)]
    # kvm_run.io.direction: KVM_EXIT_IO_IN 0, KVM_EXIT_IO_OUT 1, as kvm_pio's rw.
    user = u.assign(direction=np.where(u["op"] == 1, "write", "read")).groupby(keys)["w"].sum()
    if total.empty:
        return pd.DataFrame(columns=keys + ["userspace", "count"])
    return _split_user(total, user, keys)


def mmio(ev: pd.DataFrame) -> pd.DataFrame:
    """MMIO accesses (kvm:kvm_mmio) by guest physical address, direction, length.

    A read the VMM answers is one access (its "unsatisfied-read" and the
    completing "read" are counted once). ``userspace`` splits as for port
    I/O, from the kvm_run.mmio of KVM_EXIT_MMIO exits. Columns: gpa,
    direction, len (bytes), userspace, count.
    """
    keys = ["gpa", "direction", "len"]
    ev = weighted(ev)
    comp = mmio_completions(ev)
    if not _is_aggregate(ev):
        sel = (ev["k"].to_numpy() == EventKind.MMIO) & ~comp
        m = ev[sel]
        m = m.assign(direction=np.where(m["op"] == MmioOp.WRITE, "write", "read"), len=m["size"],
                     vmm=pair_userspace(ev).to_vmm[sel])
        if m.empty:
            return pd.DataFrame(columns=keys + ["userspace", "count"])
        return _rows(m[m["vmm"]].groupby(keys)["w"].sum(), m[~m["vmm"]].groupby(keys)["w"].sum(), keys)
    m = ev[(ev["k"] == EventKind.MMIO) & ~comp]
    total = m.assign(direction=np.where(m["op"] == MmioOp.WRITE, "write", "read"),
                     len=m["size"]).groupby(keys)["w"].sum()
    u = ev[(ev["k"] == EventKind.USERSPACE_EXIT) & (ev["reason"] == KvmExit.MMIO) & (ev["err"] >= 0)
           & ((ev["flags"] & int(EventFlag.RUN_FIELDS)) != 0)]
    user = u.assign(direction=np.where(u["op"] == MmioOp.WRITE, "write", "read"),
                    len=u["size"]).groupby(keys)["w"].sum()
    if total.empty:
        return pd.DataFrame(columns=keys + ["userspace", "count"])
    return _split_user(total, user, keys)


def summarize(ev: pd.DataFrame, names: ExitNames, duration_s: float) -> Summary:
    ev = weighted(ev)
    u = ev[ev["k"] == EventKind.USERSPACE_EXIT]
    known = bool(((u["flags"] & int(EventFlag.RUN_FIELDS)) != 0).any()) if len(u) else True
    return Summary(
        duration_s=duration_s,
        userspace_exits=userspace_exits(ev, names, duration_s),
        exits=hardware_exits(ev, names, duration_s),
        pio=port_io(ev),
        mmio=mmio(ev),
        interrupted_runs=int(u.loc[u["err"] == -EINTR, "w"].sum()),
        failed_runs=int(u.loc[(u["err"] < 0) & (u["err"] != -EINTR), "w"].sum()),
        userspace_fields_known=known,
        unpaired_userspace_io=0 if _is_aggregate(ev) else pair_userspace(ev).unpaired_exits,
    )
