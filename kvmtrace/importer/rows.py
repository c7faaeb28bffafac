"""Event bodies -> rows: one handler per event kvmtrace reads from text.

A handler matches the event's own text (from the end of the task part to the
end of the line) and appends the event to the current batch of the import's
state, or says why it did not (:data:`_SKIP`, :data:`_LEFT_OUT`, None for a
line nobody can read).  :data:`_HANDLERS` is also the list of events an
import reads.

Importing this module has no side effects.
"""

from __future__ import annotations

import numpy as np

from kvmtrace.kernel.events import KVM_RUN, NO_VCPU, EventFlag, EventKind, MmioOp, PioOp
from kvmtrace.importer.shapes import _ENTRY, _EXIT, _IOCTL, _MMIO, _PIO, _U32, _UEXIT, _read_reason

_PIO_OP = {"read": int(PioOp.READ), "write": int(PioOp.WRITE)}
_MMIO_OP = {"unsatisfied-read": int(MmioOp.UNSATISFIED_READ), "read": int(MmioOp.READ), "write": int(MmioOp.WRITE)}
_EINTR = 4

# Events are kept as tuples until a batch is full, then become EVENT_DTYPE
# records.  The two events of every exit, kvm_exit and kvm_entry, have narrow
# tuples of their own (numpy builds records from tuples at a cost per field);
# the rest have one wide shape.  The first field is the event's place in the batch.
_EXIT_ROW = np.dtype([
    ("seq", "<u4"), ("ts_ns", "<u8"), ("tid", "<u4"), ("pid", "<u4"), ("cpu", "<u4"), ("vcpu", "<u4"),
    ("reason", "<u4"), ("isa", "<u4"), ("rip", "<u8"), ("info1", "<u8"), ("info2", "<u8"),
    ("intr_info", "<u4"), ("error_code", "<u4"),
])
_ENTRY_ROW = np.dtype([
    ("seq", "<u4"), ("ts_ns", "<u8"), ("tid", "<u4"), ("pid", "<u4"), ("cpu", "<u4"), ("vcpu", "<u4"),
    ("rip", "<u8"), ("intr_info", "<u4"), ("error_code", "<u4"), ("flags", "u1"),
])
_OTHER_ROW = np.dtype([
    ("seq", "<u4"), ("ts_ns", "<u8"), ("tid", "<u4"), ("pid", "<u4"), ("cpu", "<u4"), ("kind", "u1"),
    ("reason", "<u4"), ("gpa", "<u8"), ("value", "<u8"), ("port", "<u4"), ("size", "<u4"),
    ("count", "<u4"), ("err", "<i4"), ("op", "u1"), ("flags", "u1"),
])
_EXIT_K, _ENTRY_K, _PIO_K, _MMIO_K, _UEXIT_K, _RUN_K = (
    int(EventKind.EXIT), int(EventKind.ENTRY), int(EventKind.PIO), int(EventKind.MMIO),
    int(EventKind.USERSPACE_EXIT), int(EventKind.RUN))
_IMMEDIATE = int(EventFlag.IMMEDIATE_EXIT)
_VALUE = int(EventFlag.VALUE)
# What a handler returns besides True (an event kept).
_SKIP = "skip"  # a line of a read event that kvmtrace does not store (an ioctl other than KVM_RUN)
_LEFT_OUT = "left out"  # an exit whose reason has no code: counted in undecodable_exits


def _h_exit(line, pos, ts, tid, pid, cpu, st):
    m = _EXIT.fullmatch(line, pos)
    if m is None:
        return None
    vcpu, text, rip, i1, i2, info1, info2, ii, ec = m.groups()
    r = st.reasons.get(text)
    if r is None:
        r = st.reasons[text] = _read_reason(text, st.isa_override)
    r.count += 1
    if not r.final:
        if not r.decodable:
            return _LEFT_OUT
        st.pending.append((st.rows_total + st.n, r))
    if info1 is None:
        info1, info2 = i1, i2
    st.exits.append((st.n, ts, tid, pid, cpu, int(vcpu) if vcpu else NO_VCPU, r.code or 0, r.isa, int(rip, 16),
                     int(info1, 16) if info1 else 0, int(info2, 16) if info2 else 0,
                     int(ii, 16) if ii else 0, int(ec, 16) if ec else 0))
    st.n += 1
    return True


