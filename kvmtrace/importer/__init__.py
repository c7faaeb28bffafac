"""`kvmtrace import`: text traces captured elsewhere, as kvmtrace trace files.

Reads the text that other tools print for the kvm tracepoints and writes the
same Arrow trace file ``kvmtrace record`` writes, so every report and analysis
works on it.  Accepted, and told apart by :func:`detect_format`:

``trace-cmd``
    ``trace-cmd report`` output, with or without its kvm plugin (first line
    often ``cpus=N``)::

        CPU 0/KVM-60250 [007] 25135.606865: kvm_exit:  vcpu 0 reason HLT rip 0x...
        qemu-system-x86-3927 [007] 302.533069: kvm_exit:  reason HLT rip 0x... info 0 0

``ftrace``
    ``/sys/kernel/tracing/trace`` or ``trace_pipe``: an irq-flags column
    (``d..1.``, ``d...``) or none, an optional ``(TGID)`` column
    (``options/record-tgid``), ``#`` header lines.

``perf``
    ``perf script`` output of tracepoints: ``comm pid[/tid] [cpu] time:
    kvm:kvm_exit: ...``.

``bare``
    Lines that are only ``kvm_exit: reason ...`` (an optional leading
    timestamp), without a task: pid, tid 0, cpu unknown.

Events read (one row of :data:`kvmtrace.kernel.events.EVENT_DTYPE` each):
``kvm_exit`` in every kernel era and the trace-cmd plugin's form,
``kvm_entry``, ``kvm_pio``, ``kvm_mmio``, ``kvm_userspace_exit``,
``sys_enter_ioctl`` with cmd ``KVM_RUN`` or, on a thread whose ioctls the text
does not hold, ``kvm_fpu`` load (a RUN event), and the scheduler's
``sched_switch``, ``sched_wakeup`` and ``sched_wakeup_new`` of the vCPU threads
(:mod:`.sched`: what vCPU time needs).  Lines of other
events, ``kvm_nested_vmexit*`` included (those are exits of a nested guest,
not of this one), are counted per event name and left out; lines nobody can
read are counted with their first line numbers; nothing in the text is fatal.

Which task is which: the number after the last ``-`` before the ``[CPU]``
column is the thread; with a ``(TGID)`` column (ftrace) or ``pid/tid`` (perf)
``pid`` is the process, otherwise ``pid`` = ``tid`` = that number, so guests
whose vCPU ids collide stay apart by ``pid``.  The header's ``domains`` has one
entry per ``pid``.

Exit reasons are read by name (``kvmtrace.tables.exits``): VMX names (upper case,
``PENDING_INTERRUPT`` of old kernels included, flag names such as
``FAILED_VMENTRY`` after the name set their bit), SVM names (``npf``, ``io``,
``PF excp``), or a number the kernel printed for a code it has no name for.
The trace's ISA is voted by the names (:func:`kvmtrace.tables.exits.isa_from_names`)
unless given.  An exit whose reason has neither a known name nor a number
(the trace-cmd plugin prints ``UNKNOWN``) cannot be stored: it is counted, by
name, in ``undecodable_exits``.

Timestamps become ``ts_ns`` exactly, from the decimal text (µs or ns
decimals; a whole number, as a counting trace clock prints, is kept as the raw
count and the header's ``clock`` says so).  They are the source's trace clock
(trace-cmd's default is ``local``), not necessarily CLOCK_MONOTONIC.  The
source's lost-event marks (``[LOST N EVENTS]``, ``[N EVENTS DROPPED]``) add up
to the trailer's ``lost_events``.  A last line without its newline (a file cut
short) is not trusted and left out, and said so.  gzip, xz and bzip2 files are
read as they are; binary files (trace.dat, perf.data) are refused with the
command that prints them as text.

Memory stays flat: the input is read line by line, events go to a temporary
file next to the output in batches of
:data:`~kvmtrace.importer.convert.BATCH_EVENTS`, and are copied into the
trace at the end, when the header (counts, domains, ISA) is known.

The modules: :mod:`.source` (opening the input, format detection),
:mod:`.shapes` (line patterns, exit reasons), :mod:`.rows` (one handler per
event), :mod:`.sched` (the scheduler's lines and kvm_fpu), :mod:`.convert`
(the parse loop, batches, the trace file), :mod:`.checks` (what an import
can know: ISA, resolution, process ids, domains) and :mod:`.result`
(:class:`ImportResult`).
"""

from kvmtrace.importer.convert import default_output, import_text
from kvmtrace.importer.result import ImportResult
from kvmtrace.importer.source import FORMATS, detect_format

__all__ = ["FORMATS", "ImportResult", "default_output", "detect_format", "import_text"]
