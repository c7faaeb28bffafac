"""The vCPU run loop, exit by exit: pure pandas/numpy on a trace's events.

On one vCPU thread KVM's run loop traces, in this order::

    kvm_exit -> (kvm_pio | kvm_mmio)* -> [kvm_userspace_exit -> KVM_RUN] -> kvm_entry

A PIO write is traced before the userspace exit; a PIO read handed to the
VMM is traced on completion, after KVM_RUN; an MMIO read the VMM answers is
traced twice ("unsatisfied-read", then "read" after KVM_RUN) and is one
access.  A ``kvm_userspace_exit`` with a negative errno (KVM_RUN returning
-EINTR, "restart") is not an exit: the thread simply calls KVM_RUN again.

:func:`correlate` gives one row per hardware exit (needs ``kvm:kvm_exit``;
``kvm:kvm_entry`` for the handling time), :func:`userspace_runs` one row per
return to the VMM (needs only ``kvm:kvm_userspace_exit`` and the KVM_RUN
ioctl, so it works where kvm_exit/kvm_entry do not fire), and
:func:`unpaired` counts the events at a recording's edges (or lost ones) that
pair with nothing: they are counted, never silently dropped.

Threads are told apart by (pid, tid), so two guests whose vCPU ids and
timestamps interleave stay apart.  Events of a thread are taken in
timestamp order, ties in file order.  Everything is vectorised: the cost is
a few sorts of the event columns, whatever the number of events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kvmtrace.kernel.events import NO_VCPU, EventFlag, EventKind, MmioOp, PioOp
from kvmtrace.tables.exits import VMX_BASIC_MASK, Isa, KvmExit, VmxExitFlag
from kvmtrace.analysis.requirements import require_events
from kvmtrace.analysis.summary import ThreadOrder, mmio_completions
from kvmtrace.analysis.threadview import ThreadView, UexitRun

__all__ = [
    "ACCESSES",
    "CORRELATE_COLUMNS",
    "DIRECTIONS",
    "HANDLED",
    "ISAS",
    "UNPAIRED_KEYS",
    "USERSPACE_RUNS_COLUMNS",
    "correlate",
    "unpaired",
    "userspace_runs",
]

#: Categories of the ``handled`` column of :func:`correlate`.
HANDLED = ("kernel", "userspace", "unknown")
#: Categories of the ``access`` column of :func:`correlate`.
ACCESSES = ("none", "pio", "mmio")
#: Categories of the ``direction`` columns ("" when there is no access).
DIRECTIONS = ("", "read", "write")
#: Categories of the ``isa`` column, indexed by the kvm_exit ``isa`` value.
ISAS = tuple(i.name for i in sorted(Isa))  # ("UNKNOWN", "VMX", "SVM")

#: Column -> dtype of :func:`correlate` (index "exit", int64).
CORRELATE_COLUMNS: dict[str, str] = {
    "ts_ns": "int64",
    "pid": "uint32",
    "tid": "uint32",
    "vcpu": "uint32",
    "isa": "category",
    "code": "uint32",
    "failed_vmentry": "bool",
    "handled": "category",
    "to_userspace": "bool",
    "userspace_reason": "uint32",
    "access": "category",
    "port": "uint32",
    "size": "uint32",
    "count": "uint32",
    "direction": "category",
    "gpa": "uint64",
    "len": "uint32",
    "entry_ts_ns": "int64",
    "handling_ns": "int64",
    "service_ns": "int64",
}

#: Column -> dtype of :func:`userspace_runs` (index "run", int64).
USERSPACE_RUNS_COLUMNS: dict[str, str] = {
    "ts_ns": "int64",
    "pid": "uint32",
    "tid": "uint32",
    "vcpu": "uint32",
    "code": "uint32",
    "fields_known": "bool",
    "port": "uint32",
    "size": "uint32",
    "count": "uint32",
    "direction": "category",
    "gpa": "uint64",
    "len": "uint32",
    "run_ts_ns": "int64",
    "service_ns": "int64",
    "member": "category",
    "values": "category",
}

#: What works where kvm_exit does not fire (nested hosts), as the refusals say it.
WITHOUT_KVM_EXIT = "userspace_runs and vmm_service need only kvm_userspace_exit and KVM_RUN"

#: Keys of :func:`unpaired`.
UNPAIRED_KEYS = (
    "exit_without_entry",
    "entry_without_exit",
    "userspace_exit_without_run",
    "restart_without_run",
    "run_without_userspace_exit",
    "userspace_exit_without_exit",
    "access_without_exit",
)

_EXIT = int(EventKind.EXIT)
_ENTRY = int(EventKind.ENTRY)
_PIO = int(EventKind.PIO)
_MMIO = int(EventKind.MMIO)
_UEXIT = int(EventKind.USERSPACE_EXIT)
_RUN = int(EventKind.RUN)
_FAILED_VMENTRY = int(VmxExitFlag.FAILED_VMENTRY)
_SVM_EXIT_ERR = 0xFFFF_FFFF  # SVM_EXIT_ERR (-1) in the u32 reason column
_BASE_COLUMNS = ("ts_ns", "pid", "tid", "kind")


def _cat(codes: np.ndarray, categories: Iterable[str]) -> pd.Categorical:
    categories = list(categories)
    return pd.Categorical.from_codes(codes.astype(np.int8 if len(categories) < 128 else np.int32, copy=False),
                                     categories=categories)


def _check_columns(ev: pd.DataFrame, needed: Iterable[str], analysis: str) -> None:
    missing = [c for c in (*_BASE_COLUMNS, *needed) if c not in ev.columns]
    if missing:
        raise ValueError(
            f"{analysis} needs the event columns {', '.join(missing)}, which this frame lacks: "
            "pass the events frame of a trace (kvmtrace.trace.Trace.events, columns of kvmtrace.kernel.events.EVENT_DTYPE)"
        )


@dataclass
class _Segments:
    """Each kvm_exit and the events that belong to it, in sorted positions."""

    exit_pos: np.ndarray  # sorted position of each kvm_exit
    entry_pos: np.ndarray  # its kvm_entry, -1 if none
    uexit_pos: np.ndarray  # the real userspace exit it caused, -1 if none
    access_pos: np.ndarray  # the (first) PIO/MMIO access it carried, -1 if none
    unpaired: dict[str, int]


def _first_per_segment(pos: np.ndarray, seg: np.ndarray, n_seg: int) -> tuple[np.ndarray, np.ndarray]:
    """For positions ``pos`` (sorted) in segments ``seg``: the first per segment, and the mask of firsts."""
    first = np.ones(len(pos), dtype=bool)
    first[1:] = seg[1:] != seg[:-1]
    out = np.full(n_seg, -1, dtype=np.int64)
    out[seg[first]] = pos[first]
    return out, first


def _segments(s: ThreadView) -> _Segments:
    """Split every thread at its kvm_exit events and attach entry, userspace exit and access."""
    k = s.kind
    is_exit = k == _EXIT
    exit_pos = np.flatnonzero(is_exit)
    n_exit = len(exit_pos)
    thr = s.thr
    thread_has_exit = np.zeros(len(s.thread_pid), dtype=bool)
    thread_has_exit[thr[exit_pos]] = True

    # seg: the last kvm_exit at or before each event, if on the same thread.
    seg = np.cumsum(is_exit, dtype=np.int64) - 1
    if n_exit:
        valid = (seg >= 0) & (thr[exit_pos[np.maximum(seg, 0)]] == thr)
    else:
        valid = np.zeros(s.n, dtype=bool)

    # The first kvm_entry after each exit closes it; other entries pair with nothing.
    ent = np.flatnonzero(k == _ENTRY)
    ent_v = ent[valid[ent]]
    entry_pos, first = _first_per_segment(ent_v, seg[ent_v], n_exit)
    entry_without_exit = len(ent) - int(first.sum())

    def inside(pos: np.ndarray) -> np.ndarray:
        """Mask: the event at ``pos`` falls between an exit and that exit's entry."""
        ok = valid[pos]
        e = entry_pos[seg[pos[ok]]]
        ok[ok] = (e < 0) | (pos[ok] < e)
        return ok

    # The first real (errno >= 0) userspace exit inside each exit.
    real = s.real_uexits
    m = inside(real)
    uexit_pos, first = _first_per_segment(real[m], seg[real[m]], n_exit)
    stray = np.ones(len(real), dtype=bool)
    stray[np.flatnonzero(m)[first]] = False
    userspace_exit_without_exit = int((stray & thread_has_exit[thr[real]]).sum())

    # Accesses: kvm_pio, and kvm_mmio without the "read" completing an unsatisfied-read.
    is_acc = ((k == _PIO) | (k == _MMIO)) & ~mmio_completions(s.ev, s.threads)[s.order]
    acc = np.flatnonzero(is_acc)
    m = inside(acc)
    access_pos, first = _first_per_segment(acc[m], seg[acc[m]], n_exit)
    stray = np.ones(len(acc), dtype=bool)
    stray[np.flatnonzero(m)[first]] = False
    access_without_exit = int((stray & thread_has_exit[thr[acc]]).sum())

    counts = {
        "exit_without_entry": int((entry_pos < 0).sum()),
        "entry_without_exit": entry_without_exit,
        "userspace_exit_without_exit": userspace_exit_without_exit,
        "access_without_exit": access_without_exit,
    }
    return _Segments(exit_pos, entry_pos, uexit_pos, access_pos, counts)


