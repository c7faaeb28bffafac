"""Exit codes: the one place kvmtrace names them.

Three code spaces meet in a KVM trace:

* the **hardware exit reason** of the ``kvm:kvm_exit`` tracepoint, whose
  meaning depends on the vendor (its ``isa`` field, :class:`Isa`):

  - VMX (Intel) basic exit reasons, low 16 bits of ``exit_reason``, plus flag
    bits such as ``FAILED_VMENTRY`` (bit 31) -- :class:`VmxExit`,
    :class:`VmxExitFlag`, :func:`decode_vmx`;
  - SVM (AMD) exit codes, including the SEV-ES ``vmgexit_*`` software codes and
    ``SVM_EXIT_ERR`` (-1) -- :class:`SvmExit`;

* the **KVM_EXIT_*** reason ``KVM_RUN`` returns to userspace
  (``kvm:kvm_userspace_exit``, ``struct kvm_run::exit_reason``), each with
  the ``kvm_run`` union member it fills -- :class:`KvmExit`, :class:`ExitCode`.

Names are spelled exactly as the kernel's tracepoints print them (the
``VMX_EXIT_REASONS`` / ``SVM_EXIT_REASONS`` tables of the uapi headers and
the ``kvm_trace_exit_reason`` table with ``"KVM_EXIT_"`` stripped), so a name
computed here matches ``trace-cmd report`` and ``perf kvm stat``.  The tests
check these tables against the uapi headers and this kernel's tracepoint
formats.

A trace also records the tables of the kernel that produced it (the
``__print_symbolic`` tables of its ``kvm_exit`` / ``kvm_userspace_exit``
formats); :class:`ExitNames` prefers those and falls back to the built-in
tables here.  No lookup ever raises: an unnamed code is ``"UNKNOWN(0x<hex>)"``.

Standard library only; importing this module has no side effects.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import NamedTuple

from kvmtrace.kernel.tpformat import EventFormat, parse_format

__all__ = [
    "ExitCode",
    "ExitNames",
    "ExitTables",
    "Isa",
    "KVM_EXITS",
    "KvmExit",
    "SVM_EXIT_NAMES",
    "SvmExit",
    "VMX_BASIC_MASK",
    "VMX_EXIT_FLAG_NAMES",
    "VMX_EXIT_NAMES",
    "VmxExit",
    "VmxExitFlag",
    "VmxReason",
    "c_defines",
    "decode_vmx",
    "hw_exit_name",
    "isa_from_names",
    "kvm_exit_info",
    "kvm_exit_name",
    "kvm_exit_names_from_format",
    "tables_from_format",
    "unknown_name",
]

_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


def unknown_name(code: int) -> str:
    """The name given to a code nobody names: ``UNKNOWN(0x<lower-case hex>)``.

    Negative codes are shown as their 64-bit two's complement.
    """
    return f"UNKNOWN(0x{code & _U64 if code < 0 else code:x})"


class Isa(enum.IntEnum):
    """Hardware virtualisation flavour, as in ``kvm_exit``'s ``isa`` field (KVM_ISA_VMX/SVM)."""

    UNKNOWN = 0
    VMX = 1
    SVM = 2

    @classmethod
    def coerce(cls, value: int | str | None) -> Isa:
        """``Isa`` from an int (1, 2), a name (``"vmx"``, ``"SVM"``) or None; anything else is UNKNOWN."""
        if isinstance(value, str):
            text = value.strip()
            if text.isdigit():
                return cls.coerce(int(text))
            return cls.__members__.get(text.upper(), cls.UNKNOWN)
        try:
            return cls(int(value)) if value is not None else cls.UNKNOWN
        except ValueError:
            return cls.UNKNOWN


# --------------------------------------------------------------------------
# VMX (Intel)
# --------------------------------------------------------------------------


