"""``KVM_EXIT_*`` reasons, each with the ``struct kvm_run`` union member it fills.

The reason ``KVM_RUN`` returns to userspace (``kvm:kvm_userspace_exit``,
``struct kvm_run::exit_reason``): :class:`KvmExit` names the codes of
``linux/kvm.h`` and :data:`KVM_EXITS` gives each one's :class:`ExitCode`.

Standard library only; importing this module has no side effects.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from types import MappingProxyType

from kvmtrace.tables.exits.common import unknown_name

__all__ = ["KVM_EXITS", "ExitCode", "KvmExit", "kvm_exit_info"]


class KvmExit(enum.IntEnum):
    """``KVM_EXIT_*`` reasons from ``linux/kvm.h`` (``KVM_EXIT_`` dropped)."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    S390_SIEIC = 13
    S390_RESET = 14
    DCR = 15  # deprecated
    NMI = 16
    INTERNAL_ERROR = 17
    OSI = 18
    PAPR_HCALL = 19
    S390_UCONTROL = 20
    WATCHDOG = 21
    S390_TSCH = 22
    EPR = 23
    SYSTEM_EVENT = 24
    S390_STSI = 25
    IOAPIC_EOI = 26
    HYPERV = 27
    ARM_NISV = 28
    X86_RDMSR = 29
    X86_WRMSR = 30
    DIRTY_RING_FULL = 31
    AP_RESET_HOLD = 32
    X86_BUS_LOCK = 33
    XEN = 34
    RISCV_SBI = 35
    RISCV_CSR = 36
    NOTIFY = 37
    # Newer than the Linux 6.1 uapi header installed here:
    LOONGARCH_IOCSR = 38  # Linux 6.7
    MEMORY_FAULT = 39  # Linux 6.8
    TDX = 40  # Linux 6.16
    ARM_SEA = 41  # Linux 6.19


@dataclasses.dataclass(frozen=True)
class ExitCode:
    """A ``KVM_EXIT_*`` reason and the ``struct kvm_run`` union member it fills.

    ``member`` is the union member's name (``"io"`` for ``run->io``) or None
    when the exit carries no data in the union (HLT, IRQ_WINDOW_OPEN,
    SHUTDOWN, INTR, ...).  ``fields`` are the member's top-level fields, with
    anonymous unions flattened (``hypercall`` has both ``longmode`` and the
    newer ``flags``) and padding left out.  Nested structs are one field
    (``debug.arch``, ``hyperv.u``).  ``S390_RESET`` fills the bare ``__u64
    s390_reset_flags`` member, so its ``fields`` are empty.
    """

    code: int
    name: str
    member: str | None = None
    fields: tuple[str, ...] = ()


_MSR_FIELDS = ("error", "reason", "index", "data")

# (exit, union member, fields) -- read from struct kvm_run in linux/kvm.h.
_KVM_RUN_MEMBERS: dict[KvmExit, tuple[str | None, tuple[str, ...]]] = {
    KvmExit.UNKNOWN: ("hw", ("hardware_exit_reason",)),
    KvmExit.EXCEPTION: ("ex", ("exception", "error_code")),
    KvmExit.IO: ("io", ("direction", "size", "port", "count", "data_offset")),
    KvmExit.HYPERCALL: ("hypercall", ("nr", "args", "ret", "longmode", "flags")),
    KvmExit.DEBUG: ("debug", ("arch",)),
    KvmExit.HLT: (None, ()),
    KvmExit.MMIO: ("mmio", ("phys_addr", "data", "len", "is_write")),
    KvmExit.IRQ_WINDOW_OPEN: (None, ()),
    KvmExit.SHUTDOWN: (None, ()),
    KvmExit.FAIL_ENTRY: ("fail_entry", ("hardware_entry_failure_reason", "cpu")),
    KvmExit.INTR: (None, ()),
    KvmExit.SET_TPR: (None, ()),
    KvmExit.TPR_ACCESS: ("tpr_access", ("rip", "is_write")),
    KvmExit.S390_SIEIC: ("s390_sieic", ("icptcode", "ipa", "ipb")),
    KvmExit.S390_RESET: ("s390_reset_flags", ()),
    KvmExit.DCR: ("dcr", ("dcrn", "data", "is_write")),
    KvmExit.NMI: (None, ()),
    # KVM_INTERNAL_ERROR_EMULATION overlays "emulation_failure" on "internal".
    KvmExit.INTERNAL_ERROR: ("internal", ("suberror", "ndata", "data")),
    KvmExit.OSI: ("osi", ("gprs",)),
    KvmExit.PAPR_HCALL: ("papr_hcall", ("nr", "ret", "args")),
    KvmExit.S390_UCONTROL: ("s390_ucontrol", ("trans_exc_code", "pgm_code")),
    KvmExit.WATCHDOG: (None, ()),
    KvmExit.S390_TSCH: (
        "s390_tsch",
        ("subchannel_id", "subchannel_nr", "io_int_parm", "io_int_word", "ipb", "dequeued"),
    ),
    KvmExit.EPR: ("epr", ("epr",)),
    KvmExit.SYSTEM_EVENT: ("system_event", ("type", "ndata", "flags", "data")),
    KvmExit.S390_STSI: ("s390_stsi", ("addr", "ar", "reserved", "fc", "sel1", "sel2")),
    KvmExit.IOAPIC_EOI: ("eoi", ("vector",)),
    KvmExit.HYPERV: ("hyperv", ("type", "u")),  # struct kvm_hyperv_exit
    KvmExit.ARM_NISV: ("arm_nisv", ("esr_iss", "fault_ipa")),
    KvmExit.X86_RDMSR: ("msr", _MSR_FIELDS),
    KvmExit.X86_WRMSR: ("msr", _MSR_FIELDS),
    KvmExit.DIRTY_RING_FULL: (None, ()),
    KvmExit.AP_RESET_HOLD: (None, ()),
    KvmExit.X86_BUS_LOCK: (None, ()),  # signalled by KVM_RUN_X86_BUS_LOCK in run->flags
    KvmExit.XEN: ("xen", ("type", "u")),  # struct kvm_xen_exit
    KvmExit.RISCV_SBI: ("riscv_sbi", ("extension_id", "function_id", "args", "ret")),
    KvmExit.RISCV_CSR: ("riscv_csr", ("csr_num", "new_value", "write_mask", "ret_value")),
    KvmExit.NOTIFY: ("notify", ("flags",)),
    KvmExit.LOONGARCH_IOCSR: ("iocsr_io", ("phys_addr", "data", "len", "is_write")),
    KvmExit.MEMORY_FAULT: ("memory_fault", ("flags", "gpa", "size")),
    KvmExit.TDX: (
        "tdx",
        ("flags", "nr", "unknown", "get_quote", "get_tdvmcall_info", "setup_event_notify"),
    ),
    KvmExit.ARM_SEA: ("arm_sea", ("flags", "esr", "gva", "gpa")),
}

#: KVM_EXIT_* code -> :class:`ExitCode`.
KVM_EXITS: Mapping[int, ExitCode] = MappingProxyType(
    {int(e): ExitCode(int(e), e.name, *_KVM_RUN_MEMBERS[e]) for e in KvmExit}
)


def kvm_exit_info(code: int) -> ExitCode:
    """The :class:`ExitCode` of a KVM_EXIT_* reason; an unnamed one gets ``UNKNOWN(0x..)`` and no member."""
    info = KVM_EXITS.get(code)
    return info if info is not None else ExitCode(code, unknown_name(code), None, ())