def correlate(events: pd.DataFrame, order: ThreadOrder | None = None) -> pd.DataFrame:
    """One row per hardware exit (``kvm:kvm_exit``), with what handled it and how long it took.

    Rows are in time order (``ts_ns``, ties by thread); the index is named
    ``exit`` (int64, 0..n-1).  Columns and dtypes (:data:`CORRELATE_COLUMNS`):

    ============== ======== =====================================================
    ts_ns          int64    kvm_exit time (CLOCK_MONOTONIC ns)
    pid, tid       uint32   the VMM process and vCPU thread
    vcpu           uint32   vCPU id (kvm_exit's, else the thread's kvm_entry's,
                            else NO_VCPU = 0xFFFFFFFF)
    isa            category "UNKNOWN", "VMX", "SVM" (kvm_exit's isa field)
    code           uint32   basic exit reason: VMX flag bits masked off (low 16
                            bits); SVM and unknown-ISA codes as recorded
    failed_vmentry bool     VMX FAILED_VMENTRY (bit 31) set, or SVM_EXIT_ERR
                            (VMRUN failed on invalid guest state)
    handled        category "userspace": a real userspace exit came before the
                            entry; "kernel": the entry came with none;
                            "unknown": neither (trace end, or entry lost)
    to_userspace   bool     handled == "userspace"
    userspace_reason uint32 its KVM_EXIT_* code, 0 if none
    access         category "pio", "mmio" or "none": the first kvm_pio /
                            kvm_mmio between exit and entry (an MMIO read the
                            VMM answers is one access, its unsatisfied read)
    port, size, count uint32 of a PIO access, else 0
    direction      category "read", "write", or "" with no access
    gpa            uint64   of an MMIO access, else 0
    len            uint32   of an MMIO access, else 0
    entry_ts_ns    int64    the kvm_entry that ended it, -1 if none
    handling_ns    int64    entry_ts_ns - ts_ns, -1 if no entry
    service_ns     int64    VMM service time, KVM_RUN.ts - kvm_userspace_exit.ts,
                            when it went to userspace and the VMM re-entered;
                            else -1
    ============== ======== =====================================================

    An exit's events are those on its thread after it and before its
    kvm_entry (or the thread's next kvm_exit).  A userspace exit with a
    negative errno (-EINTR "restart") is never attached.  What pairs with
    nothing is counted by :func:`unpaired`.

    Raises :class:`~kvmtrace.errors.MissingTraceEventError` when the frame
    has events but no kvm_exit (hosts where kvm_exit does not fire, e.g.
    nested hosts, or a recording without that probe): use
    :func:`userspace_runs` there.  Every function here raises it too for a
    counts-mode recording (aggregate and HIST rows), which holds no single
    events to pair.  ``order``: the frame's thread order (summary.ThreadOrder),
    when the caller has it.
    """
    _check_columns(events, ("reason", "isa", "vcpu", "err", "op", "port", "size", "count", "gpa"), "correlate")
    require_events(events, (), "correlate")
    if len(events):
        require_events(events, [EventKind.EXIT], "correlate (hardware exit handling)", instead=WITHOUT_KVM_EXIT)
    s = ThreadView(events, order)
    seg = _segments(s)
    x = seg.exit_pos
    thr = s.thr[x]
    xr = s.rows(x)
    ts = xr.ts()
    reason = xr.get("reason").astype(np.uint32, copy=False)
    isa = xr.get("isa").astype(np.int64)
    isa = np.where((isa >= 0) & (isa < len(ISAS)), isa, int(Isa.UNKNOWN))
    vmx = isa == Isa.VMX
    code = np.where(vmx, reason & VMX_BASIC_MASK, reason)
    failed = (vmx & ((reason & _FAILED_VMENTRY) != 0)) | ((isa == Isa.SVM) & (reason == _SVM_EXIT_ERR))
    vcpu = xr.get("vcpu")
    vcpu = np.where(vcpu == NO_VCPU, s.thread_vcpu[thr], vcpu)

    has_entry = seg.entry_pos >= 0
    entry_ts = s.ts(seg.entry_pos)
    handling = np.where(has_entry, entry_ts - ts, -1)

    up = seg.uexit_pos
    to_user = up >= 0
    ur = s.rows(up)
    ureason = ur.get("reason", missing=0)
    run = np.full(len(up), -1, dtype=np.int64)
    if to_user.any():
        run[to_user] = s.uexit_run.run_of(up[to_user])
    service = np.where(run >= 0, s.ts(run) - ur.ts(), -1)
    handled = np.where(to_user, 1, np.where(has_entry, 0, 2))

    ap = seg.access_pos
    ar = s.rows(ap)
    akind = ar.get("kind", missing=0)
    is_pio = akind == _PIO
    is_mmio = akind == _MMIO
    aop = ar.get("op")
    asize = ar.get("size")
    write = (is_pio & (aop == PioOp.WRITE)) | (is_mmio & (aop == MmioOp.WRITE))
    access = np.where(is_pio, 1, np.where(is_mmio, 2, 0))
    direction = np.where(ap >= 0, np.where(write, 2, 1), 0)

    order = np.argsort(ts, kind="stable")
    cols = {
        "ts_ns": ts,
        "pid": s.thread_pid[thr],
        "tid": s.thread_tid[thr],
        "vcpu": vcpu,
        "isa": isa,
        "code": code,
        "failed_vmentry": failed,
        "handled": handled,
        "to_userspace": to_user,
        "userspace_reason": ureason,
        "access": access,
        "port": np.where(is_pio, ar.get("port"), 0),
        "size": np.where(is_pio, asize, 0),
        "count": np.where(is_pio, ar.get("count"), 0),
        "direction": direction,
        "gpa": np.where(is_mmio, ar.get("gpa"), np.uint64(0)),
        "len": np.where(is_mmio, asize, 0),
        "entry_ts_ns": entry_ts,
        "handling_ns": handling,
        "service_ns": service,
    }
    cats = {"isa": ISAS, "handled": HANDLED, "access": ACCESSES, "direction": DIRECTIONS}
    return _frame(cols, order, "exit", CORRELATE_COLUMNS, cats)


