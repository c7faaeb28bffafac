"""VMX (Intel) basic exit reasons, the flag bits above them, and their decoding.

The hardware exit reason of ``kvm:kvm_exit`` on a VMX host: the low 16 bits
are the basic reason (:class:`VmxExit`), the bits above are flags such as
``FAILED_VMENTRY`` (:class:`VmxExitFlag`); :func:`decode_vmx` splits the two.
Names are spelled as the kernel's ``VMX_EXIT_REASONS`` table prints them.

Standard library only; importing this module has no side effects.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from kvmtrace.tables.exits.common import _U32, unknown_name

__all__ = [
    "VMX_BASIC_MASK",
    "VMX_EXIT_FLAG_NAMES",
    "VMX_EXIT_NAMES",
    "VmxExit",
    "VmxExitFlag",
    "VmxReason",
    "decode_vmx",
]


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
