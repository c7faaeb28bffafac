"""Counts behind `kvmtrace report`: numpy and pandas on a trace's events.

No bcc, no libvirt, no kernel: everything comes from the events frame and the
trace header. Frames returned here have fixed columns (documented per
function) and are what the text and JSON reports print.

Traces run to tens of millions of events, so the work is done on numpy
arrays of the few columns each table needs (never a filtered copy of the
whole frame), events are put in thread order once, and each distinct key is
named once.
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
    so both kinds of trace give the same tables. A frame that has the two
    columns already is returned as it is.
    """
    if "w" in ev.columns:
        return ev
    k, w = kinds_and_weights(ev)
    return ev.assign(k=k, w=w)


def kinds_and_weights(ev: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    if "w" in ev.columns:
        return ev["k"].to_numpy(), ev["w"].to_numpy()
    kind = ev["kind"].to_numpy()
    agg = (kind & AGGREGATE) != 0
    k = kind & ~np.uint8(AGGREGATE)
    w = np.where(agg, ev["value"].to_numpy(), 1).astype(np.int64) if agg.any() else np.ones(len(kind), np.int64)
    return k, w


def thread_order(tid: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """A permutation putting rows in (thread, time) order.

    A thread's events reach the ring buffer in the order they happened, so
    in a recorded file each thread's rows are already in time order and a
    stable sort by thread is enough (and far cheaper than a two-key sort);
    an imported or edited file that breaks this gets the full sort.
    """
    order = np.argsort(tid, kind="stable").astype(np.int32 if len(tid) < 2**31 else np.int64)
    t, s = tid[order], ts[order]
    if len(order) > 1 and bool(((s[1:] < s[:-1]) & (t[1:] == t[:-1])).any()):
        order = np.lexsort((ts, tid))
    return order


def _idx(mask: np.ndarray) -> np.ndarray:
    """Row numbers of a mask, as int32 where they fit (half the memory of int64)."""
    rows = np.flatnonzero(mask)
    return rows.astype(np.int32) if len(mask) < 2**31 else rows


def mmio_completions(ev: pd.DataFrame) -> np.ndarray:
    """Mask of kvm_mmio "read" events that complete an earlier "unsatisfied-read".

    A read the VMM answers shows twice: "unsatisfied-read" when KVM hands it
    to the VMM, and "read" with the value when KVM_RUN resumes. The second is
    the same access; it follows the first on the same thread with no other
    MMIO event between and names the same address.
    """
    mask = np.zeros(len(ev), dtype=bool)
    sel = _idx(ev["kind"].to_numpy() == EventKind.MMIO)
    if len(sel) < 2:
        return mask
    rows = sel[thread_order(ev["tid"].to_numpy()[sel], ev["ts_ns"].to_numpy()[sel])]
    op, gpa, tid = ev["op"].to_numpy()[rows], ev["gpa"].to_numpy()[rows], ev["tid"].to_numpy()[rows]
    comp = np.zeros(len(rows), dtype=bool)
    comp[1:] = (op[1:] == MmioOp.READ) & (op[:-1] == MmioOp.UNSATISFIED_READ) & (gpa[1:] == gpa[:-1]) \
        & (tid[1:] == tid[:-1])
    mask[rows[comp]] = True
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


def _rate(count, duration_s: float):
    return count / duration_s if duration_s > 0 else float("nan")


def _group_sum(keys: list[np.ndarray], w: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Distinct key tuples and the sum of w for each (like groupby().sum(), on arrays)."""
    if len(w) == 0:
        return [k[:0] for k in keys], np.zeros(0, np.int64)
    order = np.lexsort(keys[::-1])
    sk = [k[order] for k in keys]
    new = np.ones(len(order), dtype=bool)
    for k in sk:
        new[1:] &= k[1:] == k[:-1]
    new = ~new
    new[0] = True
    starts = np.flatnonzero(new)
    sums = np.add.reduceat(w[order], starts)
    return [k[starts] for k in sk], sums.astype(np.int64)


def userspace_exits(ev: pd.DataFrame, names: ExitNames, duration_s: float) -> pd.DataFrame:
    """KVM_RUN returns to the VMM, by KVM_EXIT_* reason.

    Columns: reason (KVM_EXIT_* name), code, member (the kvm_run union member
    it fills, "" for none), fields (that member's fields, comma-separated),
    count, rate (per second of recording).
    """
    k, w = kinds_and_weights(ev)
    sel = (k == EventKind.USERSPACE_EXIT) & (ev["err"].to_numpy() >= 0)
    (codes,), counts = _group_sum([ev["reason"].to_numpy()[sel]], w[sel])
    rows = []
    for code, n in zip(codes.tolist(), counts.tolist()):
        info = kvm_exit_info(code)
        rows.append({"reason": names.kvm_exit(code), "code": code, "member": info.member or "",
                     "fields": ",".join(info.fields), "count": n, "rate": _rate(n, duration_s)})
    cols = ["reason", "code", "member", "fields", "count", "rate"]
    return pd.DataFrame(rows, columns=cols).sort_values(["count", "code"], ascending=[False, True], ignore_index=True)


def hardware_exits(ev: pd.DataFrame, names: ExitNames, duration_s: float) -> pd.DataFrame:
    """VM exits (kvm:kvm_exit) by ISA and reason.

    Columns: isa ("VMX"/"SVM"/"UNKNOWN"), reason (the kernel's name), code
    (basic reason: VMX flag bits masked off), flags (e.g. "FAILED_VMENTRY"),
    count, rate.
    """
    cols = ["isa", "reason", "code", "flags", "count", "rate"]
    k, w = kinds_and_weights(ev)
    sel = k == EventKind.EXIT
    if not sel.any():
        return pd.DataFrame(columns=cols)
    (isas, raws), counts = _group_sum([ev["isa"].to_numpy()[sel], ev["reason"].to_numpy()[sel]], w[sel])
    rows = []
    for isa, raw, n in zip(isas.tolist(), raws.tolist(), counts.tolist()):
        isa_e = Isa.coerce(isa)
        code, flags = raw, ()
        if isa_e == Isa.VMX:
            code, flags = names.decode_vmx(raw)
        rows.append({"isa": isa_e.name, "reason": names.hw(isa, raw), "code": code, "flags": " ".join(flags),
                     "count": n})
    df = pd.DataFrame(rows)
    df = df.groupby(["isa", "reason", "code", "flags"], as_index=False, observed=True)["count"].sum()
    df["rate"] = df["count"] / duration_s if duration_s > 0 else float("nan")
    return df[cols].sort_values(["count", "code"], ascending=[False, True], ignore_index=True)


@dataclass
class Pairing:
    """Which port/MMIO events went to the VMM, paired with their userspace exits."""

    to_vmm: np.ndarray  # bool per row of the events frame
    unpaired_exits: int  # userspace IO/MMIO exits with no access event (at the recording's edges)


def pair_userspace(ev: pd.DataFrame, completions: np.ndarray | None = None) -> Pairing:
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
    reason = ev["reason"].to_numpy()
    uexit = (k == EventKind.USERSPACE_EXIT) & (ev["err"].to_numpy() >= 0) \
        & ((reason == KvmExit.IO) | (reason == KvmExit.MMIO)) \
        & ((ev["flags"].to_numpy() & int(EventFlag.RUN_FIELDS)) != 0)
    if not uexit.any():
        return Pairing(to_vmm, 0)
    if completions is None:
        completions = mmio_completions(ev)
    sel = _idx(uexit | (k == EventKind.PIO) | ((k == EventKind.MMIO) & ~completions))
    rows = sel[thread_order(ev["tid"].to_numpy()[sel], ev["ts_ns"].to_numpy()[sel])]
    kk, tid = k[rows], ev["tid"].to_numpy()[rows]
    port, op, gpa = ev["port"].to_numpy()[rows], ev["op"].to_numpy()[rows], ev["gpa"].to_numpy()[rows]
    reason = reason[rows]
    is_exit = uexit[rows]
    n = len(rows)
    pos = np.arange(n, dtype=rows.dtype)
    pv = np.maximum(pos - 1, 0)
    nx = np.minimum(pos + 1, n - 1)
    del pos
    prev_ok = np.zeros(n, dtype=bool)
    prev_ok[1:] = tid[1:] == tid[:-1]
    next_ok = np.zeros(n, dtype=bool)
    next_ok[:-1] = tid[:-1] == tid[1:]
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


def _io_rows(keys: list[np.ndarray], names: list[str], user: np.ndarray, w: np.ndarray,
             directions: np.ndarray) -> pd.DataFrame:
    """Rows (names..., userspace, count) from per-access arrays; direction 1 = write."""
    (*vals, d, u), counts = _group_sum([*keys, directions.astype(np.uint8), user.astype(np.uint8)], w)
    df = pd.DataFrame({n: v for n, v in zip(names, vals)})
    df.insert(1, "direction", np.where(d == 1, "write", "read"))
    df["userspace"] = u.astype(bool)
    df["count"] = counts
    df = df[df["count"] > 0]
    keys_out = [names[0], "direction", *names[1:]]
    return df[keys_out + ["userspace", "count"]].sort_values(
        keys_out + ["userspace"], ascending=[True] * len(keys_out) + [False], ignore_index=True)


def _split_user(k: np.ndarray, w: np.ndarray, ev: pd.DataFrame, kind: int, key_cols: list[str],
                write_op: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Counts mode: accesses of ``kind`` and userspace exits keyed alike (kernel = total - user)."""
    reason = KvmExit.IO if kind == EventKind.PIO else KvmExit.MMIO
    acc = k == kind
    ux = (k == EventKind.USERSPACE_EXIT) & (ev["reason"].to_numpy() == reason) & (ev["err"].to_numpy() >= 0) \
        & ((ev["flags"].to_numpy() & int(EventFlag.RUN_FIELDS)) != 0)
    op = ev["op"].to_numpy()
    user_write = op == (1 if kind == EventKind.PIO else MmioOp.WRITE)
    cols = [ev[c].to_numpy() for c in key_cols]
    keys_a, total = _group_sum([*(c[acc] for c in cols), (op[acc] == write_op).astype(np.uint8)], w[acc])
    keys_u, user = _group_sum([*(c[ux] for c in cols), user_write[ux].astype(np.uint8)], w[ux])
    t = pd.Series(total, index=pd.MultiIndex.from_arrays(keys_a))
    u = pd.Series(user, index=pd.MultiIndex.from_arrays(keys_u)).reindex(t.index, fill_value=0)
    kernel = (t - u).clip(lower=0)
    idx = t.index
    both = [np.concatenate([idx.get_level_values(i).to_numpy()] * 2) for i in range(idx.nlevels)]
    return both[:-1], both[-1], np.concatenate([np.ones(len(t), bool), np.zeros(len(t), bool)]), \
        np.concatenate([u.to_numpy(), kernel.to_numpy()]).astype(np.int64)


def port_io(ev: pd.DataFrame, pairing: Pairing | None = None) -> pd.DataFrame:
    """Port I/O accesses (kvm:kvm_pio) by port, direction and size.

    Each (port, direction, size) gives one row per place it was handled:
    ``userspace`` True for accesses KVM_RUN returned to the VMM as
    KVM_EXIT_IO (paired with the exit through its kvm_run.io fields), False
    for the rest, handled in the kernel. Columns: port, direction
    ("read"/"write"), size (bytes), userspace, count.
    """
    k, w = kinds_and_weights(ev)
    if _is_aggregate(ev):
        keys, d, u, n = _split_user(k, w, ev, EventKind.PIO, ["port", "size"], PioOp.WRITE)
        return _io_rows(keys, ["port", "size"], u, n, d)
    if pairing is None:
        pairing = pair_userspace(ev)
    sel = k == EventKind.PIO
    return _io_rows([ev["port"].to_numpy()[sel], ev["size"].to_numpy()[sel]], ["port", "size"],
                    pairing.to_vmm[sel], w[sel], ev["op"].to_numpy()[sel] == PioOp.WRITE)


def mmio(ev: pd.DataFrame, pairing: Pairing | None = None, completions: np.ndarray | None = None) -> pd.DataFrame:
    """MMIO accesses (kvm:kvm_mmio) by guest physical address, direction, length.

    A read the VMM answers is one access (its "unsatisfied-read" and the
    completing "read" are counted once). ``userspace`` splits as for port
    I/O, from the kvm_run.mmio of KVM_EXIT_MMIO exits. Columns: gpa,
    direction, len (bytes), userspace, count.
    """
    k, w = kinds_and_weights(ev)
    if _is_aggregate(ev):
        keys, d, u, n = _split_user(k, w, ev, EventKind.MMIO, ["gpa", "size"], MmioOp.WRITE)
        return _io_rows(keys, ["gpa", "len"], u, n, d)
    if completions is None:
        completions = mmio_completions(ev)
    if pairing is None:
        pairing = pair_userspace(ev, completions)
    sel = (k == EventKind.MMIO) & ~completions
    return _io_rows([ev["gpa"].to_numpy()[sel], ev["size"].to_numpy()[sel]], ["gpa", "len"],
                    pairing.to_vmm[sel], w[sel], ev["op"].to_numpy()[sel] == MmioOp.WRITE)


def summarize(ev: pd.DataFrame, names: ExitNames, duration_s: float, pairing: Pairing | None = None,
              completions: np.ndarray | None = None) -> Summary:
    """Every table of the report. ``pairing`` and ``completions``, when the
    caller has them already (Trace keeps them), are not computed again."""
    k, w = kinds_and_weights(ev)
    err = ev["err"].to_numpy()
    u = k == EventKind.USERSPACE_EXIT
    known = bool(((ev["flags"].to_numpy()[u] & int(EventFlag.RUN_FIELDS)) != 0).any()) if u.any() else True
    aggregate = _is_aggregate(ev)
    if not aggregate:
        if completions is None:
            completions = mmio_completions(ev)
        if pairing is None:
            pairing = pair_userspace(ev, completions)
    return Summary(
        duration_s=duration_s,
        userspace_exits=userspace_exits(ev, names, duration_s),
        exits=hardware_exits(ev, names, duration_s),
        pio=port_io(ev, pairing),
        mmio=mmio(ev, pairing, completions),
        interrupted_runs=int(w[u & (err == -EINTR)].sum()),
        failed_runs=int(w[u & (err < 0) & (err != -EINTR)].sum()),
        userspace_fields_known=known,
        unpaired_userspace_io=0 if aggregate else pairing.unpaired_exits,
    )


def service_times(ev: pd.DataFrame) -> pd.DataFrame:
    """Every real userspace exit with the VMM's service time, on numpy arrays.

    Service time: from kvm_userspace_exit to the same thread's next
    KVM_RUN ioctl; -1 when another userspace exit or the recording's end
    comes first. The same pairing as analysis.runloop.userspace_runs, with
    only what the latency tables need. Columns: ts_ns, tid (uint32), code
    (uint32 KVM_EXIT_*), port (uint32), gpa (uint64), direction (category
    ""/read/write, from the kvm_run fields), service_ns (int64). Index "run".
    """
    k = ev["kind"].to_numpy()
    uexit = (k == EventKind.USERSPACE_EXIT) & (ev["err"].to_numpy() >= 0)
    sel = _idx(uexit | (k == EventKind.RUN))
    rows = sel[thread_order(ev["tid"].to_numpy()[sel], ev["ts_ns"].to_numpy()[sel])]
    kk, tid, ts = k[rows], ev["tid"].to_numpy()[rows], ev["ts_ns"].to_numpy()[rows]
    is_u = kk == EventKind.USERSPACE_EXIT
    nxt_run = np.zeros(len(rows), dtype=bool)
    nxt_run[:-1] = (kk[1:] == EventKind.RUN) & (tid[1:] == tid[:-1])
    service = np.full(len(rows), -1, dtype=np.int64)
    service[:-1] = np.where(nxt_run[:-1], ts[1:].astype(np.int64) - ts[:-1].astype(np.int64), -1)
    u = rows[is_u]
    code = ev["reason"].to_numpy()[u]
    op = ev["op"].to_numpy()[u]
    known = (ev["flags"].to_numpy()[u] & int(EventFlag.RUN_FIELDS)) != 0
    write = np.where(code == KvmExit.IO, op == 1, op == MmioOp.WRITE)
    direction = np.where(known & ((code == KvmExit.IO) | (code == KvmExit.MMIO)), np.where(write, 2, 1), 0)
    df = pd.DataFrame({
        "ts_ns": ts[is_u].astype(np.int64), "tid": tid[is_u].astype(np.uint32), "code": code.astype(np.uint32),
        "port": ev["port"].to_numpy()[u].astype(np.uint32), "gpa": ev["gpa"].to_numpy()[u].astype(np.uint64),
        "direction": pd.Categorical.from_codes(direction, categories=["", "read", "write"]),
        "service_ns": service[is_u],
    })
    df.index.name = "run"
    return df
