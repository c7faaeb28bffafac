"""A range of an address space and the device behind it: what every device-name source gives.

Pure Python; importing this module has no side effects.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SPACES", "Region", "is_in_kernel"]

SPACES = ("memory", "io")
"""Address spaces: guest-physical memory (MMIO) and x86 port I/O."""

_GPA_MAX = 0xFFFF_FFFF_FFFF_FFFF


def is_in_kernel(name: str) -> bool:
    """Whether QEMU's region *name* is a stub for a device KVM emulates in the kernel."""
    return name.startswith("kvm-")


@dataclass(frozen=True)
class Region:
    """One range of an address space and the device behind it.

    ``start`` and ``end`` are inclusive (QEMU prints them so).  ``space`` is
    "memory" (guest-physical addresses) or "io" (ports).  ``kind`` is QEMU's
    region type: "i/o" (a device model: accesses exit), "ram", "rom", "romd",
    "ramd", ...  ``in_kernel`` is True for ranges KVM emulates without a
    userspace exit.  ``source`` is "mtree" (QEMU's map of the traced guest) or
    "builtin" (:data:`BUILTIN_RANGES`).  ``priority`` and ``offset`` (the
    range's offset inside QEMU's region, ``@OFFSET``) are as QEMU printed them;
    ``kvm_slot`` marks ranges backed by a KVM memory slot (``KVM``): RAM the
    guest reaches without exits (a ROM slot still exits on writes).
    """

    start: int
    end: int
    name: str
    space: str
    kind: str = "i/o"
    in_kernel: bool = False
    source: str = "builtin"
    description: str = ""
    priority: int = 0
    offset: int = 0
    kvm_slot: bool = False

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, not {self.space!r}")
        if not 0 <= self.start <= self.end <= _GPA_MAX:
            raise ValueError(f"bad range {self.start:#x}-{self.end:#x} for {self.name!r}")

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def __contains__(self, address: int) -> bool:
        return self.start <= address <= self.end

    def __str__(self) -> str:
        where = "kernel" if self.in_kernel else "VMM"
        return f"{self.start:#x}-{self.end:#x} {self.name} ({self.space}, {self.kind}, {where})"