class VmxExit(enum.IntEnum):
    """VMX basic exit reasons, named as ``VMX_EXIT_REASONS`` in ``asm/vmx.h`` (``EXIT_REASON_`` dropped).

    Exactly the reasons the kernel's ``kvm_exit`` tracepoint names (Linux 6.18);
    the SDM defines a few more (5 IO_SMI, 6 OTHER_SMI, 11 GETSEC, ...) that KVM
    never reports and the kernel prints as a number, and so do we.
    """

    EXCEPTION_NMI = 0
    EXTERNAL_INTERRUPT = 1
    TRIPLE_FAULT = 2
    INIT_SIGNAL = 3
    SIPI_SIGNAL = 4
    INTERRUPT_WINDOW = 7  # called PENDING_INTERRUPT by older kernels (5.4 and before)
    NMI_WINDOW = 8
    TASK_SWITCH = 9
    CPUID = 10
    HLT = 12
    INVD = 13
    INVLPG = 14
    RDPMC = 15
    RDTSC = 16
    VMCALL = 18
    VMCLEAR = 19
    VMLAUNCH = 20
    VMPTRLD = 21
    VMPTRST = 22
    VMREAD = 23
    VMRESUME = 24
    VMWRITE = 25
    VMOFF = 26
    VMON = 27
    CR_ACCESS = 28
    DR_ACCESS = 29
    IO_INSTRUCTION = 30
    MSR_READ = 31
    MSR_WRITE = 32
    INVALID_STATE = 33
    MSR_LOAD_FAIL = 34
    MWAIT_INSTRUCTION = 36
    MONITOR_TRAP_FLAG = 37
    MONITOR_INSTRUCTION = 39
    PAUSE_INSTRUCTION = 40
    MCE_DURING_VMENTRY = 41
    TPR_BELOW_THRESHOLD = 43
    APIC_ACCESS = 44
    EOI_INDUCED = 45
    GDTR_IDTR = 46
    LDTR_TR = 47
    EPT_VIOLATION = 48
    EPT_MISCONFIG = 49
    INVEPT = 50
    RDTSCP = 51
    PREEMPTION_TIMER = 52
    INVVPID = 53
    WBINVD = 54
    XSETBV = 55
    APIC_WRITE = 56
    RDRAND = 57
    INVPCID = 58
    VMFUNC = 59
    ENCLS = 60
    RDSEED = 61
    PML_FULL = 62
    XSAVES = 63
    XRSTORS = 64
    UMWAIT = 67
    TPAUSE = 68
    BUS_LOCK = 74
    NOTIFY = 75
    # Newer than the Linux 6.1 uapi header; named by Linux 6.18's kvm_exit:
    TDCALL = 77  # TDX
    MSR_READ_IMM = 84  # RDMSR with an immediate operand
    MSR_WRITE_IMM = 85  # WRMSRNS with an immediate operand


class VmxExitFlag(enum.IntFlag):
    """Flag bits above the basic reason in a VMX exit reason (SDM "Basic VM-Exit Information").

    Bit positions as in the kernel's ``union vmx_exit_reason``; only
    ``FAILED_VMENTRY`` is in the uapi ``VMX_EXIT_REASON_FLAGS`` that the
    tracepoint prints, and ``SGX_ENCLAVE_MODE`` is also a uapi macro
    (``VMX_EXIT_REASONS_SGX_ENCLAVE_MODE``).
    """

    BUS_LOCK_DETECTED = 1 << 26
    SGX_ENCLAVE_MODE = 1 << 27
    SMI_PENDING_MTF = 1 << 28
    SMI_FROM_VMX_ROOT = 1 << 29
    FAILED_VMENTRY = 1 << 31


#: The basic exit reason is the low 16 bits of the VMX exit reason.
VMX_BASIC_MASK = 0xFFFF

#: Basic exit reason -> name.
VMX_EXIT_NAMES: Mapping[int, str] = MappingProxyType({int(e): e.name for e in VmxExit})

#: Flag bit -> name, in bit order.
VMX_EXIT_FLAG_NAMES: Mapping[int, str] = MappingProxyType(
    {int(f): str(f.name) for f in sorted(VmxExitFlag, key=int)}
)


class VmxReason(NamedTuple):
    """A decoded VMX exit reason: basic code and the names of the flag bits that are set."""

    basic: int
    flags: tuple[str, ...]