def _frame(cols: dict, order: np.ndarray, index_name: str, dtypes: Mapping[str, str],
           categories: Mapping[str, Iterable[str]]) -> pd.DataFrame:
    """The frame of ``cols`` in row ``order``; category columns are given as codes into ``categories``."""
    out = {}
    for name, dtype in dtypes.items():
        a = np.asarray(cols[name])[order]
        if name in categories:
            out[name] = _cat(a, categories[name])
        else:
            out[name] = a.astype(dtype, copy=False)
    # Fresh arrays: no need for pandas to copy them into consolidated blocks.
    return pd.DataFrame(out, index=pd.RangeIndex(len(order), name=index_name), copy=False)


def _domain_vcpus(domains: Iterable[Mapping] | None) -> dict[tuple[int, int], int]:
    """(pid, tid) -> vCPU from a trace header's ``domains`` (their ``vcpu_threads``: {vcpu: tid})."""
    found = {}
    for dom in domains or ():
        pid = int(dom.get("pid") or 0)
        for vcpu, tid in (dom.get("vcpu_threads") or {}).items():
            found[(pid, int(tid))] = int(vcpu)
    return found


def userspace_runs(events: pd.DataFrame, domains: Iterable[Mapping] | None = None,
                   order: ThreadOrder | None = None) -> pd.DataFrame:
    """One row per real return to the VMM (``kvm_userspace_exit`` with errno >= 0).

    Needs only kvm_userspace_exit and the KVM_RUN ioctl events, so it works
    on hosts where kvm_exit/kvm_entry do not fire.  Rows are in time order;
    the index is named ``run`` (int64, 0..n-1).  Columns and dtypes
    (:data:`USERSPACE_RUNS_COLUMNS`):

    ============ ======== =======================================================
    ts_ns        int64    kvm_userspace_exit time (ns)
    pid, tid     uint32   the VMM process and vCPU thread
    vcpu         uint32   the event's own vCPU id, else the thread's kvm_exit /
                          kvm_entry vCPU, else ``domains``' vcpu_threads, else
                          NO_VCPU (0xFFFFFFFF)
    code         uint32   KVM_EXIT_* reason
    fields_known bool     the kvm_run union was read (EventFlag.RUN_FIELDS)
    port, size, count uint32 kvm_run.io of a KVM_EXIT_IO, else 0
    direction    category KVM_EXIT_IO: "read" (in) / "write" (out); KVM_EXIT_MMIO:
                          "read" / "write" (is_write); "" otherwise or unknown
    gpa          uint64   kvm_run.mmio.phys_addr of a KVM_EXIT_MMIO, else 0
    len          uint32   kvm_run.mmio.len of a KVM_EXIT_MMIO, else 0
    run_ts_ns    int64    the thread's next KVM_RUN, -1 if another userspace
                          exit or the end of the trace comes first
    service_ns   int64    run_ts_ns - ts_ns (the VMM's service time), -1 if none
    member       category the kvm_run member read ("io", "mmio", "internal",
                          "emulation_failure", "system_event", ...; "" if none)
    values       category that member's decoded values for exits other than
                          IO/MMIO ("suberror=1 (EMULATION), ndata=8, ..."; see
                          tables.exits.runfields), "" otherwise
    ============ ======== =======================================================

    ``domains`` is the trace header's ``domains`` list (``Trace.domains``),
    used only to name the vCPU of threads without kvm_exit/kvm_entry events;
    ``order`` is the frame's thread order, when the caller has it.
    """
    _check_columns(events, ("reason", "vcpu", "err", "op", "port", "size", "count", "gpa", "flags"), "userspace_runs")
    require_events(events, (), "userspace_runs")
    s = ThreadView(events, order)
    u = s.real_uexits
    thr = s.thr[u]
    rr = s.rows(u)
    ts = rr.ts()
    run = s.uexit_run.run_of(u) if len(u) else u.astype(np.int64)
    run_ts = s.ts(run)
    service = np.where(run >= 0, run_ts - ts, -1)

    vcpu = rr.get("vcpu")
    vcpu = np.where(vcpu == NO_VCPU, s.thread_vcpu[thr], vcpu)
    dom = _domain_vcpus(domains)
    if dom:
        # One lookup per thread, not per event.
        tv = np.array([dom.get((int(p), int(t)), NO_VCPU) for p, t in zip(s.thread_pid, s.thread_tid)],
                      dtype=np.uint32)
        vcpu = np.where(vcpu == NO_VCPU, tv[thr], vcpu)

    code = rr.get("reason")
    known = (rr.get("flags") & int(EventFlag.RUN_FIELDS)) != 0
    is_io = known & (code == KvmExit.IO)
    is_mmio = known & (code == KvmExit.MMIO)
    op = rr.get("op")
    size = rr.get("size")
    # kvm_run.io.direction: KVM_EXIT_IO_IN 0, KVM_EXIT_IO_OUT 1; mmio: op 2 if is_write.
    write = (is_io & (op == 1)) | (is_mmio & (op == MmioOp.WRITE))
    direction = np.where(is_io | is_mmio, np.where(write, 2, 1), 0)
    order = np.argsort(ts, kind="stable")
    cols = {
        "ts_ns": ts,
        "pid": s.thread_pid[thr],
        "tid": s.thread_tid[thr],
        "vcpu": vcpu,
        "code": code,
        "fields_known": known,
        "port": np.where(is_io, rr.get("port"), 0),
        "size": np.where(is_io, size, 0),
        "count": np.where(is_io, rr.get("count"), 0),
        "direction": direction,
        "gpa": np.where(is_mmio, rr.get("gpa"), np.uint64(0)),
        "len": np.where(is_mmio, size, 0),
        "run_ts_ns": run_ts,
        "service_ns": service,
    }
    member, values, cats = _member_values(rr, code, known, is_io, is_mmio)
    cols.update(member=member, values=values)
    return _frame(cols, order, "run", USERSPACE_RUNS_COLUMNS, {"direction": DIRECTIONS, **cats})


