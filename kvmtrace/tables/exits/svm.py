"""SVM (AMD) exit codes and the names the kernel prints for them.

The hardware exit code of ``kvm:kvm_exit`` on an SVM host (:class:`SvmExit`),
including the SEV-ES ``vmgexit_*`` software codes and ``SVM_EXIT_ERR`` (-1).
The kernel's ``SVM_EXIT_REASONS`` table prints most of them in lower case
and a few under names of their own: :data:`SVM_EXIT_NAMES` spells them so.

Standard library only; importing this module has no side effects.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from kvmtrace.tables.exits.common import _U32, _U64

__all__ = ["SVM_EXIT_NAMES", "SvmExit"]


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
