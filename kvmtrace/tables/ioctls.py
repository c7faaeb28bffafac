"""KVM ioctl numbers: the one table of /dev/kvm, VM, vCPU and device ioctls.

Numbers are built as linux/ioctl.h builds them (_IO, _IOR, _IOW, _IOWR on
type KVMIO = 0xAE) from the x86-64 sizes of the structs in linux/kvm.h and
asm/kvm.h; tests/test_ioctls.py compiles the installed uapi header and checks
every number, and that every x86 ioctl the header defines is in the table.

``KVM_IOCTLS`` covers the ioctls that apply to x86, including the obsolete
ones an old VMM may still issue; the s390, PowerPC, Arm, RISC-V and
LoongArch ones are left out (some reuse x86 numbers: KVM_ARM_SET_DEVICE_ADDR
is KVM_GET_ONE_REG's number).

A few numbers are issued on more than one kind of fd and mean the same
request on each (KVM_ENABLE_CAP on a VM or a vCPU, KVM_CHECK_EXTENSION on
/dev/kvm or a VM): they have one entry whose scope names every fd, joined by
"|" ("vm|vcpu").  Two different requests never share a number on x86; the
test checks that too.

Importing this module only builds the table: no host access.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Mapping
from dataclasses import dataclass

KVMIO = 0xAE

# linux/ioctl.h (asm-generic): nr in bits 0-7, type in 8-15, size in 16-29,
# direction in 30-31.
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
#: Where _IOC_TYPE sits in an ioctl number (the BPF side extracts it with these).
IOC_TYPESHIFT, IOC_TYPEMASK = _IOC_NRBITS, (1 << _IOC_TYPEBITS) - 1
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
_DIR_NAMES = {_IOC_NONE: "NONE", _IOC_WRITE: "W", _IOC_READ: "R", _IOC_READ | _IOC_WRITE: "RW"}


def _ioc(direction: int, nr: int, size: int) -> int:
    if not 0 <= nr < 1 << _IOC_NRBITS or not 0 <= size < 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl nr {nr:#x} or size {size} out of range")
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, size: int) -> int:
    return _ioc(_IOC_READ, nr, size)


def _iow(nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


def ioctl_type(cmd: int) -> int:
    """_IOC_TYPE: 0xAE for every KVM ioctl."""
    return (cmd >> 8) & 0xFF


def ioctl_nr(cmd: int) -> int:
    """_IOC_NR: the ioctl's number within its type."""
    return cmd & 0xFF


def ioctl_size(cmd: int) -> int:
    """_IOC_SIZE: sizeof the argument as encoded in the number (0 for _IO)."""
    return (cmd >> 16) & ((1 << _IOC_SIZEBITS) - 1)


def ioctl_dir(cmd: int) -> str:
    """_IOC_DIR as a word: "NONE" (_IO), "W" (_IOW), "R" (_IOR), "RW" (_IOWR)."""
    return _DIR_NAMES[(cmd >> 30) & 3]


class KvmIoctl(enum.IntEnum):
    """The KVM ioctls kvmtrace decodes in the probes (the full table is KVM_IOCTLS).

    events.py turns every member but RUN into a -D flag for the BPF program,
    so a member added here is a change to the probe too.
    """

    CREATE_VM = _io(0x01)
    CREATE_VCPU = _io(0x41)
    SET_USER_MEMORY_REGION = _iow(0x46, 32)  # struct kvm_userspace_memory_region
    SET_USER_MEMORY_REGION2 = _iow(0x49, 160)  # struct kvm_userspace_memory_region2
    REGISTER_COALESCED_MMIO = _iow(0x67, 16)  # struct kvm_coalesced_mmio_zone
    UNREGISTER_COALESCED_MMIO = _iow(0x68, 16)  # struct kvm_coalesced_mmio_zone
    IOEVENTFD = _iow(0x79, 64)  # struct kvm_ioeventfd
    RUN = _io(0x80)


