"""The event record shared by the BPF probes and the trace file.

``kvmtrace/kernel/bpf/kvmtrace.h`` declares ``struct kt_event``;
:data:`EVENT_DTYPE` is the same layout for numpy, so a batch of raw
ring-buffer records becomes columns with one ``numpy.frombuffer`` call. Every
constant the C side shares with Python (event kinds, flags, ``op`` values, ioctl
numbers and the ioctl type field, offsets, sizes) comes from here or from the
tables, through :func:`bpf_defines`: nothing is written twice.
"""

from __future__ import annotations

import enum

import numpy as np

from kvmtrace.tables.exits import Isa, KvmExit
# The type field's place in an ioctl number, as the ioctl table builds them.
from kvmtrace.tables.ioctls import IOC_TYPEMASK, IOC_TYPESHIFT, KVMIO, KvmIoctl

__all__ = [
    "EVENT_DTYPE",
    "EventKind",
    "EventFlag",
    "KVM_RUN",
    "MMIO_PAGE_SIZE",
    "NO_VCPU",
    "PioOp",
    "MmioOp",
    "RunIoDirection",
    "SchedOp",
    "ThreadSched",
    "VcpuState",
    "VCPU_TIME_IN_GUEST",
    "TRACEPOINTS",
    "bpf_defines",
]


class EventKind(enum.IntEnum):
    """What produced an event: one value per probe (``kind`` column)."""

    EXIT = 1  # kvm:kvm_exit, a hardware VM exit
    ENTRY = 2  # kvm:kvm_entry, back into the guest
    PIO = 3  # kvm:kvm_pio, a port I/O access
    MMIO = 4  # kvm:kvm_mmio, an MMIO access
    USERSPACE_EXIT = 5  # kvm:kvm_userspace_exit, KVM_RUN returning to the VMM
    RUN = 6  # the VMM re-entering: kvm:kvm_fpu load in KVM_RUN (or sys_enter_ioctl KVM_RUN)
    HIST = 7  # counts mode only: a log2 latency histogram bucket
    # IOCTL = a KVM ioctl other than KVM_RUN, at its return (sys_exit_ioctl): reason cmd, port fd,
    # err result, info2 duration; KVM_SET_USER_MEMORY_REGION: gpa, info1 size, rip userspace_addr,
    # size slot, count flags; KVM_IOEVENTFD: gpa addr, info1 len, rip datamatch, count flags;
    # KVM_(UN)REGISTER_COALESCED_MMIO: gpa addr, info1 size, count pio; others: gpa the argument.
    IOCTL = 8
    CLOSE = 9  # close() of a KVM fd (the /dev/kvm, VM or vCPU fd)
    PROC_EXIT = 10  # the VMM process ending (sched:sched_process_exit)
    SCHED_SWITCH = 11  # sched:sched_switch of a vCPU thread (op: SchedOp OUT or IN)
    WAKEUP = 12  # sched:sched_wakeup(_new) of a vCPU thread
    # counts mode only: nanoseconds a vCPU thread spent in state ``op`` (VcpuState), or with op
    # VCPU_TIME_IN_GUEST the in-guest part of GUEST (VMX/SVM hosts)
    VCPU_TIME = 13


#: Bit set in ``kind`` on aggregate rows (``record --mode counts``): the row
#: stands for ``value`` events of kind ``kind & ~AGGREGATE`` with its key.
AGGREGATE = 0x80


class Latency(enum.IntEnum):
    """``op`` of a HIST row: which interval its histogram measures."""

    VMM_SERVICE = 0  # kvm_userspace_exit -> the thread's next KVM_RUN
    EXIT_HANDLING = 1  # kvm_exit -> kvm_entry


class EventFlag(enum.IntFlag):
    """Bits of the ``flags`` column."""

    IMMEDIATE_EXIT = 1  # kvm_entry with immediate_exit set
    VALUE = 2  # the ``value`` column holds the guest's data (--values)
    RUN_FIELDS = 4  # a userspace exit with its kvm_run member read from the VMM
    PREEMPT = 8  # a SCHED_SWITCH out that was a preemption (sched_switch's ``preempt``)
    # A userspace exit other than IO/MMIO whose union member's first RUN_UNION_BYTES
    # are in rip, info1, info2, gpa, value (words 0..4; tables/exits/runfields decodes them).
    RUN_UNION = 16
    # Counts mode: an MMIO row counted per page (``gpa`` is the page's address) because
    # the exact-address table (MAX_MMIO_ADDRESSES) was full when the address came.
    MMIO_PAGE = 32


