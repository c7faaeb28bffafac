"""The scheduler's lines and the KVM_RUN edge of kvm_fpu: what vcpu_time needs from a text trace.

``sched_switch``, ``sched_wakeup`` and ``sched_wakeup_new`` become the rows
the live sched probes write (kernel/bpf/sched.bpf.h):

* a switch gives SCHED_SWITCH ``op`` OUT for ``prev`` (``reason`` its
  ``prev_state`` as the raw ``task_struct.__state`` number, PREEMPT in
  ``flags`` when the text marks the switch a preemption, ``R+``) and
  SCHED_SWITCH ``op`` IN for ``next``;
* a wakeup gives WAKEUP of the woken task, ``op`` 0 (``sched_wakeup``) or 1
  (``sched_wakeup_new``), as the probe does.

The line's CPU column is the row's ``cpu``; ``tid`` is the task the body
names (``prev_pid``, ``next_pid``, ``pid``); ``pid`` is the process the
import knows that thread by (its kvm lines), set when the trace is written.
Only vCPU threads are kept, as the live probes filter in the kernel: the
threads that have run-loop lines anywhere in the text (kvm_exit, kvm_entry,
kvm_pio, kvm_mmio, kvm_userspace_exit, a RUN edge).  Since a thread's first
kvm line may come after its first switch, every side is spilled in order
with the other events and :func:`keep_vcpu_rows` drops the rest at the end.
Sides of the idle task (pid 0) are never vCPU threads and are not kept at all.

Text shapes read (the body after ``EVENT:``; perf script prints one of the two)::

    prev_comm=C prev_pid=P prev_prio=N prev_state=S ==> next_comm=C next_pid=P next_prio=N
    C:P [N] S ==> C:P [N]                            (trace-cmd's sched plugin)
    comm=C pid=P prio=N [success=1 ]target_cpu=019
    C:P [N] [success=1 ]CPU:019                      (trace-cmd's sched plugin)

``prev_state``: the kernel prints letters (``include/trace/events/sched.h``:
``S``, ``D``, ``T``, ``t``, ``X``, ``Z``, ``P``, ``I`` joined by ``|``, ``R``
for none, ``+`` after the state of a preempted task); the live probe stores
the raw ``prev_state`` number.  A letter becomes the TASK_* bit of its name
in ``include/linux/sched.h`` (:data:`STATE_BITS`): R is 0 (TASK_RUNNING).
``R+`` is 0 with PREEMPT.  vcpu_time reads only "0 or PREEMPT: runnable,
anything else: asleep", which every era's letters give right; the exact bit
of a rare letter is not (Linux < 4.14 printed more letters, ``x K W N``, and
trace-cmd's classic plugin names the bits of the report mask ``SDTtZXxW``,
so its ``Z``/``X`` are swapped and ``x``/``W`` mean P/I: each letter here is
taken by its kernel name).  trace-cmd's classic plugin prints a preemption as
plain ``R`` (its letters stop below TASK_REPORT_MAX): 0 without PREEMPT, still
runnable.

``kvm_fpu``: KVM loads the guest FPU at the start of every KVM_RUN (``load``)
and puts it back before returning (``unload``): a load is kvmtrace's live
RUN edge.  It loads it outside KVM_RUN too (KVM_GET_MP_STATE, ...), which the
live probe tells apart by the syscall; text can do the same only where it
holds the thread's ``sys_enter_ioctl`` lines.  So a thread's RUN edge comes
from ``sys_enter_ioctl`` KVM_RUN once the thread has any ``sys_enter_ioctl``
line (its loads are then folded: inside a KVM_RUN ioctl or outside one), and
from each ``kvm_fpu load`` otherwise: one RUN per KVM_RUN either way.

Importing this module has no side effects.
"""

from __future__ import annotations

import re

import numpy as np

from kvmtrace.importer.rows import _HANDLERS, _other
from kvmtrace.kernel.events import EventFlag, EventKind, SchedOp

__all__ = ["HANDLERS", "SCHED_EVENTS", "STATE_BITS", "keep_vcpu_rows", "prev_state"]

_SWITCH_K, _WAKEUP_K, _RUN_K = int(EventKind.SCHED_SWITCH), int(EventKind.WAKEUP), int(EventKind.RUN)
_OUT, _IN = int(SchedOp.OUT), int(SchedOp.IN)
_PREEMPT = int(EventFlag.PREEMPT)
_FOLDED = "folded"  # a read line that adds no row of its own (counted in st.folded)

#: The events of this module whose rows are kept for vCPU threads only.
SCHED_EVENTS = ("sched_switch", "sched_wakeup", "sched_wakeup_new")

