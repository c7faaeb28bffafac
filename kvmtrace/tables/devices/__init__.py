"""Device names for port I/O and MMIO addresses.

A ``kvm_pio`` event carries a port and a ``kvm_mmio`` event a guest-physical
address; this package says which device sits there, and whether the kernel
emulates it (no userspace exit) or the VMM does.

Two sources, best first:

1. QEMU's own flat memory map, the HMP command ``info mtree -f``
   (:data:`MTREE_COMMAND`), which the recorder stores in the trace header
   (``domains[i]["memory_map_text"]``).  It names every range of *this* guest
   as QEMU's memory core dispatches it, e.g.::

     FlatView #1
      AS "memory", root: system
      AS "cpu-memory-0", root: system
      Root memory region: system
       0000000000000000-00000000000bffff (prio 0, ram): pc.ram KVM
       00000000000e0000-00000000000effff (prio 0, ram): pc.ram @00000000000e0000 KVM
       00000000fec00000-00000000fec00fff (prio 0, i/o): kvm-ioapic
       00000000fed00000-00000000fed003ff (prio 0, i/o): hpet

   Each line is ``START-END (prio P, KIND): NAME [@OFFSET] [owner...] [KVM]``
   (``system/memory.c:mtree_print_flatview``).  The block whose ``AS`` lines
   include ``"memory"`` is the MMIO space, the one with ``"I/O"`` the port
   space.  Ranges named after the block's root region (``io @...`` in the I/O
   space) are the root's "unassigned" fill: no device, and left out here.
2. A built-in table of the fixed PC ranges (:data:`BUILTIN_RANGES`), used only
   for an address space the trace has no map for.  Its names are the region
   names QEMU 7.2 uses with KVM's default ``kernel-irqchip=on``, so reports
   read the same whichever source named a range.

Names starting with ``kvm-`` (``kvm-pic``, ``kvm-pit``, ``kvm-elcr``,
``kvm-ioapic``, ``kvm-apic-msi``) are QEMU's stubs for devices emulated in the
kernel: :attr:`Region.in_kernel`.  (``kvmvapic``, without the dash, is QEMU's
userspace VAPIC option-ROM port.)

Typical use::

    dm = DeviceMap.from_header(trace.header)
    dm.port(0x71)                 # Region(start=0x71, end=0x71, name='rtc', ...)
    df["device"] = dm.name_ports(df["port"].to_numpy())

One module per part, all re-exported here: :mod:`.region` (:class:`Region`),
:mod:`.builtin` (the built-in PC table), :mod:`.mtree` (the parser of
``info mtree -f``) and :mod:`.devicemap` (:class:`DeviceMap`, the lookups).

Pure Python, numpy and pandas: no libvirt, no QEMU, nothing at import time.
"""

from kvmtrace.tables.devices.builtin import BUILTIN_RANGES, DESCRIPTIONS
from kvmtrace.tables.devices.devicemap import UNKNOWN, DeviceMap, MemoryMapWarning
from kvmtrace.tables.devices.mtree import MTREE_COMMAND, MemoryMapError, capture_command, parse_mtree
from kvmtrace.tables.devices.region import SPACES, Region, is_in_kernel

__all__ = [
    "BUILTIN_RANGES",
    "DESCRIPTIONS",
    "MTREE_COMMAND",
    "SPACES",
    "UNKNOWN",
    "DeviceMap",
    "MemoryMapError",
    "MemoryMapWarning",
    "Region",
    "capture_command",
    "is_in_kernel",
    "parse_mtree",
]