class SchedOp(enum.IntEnum):
    """``op`` of a SCHED_SWITCH event: the vCPU thread leaving or taking a CPU.

    On OUT, ``reason`` is sched_switch's ``prev_state`` (0: TASK_RUNNING, the
    thread stays runnable) and PREEMPT in ``flags`` says it was preempted.
    """

    OUT = 0
    IN = 1


class ThreadSched(enum.IntEnum):
    """Where the scheduler has a vCPU thread (struct kt_thread's ``sched``)."""

    ON_CPU = 0
    RUNNABLE = 1  # off CPU, waiting for one
    ASLEEP = 2  # off CPU, waiting for an event (a wakeup makes it RUNNABLE)


class VcpuState(enum.IntEnum):
    """Where a vCPU thread's time goes: ``op`` of VCPU_TIME rows, the state
    timeline's states (analysis.vcpu_time). Inside KVM_RUN or not, times
    on a CPU, asleep, or runnable but waiting for a CPU."""

    GUEST = 0  # inside KVM_RUN, on a CPU
    HALTED = 1  # inside KVM_RUN, asleep
    VMM = 2  # outside KVM_RUN, on a CPU
    VMM_WAITING = 3  # outside KVM_RUN, asleep
    PREEMPTED = 4  # runnable, not on a CPU (inside KVM_RUN or not)


#: ``op`` of a VCPU_TIME row holding the in-guest part of GUEST (after
#: kvm_entry, until kvm_exit; VMX/SVM hosts): only for threads whose
#: kvm_exit/kvm_entry the kernel saw. Not a state: the five states sum to the
#: recorded time, and GUEST minus this is the exit handling.
VCPU_TIME_IN_GUEST = len(VcpuState)


class PioOp(enum.IntEnum):
    """``op`` of a PIO event, as kvm_pio's ``rw`` field."""

    READ = 0
    WRITE = 1


class MmioOp(enum.IntEnum):
    """``op`` of an MMIO event, as kvm_mmio's ``type`` (KVM_TRACE_MMIO_*)."""

    UNSATISFIED_READ = 0  # handed to the VMM; a READ follows when it answers
    READ = 1
    WRITE = 2


class RunIoDirection(enum.IntEnum):
    """``kvm_run.io.direction``: KVM_EXIT_IO_IN and KVM_EXIT_IO_OUT (uapi linux/kvm.h).

    The probe copies it into ``op`` as it is: the values are PioOp's (a
    static assertion in the BPF C checks it at every build).
    """

    IN = 0
    OUT = 1


#: The KVM_RUN ioctl number, _IO(KVMIO=0xAE, 0x80).
KVM_RUN = int(KvmIoctl.RUN)
#: Offset of the union in struct kvm_run (uapi linux/kvm.h).
KVM_RUN_UNION_OFFSET = 32
#: __NR_ioctl on x86-64 (kvm_fpu, the RUN edge that checks it, is x86's).
NR_IOCTL = 16
#: ``vcpu`` of an event whose tracepoint carries no vCPU id.
NO_VCPU = 0xFFFFFFFF
#: Counts mode counts MMIO per exact address for the first MAX_MMIO_ADDRESSES
#: addresses it sees; accesses to any other address are counted per guest page
#: of this many bytes (their rows carry EventFlag.MMIO_PAGE).
MMIO_PAGE_SIZE = 4096
#: How many distinct MMIO addresses counts mode counts exactly (per recording).
MAX_MMIO_ADDRESSES = 4096
#: Bytes of the kvm_run union a userspace exit other than IO/MMIO carries
#: (EventFlag.RUN_UNION): five u64 words, in the event's rip, info1, info2, gpa, value.
RUN_UNION_BYTES = 40
#: The event columns that hold those words, in order.
RUN_UNION_COLUMNS = ("rip", "info1", "info2", "gpa", "value")

#: (system, event, kind) of every probe, in the order they are attached.
TRACEPOINTS: tuple[tuple[str, str, EventKind], ...] = (
    ("kvm", "kvm_exit", EventKind.EXIT),
    ("kvm", "kvm_entry", EventKind.ENTRY),
    ("kvm", "kvm_pio", EventKind.PIO),
    ("kvm", "kvm_mmio", EventKind.MMIO),
    ("kvm", "kvm_userspace_exit", EventKind.USERSPACE_EXIT),
    ("kvm", "kvm_fpu", EventKind.RUN),
    ("syscalls", "sys_enter_ioctl", EventKind.RUN),
    ("syscalls", "sys_exit_ioctl", EventKind.IOCTL),
    ("syscalls", "sys_enter_close", EventKind.CLOSE),
    ("sched", "sched_process_exit", EventKind.PROC_EXIT),
    # Raw tracepoints (RAW_TRACEPOINT_PROBE), filtered to the vCPU threads.
    ("sched", "sched_switch", EventKind.SCHED_SWITCH),
    ("sched", "sched_wakeup", EventKind.WAKEUP),
    ("sched", "sched_wakeup_new", EventKind.WAKEUP),
)

