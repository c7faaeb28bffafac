"""The exit codes as C macros, for the BPF side.

C code that needs an exit code (a BPF program, a generated header) takes it
from the tables of this package through :func:`c_defines`, as ``-D`` flags or
``#define`` lines, rather than copying it by hand.

Standard library only; importing this module has no side effects.
"""

from __future__ import annotations

from kvmtrace.tables.exits.common import Isa
from kvmtrace.tables.exits.kvm import KvmExit
from kvmtrace.tables.exits.svm import SvmExit
from kvmtrace.tables.exits.vmx import VmxExit, VmxExitFlag

__all__ = ["c_defines"]


def c_defines(prefix: str = "KVMTRACE_") -> dict[str, int]:
    """The exit codes as C macro name -> value, for ``-D`` flags or a generated header.

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