#: prev_state letter -> the TASK_* value of its name (include/linux/sched.h, Linux 6.x).
STATE_BITS = {
    "S": 0x0001,  # TASK_INTERRUPTIBLE
    "D": 0x0002,  # TASK_UNINTERRUPTIBLE
    "T": 0x0004,  # __TASK_STOPPED
    "t": 0x0008,  # __TASK_TRACED
    "X": 0x0010,  # EXIT_DEAD
    "Z": 0x0020,  # EXIT_ZOMBIE
    "P": 0x0040,  # TASK_PARKED
    "I": 0x0402,  # TASK_IDLE = TASK_UNINTERRUPTIBLE | TASK_NOLOAD
    # Linux < 4.14 printed these too.
    "x": 0x0080,  # TASK_DEAD
    "K": 0x0100,  # TASK_WAKEKILL
    "W": 0x0200,  # TASK_WAKING
    "N": 0x0400,  # TASK_NOLOAD
}

_SWITCH_KV = re.compile(
    r"prev_comm=.*? prev_pid=(\d+) prev_prio=-?\d+ prev_state=(\S+) ==> "
    r"next_comm=.*? next_pid=(\d+) next_prio=-?\d+\s*")
_SWITCH_PLUGIN = re.compile(r".*?:(\d+) \[-?\d+\] (\S+) ==> .*?:(\d+) \[-?\d+\]\s*")
_WAKEUP_KV = re.compile(r"comm=.*? pid=(\d+) prio=-?\d+(?: success=\d+)?(?: target_cpu=\d+)?\s*")
_WAKEUP_PLUGIN = re.compile(r".*?:(\d+) \[-?\d+\](?: success=\d+)?(?: CPU:\d+)?\s*")
_FPU = re.compile(r"(load|unload)\s*")


def prev_state(text: str) -> tuple[int, int] | None:
    """(reason, flags) of a printed prev_state (``R``, ``R+``, ``S``, ``D|K``); None if unreadable."""
    flags = 0
    if text.endswith("+"):
        text, flags = text[:-1], _PREEMPT
    if text == "R":
        return 0, flags
    value = 0
    for letter in text.split("|"):
        bit = STATE_BITS.get(letter)
        if bit is None:
            return None
        value |= bit
    return value, flags


def _h_switch(line, pos, ts, tid, pid, cpu, st):
    m = _SWITCH_KV.fullmatch(line, pos) or _SWITCH_PLUGIN.fullmatch(line, pos)
    if m is None:
        return None
    prev, state, nxt = m.groups()
    read = prev_state(state)
    if read is None:
        return None
    st.sched_lines["sched_switch"] = st.sched_lines.get("sched_switch", 0) + 1
    prev, nxt = int(prev), int(nxt)
    if prev:  # the idle task is no vCPU thread
        _other(st, ts, prev, prev, cpu, _SWITCH_K, reason=read[0], op=_OUT, flags=read[1])
    if nxt:
        _other(st, ts, nxt, nxt, cpu, _SWITCH_K, op=_IN)
    return True


def _wakeup(op: int, name: str):
    def handler(line, pos, ts, tid, pid, cpu, st):
        m = _WAKEUP_KV.fullmatch(line, pos) or _WAKEUP_PLUGIN.fullmatch(line, pos)
        if m is None:
            return None
        st.sched_lines[name] = st.sched_lines.get(name, 0) + 1
        woken = int(m.group(1))
        if woken:
            _other(st, ts, woken, woken, cpu, _WAKEUP_K, op=op)
        return True
    return handler


def _h_fpu(line, pos, ts, tid, pid, cpu, st):
    m = _FPU.fullmatch(line, pos)
    if m is None:
        return None
    if m.group(1) == "unload":
        what = "kvm_fpu unload (KVM_RUN returning: kvm_userspace_exit is the edge)"
    elif tid in st.ioctl_tids:
        what = ("kvm_fpu load inside a KVM_RUN ioctl (its sys_enter_ioctl is the edge)" if tid in st.in_ioctl_run
                else "kvm_fpu load outside KVM_RUN (another vCPU ioctl)")
    else:
        st.run_by["kvm_fpu"] = st.run_by.get("kvm_fpu", 0) + 1
        return _other(st, ts, tid, pid, cpu, _RUN_K)
    st.folded[what] = st.folded.get(what, 0) + 1
    return _FOLDED


#: Every event an import reads: rows' handlers and this module's.
HANDLERS = {
    **_HANDLERS,
    "kvm_fpu": _h_fpu,
    "sched_switch": _h_switch,
    "sched_wakeup": _wakeup(0, "sched_wakeup"),
    "sched_wakeup_new": _wakeup(1, "sched_wakeup_new"),
}