#: The raw sched tracepoints, which read task_structs (offsets from kernel/btf.py).
SCHED_PROBES = ("sched_switch", "sched_wakeup", "sched_wakeup_new")

#: sched_switch's raw tracepoint has carried ``prev_state`` as its fourth
#: argument since Linux 5.18 (fa2c3254d7cf, "sched/tracing: Don't re-read
#: p->state when emitting sched_switch event"); before, the probe reads it
#: from the task (-DKT_SCHED_SWITCH_PREV_STATE_ARG when the kernel has it).
SCHED_SWITCH_PREV_STATE_ARG = (5, 18)

#: Fields a probe reads only where the kernel's format has them (older kernels
#: lack some). Each present one becomes -DKT_HAVE_<EVENT>_<FIELD>.
OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "kvm_exit": ("isa", "info1", "intr_info", "vcpu_id"),
    "kvm_entry": ("rip", "immediate_exit", "intr_info"),
    "kvm_userspace_exit": ("errno",),
    "sched_process_exit": ("group_dead",),
}

#: numpy mirror of struct kt_event (kvmtrace/kernel/bpf/kvmtrace.h), field for field.
EVENT_DTYPE = np.dtype(
    [
        ("ts_ns", "<u8"),
        ("rip", "<u8"),
        ("info1", "<u8"),
        ("info2", "<u8"),
        ("gpa", "<u8"),
        ("value", "<u8"),
        ("tid", "<u4"),
        ("pid", "<u4"),
        ("cpu", "<u4"),
        ("vcpu", "<u4"),
        ("reason", "<u4"),
        ("isa", "<u4"),
        ("err", "<i4"),
        ("port", "<u4"),
        ("size", "<u4"),
        ("count", "<u4"),
        ("intr_info", "<u4"),
        ("error_code", "<u4"),
        ("kind", "u1"),
        ("op", "u1"),
        ("flags", "u1"),
        ("pad", "u1"),
        ("pad2", "<u4"),
    ]
)

#: numpy mirror of struct kt_key (counts mode), field for field.
KEY_DTYPE = np.dtype(
    [
        ("gpa", "<u8"),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("reason", "<u4"),
        ("isa", "<u4"),
        ("port", "<u4"),
        ("size", "<u4"),
        ("err", "<i4"),
        ("kind", "u1"),
        ("op", "u1"),
        ("flags", "u1"),
        ("pad", "u1"),
    ]
)

#: Columns of EVENT_DTYPE that are padding, dropped before writing.
PADDING = ("pad", "pad2")


def _member_mask() -> int:
    """Bit n set: KVM_EXIT_* code n (< 64) fills a kvm_run union member other than io/mmio."""
    from kvmtrace.tables.exits import KVM_EXITS

    return sum(1 << code for code, info in KVM_EXITS.items()
               if code < 64 and info.member and code not in (KvmExit.IO, KvmExit.MMIO))


def _enum_defines(prefix: str, members: type[enum.IntEnum] | type[enum.IntFlag]) -> list[str]:
    """-D<prefix><NAME>=<value> for each member of an enum."""
    return [f"-D{prefix}{m.name}={m.value}" for m in members]