def _decode_vmx(raw: int, flag_names: Mapping[int, str]) -> VmxReason:
    raw &= _U32
    high = raw & ~VMX_BASIC_MASK & _U32
    names: list[str] = []
    for mask, name in flag_names.items():
        if mask and high & mask == mask:
            names.append(name)
            high &= ~mask
    if high:
        names.append(unknown_name(high))
    return VmxReason(raw & VMX_BASIC_MASK, tuple(names))


def decode_vmx(raw: int) -> VmxReason:
    """Split a raw VMX exit reason into ``(basic_code, flag_names)``.

    >>> decode_vmx(0x80000021)
    VmxReason(basic=33, flags=('FAILED_VMENTRY',))

    Set bits no flag names come out as one ``UNKNOWN(0x...)`` entry.
    """
    return _decode_vmx(raw, VMX_EXIT_FLAG_NAMES)


# --------------------------------------------------------------------------
# SVM (AMD)
# --------------------------------------------------------------------------


class SvmExit(enum.IntEnum):
    """SVM exit codes named by the kernel's ``SVM_EXIT_REASONS`` (``asm/svm.h``), Linux 6.18.

    Member names are the header macros without ``SVM_EXIT_`` (``IOIO``,
    ``VMMCALL``, ``NPF``); the SEV-ES software codes keep ``VMGEXIT_`` from
    ``SVM_VMGEXIT_*``; exceptions ``0x40 + vector`` are ``EXCP_<mnemonic>``.
    The printed names are in :data:`SVM_EXIT_NAMES`.
    """

    READ_CR0 = 0x000
    READ_CR2 = 0x002
    READ_CR3 = 0x003
    READ_CR4 = 0x004
    READ_CR8 = 0x008
    WRITE_CR0 = 0x010
    WRITE_CR2 = 0x012
    WRITE_CR3 = 0x013
    WRITE_CR4 = 0x014
    WRITE_CR8 = 0x018
    READ_DR0 = 0x020
    READ_DR1 = 0x021
    READ_DR2 = 0x022
    READ_DR3 = 0x023
    READ_DR4 = 0x024
    READ_DR5 = 0x025
    READ_DR6 = 0x026
    READ_DR7 = 0x027
    WRITE_DR0 = 0x030
    WRITE_DR1 = 0x031
    WRITE_DR2 = 0x032
    WRITE_DR3 = 0x033
    WRITE_DR4 = 0x034
    WRITE_DR5 = 0x035
    WRITE_DR6 = 0x036
    WRITE_DR7 = 0x037
    EXCP_DE = 0x040 + 0
    EXCP_DB = 0x040 + 1
    EXCP_BP = 0x040 + 3
    EXCP_OF = 0x040 + 4
    EXCP_BR = 0x040 + 5
    EXCP_UD = 0x040 + 6
    EXCP_NM = 0x040 + 7
    EXCP_DF = 0x040 + 8
    EXCP_TS = 0x040 + 10
    EXCP_NP = 0x040 + 11
    EXCP_SS = 0x040 + 12
    EXCP_GP = 0x040 + 13
    EXCP_PF = 0x040 + 14
    EXCP_MF = 0x040 + 16
    EXCP_AC = 0x040 + 17
    EXCP_MC = 0x040 + 18
    EXCP_XM = 0x040 + 19
    INTR = 0x060
    NMI = 0x061
    SMI = 0x062
    INIT = 0x063
    VINTR = 0x064
    CR0_SEL_WRITE = 0x065
    IDTR_READ = 0x066
    GDTR_READ = 0x067
    LDTR_READ = 0x068
    TR_READ = 0x069
    IDTR_WRITE = 0x06A
    GDTR_WRITE = 0x06B
    LDTR_WRITE = 0x06C
    TR_WRITE = 0x06D
    RDTSC = 0x06E
    RDPMC = 0x06F
    PUSHF = 0x070
    POPF = 0x071
    CPUID = 0x072
    RSM = 0x073
    IRET = 0x074
    SWINT = 0x075
    INVD = 0x076
    PAUSE = 0x077
    HLT = 0x078
    INVLPG = 0x079
    INVLPGA = 0x07A
    IOIO = 0x07B
    MSR = 0x07C
    TASK_SWITCH = 0x07D
    FERR_FREEZE = 0x07E
    SHUTDOWN = 0x07F
    VMRUN = 0x080
    VMMCALL = 0x081
    VMLOAD = 0x082
    VMSAVE = 0x083
    STGI = 0x084
    CLGI = 0x085
    SKINIT = 0x086
    RDTSCP = 0x087
    ICEBP = 0x088
    WBINVD = 0x089
    MONITOR = 0x08A
    MWAIT = 0x08B
    XSETBV = 0x08D
    EFER_WRITE_TRAP = 0x08F
    CR0_WRITE_TRAP = 0x090
    CR4_WRITE_TRAP = 0x094
    CR8_WRITE_TRAP = 0x098
    INVPCID = 0x0A2
    BUS_LOCK = 0x0A5  # newer than the 6.1 header, named by 6.18
    IDLE_HLT = 0x0A6  # newer than the 6.1 header, named by 6.18
    NPF = 0x400
    AVIC_INCOMPLETE_IPI = 0x401
    AVIC_UNACCELERATED_ACCESS = 0x402
    VMGEXIT = 0x403
    VMGEXIT_MMIO_READ = 0x80000001
    VMGEXIT_MMIO_WRITE = 0x80000002
    VMGEXIT_NMI_COMPLETE = 0x80000003
    VMGEXIT_AP_HLT_LOOP = 0x80000004
    VMGEXIT_AP_JUMP_TABLE = 0x80000005
    VMGEXIT_PSC = 0x80000010
    VMGEXIT_GUEST_REQUEST = 0x80000011
    VMGEXIT_EXT_GUEST_REQUEST = 0x80000012
    VMGEXIT_AP_CREATION = 0x80000013
    VMGEXIT_HV_FEATURES = 0x8000FFFD
    ERR = -1  # VMRUN failed: invalid guest state (0xffffffff / 0xffffffffffffffff)