#: The kinds of file descriptor a KVM ioctl is issued on.
SCOPES = ("system", "vm", "vcpu", "device")


@dataclass(frozen=True)
class IoctlInfo:
    """One KVM ioctl.

    cmd: the full ioctl number.  name: the uapi macro ("KVM_CREATE_VM").
    scope: the fd it is issued on, "system" (/dev/kvm), "vm", "vcpu" or
    "device", or several joined by "|" in that order when the same number
    is accepted on more than one ("vm|vcpu").  arg: a short description of
    the argument, starting with its C type.
    """

    cmd: int
    name: str
    scope: str
    arg: str

    def __post_init__(self) -> None:
        parts = self.scope.split("|")
        bad = [s for s in parts if s not in SCOPES]
        if bad:
            raise ValueError(f"{self.name}: unknown scope {bad} (expected {'|'.join(SCOPES)})")
        if parts != sorted(set(parts), key=SCOPES.index):
            raise ValueError(f"{self.name}: scope {self.scope!r} not in the order {'|'.join(SCOPES)}")

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scope split into its fds: ("vm", "vcpu") for "vm|vcpu"."""
        return tuple(self.scope.split("|"))


# sizeof() on x86-64 of every type an ioctl below encodes.  The numbers
# carry these sizes, so the header test checks each one.
_SIZEOF = {
    "__u64": 8,
    "unsigned long": 8,
    "struct kvm_assigned_irq": 64,
    "struct kvm_assigned_msix_entry": 16,
    "struct kvm_assigned_msix_nr": 8,
    "struct kvm_assigned_pci_dev": 64,
    "struct kvm_clear_dirty_log": 24,
    "struct kvm_clock_data": 48,
    "struct kvm_coalesced_mmio_zone": 16,
    "struct kvm_cpuid": 8,
    "struct kvm_cpuid2": 8,
    "struct kvm_create_device": 12,
    "struct kvm_create_guest_memfd": 64,
    "struct kvm_debugregs": 128,
    "struct kvm_device_attr": 24,
    "struct kvm_dirty_log": 16,
    "struct kvm_enable_cap": 104,
    "struct kvm_enc_region": 16,
    "struct kvm_fpu": 416,
    "struct kvm_guest_debug": 72,
    "struct kvm_hyperv_eventfd": 24,
    "struct kvm_interrupt": 4,
    "struct kvm_ioeventfd": 64,
    "struct kvm_irq_level": 8,
    "struct kvm_irq_routing": 8,
    "struct kvm_irq_routing_xen_evtchn": 12,
    "struct kvm_irqchip": 520,
    "struct kvm_irqfd": 32,
    "struct kvm_lapic_state": 1024,
    "struct kvm_memory_alias": 32,
    "struct kvm_memory_attributes": 32,
    "struct kvm_memory_region": 24,
    "struct kvm_mp_state": 4,
    "struct kvm_msi": 32,
    "struct kvm_msr_filter": 392,
    "struct kvm_msr_list": 4,
    "struct kvm_msrs": 8,
    "struct kvm_nested_state": 128,
    "struct kvm_one_reg": 16,
    "struct kvm_pit_config": 64,
    "struct kvm_pit_state": 72,
    "struct kvm_pit_state2": 112,
    "struct kvm_pmu_event_filter": 32,
    "struct kvm_pre_fault_memory": 64,
    "struct kvm_regs": 144,
    "struct kvm_signal_mask": 4,
    "struct kvm_sregs": 312,
    "struct kvm_sregs2": 320,
    "struct kvm_tpr_access_ctl": 40,
    "struct kvm_translation": 24,
    "struct kvm_userspace_memory_region": 32,
    "struct kvm_userspace_memory_region2": 160,
    "struct kvm_vapic_addr": 8,
    "struct kvm_vcpu_events": 64,
    "struct kvm_x86_mce": 64,
    "struct kvm_xcrs": 392,
    "struct kvm_xen_hvm_attr": 72,
    "struct kvm_xen_hvm_config": 56,
    "struct kvm_xen_vcpu_attr": 72,
    "struct kvm_xsave": 4096,
}

_ENCODERS = {"IO": _io, "IOR": _ior, "IOW": _iow, "IOWR": _iowr}


def _entry(name: str, kind: str, nr: int, ctype: str | None, scope: str, what: str) -> IoctlInfo:
    """One row: the macro's _IO* kind, nr and C type as linux/kvm.h writes them."""
    if kind == "IO":
        return IoctlInfo(_io(nr), name, scope, what)
    assert ctype is not None, name
    return IoctlInfo(_ENCODERS[kind](nr, _SIZEOF[ctype]), name, scope, f"{ctype}: {what}")


