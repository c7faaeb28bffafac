"""KVM ioctl numbers: the one table of /dev/kvm, VM and vCPU ioctls.

Numbers are built as linux/ioctl.h builds them (_IO, _IOR, _IOW, _IOWR on
type KVMIO = 0xAE) from the struct sizes of linux/kvm.h; a test compiles
the uapi header and checks every number.
"""

from __future__ import annotations

import enum

KVMIO = 0xAE

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _iow(nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, nr, size)


def ioctl_type(cmd: int) -> int:
    """_IOC_TYPE: 0xAE for every KVM ioctl."""
    return (cmd >> 8) & 0xFF


class KvmIoctl(enum.IntEnum):
    """The KVM ioctls kvmtrace decodes in the probes (the full table is KVM_IOCTLS)."""

    CREATE_VM = _io(0x01)
    CREATE_VCPU = _io(0x41)
    SET_USER_MEMORY_REGION = _iow(0x46, 32)  # struct kvm_userspace_memory_region
    SET_USER_MEMORY_REGION2 = _iow(0x49, 160)  # struct kvm_userspace_memory_region2
    RUN = _io(0x80)


def ioctl_name(cmd: int) -> str:
    """The KVM_* name of an ioctl number (a fuller table comes with KVM_IOCTLS)."""
    for c in KvmIoctl:
        if c.value == cmd:
            return f"KVM_{c.name}"
    return f"ioctl({cmd:#010x})"