# Printed names that are not simply the lower-cased member name.
_SVM_PRINTED: dict[SvmExit, str] = {
    SvmExit.INTR: "interrupt",
    SvmExit.IDTR_READ: "read_idtr",
    SvmExit.GDTR_READ: "read_gdtr",
    SvmExit.LDTR_READ: "read_ldtr",
    SvmExit.TR_READ: "read_rt",  # sic, as the kernel prints it
    SvmExit.IDTR_WRITE: "write_idtr",
    SvmExit.GDTR_WRITE: "write_gdtr",
    SvmExit.LDTR_WRITE: "write_ldtr",
    SvmExit.TR_WRITE: "write_rt",  # sic
    SvmExit.IOIO: "io",
    SvmExit.VMMCALL: "hypercall",
    SvmExit.EFER_WRITE_TRAP: "write_efer_trap",
    SvmExit.CR0_WRITE_TRAP: "write_cr0_trap",
    SvmExit.CR4_WRITE_TRAP: "write_cr4_trap",
    SvmExit.CR8_WRITE_TRAP: "write_cr8_trap",
    SvmExit.BUS_LOCK: "buslock",
    SvmExit.IDLE_HLT: "idle-halt",
    SvmExit.EXCP_XM: "XF excp",
    SvmExit.VMGEXIT_PSC: "vmgexit_page_state_change",
    SvmExit.VMGEXIT_HV_FEATURES: "vmgexit_hypervisor_feature",
    SvmExit.ERR: "invalid_guest_state",
}


def _svm_printed_name(e: SvmExit) -> str:
    if e in _SVM_PRINTED:
        return _SVM_PRINTED[e]
    if e.name.startswith("EXCP_"):
        return f"{e.name[5:]} excp"
    return e.name.lower()


#: SVM exit code -> name as the kernel prints it ("npf", "io", "PF excp", ...).
SVM_EXIT_NAMES: Mapping[int, str] = MappingProxyType({int(e): _svm_printed_name(e) for e in SvmExit})