_TABLE: tuple[IoctlInfo, ...] = (
    # --- /dev/kvm --------------------------------------------------------
    _entry("KVM_GET_API_VERSION", "IO", 0x00, None, "system", "none; returns KVM_API_VERSION (12)"),
    _entry("KVM_CREATE_VM", "IO", 0x01, None, "system", "machine type (0 or KVM_X86_*_VM); returns a VM fd"),
    _entry("KVM_GET_MSR_INDEX_LIST", "IOWR", 0x02, "struct kvm_msr_list", "system",
           "in/out, the MSRs KVM saves and restores"),
    _entry("KVM_CHECK_EXTENSION", "IO", 0x03, None, "system|vm", "a KVM_CAP_* number; returns 0, 1 or a value"),
    _entry("KVM_GET_VCPU_MMAP_SIZE", "IO", 0x04, None, "system",
           "none; returns the vCPU mmap size (struct kvm_run and rings)"),
    _entry("KVM_GET_SUPPORTED_CPUID", "IOWR", 0x05, "struct kvm_cpuid2", "system",
           "in/out, the CPUID leaves KVM supports"),
    _entry("KVM_GET_EMULATED_CPUID", "IOWR", 0x09, "struct kvm_cpuid2", "system",
           "in/out, the CPUID leaves KVM emulates"),
    _entry("KVM_GET_MSR_FEATURE_INDEX_LIST", "IOWR", 0x0A, "struct kvm_msr_list", "system",
           "in/out, the feature MSRs readable with KVM_GET_MSRS on /dev/kvm"),
    _entry("KVM_X86_GET_MCE_CAP_SUPPORTED", "IOR", 0x9D, "__u64", "system", "out, the MCG_CAP bits KVM supports"),
    # --- VM fd -----------------------------------------------------------
    _entry("KVM_SET_MEMORY_REGION", "IOW", 0x40, "struct kvm_memory_region", "vm",
           "in, a kernel-allocated slot (obsolete: KVM_SET_USER_MEMORY_REGION)"),
    _entry("KVM_CREATE_VCPU", "IO", 0x41, None, "vm", "vCPU id (APIC id); returns a vCPU fd"),
    _entry("KVM_GET_DIRTY_LOG", "IOW", 0x42, "struct kvm_dirty_log", "vm", "in, a slot and the bitmap to fill"),
    _entry("KVM_SET_MEMORY_ALIAS", "IOW", 0x43, "struct kvm_memory_alias", "vm", "in (removed, kept for old VMMs)"),
    _entry("KVM_SET_NR_MMU_PAGES", "IO", 0x44, None, "vm", "number of shadow MMU pages"),
    _entry("KVM_GET_NR_MMU_PAGES", "IO", 0x45, None, "vm", "none; returns the number of shadow MMU pages"),
    _entry("KVM_SET_USER_MEMORY_REGION", "IOW", 0x46, "struct kvm_userspace_memory_region", "vm",
           "in, slot, flags, guest physical address, size, userspace address"),
    _entry("KVM_SET_TSS_ADDR", "IO", 0x47, None, "vm", "guest physical address of the 3-page TSS (VMX)"),
    _entry("KVM_SET_IDENTITY_MAP_ADDR", "IOW", 0x48, "__u64", "vm",
           "in, guest physical address of the identity-map page (VMX)"),
    # Linux 6.8 (guest_memfd).
    _entry("KVM_SET_USER_MEMORY_REGION2", "IOW", 0x49, "struct kvm_userspace_memory_region2", "vm",
           "in, as KVM_SET_USER_MEMORY_REGION plus a guest_memfd fd and offset"),
    _entry("KVM_CREATE_IRQCHIP", "IO", 0x60, None, "vm", "none; creates the in-kernel PIC, IOAPIC and local APICs"),
    _entry("KVM_IRQ_LINE", "IOW", 0x61, "struct kvm_irq_level", "vm", "in, a GSI and its level"),
    _entry("KVM_GET_IRQCHIP", "IOWR", 0x62, "struct kvm_irqchip", "vm", "chip id in, PIC or IOAPIC state out"),
    # linux/kvm.h declares KVM_SET_IRQCHIP and KVM_SET_PIT _IOR though they read the argument.
    _entry("KVM_SET_IRQCHIP", "IOR", 0x63, "struct kvm_irqchip", "vm", "in, PIC or IOAPIC state"),
    _entry("KVM_CREATE_PIT", "IO", 0x64, None, "vm",
           "none; creates the in-kernel PIT (superseded by KVM_CREATE_PIT2)"),
    _entry("KVM_GET_PIT", "IOWR", 0x65, "struct kvm_pit_state", "vm", "out, PIT channel state"),
    _entry("KVM_SET_PIT", "IOR", 0x66, "struct kvm_pit_state", "vm", "in, PIT channel state"),
    _entry("KVM_IRQ_LINE_STATUS", "IOWR", 0x67, "struct kvm_irq_level", "vm",
           "a GSI and level in, delivery status out"),
    _entry("KVM_REGISTER_COALESCED_MMIO", "IOW", 0x67, "struct kvm_coalesced_mmio_zone", "vm",
           "in, an MMIO (or PIO) zone whose writes are batched in a ring"),
    _entry("KVM_UNREGISTER_COALESCED_MMIO", "IOW", 0x68, "struct kvm_coalesced_mmio_zone", "vm", "in, the zone"),
    _entry("KVM_ASSIGN_PCI_DEVICE", "IOR", 0x69, "struct kvm_assigned_pci_dev", "vm",
           "in (legacy device assignment, removed; VFIO replaced it)"),
    _entry("KVM_SET_GSI_ROUTING", "IOW", 0x6A, "struct kvm_irq_routing", "vm",
           "in, the GSI routing table (variable length)"),
    _entry("KVM_ASSIGN_DEV_IRQ", "IOW", 0x70, "struct kvm_assigned_irq", "vm",
           "in (legacy device assignment, removed)"),
    # _IO although it takes a pointer to struct kvm_reinject_control.
    _entry("KVM_REINJECT_CONTROL", "IO", 0x71, None, "vm",
           "struct kvm_reinject_control *: PIT tick reinjection on/off"),
    _entry("KVM_DEASSIGN_PCI_DEVICE", "IOW", 0x72, "struct kvm_assigned_pci_dev", "vm",
           "in (legacy device assignment, removed)"),
    _entry("KVM_ASSIGN_SET_MSIX_NR", "IOW", 0x73, "struct kvm_assigned_msix_nr", "vm",
           "in (legacy device assignment, removed)"),
    _entry("KVM_ASSIGN_SET_MSIX_ENTRY", "IOW", 0x74, "struct kvm_assigned_msix_entry", "vm",
           "in (legacy device assignment, removed)"),
    _entry("KVM_DEASSIGN_DEV_IRQ", "IOW", 0x75, "struct kvm_assigned_irq", "vm",
           "in (legacy device assignment, removed)"),
    _entry("KVM_IRQFD", "IOW", 0x76, "struct kvm_irqfd", "vm", "in, an eventfd bound to a GSI (and a resample fd)"),
    _entry("KVM_CREATE_PIT2", "IOW", 0x77, "struct kvm_pit_config", "vm", "in, PIT flags (speaker port dummy)"),
    _entry("KVM_SET_BOOT_CPU_ID", "IO", 0x78, None, "vm", "vCPU id of the bootstrap processor"),
    _entry("KVM_IOEVENTFD", "IOW", 0x79, "struct kvm_ioeventfd", "vm",
           "in, an eventfd signalled by writes to a PIO or MMIO address"),
    _entry("KVM_XEN_HVM_CONFIG", "IOW", 0x7A, "struct kvm_xen_hvm_config", "vm",
           "in, Xen hypercall page MSR and blobs"),
    _entry("KVM_SET_CLOCK", "IOW", 0x7B, "struct kvm_clock_data", "vm", "in, kvmclock time (ns)"),
    _entry("KVM_GET_CLOCK", "IOR", 0x7C, "struct kvm_clock_data", "vm",
           "out, kvmclock time (ns), realtime and host TSC"),
    _entry("KVM_GET_PIT2", "IOR", 0x9F, "struct kvm_pit_state2", "vm", "out, PIT state with flags"),
    _entry("KVM_SET_PIT2", "IOW", 0xA0, "struct kvm_pit_state2", "vm", "in, PIT state with flags"),
    _entry("KVM_ASSIGN_SET_INTX_MASK", "IOW", 0xA4, "struct kvm_assigned_pci_dev", "vm",
           "in (legacy device assignment, removed)"),
    _entry("KVM_SIGNAL_MSI", "IOW", 0xA5, "struct kvm_msi", "vm", "in, an MSI address and data to inject"),
    _entry("KVM_SET_PMU_EVENT_FILTER", "IOW", 0xB2, "struct kvm_pmu_event_filter", "vm",
           "in, PMU events the guest may or may not count (variable length)"),
    # The vCPU fd takes it for TDX's per-vCPU commands (Linux 6.16).
    _entry("KVM_MEMORY_ENCRYPT_OP", "IOWR", 0xBA, "unsigned long", "vm|vcpu",
           "pointer to a SEV (struct kvm_sev_cmd) or TDX (struct kvm_tdx_cmd) command"),
    _entry("KVM_MEMORY_ENCRYPT_REG_REGION", "IOR", 0xBB, "struct kvm_enc_region", "vm",
           "in, userspace memory to pin for an encrypted guest"),
    _entry("KVM_MEMORY_ENCRYPT_UNREG_REGION", "IOR", 0xBC, "struct kvm_enc_region", "vm", "in, the region to unpin"),
    _entry("KVM_HYPERV_EVENTFD", "IOW", 0xBD, "struct kvm_hyperv_eventfd", "vm",
           "in, an eventfd signalled by a Hyper-V SIGNAL_EVENT connection id"),
    _entry("KVM_CLEAR_DIRTY_LOG", "IOWR", 0xC0, "struct kvm_clear_dirty_log", "vm",
           "in, a slot, page range and the bits to clear"),
    _entry("KVM_X86_SET_MSR_FILTER", "IOW", 0xC6, "struct kvm_msr_filter", "vm",
           "in, MSR ranges whose guest accesses exit to userspace"),
    _entry("KVM_RESET_DIRTY_RINGS", "IO", 0xC7, None, "vm", "none; returns the number of dirty-ring entries reset"),
    _entry("KVM_XEN_HVM_GET_ATTR", "IOWR", 0xC8, "struct kvm_xen_hvm_attr", "vm", "attribute type in, value out"),
    _entry("KVM_XEN_HVM_SET_ATTR", "IOW", 0xC9, "struct kvm_xen_hvm_attr", "vm", "in, a Xen VM attribute"),
    _entry("KVM_XEN_HVM_EVTCHN_SEND", "IOW", 0xD0, "struct kvm_irq_routing_xen_evtchn", "vm",
           "in, a Xen event channel to raise"),
    # Linux 6.8 (guest_memfd).
    _entry("KVM_SET_MEMORY_ATTRIBUTES", "IOW", 0xD2, "struct kvm_memory_attributes", "vm",
           "in, a guest physical range and its attributes (private)"),
    # Linux 6.8 (guest_memfd).
    _entry("KVM_CREATE_GUEST_MEMFD", "IOWR", 0xD4, "struct kvm_create_guest_memfd", "vm",
           "in, size and flags; returns a guest_memfd fd"),
    _entry("KVM_CREATE_DEVICE", "IOWR", 0xE0, "struct kvm_create_device", "vm",
           "device type in, device fd out (KVM_CREATE_DEVICE_TEST only probes)"),
    # --- VM and vCPU fds -------------------------------------------------
    _entry("KVM_ENABLE_CAP", "IOW", 0xA3, "struct kvm_enable_cap", "vm|vcpu",
           "in, a KVM_CAP_* number and its arguments"),
    _entry("KVM_GET_STATS_FD", "IO", 0xCE, None, "vm|vcpu", "none; returns a binary statistics fd"),
    # The VM fd takes them too (KVM_CAP_VM_TSC_CONTROL), setting the default for new vCPUs.
    _entry("KVM_SET_TSC_KHZ", "IO", 0xA2, None, "vm|vcpu", "the guest TSC frequency in kHz"),
    _entry("KVM_GET_TSC_KHZ", "IO", 0xA3, None, "vm|vcpu", "none; returns the guest TSC frequency in kHz"),
    # --- vCPU fd ---------------------------------------------------------
    _entry("KVM_RUN", "IO", 0x80, None, "vcpu", "none; the exit is reported in the mmapped struct kvm_run"),
    _entry("KVM_GET_REGS", "IOR", 0x81, "struct kvm_regs", "vcpu", "out, general-purpose registers, rip, rflags"),
    _entry("KVM_SET_REGS", "IOW", 0x82, "struct kvm_regs", "vcpu", "in, general-purpose registers, rip, rflags"),
    _entry("KVM_GET_SREGS", "IOR", 0x83, "struct kvm_sregs", "vcpu",
           "out, segment, control and descriptor-table registers"),
    _entry("KVM_SET_SREGS", "IOW", 0x84, "struct kvm_sregs", "vcpu",
           "in, segment, control and descriptor-table registers"),
    _entry("KVM_TRANSLATE", "IOWR", 0x85, "struct kvm_translation", "vcpu",
           "linear address in, physical address out"),
    _entry("KVM_INTERRUPT", "IOW", 0x86, "struct kvm_interrupt", "vcpu",
           "in, an interrupt vector (userspace PIC only)"),
    # /dev/kvm takes it too, for the feature MSRs of KVM_GET_MSR_FEATURE_INDEX_LIST.
    _entry("KVM_GET_MSRS", "IOWR", 0x88, "struct kvm_msrs", "system|vcpu",
           "MSR indices in, values out (variable length)"),
    _entry("KVM_SET_MSRS", "IOW", 0x89, "struct kvm_msrs", "vcpu", "in, MSR indices and values (variable length)"),
    _entry("KVM_SET_CPUID", "IOW", 0x8A, "struct kvm_cpuid", "vcpu", "in, CPUID leaves (old format: KVM_SET_CPUID2)"),
    _entry("KVM_SET_SIGNAL_MASK", "IOW", 0x8B, "struct kvm_signal_mask", "vcpu",
           "in, signals blocked while in KVM_RUN (variable length)"),
    _entry("KVM_GET_FPU", "IOR", 0x8C, "struct kvm_fpu", "vcpu", "out, x87 and SSE state"),
    _entry("KVM_SET_FPU", "IOW", 0x8D, "struct kvm_fpu", "vcpu", "in, x87 and SSE state"),
    _entry("KVM_GET_LAPIC", "IOR", 0x8E, "struct kvm_lapic_state", "vcpu", "out, the local APIC register page"),
    _entry("KVM_SET_LAPIC", "IOW", 0x8F, "struct kvm_lapic_state", "vcpu", "in, the local APIC register page"),
    _entry("KVM_SET_CPUID2", "IOW", 0x90, "struct kvm_cpuid2", "vcpu",
           "in, the guest's CPUID leaves (variable length)"),
    _entry("KVM_GET_CPUID2", "IOWR", 0x91, "struct kvm_cpuid2", "vcpu", "in/out, the guest's CPUID leaves"),
    _entry("KVM_TPR_ACCESS_REPORTING", "IOWR", 0x92, "struct kvm_tpr_access_ctl", "vcpu",
           "in, enable KVM_EXIT_TPR_ACCESS exits"),
    _entry("KVM_SET_VAPIC_ADDR", "IOW", 0x93, "struct kvm_vapic_addr", "vcpu",
           "in, guest physical address of the VAPIC page"),
    _entry("KVM_GET_MP_STATE", "IOR", 0x98, "struct kvm_mp_state", "vcpu",
           "out, runnable, halted, INIT/SIPI received, ..."),
    _entry("KVM_SET_MP_STATE", "IOW", 0x99, "struct kvm_mp_state", "vcpu",
           "in, runnable, halted, INIT/SIPI received, ..."),
    _entry("KVM_NMI", "IO", 0x9A, None, "vcpu", "none; injects an NMI"),
    _entry("KVM_SET_GUEST_DEBUG", "IOW", 0x9B, "struct kvm_guest_debug", "vcpu",
           "in, single-step and hardware breakpoint control"),
    _entry("KVM_X86_SETUP_MCE", "IOW", 0x9C, "__u64", "vcpu", "in, the guest's MCG_CAP"),
    _entry("KVM_X86_SET_MCE", "IOW", 0x9E, "struct kvm_x86_mce", "vcpu", "in, a machine-check event to inject"),
    _entry("KVM_GET_VCPU_EVENTS", "IOR", 0x9F, "struct kvm_vcpu_events", "vcpu",
           "out, pending exceptions, interrupts, NMI, SMI"),
    _entry("KVM_SET_VCPU_EVENTS", "IOW", 0xA0, "struct kvm_vcpu_events", "vcpu",
           "in, pending exceptions, interrupts, NMI, SMI"),
    _entry("KVM_GET_DEBUGREGS", "IOR", 0xA1, "struct kvm_debugregs", "vcpu", "out, DR0-DR3, DR6, DR7"),
    _entry("KVM_SET_DEBUGREGS", "IOW", 0xA2, "struct kvm_debugregs", "vcpu", "in, DR0-DR3, DR6, DR7"),
    _entry("KVM_GET_XSAVE", "IOR", 0xA4, "struct kvm_xsave", "vcpu", "out, the 4 KiB XSAVE area"),
    _entry("KVM_SET_XSAVE", "IOW", 0xA5, "struct kvm_xsave", "vcpu",
           "in, the XSAVE area (any size, see KVM_CAP_XSAVE2)"),
    _entry("KVM_GET_XCRS", "IOR", 0xA6, "struct kvm_xcrs", "vcpu", "out, XCR0 and other XCRs"),
    _entry("KVM_SET_XCRS", "IOW", 0xA7, "struct kvm_xcrs", "vcpu", "in, XCR0 and other XCRs"),
    # x86 takes them since Linux 6.18 (CET: MSRs and the guest SSP); Arm, RISC-V, s390 long before.
    _entry("KVM_GET_ONE_REG", "IOW", 0xAB, "struct kvm_one_reg", "vcpu",
           "in, a register id and where to store its value"),
    _entry("KVM_SET_ONE_REG", "IOW", 0xAC, "struct kvm_one_reg", "vcpu",
           "in, a register id and where to read its value"),
    _entry("KVM_KVMCLOCK_CTRL", "IO", 0xAD, None, "vcpu",
           "none; tells the guest it was paused (soft-lockup watchdog)"),
    _entry("KVM_SMI", "IO", 0xB7, None, "vcpu", "none; injects an SMI"),
    _entry("KVM_GET_NESTED_STATE", "IOWR", 0xBE, "struct kvm_nested_state", "vcpu",
           "buffer size in, nested VMX/SVM state out (variable length)"),
    _entry("KVM_SET_NESTED_STATE", "IOW", 0xBF, "struct kvm_nested_state", "vcpu",
           "in, nested VMX/SVM state (variable length)"),
    # /dev/kvm takes it too (KVM_CAP_SYS_HYPERV_CPUID).
    _entry("KVM_GET_SUPPORTED_HV_CPUID", "IOWR", 0xC1, "struct kvm_cpuid2", "system|vcpu",
           "in/out, the Hyper-V CPUID leaves KVM supports"),
    _entry("KVM_XEN_VCPU_GET_ATTR", "IOWR", 0xCA, "struct kvm_xen_vcpu_attr", "vcpu", "attribute type in, value out"),
    _entry("KVM_XEN_VCPU_SET_ATTR", "IOW", 0xCB, "struct kvm_xen_vcpu_attr", "vcpu", "in, a Xen vCPU attribute"),
    _entry("KVM_GET_SREGS2", "IOR", 0xCC, "struct kvm_sregs2", "vcpu", "out, special registers with the PDPTRs"),
    _entry("KVM_SET_SREGS2", "IOW", 0xCD, "struct kvm_sregs2", "vcpu", "in, special registers with the PDPTRs"),
    # The number encodes 4096; the buffer is KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) bytes.
    _entry("KVM_GET_XSAVE2", "IOR", 0xCF, "struct kvm_xsave", "vcpu", "out, the whole XSAVE area (AMX and beyond)"),
    # Linux 6.11.
    _entry("KVM_PRE_FAULT_MEMORY", "IOWR", 0xD5, "struct kvm_pre_fault_memory", "vcpu",
           "a guest physical range to map in, the part not yet mapped out"),
    # --- device fd (and /dev/kvm, vCPU fds for x86's own attribute groups)
    _entry("KVM_SET_DEVICE_ATTR", "IOW", 0xE1, "struct kvm_device_attr", "vcpu|device",
           "in, group, attribute and value address"),
    _entry("KVM_GET_DEVICE_ATTR", "IOW", 0xE2, "struct kvm_device_attr", "system|vcpu|device",
           "in, group, attribute and where to store the value"),
    _entry("KVM_HAS_DEVICE_ATTR", "IOW", 0xE3, "struct kvm_device_attr", "system|vcpu|device",
           "in, group and attribute; returns 0 if supported"),
)

