"""A trace as a timeline for the Perfetto UI (ui.perfetto.dev) and chrome://tracing.

:func:`export_perfetto` writes Perfetto's native protobuf trace
(``format="proto"``, see :mod:`.proto`; ``kvmtrace export --perfetto``) or
the Chrome Trace Event Format (``format="json"``; ``--chrome-json``), JSON object
form (``{"traceEvents": [...], "otherData": {...}}``), which both viewers
open; a path ending in ``.gz`` is gzip-compressed (Perfetto opens
``.json.gz``).  Layout:

* one process per guest: pid = the VMM's pid, named
  ``domain NAME (QEMU pid N)``; one thread track per vCPU thread, named
  ``vCPU N (tid T)``, sorted by vCPU;
* hardware exits (traces with ``kvm_exit``): an ``X`` slice from kvm_exit
  to kvm_entry named by the exit reason (``IO_INSTRUCTION``), args the
  decoded fields (exit code, ISA, rip, info1/info2, intr_info, error_code,
  the access, kernel/userspace, the KVM_EXIT_* it went to userspace with,
  handling and service time); an exit with no kvm_entry is a 0-length slice;
* userspace exits (every trace): an ``X`` slice from kvm_userspace_exit to
  the thread's next KVM_RUN named ``VMM: KVM_EXIT_IO port 0x71 read (rtc)``,
  args the kvm_run member and its fields, the device and the VMM's service
  time; where a hardware exit was traced the slice lies inside it, on the
  same track, so the run loop reads exit -> VMM -> entry;
* accesses the kernel handled (kvm_pio / kvm_mmio not returned to the VMM):
  thread-scoped instant events named ``kvm-pit 0x43 write``;
* the launch (traces of ``kvmtrace launch``, see
  :func:`kvmtrace.analysis.lifecycle.lifecycle`): a ``VMM (KVM ioctls)``
  track in the guest's process with every KVM ioctl the VMM issued as a
  slice (``KVM_CREATE_VM``, ``KVM_SET_USER_MEMORY_REGION`` with its slot,
  address and size, ...), inside the ``virDomainCreateXML`` call, and the
  other steps (resume, first KVM_RUN, ...) as instants;
* counters per guest: userspace exits per window (10 ms by default), one
  series per KVM_EXIT_* reason, and hardware exits per window where traced.

Timestamps are microseconds (3 decimals: nanoseconds kept) since the
recording started.  The file is written as it is formatted, a chunk of
events at a time, and renamed into place when complete.

Slices on one track must nest (a child inside its parent, never a partial
overlap) or the viewers misdraw them.  The run loop's order guarantees it;
where lost events break it, the offending slice moves to an extra track
``... [overlap 1]`` of the same process (counted in
:attr:`ExportResult.overlap_moved`) rather than being clipped or dropped.

Modules by step: ``sources`` (what to draw: rows of each kind of slice or
instant, and how to write their JSON), ``tracks`` (where: track names, vCPU
order, overlap lanes), ``counters`` (how many per window), ``writer`` (the
streamed JSON), ``proto`` (the protobuf trace) and ``export`` (:func:`export_perfetto`, which runs them).
"""

from kvmtrace.present.perfetto.export import FORMATS, ExportResult, export_perfetto

__all__ = ["FORMATS", "ExportResult", "export_perfetto"]