def _svm_key(code: int) -> int:
    """SVM_EXIT_ERR is -1 in the tables but 0xffffffff in a u32 field and 2**64-1 in the VMCB."""
    return -1 if code in (-1, _U32, _U64) else code


# --------------------------------------------------------------------------
# KVM_EXIT_* (userspace exits)
# --------------------------------------------------------------------------


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

_KVM_EXIT_PREFIX = "KVM_EXIT_"


def kvm_exit_info(code: int) -> ExitCode:
    """The :class:`ExitCode` of a KVM_EXIT_* reason; an unnamed one gets ``UNKNOWN(0x..)`` and no member."""
    info = KVM_EXITS.get(code)
    return info if info is not None else ExitCode(code, unknown_name(code), None, ())


def kvm_exit_name(code: int) -> str:
    """Name of a KVM_EXIT_* reason without the prefix (``2`` -> ``"IO"``), never raising."""
    return _BUILTIN.kvm_exit(code)


def hw_exit_name(isa: int | str | None, raw_code: int, *, with_flags: bool = False) -> str:
    """Name of a ``kvm_exit`` hardware exit reason, never raising.

    For VMX the flag bits are masked off (``0x80000021`` -> ``"INVALID_STATE"``);
    ``with_flags=True`` appends them as the tracepoint prints them
    (``"INVALID_STATE FAILED_VMENTRY"``).  With ``Isa.UNKNOWN`` nothing can be
    named and the result is ``UNKNOWN(0x..)``.  ``isa`` may be an :class:`Isa`, its
    value, or a name (``"svm"``).
    """
    return _BUILTIN.hw(isa, raw_code, with_flags=with_flags)


# --------------------------------------------------------------------------
# Tables from a trace's own formats
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExitTables:
    """Hardware exit-reason tables found in a ``kvm_exit`` format (empty when absent)."""

    vmx: Mapping[int, str]
    svm: Mapping[int, str]
    vmx_flags: Mapping[int, str]


def _as_format(fmt: EventFormat | str) -> EventFormat:
    return parse_format(fmt, system="kvm") if isinstance(fmt, str) else fmt


def tables_from_format(kvm_exit_fmt: EventFormat | str) -> ExitTables:
    """Build the VMX and SVM name tables from a recorded ``kvm_exit`` format.

    ``kvm_exit`` prints ``(REC->isa == 1) ? __print_symbolic(<VMX>) :
    __print_symbolic(<SVM>)``, so the first symbolic table is VMX and the
    second SVM.  If a kernel ever ordered them differently the names betray it
    (VMX names are upper case) and the two are swapped; a single table is
    assigned by its names.  The ``__print_flags`` table (newer kernels only)
    gives the VMX flag names.  Accepts the raw format text too.
    """
    fmt = _as_format(kvm_exit_fmt)
    sym = [dict(t.values) for t in fmt.symbolic_tables() if t.values]
    vmx: dict[int, str] = {}
    svm: dict[int, str] = {}
    if len(sym) >= 2:
        vmx, svm = sym[0], sym[1]
        if isa_from_names(vmx.values()) == Isa.SVM and isa_from_names(svm.values()) == Isa.VMX:
            vmx, svm = svm, vmx
    elif len(sym) == 1:
        if isa_from_names(sym[0].values()) == Isa.SVM:
            svm = sym[0]
        else:
            vmx = sym[0]
    flags: dict[int, str] = {}
    for table in fmt.flag_tables():
        if "exit_reason" in table.expr:
            for mask, name in table.values.items():
                flags.setdefault(mask & _U32, name)
    return ExitTables(MappingProxyType(vmx), MappingProxyType(svm), MappingProxyType(flags))