def candidates(out: np.ndarray, into: dict, last_op: dict[int, int], breaks: dict[int, int]) -> np.ndarray:
    """Tally a spilled batch's sched rows per (tid, kind, op) with their first and last
    timestamp into ``into``, and each thread's switches out of sequence (in after in, out
    after out: a switch line the text lacks) into ``breaks``, ``last_op`` carrying each
    thread's last switch across batches; returns the mask of the batch's other rows."""
    kind = out["kind"]
    sched = (kind == _SWITCH_K) | (kind == _WAKEUP_K)
    if sched.any():
        s = out[sched]
        _sequence(s[s["kind"] == _SWITCH_K], last_op, breaks)
        key = (s["tid"].astype(np.uint64) << np.uint64(16)) | (s["kind"].astype(np.uint64) << np.uint64(8)) | s["op"]
        uniq, inv = np.unique(key, return_inverse=True)
        ts = s["ts_ns"].astype(np.int64)
        n = np.bincount(inv)
        lo = np.full(len(uniq), np.iinfo(np.int64).max)
        hi = np.full(len(uniq), np.iinfo(np.int64).min)
        np.minimum.at(lo, inv, ts)
        np.maximum.at(hi, inv, ts)
        for k, c, a, b in zip(uniq.tolist(), n.tolist(), lo.tolist(), hi.tolist()):
            t = (k >> 16, (k >> 8) & 0xFF, k & 0xFF)
            old = into.get(t)
            into[t] = (c, a, b) if old is None else (old[0] + c, min(old[1], a), max(old[2], b))
    return ~sched


def _sequence(sw: np.ndarray, last_op: dict[int, int], breaks: dict[int, int]) -> None:
    if not len(sw):
        return
    order = np.argsort(sw["tid"], kind="stable")  # each thread's switches, in the text's order
    tid, op = sw["tid"][order].tolist(), sw["op"][order].tolist()
    for i, (t, o) in enumerate(zip(tid, op)):
        prev = last_op.get(t) if i == 0 or tid[i - 1] != t else op[i - 1]
        if prev == o:
            breaks[t] = breaks.get(t, 0) + 1
        last_op[t] = o


def kept_counts(cands: dict, vcpu_pid: dict[int, int]) -> tuple[dict[str, int], dict[str, int], int | None, int | None]:
    """(events kept per name, sides left out per name, first and last kept ts) of the sched candidates."""
    name = {(_SWITCH_K, _OUT): "sched_switch", (_SWITCH_K, _IN): "sched_switch",
            (_WAKEUP_K, 0): "sched_wakeup", (_WAKEUP_K, 1): "sched_wakeup_new"}
    kept: dict[str, int] = {}
    other: dict[str, int] = {}
    lo = hi = None
    for (tid, kind, op), (c, a, b) in cands.items():
        n = name[(kind, op)]
        if tid in vcpu_pid:
            kept[n] = kept.get(n, 0) + c
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
        else:
            other[n] = other.get(n, 0) + c
    order = {n: i for i, n in enumerate(SCHED_EVENTS)}
    return (dict(sorted(kept.items(), key=lambda kv: order[kv[0]])),
            dict(sorted(other.items(), key=lambda kv: order[kv[0]])), lo, hi)


def keep_vcpu_rows(batch: np.ndarray, vcpu_pid: dict[int, int]) -> np.ndarray:
    """The batch without the sched rows of threads that are not vCPU threads; the kept
    ones get the pid of their thread (``vcpu_pid``: tid -> pid)."""
    kind = batch["kind"]
    sched = (kind == _SWITCH_K) | (kind == _WAKEUP_K)
    if not sched.any():
        return batch
    tids = np.fromiter(vcpu_pid, dtype=np.uint32, count=len(vcpu_pid))
    pids = np.fromiter(vcpu_pid.values(), dtype=np.uint32, count=len(vcpu_pid))
    order = np.argsort(tids)
    tids, pids = tids[order], pids[order]
    t = batch["tid"]
    at = np.searchsorted(tids, t)
    hit = (at < len(tids)) & (tids[np.minimum(at, max(len(tids) - 1, 0))] == t) if len(tids) else np.zeros(len(t), bool)
    batch = batch[~sched | hit]
    kind = batch["kind"]
    sched = (kind == _SWITCH_K) | (kind == _WAKEUP_K)
    if sched.any():
        batch["pid"][sched] = pids[np.searchsorted(tids, batch["tid"][sched])]
    return batch
