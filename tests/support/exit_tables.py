"""Checks of kvmtrace's exit tables against a kernel's own tables."""

from __future__ import annotations

from kvmtrace.tables.tpformat import EventFormat
from kvmtrace.tables.exits import (
    VMX_EXIT_FLAG_NAMES,
    Isa,
    hw_exit_name,
    kvm_exit_name,
    kvm_exit_names_from_format,
    tables_from_format,
)


def disagreements(kvm_exit: EventFormat, userspace_exit: EventFormat) -> list[str]:
    """Every code a format names whose built-in name differs (empty list: all agree)."""
    bad: list[str] = []
    tables = tables_from_format(kvm_exit)
    assert tables.vmx, "no VMX table found in kvm_exit's print fmt"
    assert tables.svm, "no SVM table found in kvm_exit's print fmt"
    for code, name in tables.vmx.items():
        if hw_exit_name(Isa.VMX, code) != name:
            bad.append(f"VMX {code}: format {name!r}, built-in {hw_exit_name(Isa.VMX, code)!r}")
    for code, name in tables.svm.items():
        if hw_exit_name(Isa.SVM, code) != name:
            bad.append(f"SVM {code:#x}: format {name!r}, built-in {hw_exit_name(Isa.SVM, code)!r}")
    for mask, name in tables.vmx_flags.items():
        if VMX_EXIT_FLAG_NAMES.get(mask) != name:
            bad.append(f"VMX flag {mask:#x}: format {name!r}, built-in {VMX_EXIT_FLAG_NAMES.get(mask)!r}")
    kvm = kvm_exit_names_from_format(userspace_exit)
    assert kvm, "no KVM_EXIT table found in kvm_userspace_exit's print fmt"
    for code, name in kvm.items():
        if kvm_exit_name(code) != name:
            bad.append(f"KVM_EXIT {code}: format {name!r}, built-in {kvm_exit_name(code)!r}")
    return bad