def kvm_exit_names_from_format(kvm_userspace_exit_fmt: EventFormat | str) -> dict[int, str]:
    """KVM_EXIT_* names from a recorded ``kvm_userspace_exit`` format, ``"KVM_EXIT_"`` stripped.

    The kernel prints ``{ 2, "KVM_EXIT_" "IO" }``; this gives ``{2: "IO"}``.
    (The ``"restart"`` / ``"error"`` strings it prints when ``errno < 0`` are
    not reasons and are not in the table.)  Accepts the raw format text too.
    """
    fmt = _as_format(kvm_userspace_exit_fmt)
    names: dict[int, str] = {}
    for table in fmt.symbolic_tables():
        if "reason" not in table.expr:
            continue
        for code, name in table.values.items():
            names.setdefault(code, _strip_kvm_exit(name))
    return names


def _strip_kvm_exit(name: str) -> str:
    return name[len(_KVM_EXIT_PREFIX):] if name.startswith(_KVM_EXIT_PREFIX) else name


@dataclasses.dataclass(frozen=True)
class ExitNames:
    """Names for every exit code of one trace.

    Built with :meth:`from_formats` from the formats a trace recorded, the
    trace's own tables win (so a Linux 5.4 trace says ``PENDING_INTERRUPT``
    for VMX reason 7, as that kernel did) and the built-in tables fill the
    codes it does not name; :meth:`builtin` uses the built-in tables only.
    Every lookup returns a string, ``UNKNOWN(0x..)`` when nobody names a code.
    """

    vmx: Mapping[int, str]
    svm: Mapping[int, str]
    kvm: Mapping[int, str]
    vmx_flags: Mapping[int, str]
    source: str = "builtin"

    @classmethod
    def builtin(cls) -> ExitNames:
        """The built-in tables of this module."""
        return cls(
            vmx=VMX_EXIT_NAMES,
            svm=SVM_EXIT_NAMES,
            kvm=MappingProxyType({c: e.name for c, e in KVM_EXITS.items()}),
            vmx_flags=VMX_EXIT_FLAG_NAMES,
        )

    @classmethod
    def from_formats(
        cls,
        kvm_exit: EventFormat | str | None = None,
        kvm_userspace_exit: EventFormat | str | None = None,
        *,
        prefer_trace: bool = True,
    ) -> ExitNames:
        """Merge a trace's ``kvm_exit`` / ``kvm_userspace_exit`` tables with the built-in ones.

        Either format may be None (not recorded) or raw format text.  With
        ``prefer_trace=False`` the built-in names win and the trace only adds
        codes they lack.
        """
        base = cls.builtin()
        hw = tables_from_format(kvm_exit) if kvm_exit is not None else ExitTables({}, {}, {})
        kvm = kvm_exit_names_from_format(kvm_userspace_exit) if kvm_userspace_exit is not None else {}
        svm_trace = {_svm_key(k): v for k, v in hw.svm.items()}

        def merge(builtin: Mapping[int, str], trace: Mapping[int, str]) -> Mapping[int, str]:
            first, second = (trace, builtin) if prefer_trace else (builtin, trace)
            return MappingProxyType({**second, **first})

        used = kvm_exit is not None or kvm_userspace_exit is not None
        return cls(
            vmx=merge(base.vmx, hw.vmx),
            svm=merge(base.svm, svm_trace),
            kvm=merge(base.kvm, kvm),
            vmx_flags=merge(base.vmx_flags, hw.vmx_flags),
            source="trace+builtin" if used else "builtin",
        )

    def kvm_exit(self, code: int) -> str:
        """Name of a KVM_EXIT_* reason (``"IO"``), or ``UNKNOWN(0x..)``."""
        return self.kvm.get(code) or unknown_name(code)

    def decode_vmx(self, raw: int) -> VmxReason:
        """Split a raw VMX exit reason into basic code and flag names (see :func:`decode_vmx`)."""
        return _decode_vmx(raw, self.vmx_flags)

    def hw(self, isa: int | str | None, raw_code: int, *, with_flags: bool = False) -> str:
        """Name of a ``kvm_exit`` exit reason for ``isa`` (see :func:`hw_exit_name`)."""
        kind = Isa.coerce(isa)
        if kind == Isa.VMX:
            basic, flags = self.decode_vmx(raw_code)
            name = self.vmx.get(basic) or unknown_name(basic)
            return " ".join((name, *flags)) if with_flags and flags else name
        if kind == Isa.SVM:
            return self.svm.get(_svm_key(raw_code)) or unknown_name(raw_code)
        return unknown_name(raw_code)

    def hw_table(self, isa: int | str | None) -> Mapping[int, str]:
        """The code -> name table of one ISA, e.g. for ``Series.map`` (VMX keys are basic codes)."""
        kind = Isa.coerce(isa)
        if kind == Isa.VMX:
            return self.vmx
        if kind == Isa.SVM:
            return self.svm
        return MappingProxyType({})