def _member_values(rr, code: np.ndarray, known: np.ndarray, is_io: np.ndarray,
                   is_mmio: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Codes of the member and values columns of userspace_runs, and their categories."""
    from kvmtrace.kernel.events import RUN_UNION_BYTES, RUN_UNION_COLUMNS
    from kvmtrace.tables.exits.runfields import decode, describe

    members, texts = ["", "io", "mmio"], [""]
    member = np.where(is_io, 1, np.where(is_mmio, 2, 0))
    values = np.zeros(len(code), dtype=np.int64)
    union = known & ((rr.get("flags") & int(EventFlag.RUN_UNION)) != 0)
    rows = np.flatnonzero(union)
    if len(rows) and all(c in rr.s.ev.columns for c in RUN_UNION_COLUMNS):
        keys = pd.DataFrame({"code": code[rows], **{c: rr.get(c)[rows] for c in RUN_UNION_COLUMNS}})
        group, distinct = pd.MultiIndex.from_frame(keys).factorize()
        m_of, t_of = [], []
        for c, *words in distinct:
            m, v = decode(int(c), [int(w) for w in words], RUN_UNION_BYTES)
            if m not in members:
                members.append(m)
            t = describe(v)
            if t not in texts:
                texts.append(t)
            m_of.append(members.index(m))
            t_of.append(texts.index(t))
        member[rows] = np.asarray(m_of)[group]
        values[rows] = np.asarray(t_of)[group]
    return member, values, {"member": members, "values": texts}


def unpaired(events: pd.DataFrame, order: ThreadOrder | None = None) -> dict[str, int]:
    """Events that pair with nothing, counted by what is missing (:data:`UNPAIRED_KEYS`).

    * ``exit_without_entry``: kvm_exit with no kvm_entry before the thread's
      next kvm_exit (the last exit of a recording, or a lost entry);
    * ``entry_without_exit``: kvm_entry with no kvm_exit since the thread's
      previous entry (the first entry of a recording, or a lost exit);
    * ``userspace_exit_without_run``: real userspace exit (errno >= 0) not
      followed by KVM_RUN before the thread's next userspace exit or the end;
    * ``restart_without_run``: the same for -EINTR/error returns of KVM_RUN;
    * ``run_without_userspace_exit``: KVM_RUN with no userspace exit since the
      thread's previous KVM_RUN (a vCPU's first KVM_RUN, or a lost event);
    * ``userspace_exit_without_exit`` / ``access_without_exit``: on threads
      that have kvm_exit events, a real userspace exit / a kvm_pio or kvm_mmio
      access not attached to an exit by :func:`correlate` (before the first
      exit, after an entry, or a second one inside the same exit).  Threads
      without kvm_exit events (hosts where it does not fire) count 0 here.

    ``order``: the frame's thread order (summary.ThreadOrder), when the
    caller has it.  Without kvm_exit events only the userspace exits and
    KVM_RUN calls are looked at, in that order, with no per-event sort.
    """
    _check_columns(events, ("err", "op", "gpa"), "unpaired")
    require_events(events, (), "unpaired")
    if order is None:
        order = ThreadOrder.of(events)
    k = events["kind"].to_numpy()
    out = dict.fromkeys(UNPAIRED_KEYS, 0)
    if (k == _EXIT).any():
        out.update(_segments(ThreadView(events, order)).unpaired)
    else:  # nothing to attach to: every entry is unpaired, no thread has exits
        out["entry_without_exit"] = int((k == _ENTRY).sum())
    rows = order.rows((k == _UEXIT) | (k == _RUN))
    ur = UexitRun.of(rows, k[rows], order.next_on_thread(rows))
    err = events["err"].to_numpy()[rows]
    is_uexit = ur.kind == _UEXIT
    out["userspace_exit_without_run"] = int((is_uexit & (err >= 0) & ~ur.pair).sum())
    out["restart_without_run"] = int((is_uexit & (err < 0) & ~ur.pair).sum())
    out["run_without_userspace_exit"] = ur.run_without_uexit()
    return out
