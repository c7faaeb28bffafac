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

One module per table, all re-exported here:

* :mod:`.common` -- :class:`Isa`, :func:`unknown_name`;
* :mod:`.vmx` -- VMX basic exit reasons, flags, :func:`decode_vmx`;
* :mod:`.svm` -- SVM exit codes and their printed names;
* :mod:`.kvm` -- KVM_EXIT_* codes with their ``kvm_run`` members and fields;
* :mod:`.names` -- :class:`ExitNames`, the tables of a trace's own formats,
  names read back into codes and the ISA guessed from them;
* :mod:`.cmacros` -- the codes as C macros for the BPF side.

Standard library only; importing this package has no side effects.
"""

from kvmtrace.tables.exits.cmacros import c_defines
from kvmtrace.tables.exits.common import Isa, unknown_name
from kvmtrace.tables.exits.kvm import KVM_EXITS, ExitCode, KvmExit, kvm_exit_info
from kvmtrace.tables.exits.names import (
    ExitNames,
    ExitTables,
    hw_exit_name,
    isa_from_names,
    kvm_exit_name,
    kvm_exit_names_from_format,
    tables_from_format,
)
from kvmtrace.tables.exits.svm import SVM_EXIT_NAMES, SvmExit
from kvmtrace.tables.exits.vmx import (
    VMX_BASIC_MASK,
    VMX_EXIT_FLAG_NAMES,
    VMX_EXIT_NAMES,
    VmxExit,
    VmxExitFlag,
    VmxReason,
    decode_vmx,
)

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
