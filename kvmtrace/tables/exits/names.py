"""Names for every exit code of a trace, from its own formats or the built-in tables, and back.

A trace records the tables of the kernel that produced it (the
``__print_symbolic`` tables of its ``kvm_exit`` / ``kvm_userspace_exit``
formats); :class:`ExitNames` prefers those and falls back to the built-in
tables of :mod:`~kvmtrace.tables.exits.vmx`, :mod:`~kvmtrace.tables.exits.svm`
and :mod:`~kvmtrace.tables.exits.kvm`.  No lookup ever raises: an unnamed
code is ``"UNKNOWN(0x<hex>)"``.

The other way, for text traces printed elsewhere: :func:`name_codes` reads a
reason name back into the codes it can mean, and :func:`isa_from_names`
guesses from a trace's names which vendor's CPU produced it.

Standard library only; importing this module has no side effects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from kvmtrace.tables.tpformat import EventFormat, parse_format
from kvmtrace.tables.exits.common import _U32, Isa, unknown_name
from kvmtrace.tables.exits.kvm import KVM_EXITS
from kvmtrace.tables.exits.svm import SVM_EXIT_NAMES, SvmExit, _svm_key
from kvmtrace.tables.exits.vmx import VMX_EXIT_FLAG_NAMES, VMX_EXIT_NAMES, VmxReason, _decode_vmx

__all__ = [
    "ExitNames",
    "ExitTables",
    "hw_exit_name",
    "isa_from_names",
    "kvm_exit_name",
    "kvm_exit_names_from_format",
    "name_codes",
    "tables_from_format",
]

_KVM_EXIT_PREFIX = "KVM_EXIT_"


def kvm_exit_name(code: int) -> str:
    """Name of a KVM_EXIT_* reason without the prefix (``2`` -> ``"IO"``), never raising."""
    return _BUILTIN.kvm_exit(code)


def hw_exit_name(isa: int | str | None, raw_code: int, *, with_flags: bool = False) -> str:
    """Name of a ``kvm_exit`` hardware exit reason, never raising.

    For VMX the flag bits are masked off (``0x80000021`` -> ``"INVALID_STATE"``);
    ``with_flags=True`` appends them as the tracepoint prints them
    (``"INVALID_STATE FAILED_VMENTRY"``).  With ``Isa.UNKNOWN`` nothing can be
    named and the result is ``UNKNOWN(0x..)``.  ``isa`` may be an :class:`Isa`, its
    value, or a name (``"svm"``).
    """
    return _BUILTIN.hw(isa, raw_code, with_flags=with_flags)


# --------------------------------------------------------------------------
# Tables from a trace's own formats
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExitTables:
    """Hardware exit-reason tables found in a ``kvm_exit`` format (empty when absent)."""

    vmx: Mapping[int, str]
    svm: Mapping[int, str]
    vmx_flags: Mapping[int, str]


def _as_format(fmt: EventFormat | str) -> EventFormat:
    return parse_format(fmt, system="kvm") if isinstance(fmt, str) else fmt


def tables_from_format(kvm_exit_fmt: EventFormat | str) -> ExitTables:
    """Build the VMX and SVM name tables from a recorded ``kvm_exit`` format.

    ``kvm_exit`` prints ``(REC->isa == 1) ? __print_symbolic(<VMX>) :
    __print_symbolic(<SVM>)``, so the first symbolic table is VMX and the
    second SVM.  If a kernel ever ordered them differently the names betray it
    (VMX names are upper case) and the two are swapped; a single table is
    assigned by its names.  The ``__print_flags`` table (newer kernels only)
    gives the VMX flag names.  Accepts the raw format text too.
    """
    fmt = _as_format(kvm_exit_fmt)
    sym = [dict(t.values) for t in fmt.symbolic_tables() if t.values]
    vmx: dict[int, str] = {}
    svm: dict[int, str] = {}
    if len(sym) >= 2:
        vmx, svm = sym[0], sym[1]
        if isa_from_names(vmx.values()) == Isa.SVM and isa_from_names(svm.values()) == Isa.VMX:
            vmx, svm = svm, vmx
    elif len(sym) == 1:
        if isa_from_names(sym[0].values()) == Isa.SVM:
            svm = sym[0]
        else:
            vmx = sym[0]
    flags: dict[int, str] = {}
    for table in fmt.flag_tables():
        if "exit_reason" in table.expr:
            for mask, name in table.values.items():
                flags.setdefault(mask & _U32, name)
    return ExitTables(MappingProxyType(vmx), MappingProxyType(svm), MappingProxyType(flags))


def kvm_exit_names_from_format(kvm_userspace_exit_fmt: EventFormat | str) -> dict[int, str]:
    """KVM_EXIT_* names from a recorded ``kvm_userspace_exit`` format, ``"KVM_EXIT_"`` stripped.

    The kernel prints ``{ 2, "KVM_EXIT_" "IO" }``; this gives ``{2: "IO"}``.
    (The ``"restart"`` / ``"error"`` strings it prints when ``errno < 0`` are
    not reasons and are not in the table.)  Accepts the raw format text too.
    """
    fmt = _as_format(kvm_userspace_exit_fmt)
    names: dict[int, str] = {}
    for table in fmt.symbolic_tables():
        if "reason" not in table.expr:
            continue
        for code, name in table.values.items():
            names.setdefault(code, _strip_kvm_exit(name))
    return names


def _strip_kvm_exit(name: str) -> str:
    return name[len(_KVM_EXIT_PREFIX):] if name.startswith(_KVM_EXIT_PREFIX) else name


@dataclasses.dataclass(frozen=True)
class ExitNames:
    """Names for every exit code of one trace.

    Built with :meth:`from_formats` from the formats a trace recorded, the
    trace's own tables win (so a Linux 5.4 trace says ``PENDING_INTERRUPT``
    for VMX reason 7, as that kernel did) and the built-in tables fill the
    codes it does not name; :meth:`builtin` uses the built-in tables only.
    Every lookup returns a string, ``UNKNOWN(0x..)`` when nobody names a code.
    """

    vmx: Mapping[int, str]
    svm: Mapping[int, str]
    kvm: Mapping[int, str]
    vmx_flags: Mapping[int, str]
    source: str = "builtin"

    @classmethod
    def builtin(cls) -> ExitNames:
        """The built-in tables of :mod:`.vmx`, :mod:`.svm` and :mod:`.kvm`."""
        return cls(
            vmx=VMX_EXIT_NAMES,
            svm=SVM_EXIT_NAMES,
            kvm=MappingProxyType({c: e.name for c, e in KVM_EXITS.items()}),
            vmx_flags=VMX_EXIT_FLAG_NAMES,
        )

    @classmethod
    def from_formats(
        cls,
        kvm_exit: EventFormat | str | None = None,
        kvm_userspace_exit: EventFormat | str | None = None,
        *,
        prefer_trace: bool = True,
    ) -> ExitNames:
        """Merge a trace's ``kvm_exit`` / ``kvm_userspace_exit`` tables with the built-in ones.

        Either format may be None (not recorded) or raw format text.  With
        ``prefer_trace=False`` the built-in names win and the trace only adds
        codes they lack.
        """
        base = cls.builtin()
        hw = tables_from_format(kvm_exit) if kvm_exit is not None else ExitTables({}, {}, {})
        kvm = kvm_exit_names_from_format(kvm_userspace_exit) if kvm_userspace_exit is not None else {}
        svm_trace = {_svm_key(k): v for k, v in hw.svm.items()}

        def merge(builtin: Mapping[int, str], trace: Mapping[int, str]) -> Mapping[int, str]:
            first, second = (trace, builtin) if prefer_trace else (builtin, trace)
            return MappingProxyType({**second, **first})

        used = kvm_exit is not None or kvm_userspace_exit is not None
        return cls(
            vmx=merge(base.vmx, hw.vmx),
            svm=merge(base.svm, svm_trace),
            kvm=merge(base.kvm, kvm),
            vmx_flags=merge(base.vmx_flags, hw.vmx_flags),
            source="trace+builtin" if used else "builtin",
        )

    def kvm_exit(self, code: int) -> str:
        """Name of a KVM_EXIT_* reason (``"IO"``), or ``UNKNOWN(0x..)``."""
        return self.kvm.get(code) or unknown_name(code)

    def decode_vmx(self, raw: int) -> VmxReason:
        """Split a raw VMX exit reason into basic code and flag names (see :func:`decode_vmx`)."""
        return _decode_vmx(raw, self.vmx_flags)

    def hw(self, isa: int | str | None, raw_code: int, *, with_flags: bool = False) -> str:
        """Name of a ``kvm_exit`` exit reason for ``isa`` (see :func:`hw_exit_name`)."""
        kind = Isa.coerce(isa)
        if kind == Isa.VMX:
            basic, flags = self.decode_vmx(raw_code)
            name = self.vmx.get(basic) or unknown_name(basic)
            return " ".join((name, *flags)) if with_flags and flags else name
        if kind == Isa.SVM:
            return self.svm.get(_svm_key(raw_code)) or unknown_name(raw_code)
        return unknown_name(raw_code)

    def hw_table(self, isa: int | str | None) -> Mapping[int, str]:
        """The code -> name table of one ISA, e.g. for ``Series.map`` (VMX keys are basic codes)."""
        kind = Isa.coerce(isa)
        if kind == Isa.VMX:
            return self.vmx
        if kind == Isa.SVM:
            return self.svm
        return MappingProxyType({})


_BUILTIN = ExitNames.builtin()


# --------------------------------------------------------------------------
# Names back to codes, and the ISA they betray
# --------------------------------------------------------------------------

# Names exactly as the kernel prints them -> code: VMX in upper case (old
# kernels' PENDING_INTERRUPT included), SVM mostly in lower case, with its codes
# as a u32 field holds them (invalid_guest_state is 0xffffffff).
_VMX_EXACT = {name: code for code, name in VMX_EXIT_NAMES.items()} | {"PENDING_INTERRUPT": 7}
_SVM_EXACT = {name: code & _U32 for code, name in SVM_EXIT_NAMES.items()}
# The same in upper case, as other tools spell them; SVM's member names (IOIO, NPF) too.
_VMX_UPPER = {name.upper(): code for name, code in _VMX_EXACT.items()}
_SVM_UPPER = {name.upper(): code for name, code in _SVM_EXACT.items()} | {e.name: int(e) & _U32 for e in SvmExit}
_VMX_ONLY = frozenset(_VMX_UPPER) - frozenset(_SVM_UPPER)
_SVM_ONLY = frozenset(_SVM_UPPER) - frozenset(_VMX_UPPER)
_NAME_PREFIXES = ("KVM_EXIT_REASON_", "VMX_EXIT_REASON_", "EXIT_REASON_", "SVM_EXIT_", "SVM_", "VMX_", "EXIT_")


def _plain_upper(name: str) -> str:
    """``name`` in upper case, without the first of :data:`_NAME_PREFIXES` it starts with."""
    upper = name.upper()
    for prefix in _NAME_PREFIXES:
        if upper.startswith(prefix):
            return upper[len(prefix):]
    return upper


def name_codes(name: str, only: Isa | None = None) -> list[tuple[int, int]]:
    """The ``(isa, code)`` pairs a reason name can mean, for ``only`` one ISA or (None) both.

    An exact spelling decides alone (``"HLT"`` is VMX 12, ``"hlt"`` SVM 0x78);
    otherwise the name is read in any case without a prefix such as
    ``EXIT_REASON_`` / ``SVM_EXIT_`` / ``EXIT_`` and may mean a code of each ISA
    (``"Hlt"``).  SVM codes are u32 (``invalid_guest_state`` is 0xffffffff).
    ``[]`` for a name neither ISA has.
    """
    if only in (None, Isa.VMX) and name in _VMX_EXACT:
        return [(int(Isa.VMX), _VMX_EXACT[name])]
    if only in (None, Isa.SVM) and name in _SVM_EXACT:
        return [(int(Isa.SVM), _SVM_EXACT[name])]
    upper = _plain_upper(name)
    out = []
    if only in (None, Isa.VMX) and upper in _VMX_UPPER:
        out.append((int(Isa.VMX), _VMX_UPPER[upper]))
    if only in (None, Isa.SVM) and upper in _SVM_UPPER:
        out.append((int(Isa.SVM), _SVM_UPPER[upper]))
    return out


def isa_from_names(names: Iterable[str]) -> Isa:
    """Guess the ISA of an imported trace from the exit-reason names it uses.

    Exact spellings decide first (the kernel prints VMX reasons in upper case,
    SVM codes in lower case: ``"HLT"`` is VMX, ``"hlt"`` SVM); otherwise a
    prefix such as ``EXIT_REASON_`` / ``SVM_EXIT_`` / ``EXIT_`` is dropped and a
    name only one vendor uses decides (``"EXIT_NPF"`` -> SVM,
    ``"EPT_VIOLATION"`` -> VMX).  The majority wins; no votes or a tie give
    ``Isa.UNKNOWN``.
    """
    vmx = svm = 0
    for raw in names:
        name = str(raw).strip()
        if name in _VMX_EXACT:
            vmx += 1
            continue
        if name in _SVM_EXACT:
            svm += 1
            continue
        upper = _plain_upper(name)
        if upper in _VMX_ONLY:
            vmx += 1
        elif upper in _SVM_ONLY:
            svm += 1
    if vmx > svm:
        return Isa.VMX
    if svm > vmx:
        return Isa.SVM
    return Isa.UNKNOWN