def _h_entry(line, pos, ts, tid, pid, cpu, st):
    m = _ENTRY.fullmatch(line, pos)
    if m is None:
        return None
    vcpu, rip, ii, ec, imm = m.groups()
    st.entries.append((st.n, ts, tid, pid, cpu, int(vcpu), int(rip, 16) if rip else 0,
                       int(ii, 16) if ii else 0, int(ec, 16) if ec else 0, _IMMEDIATE if imm else 0))
    st.n += 1
    return True


def _other(st, ts, tid, pid, cpu, kind, reason=0, gpa=0, value=0, port=0, size=0, count=0, err=0, op=0, flags=0):
    st.others.append((st.n, ts, tid, pid, cpu, kind, reason, gpa, value, port, size, count, err, op, flags))
    st.n += 1
    return True


def _h_pio(line, pos, ts, tid, pid, cpu, st):
    m = _PIO.fullmatch(line, pos)
    if m is None:
        return None
    rw, port, size, count, val = m.groups()
    return _other(st, ts, tid, pid, cpu, _PIO_K, value=int(val, 16) if val else 0, port=int(port, 16),
                  size=int(size), count=int(count), op=_PIO_OP[rw], flags=_VALUE if val else 0)


def _h_mmio(line, pos, ts, tid, pid, cpu, st):
    m = _MMIO.fullmatch(line, pos)
    if m is None:
        return None
    op, size, gpa, val = m.groups()
    return _other(st, ts, tid, pid, cpu, _MMIO_K, gpa=int(gpa, 16), value=int(val, 16) if val else 0,
                  size=int(size), op=_MMIO_OP[op], flags=_VALUE if val else 0)


def _h_uexit(line, pos, ts, tid, pid, cpu, st):
    m = _UEXIT.fullmatch(line, pos)
    if m is None:
        return None
    name, num = m.groups()
    n = int(num)
    # errno < 0 prints "restart" (-EINTR) or "error", with -errno in the parentheses.
    if name == "restart":
        reason, err = 0, -(abs(n) or _EINTR)
    elif name == "error":
        reason, err = 0, -abs(n)
    else:
        reason, err = n & _U32, 0
    st.in_ioctl_run.discard(tid)  # KVM_RUN returned (kvm_fpu loads after it are not in it)
    return _other(st, ts, tid, pid, cpu, _UEXIT_K, reason=reason, err=err)


def _h_ioctl(line, pos, ts, tid, pid, cpu, st):
    m = _IOCTL.fullmatch(line, pos)
    if m is None:
        return None
    st.ioctl_tids.add(tid)  # the thread's syscalls are traced: its RUN edges come from here (see .sched)
    if int(m.group(2), 16) & _U32 != KVM_RUN:
        st.in_ioctl_run.discard(tid)
        return _SKIP
    st.in_ioctl_run.add(tid)
    st.run_by["sys_enter_ioctl"] = st.run_by.get("sys_enter_ioctl", 0) + 1
    return _other(st, ts, tid, pid, cpu, _RUN_K)


def _h_ioctl_exit(line, pos, ts, tid, pid, cpu, st):
    """sys_exit_ioctl: no row (kvmtrace's IOCTL rows need the call's cmd), but the end of a KVM_RUN."""
    st.in_ioctl_run.discard(tid)
    return _SKIP


_HANDLERS = {
    "kvm_exit": _h_exit,
    "kvm_entry": _h_entry,
    "kvm_pio": _h_pio,
    "kvm_mmio": _h_mmio,
    "kvm_userspace_exit": _h_uexit,
    "sys_enter_ioctl": _h_ioctl,
    "sys_exit_ioctl": _h_ioctl_exit,
}
