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

from kvmtrace.kernel.events import AGGREGATE, EventFlag, EventKind, MmioOp, PioOp
from kvmtrace.tables.exits import ExitNames, Isa, KvmExit, kvm_exit_info

EINTR = 4


def weighted(ev: pd.DataFrame) -> pd.DataFrame:
    """``ev`` with ``k`` (the event kind) and ``w`` (how many events a row stands for).

    An event row stands for itself (w = 1). An aggregate row of a counts-mode
    recording (kind | AGGREGATE) stands for ``value`` events of kind
    ``kind & ~AGGREGATE`` that share its key. Every count below sums ``w``,
    so both kinds of trace give the same tables. A frame that has the two
    columns already is returned as it is; otherwise the new frame holds the
    same column arrays (``assign`` would copy a large frame's columns).
    """
    if "w" in ev.columns:
        return ev
    k, w = kinds_and_weights(ev)
    return pd.DataFrame({**{c: ev[c] for c in ev.columns}, "k": k, "w": w}, copy=False)


def kinds_and_weights(ev: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each row's event kind and how many events it stands for (see :func:`weighted`).

    For a recording of single events (no aggregate row) the kinds are the
    ``kind`` column itself and the weights a read-only array of ones that
    takes no memory: nothing is copied or allocated per row.
    """
    if "w" in ev.columns:
        return ev["k"].to_numpy(), ev["w"].to_numpy()
    kind = ev["kind"].to_numpy()
    agg = (kind & AGGREGATE) != 0
    if not agg.any():
        return kind, np.broadcast_to(np.int64(1), len(kind))
    return kind & ~np.uint8(AGGREGATE), np.where(agg, ev["value"].to_numpy(), 1).astype(np.int64)


def dense_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value's rank among the distinct values (int64), and the distinct values, sorted.

    What ``np.unique(values, return_inverse=True)`` gives, without sorting
    every row (see :func:`group_codes`). Integer or bool arrays.
    """
    code, (uniq,) = group_codes([np.asarray(values)])
    return code, uniq


def group_codes(keys: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Group number of each row (int64, 0..g-1) and each key's value per group.

    Groups are the distinct key tuples (integer or bool arrays of one
    length), numbered in sorted (lexicographic) order of the tuples, as
    ``groupby(sort=True)`` numbers them; no row is sorted (see
    :class:`_Combined`).
    """
    if not len(keys[0]):
        return np.zeros(0, dtype=np.int64), [k[:0].copy() for k in keys]
    c = _Combined(keys)
    c.renumber()
    return c.code, c.values


class _Combined:
    """Several keys as one small non-negative int64 code per row, by mixed radix.

    ``code`` < ``size``, in the lexicographic order of the key tuples; key
    i's value for a code c is ``values[i][(c // div[i]) % mod[i]]``. A key
    enters as its offset from its minimum, or when it spans more values
    than there are rows, as its rank among its distinct values (hashed with
    pd.factorize, which sorts only those). When the product of the spans
    outgrows the row count, the codes present are renumbered 0..g-1: the
    codes stay below the row count (a table over them is no bigger than the
    data) and never overflow.
    """

    def __init__(self, keys: list[np.ndarray]):
        self.limit = max(len(keys[0]), 1 << 16)
        self.size = 1
        self.values: list[np.ndarray] = []
        self.div: list[int] = []
        self.mod: list[int] = []
        for i, key in enumerate(keys):
            off, uniq = self._offsets(np.asarray(key))
            m = len(uniq)
            if i == 0:
                self.code = off.astype(np.int64)
            elif m > 1:  # a key of one value changes no code
                if self.size * m > self.limit:
                    self.renumber()
                self.code *= m
                self.code += off
                self.div = [d * m for d in self.div]
            self.div.append(1)
            self.mod.append(m)
            self.values.append(uniq)
            self.size *= m

    def _offsets(self, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The key as small non-negative integers, and the value of each."""
        if key.dtype == bool:
            return key.view(np.uint8), np.array([False, True])
        lo, hi = key.min(), key.max()
        span = int(hi) - int(lo) + 1
        if span > self.limit:
            codes, uniq = pd.factorize(key, sort=True)
            return codes, np.asarray(uniq, dtype=key.dtype)
        off = key - lo if lo else key
        if off.dtype == np.uint64:
            off = off.astype(np.int64)  # int64 += uint64 is not allowed
        return off, np.arange(span).astype(key.dtype) + lo

    def present(self) -> np.ndarray:
        """The codes that occur, sorted."""
        return np.flatnonzero(np.bincount(self.code, minlength=self.size))

    def decode(self, codes: np.ndarray) -> list[np.ndarray]:
        """Each key's value for each code."""
        return [v[(codes // d) % m] for v, d, m in zip(self.values, self.div, self.mod)]

    def renumber(self) -> None:
        """Number the codes present 0..g-1, in order."""
        present = self.present()
        table = np.zeros(self.size, dtype=np.int64)
        table[present] = np.arange(len(present))
        self.code = table[self.code]
        self.values = self.decode(present)
        self.div = [1] * len(self.values)
        self.mod = [len(present)] * len(self.values)
        self.size = len(present)


class ThreadOrder:
    """The events of a frame in thread order: each thread's events together, in time order.

    A thread is a (pid, tid) pair; threads are numbered in order of first
    appearance; within a thread events are in timestamp order, ties in file
    order. Every analysis that pairs an event with its neighbours on the
    same vCPU thread takes them in this order. It is computed once per
    trace (``Trace`` keeps it) and a subset's order is read off it, which
    keeps thread order: no sort per table.

    The usual recording, one vCPU thread whose timestamps never go back, is
    in thread order as written: then nothing is sorted or stored (``perm``
    is None). Several threads are sorted by thread number (a radix sort of
    small codes); a thread whose events are out of time order (imported or
    edited files) gets the full sort by (thread, time).

    ``perm``: frame positions in thread order, or None for file order;
    ``thread``: thread number of each row in frame order, or None when
    there is one thread; ``thread_pid``, ``thread_tid``: each thread's ids.
    """

    def __init__(self, pid: np.ndarray, tid: np.ndarray, ts: np.ndarray):
        n = len(tid)
        self.n = n
        self.perm: np.ndarray | None = None
        self.thread: np.ndarray | None = None
        if n == 0 or (bool((tid == tid[0]).all()) and bool((pid == pid[0]).all())):
            self.thread_pid = pid[:1].astype(np.uint32)
            self.thread_tid = tid[:1].astype(np.uint32)
            if n > 1 and not bool((ts[1:] >= ts[:-1]).all()):
                self.perm = _positions(np.argsort(ts, kind="stable"))
            return
        key = (pid.astype(np.uint64) << np.uint64(32)) | tid.astype(np.uint64)
        codes, uniques = pd.factorize(key, sort=False)
        uniques = np.asarray(uniques, dtype=np.uint64)
        self.thread_pid = (uniques >> np.uint64(32)).astype(np.uint32)
        self.thread_tid = (uniques & np.uint64(0xFFFF_FFFF)).astype(np.uint32)
        self.thread = codes.astype(np.uint16 if len(uniques) <= 1 << 16 else np.int64)
        perm = np.argsort(self.thread, kind="stable")
        t, s = self.thread[perm], ts[perm]
        if bool(((s[1:] < s[:-1]) & (t[1:] == t[:-1])).any()):
            by_time = np.argsort(ts, kind="stable")
            perm = by_time[np.argsort(self.thread[by_time], kind="stable")]
        self.perm = _positions(perm)

    @classmethod
    def of(cls, ev: pd.DataFrame) -> "ThreadOrder":
        return cls(ev["pid"].to_numpy(), ev["tid"].to_numpy(), ev["ts_ns"].to_numpy())

    def positions(self) -> np.ndarray:
        """Every frame position in thread order."""
        return _positions(np.arange(self.n)) if self.perm is None else self.perm

    def rows(self, mask: np.ndarray) -> np.ndarray:
        """Frame positions of the rows of ``mask``, in thread order (int32 where they fit)."""
        return _positions(np.flatnonzero(mask)) if self.perm is None else self.perm[np.flatnonzero(mask[self.perm])]

    def next_on_thread(self, rows: np.ndarray) -> np.ndarray:
        """For rows in thread order: whether ``rows[i + 1]`` is on the thread of ``rows[i]``.

        False for the last row, so that ``[i - 1]`` of the first row is False too.
        """
        out = np.zeros(len(rows), dtype=bool)
        if self.thread is None:
            out[:-1] = True
        elif len(rows):
            t = self.thread[rows]
            out[:-1] = t[1:] == t[:-1]
        return out

    def neighbours(self, rows: np.ndarray, at: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        """For rows in thread order and places ``at`` in them: the row ``step`` places on
        (-1 the one before, 1 the one after), and whether there is one, on the same thread."""
        j = at + step
        ok = (j >= 0) & (j < len(rows))
        nb = rows[np.clip(j, 0, len(rows) - 1, out=j)]
        del j
        if self.thread is not None:
            ok &= self.thread[nb] == self.thread[rows[at]]
        return nb, ok


def _positions(a: np.ndarray) -> np.ndarray:
    """Row positions as int32 where they fit (half the memory of int64)."""
    return a.astype(np.int32) if len(a) < 2**31 else a


def mmio_completions(ev: pd.DataFrame, order: ThreadOrder | None = None) -> np.ndarray:
    """Mask of kvm_mmio "read" events that complete an earlier "unsatisfied-read".

    A read the VMM answers shows twice: "unsatisfied-read" when KVM hands it
    to the VMM, and "read" with the value when KVM_RUN resumes. The second is
    the same access; it follows the first on the same thread with no other
    MMIO event between and names the same address. ``order``: the frame's
    thread order, when the caller has it.
    """
    mask = np.zeros(len(ev), dtype=bool)
    is_mmio = ev["kind"].to_numpy() == EventKind.MMIO
    if is_mmio.sum() < 2:
        return mask
    if order is None:
        order = ThreadOrder.of(ev)
    rows = order.rows(is_mmio)
    op, gpa = ev["op"].to_numpy()[rows], ev["gpa"].to_numpy()[rows]
    comp = np.zeros(len(rows), dtype=bool)
    comp[1:] = (op[1:] == MmioOp.READ) & (op[:-1] == MmioOp.UNSATISFIED_READ) & (gpa[1:] == gpa[:-1]) \
        & order.next_on_thread(rows)[:-1]
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
    """Distinct key tuples, sorted, and the sum of w for each (like groupby().sum(), on arrays)."""
    if len(w) == 0:
        return [k[:0] for k in keys], np.zeros(0, np.int64)
    c = _Combined(keys)
    present = c.present()
    sums = np.zeros(c.size, dtype=np.int64)
    np.add.at(sums, c.code, w)
    return c.decode(present), sums[present]


def userspace_exits(ev: pd.DataFrame, names: ExitNames, duration_s: float) -> pd.DataFrame:
    """KVM_RUN returns to the VMM, by KVM_EXIT_* reason.

    Columns: reason (KVM_EXIT_* name), code, member (the kvm_run union member
    it fills, "" for none), fields (that member's fields, comma-separated),
    count, rate (per second of recording).
    """
    k, w = kinds_and_weights(ev)
    sel = np.flatnonzero((k == EventKind.USERSPACE_EXIT) & (ev["err"].to_numpy() >= 0))
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
    sel = np.flatnonzero(k == EventKind.EXIT)
    if not len(sel):
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


def pair_userspace(ev: pd.DataFrame, completions: np.ndarray | None = None,
                   order: ThreadOrder | None = None) -> Pairing:
    """Pair each KVM_EXIT_IO / KVM_EXIT_MMIO (with its kvm_run fields) with the access it carried.

    On one vCPU thread, among its port, MMIO and userspace-exit events:
    a port write traces before its exit, so the exit's access is the event
    just before it; a port read the VMM answers traces only on completion,
    after KVM_RUN re-enters, so it is the event just after; an MMIO access
    (a write, or a read's "unsatisfied-read") traces before its exit. The
    access must also match the exit's kvm_run port or address and direction.
    An exit left unpaired is at an edge of the recording (its access happened
    before the start or completes after the end). ``completions`` and
    ``order`` (the frame's thread order), when the caller has them, are not
    computed again.
    """
    to_vmm = np.zeros(len(ev), dtype=bool)
    k = ev["kind"].to_numpy()
    reason = ev["reason"].to_numpy()
    uexit = (k == EventKind.USERSPACE_EXIT) & (ev["err"].to_numpy() >= 0) \
        & ((reason == KvmExit.IO) | (reason == KvmExit.MMIO)) \
        & ((ev["flags"].to_numpy() & int(EventFlag.RUN_FIELDS)) != 0)
    if not uexit.any():
        return Pairing(to_vmm, 0)
    if order is None:
        order = ThreadOrder.of(ev)
    if completions is None:
        completions = mmio_completions(ev, order)
    rows = order.rows(uexit | (k == EventKind.PIO) | ((k == EventKind.MMIO) & ~completions))
    at = _positions(np.flatnonzero(uexit[rows]))  # each exit's place in rows
    del uexit
    op = ev["op"].to_numpy()
    x = rows[at]
    xreason, xop = reason[x], op[x]
    io, mm = xreason == KvmExit.IO, xreason == KvmExit.MMIO
    del xreason
    # Per kind of exit: where its access is (step), and what it must be. kvm_run.io.direction
    # is 1 for out (write), as kvm_pio's rw; a read the VMM answers is an "unsatisfied-read".
    cases = ((io & (xop == 1), -1, EventKind.PIO, PioOp.WRITE, "port"),
             (io & (xop == 0), 1, EventKind.PIO, PioOp.READ, "port"),
             (mm, -1, EventKind.MMIO, np.where(xop[mm] == MmioOp.WRITE, MmioOp.WRITE, MmioOp.UNSATISFIED_READ),
              "gpa"))
    paired = 0
    for sel, step, kind, want, key in cases:
        sel = np.flatnonzero(sel)
        nb, ok = order.neighbours(rows, at[sel], step)
        col = ev[key].to_numpy()
        ok &= (k[nb] == kind) & (op[nb] == want) & (col[nb] == col[x[sel]])
        to_vmm[nb[ok].astype(np.intp)] = True  # a scatter is quicker through intp
        paired += int(ok.sum())
    return Pairing(to_vmm, len(x) - paired)


def _paired(ev: pd.DataFrame, pairing: Pairing | None,
            completions: np.ndarray | None) -> tuple[Pairing, np.ndarray]:
    """``pairing`` and ``completions``, each computed (on one thread order) unless given."""
    if pairing is None or completions is None:
        order = ThreadOrder.of(ev)
        if completions is None:
            completions = mmio_completions(ev, order)
        if pairing is None:
            pairing = pair_userspace(ev, completions, order)
    return pairing, completions


def _is_aggregate(ev: pd.DataFrame) -> bool:
    return bool(((ev["kind"].to_numpy() & AGGREGATE) != 0).any())


def _io_rows(keys: list[np.ndarray], names: list[str], user: np.ndarray, w: np.ndarray,
             directions: np.ndarray) -> pd.DataFrame:
    """Rows (names..., userspace, count) from per-access arrays; direction 1 = write."""
    (*vals, d, u), counts = _group_sum([*keys, directions, user], w)
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
    sel = np.flatnonzero(k == EventKind.PIO)
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
        # Rows counted per page (the kernel's exact-address table was full) stay apart from addresses.
        page = (ev["flags"].to_numpy() & int(EventFlag.MMIO_PAGE)) != 0
        if not page.any():
            keys, d, u, n = _split_user(k, w, ev, EventKind.MMIO, ["gpa", "size"], MmioOp.WRITE)
            return _io_rows(keys, ["gpa", "len"], u, n, d)
        ev = pd.DataFrame({"gpa": ev["gpa"], "size": ev["size"], "op": ev["op"], "reason": ev["reason"],
                           "err": ev["err"], "flags": ev["flags"], "per_page": page.astype(np.uint8)})
        keys, d, u, n = _split_user(k, w, ev, EventKind.MMIO, ["gpa", "size", "per_page"], MmioOp.WRITE)
        df = _io_rows(keys, ["gpa", "len", "per_page"], u, n, d)
        return df.astype({"per_page": bool})
    pairing, completions = _paired(ev, pairing, completions)
    sel = np.flatnonzero((k == EventKind.MMIO) & ~completions)
    return _io_rows([ev["gpa"].to_numpy()[sel], ev["size"].to_numpy()[sel]], ["gpa", "len"],
                    pairing.to_vmm[sel], w[sel], ev["op"].to_numpy()[sel] == MmioOp.WRITE)


def summarize(ev: pd.DataFrame, names: ExitNames, duration_s: float, pairing: Pairing | None = None,
              completions: np.ndarray | None = None, io: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> Summary:
    """Every table of the report. ``pairing`` and ``completions``, when the
    caller has them already (Trace keeps them), are not computed again;
    nor are the port I/O and MMIO tables when ``io`` gives them (Trace
    derives them from its rows by device and handler)."""
    ev = weighted(ev)  # kinds and weights once, for every table
    k, w = kinds_and_weights(ev)
    u = np.flatnonzero(k == EventKind.USERSPACE_EXIT)
    err = ev["err"].to_numpy()[u]
    known = bool(((ev["flags"].to_numpy()[u] & int(EventFlag.RUN_FIELDS)) != 0).any()) if len(u) else True
    aggregate = _is_aggregate(ev)
    if not aggregate:
        pairing, completions = _paired(ev, pairing, completions)
    return Summary(
        duration_s=duration_s,
        userspace_exits=userspace_exits(ev, names, duration_s),
        exits=hardware_exits(ev, names, duration_s),
        pio=port_io(ev, pairing) if io is None else io[0],
        mmio=mmio(ev, pairing, completions) if io is None else io[1],
        interrupted_runs=int(w[u[err == -EINTR]].sum()),
        failed_runs=int(w[u[(err < 0) & (err != -EINTR)]].sum()),
        userspace_fields_known=known,
        unpaired_userspace_io=0 if aggregate else pairing.unpaired_exits,
    )


def service_times(ev: pd.DataFrame, order: ThreadOrder | None = None) -> pd.DataFrame:
    """Every real userspace exit with the VMM's service time, on numpy arrays.

    Service time: from kvm_userspace_exit to the same thread's next
    KVM_RUN ioctl; -1 when another userspace exit or the recording's end
    comes first. The same pairing as analysis.runloop.userspace_runs, with
    only what the latency tables need. Columns: tid (uint32), code (uint32
    KVM_EXIT_*), port (uint32), gpa (uint64), direction (category
    ""/read/write, from the kvm_run fields), service_ns (int64). Rows in
    thread order (``order``, the frame's, when the caller has it). Index "run".
    """
    k = ev["kind"].to_numpy()
    uexit = (k == EventKind.USERSPACE_EXIT) & (ev["err"].to_numpy() >= 0)
    if order is None:
        order = ThreadOrder.of(ev)
    rows = order.rows(uexit | (k == EventKind.RUN))
    at = np.flatnonzero(uexit[rows])
    r, run = order.neighbours(rows, at, 1)
    run &= k[r] == EventKind.RUN
    u = rows[at]
    del rows, at
    ts = ev["ts_ns"].to_numpy()
    service = np.where(run, ts[r].astype(np.int64) - ts[u].astype(np.int64), -1)
    code = ev["reason"].to_numpy()[u]
    op = ev["op"].to_numpy()[u]
    known = (ev["flags"].to_numpy()[u] & int(EventFlag.RUN_FIELDS)) != 0
    write = np.where(code == KvmExit.IO, op == 1, op == MmioOp.WRITE)
    direction = np.where(known & ((code == KvmExit.IO) | (code == KvmExit.MMIO)), np.where(write, 2, 1), 0)
    df = pd.DataFrame({
        "tid": ev["tid"].to_numpy()[u].astype(np.uint32, copy=False), "code": code.astype(np.uint32, copy=False),
        "port": ev["port"].to_numpy()[u].astype(np.uint32, copy=False),
        "gpa": ev["gpa"].to_numpy()[u].astype(np.uint64, copy=False),
        "direction": pd.Categorical.from_codes(direction.astype(np.int8), categories=["", "read", "write"]),
        "service_ns": service,
    }, copy=False)
    df.index.name = "run"
    return df