#: Every KVM ioctl that applies to x86, by number.
KVM_IOCTLS: Mapping[int, IoctlInfo] = types.MappingProxyType({i.cmd: i for i in _TABLE})


def ioctl_info(cmd: int) -> IoctlInfo | None:
    """The table entry for ``cmd``, or None."""
    try:
        return KVM_IOCTLS.get(int(cmd) & 0xFFFFFFFF)
    except (TypeError, ValueError, OverflowError):
        return None


def ioctl_name(cmd: int) -> str:
    """A name for any ioctl number; never raises.

    "KVM_CREATE_VM" for a known one, "KVM_IOCTL(dir=RW, nr=0xd9, size=64)"
    for an unknown number of type KVMIO, "ioctl(0x00005401)" for another
    type.  The kernel takes the command as an unsigned int, so a negative
    (sign-extended) value or one wider than 32 bits is read modulo 2**32,
    as the kernel does.
    """
    try:
        c = int(cmd) & 0xFFFFFFFF
    except (TypeError, ValueError, OverflowError):
        return f"ioctl({cmd!r})"
    info = KVM_IOCTLS.get(c)
    if info is not None:
        return info.name
    if ioctl_type(c) == KVMIO:
        return f"KVM_IOCTL(dir={ioctl_dir(c)}, nr={ioctl_nr(c):#04x}, size={ioctl_size(c)})"
    return f"ioctl({c:#010x})"