def bpf_defines(
    *,
    probes: list[str],
    fields: dict[str, set[str]],
    ringbuf_pages: int,
    max_targets: int = 64,
    max_vcpus: int = 1024,
    max_kvm_fds: int = 4096,
    capture_values: bool = False,
    counts_mode: bool = False,
    max_keys: int = 65536,
    max_mmio_addresses: int = MAX_MMIO_ADDRESSES,
    raw: frozenset[str] | set[str] = frozenset(),
    launch: bool = False,
    run_by_syscall: bool = False,
    kernel: tuple[int, int] | None = None,
    task_offsets: dict[str, int] | None = None,
) -> list[str]:
    """The -D flags that build kvmtrace/kernel/bpf/kvmtrace.bpf.c.

    ``probes`` names the tracepoints to compile (event names, e.g.
    ``"kvm_pio"``); ``fields`` maps each to the field names its format has;
    ``raw`` those attached as raw tracepoints; ``launch`` builds the ioctl
    probes of a launch; ``run_by_syscall`` takes RUN from sys_enter_ioctl
    (kvmtrace/kernel/layouts.py decides all three). ``kernel`` is the running
    kernel's (major, minor), for the sched raw tracepoints' argument lists
    (None: a current kernel); ``task_offsets`` gives task_struct's ``pid``,
    ``tgid`` and ``state`` offsets (kernel/btf.py), which the sched probes need.
    """
    if ringbuf_pages < 1 or ringbuf_pages & (ringbuf_pages - 1):
        raise ValueError(f"ring buffer pages must be a power of two, not {ringbuf_pages}")
    flags = _enum_defines("KT_KIND_", EventKind)
    flags.append(f"-DKT_KIND_COUNT={max(EventKind) + 1}")
    flags += _enum_defines("KT_FLAG_", EventFlag)
    flags += _enum_defines("KT_PIO_", PioOp)
    flags += _enum_defines("KT_MMIO_", MmioOp)
    flags += _enum_defines("KT_KVM_EXIT_IO_", RunIoDirection)
    flags += _enum_defines("KT_ISA_", Isa)
    flags += _enum_defines("KT_SWITCH_", SchedOp)
    flags += _enum_defines("KT_SCHED_", ThreadSched)
    flags += _enum_defines("KT_STATE_", VcpuState)
    flags.append(f"-DKT_STATE_COUNT={len(VcpuState)}")
    if kernel is None or tuple(kernel) >= SCHED_SWITCH_PREV_STATE_ARG:
        flags.append("-DKT_SCHED_SWITCH_PREV_STATE_ARG")
    flags += [
        f"-DKT_KVM_RUN={KVM_RUN:#x}",
        f"-DKT_NO_VCPU={NO_VCPU:#x}U",
        f"-DKT_MMIO_PAGE_SIZE={MMIO_PAGE_SIZE}",
        f"-DKT_MAX_TARGETS={max_targets}",
        f"-DKT_MAX_VCPUS={max_vcpus}",
        f"-DKT_MAX_KVM_FDS={max_kvm_fds}",
        f"-DKT_KVM_RUN_UNION={KVM_RUN_UNION_OFFSET}",
        f"-DKT_IOC_TYPESHIFT={IOC_TYPESHIFT}",
        f"-DKT_IOC_TYPEMASK={IOC_TYPEMASK:#x}",
        f"-DKT_KVMIO={KVMIO:#x}",
        *(f"-DKT_KVM_{c.name}={c.value:#x}U" for c in KvmIoctl if c is not KvmIoctl.RUN),
        f"-DKT_KVM_EXIT_IO={KvmExit.IO.value}",
        f"-DKT_KVM_EXIT_MMIO={KvmExit.MMIO.value}",
        f"-DKT_RUN_UNION_BYTES={RUN_UNION_BYTES}",
        f"-DKT_KVM_EXIT_MEMBERS={_member_mask():#x}U",
        f"-DKT_RINGBUF_PAGES={ringbuf_pages}",
        f"-DKT_NR_IOCTL={NR_IOCTL}",
    ]
    if set(probes) & set(SCHED_PROBES):
        if not task_offsets:
            raise ValueError(f"the sched probes ({', '.join(SCHED_PROBES)}) need task_struct's offsets")
        flags += [f"-DKT_TASK_{name.upper()}_OFF={task_offsets[name]}" for name in ("pid", "tgid", "state")]
    for name in probes:
        flags.append(f"-DKT_PROBE_{name.upper()}")
        for field in OPTIONAL_FIELDS.get(name, ()):
            if field in fields.get(name, ()):
                flags.append(f"-DKT_HAVE_{name.upper()}_{field.upper()}")
        if name in raw:
            flags.append(f"-DKT_RAW_{name.upper()}")
    if launch:
        flags.append("-DKT_LAUNCH")
    if run_by_syscall:
        flags.append("-DKT_RUN_BY_SYSCALL")
    if capture_values:
        flags.append("-DKT_CAPTURE_VALUES")
    if counts_mode:
        flags += ["-DKT_MODE_COUNTS", f"-DKT_MAX_KEYS={max_keys}", f"-DKT_MAX_MMIO_ADDRS={max_mmio_addresses}"]
        flags += _enum_defines("KT_LAT_", Latency)
    return flags