_BUILTIN = ExitNames.builtin()


# --------------------------------------------------------------------------
# Guessing the ISA from names
# --------------------------------------------------------------------------

_VMX_NAMES = frozenset(VMX_EXIT_NAMES.values()) | {"PENDING_INTERRUPT"}
_SVM_NAMES = frozenset(SVM_EXIT_NAMES.values())
_VMX_UPPER = frozenset(n.upper() for n in _VMX_NAMES)
_SVM_UPPER = frozenset(n.upper() for n in _SVM_NAMES) | frozenset(e.name for e in SvmExit)
_VMX_ONLY = _VMX_UPPER - _SVM_UPPER
_SVM_ONLY = _SVM_UPPER - _VMX_UPPER
_NAME_PREFIXES = ("KVM_EXIT_REASON_", "VMX_EXIT_REASON_", "EXIT_REASON_", "SVM_EXIT_", "SVM_", "VMX_", "EXIT_")


def isa_from_names(names: Iterable[str]) -> Isa:
    """Guess the ISA of an imported trace from the exit-reason names it uses.

    Exact spellings decide first (the kernel prints VMX reasons in upper case,
    SVM codes in lower case: ``"HLT"`` is VMX, ``"hlt"`` SVM); otherwise a
    prefix such as ``EXIT_REASON_`` / ``SVM_EXIT_`` / ``EXIT_`` is dropped and a
    name only one vendor uses decides (``"EXIT_NPF"`` -> SVM,
    ``"EPT_VIOLATION"`` -> VMX).  The majority wins; no votes or a tie give
    ``Isa.UNKNOWN``.
    """
    vmx = svm = 0
    for raw in names:
        name = str(raw).strip()
        if name in _VMX_NAMES:
            vmx += 1
            continue
        if name in _SVM_NAMES:
            svm += 1
            continue
        upper = name.upper()
        for prefix in _NAME_PREFIXES:
            if upper.startswith(prefix):
                upper = upper[len(prefix):]
                break
        if upper in _VMX_ONLY:
            vmx += 1
        elif upper in _SVM_ONLY:
            svm += 1
    if vmx > svm:
        return Isa.VMX
    if svm > vmx:
        return Isa.SVM
    return Isa.UNKNOWN


# --------------------------------------------------------------------------
# C constants for the BPF side
# --------------------------------------------------------------------------


def c_defines(prefix: str = "KVMTRACE_") -> dict[str, int]:
    """The codes above as C macro name -> value, for ``-D`` flags or a generated header.

    Names follow the kernel's (``KVM_EXIT_IO``, ``EXIT_REASON_IO_INSTRUCTION``,
    ``SVM_EXIT_IOIO``, ``KVM_ISA_VMX``) behind ``prefix`` so they cannot clash
    with kernel headers a BPF program also includes; pass ``prefix=""`` for the
    bare names.
    """
    out: dict[str, int] = {f"{prefix}KVM_ISA_{i.name}": int(i) for i in Isa if i != Isa.UNKNOWN}
    out.update({f"{prefix}KVM_EXIT_{e.name}": int(e) for e in KvmExit})
    out.update({f"{prefix}EXIT_REASON_{e.name}": int(e) for e in VmxExit})
    out.update({f"{prefix}VMX_EXIT_REASONS_{f.name}": int(f) for f in VmxExitFlag})
    for e in SvmExit:
        macro = f"SVM_{e.name}" if e.name.startswith("VMGEXIT_") else f"SVM_EXIT_{e.name}"
        out[f"{prefix}{macro}"] = int(e)
    return out
