"""Where each ``struct kvm_run`` union member keeps its fields, and what their values mean.

A userspace exit other than KVM_EXIT_IO / KVM_EXIT_MMIO carries the first
:data:`UNION_BYTES` bytes of its union member (the probe copies them into
five u64 words, ``EventFlag.RUN_UNION``; a counts-mode recording keeps the
first 16). :func:`decode` turns those words into the member's fields, by the
layouts of ``include/uapi/linux/kvm.h`` (x86 ``struct kvm_debug_exit_arch``
for ``debug``) and with the names of their values (``KVM_INTERNAL_ERROR_*``
suberrors, ``KVM_SYSTEM_EVENT_*`` types, ...). A field beyond the bytes
carried is left out; an array is cut to the items carried (``data`` of
``internal`` gives ``data[0..3]`` of its ``ndata``).

A member whose first field selects its layout has variants: ``internal``
with suberror KVM_INTERNAL_ERROR_EMULATION is ``emulation_failure`` (flags,
insn_size, insn_bytes), ``hyperv`` and ``xen`` by their ``type``.

Standard library only; importing this module has no side effects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from kvmtrace.tables.exits.kvm import KVM_EXITS, KvmExit

__all__ = ["UNION_BYTES", "Field", "Layout", "LAYOUTS", "VALUE_NAMES", "decode", "describe"]

#: Bytes of the union an event carries (five u64 words).
UNION_BYTES = 40


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a union member: ``size`` bytes at ``offset`` (``count`` items for an array).

    ``names``: the value's name (an enum such as KVM_INTERNAL_ERROR_*) or,
    with ``bits``, the names of its flag bits.
    """

    name: str
    offset: int
    size: int = 8
    count: int = 1
    names: Mapping[int, str] | None = None
    bits: bool = False


@dataclasses.dataclass(frozen=True)
class Layout:
    """A union member's fields; ``variants`` by the value of its first field."""

    member: str
    fields: tuple[Field, ...]
    variants: Mapping[int, tuple[str, tuple[Field, ...]]] = dataclasses.field(default_factory=dict)


def _names(**kw: int) -> Mapping[int, str]:
    return MappingProxyType({v: k for k, v in kw.items()})


#: The value names of ``include/uapi/linux/kvm.h``, by the macro prefix they carry there.
VALUE_NAMES: Mapping[str, Mapping[int, str]] = MappingProxyType({
    "KVM_INTERNAL_ERROR_": _names(EMULATION=1, SIMUL_EX=2, DELIVERY_EV=3, UNEXPECTED_EXIT_REASON=4),
    "KVM_INTERNAL_ERROR_EMULATION_FLAG_": _names(INSTRUCTION_BYTES=1 << 0),
    "KVM_SYSTEM_EVENT_": _names(SHUTDOWN=1, RESET=2, CRASH=3, WAKEUP=4, SUSPEND=5, SEV_TERM=6, TDX_FATAL=7),
    "KVM_EXIT_HYPERV_": _names(SYNIC=1, HCALL=2, SYNDBG=3),
    "KVM_EXIT_XEN_": _names(HCALL=1),
    "KVM_MSR_EXIT_REASON_": _names(INVAL=1 << 0, UNKNOWN=1 << 1, FILTER=1 << 2),
    "KVM_NOTIFY_CONTEXT_": _names(INVALID=1 << 0),
    "KVM_MEMORY_EXIT_FLAG_": _names(PRIVATE=1 << 3),
})

#: x86 exception vectors (``ex.exception``, ``debug.arch.exception``).
X86_VECTORS = _names(DE=0, DB=1, NMI=2, BP=3, OF=4, BR=5, UD=6, NM=7, DF=8, TS=10, NP=11, SS=12, GP=13,
                     PF=14, MF=16, AC=17, MC=18, XM=19, VE=20, CP=21)

_F = Field
_U64 = 8
_ARGS = lambda name, offset, count: _F(name, offset, 8, count)  # noqa: E731

_EMULATION_FAILURE = (
    _F("suberror", 0, 4, names=VALUE_NAMES["KVM_INTERNAL_ERROR_"]),
    _F("ndata", 4, 4),
    _F("flags", 8, 8, names=VALUE_NAMES["KVM_INTERNAL_ERROR_EMULATION_FLAG_"], bits=True),
    _F("insn_size", 16, 1),
    _F("insn_bytes", 17, 1, 15),
    _F("data[3]", 32, 8),  # after flags and the two words of instruction bytes
)

_LAYOUTS: dict[KvmExit, Layout] = {
    KvmExit.UNKNOWN: Layout("hw", (_F("hardware_exit_reason", 0),)),
    KvmExit.EXCEPTION: Layout("ex", (_F("exception", 0, 4, names=X86_VECTORS), _F("error_code", 4, 4))),
    KvmExit.HYPERCALL: Layout("hypercall", (_F("nr", 0), _ARGS("args", 8, 6), _F("ret", 56), _F("flags", 64))),
    KvmExit.DEBUG: Layout("debug", (_F("exception", 0, 4, names=X86_VECTORS), _F("pc", 8), _F("dr6", 16),
                                    _F("dr7", 24))),
    KvmExit.FAIL_ENTRY: Layout("fail_entry", (_F("hardware_entry_failure_reason", 0), _F("cpu", 8, 4))),
    KvmExit.TPR_ACCESS: Layout("tpr_access", (_F("rip", 0), _F("is_write", 8, 4))),
    KvmExit.S390_SIEIC: Layout("s390_sieic", (_F("icptcode", 0, 1), _F("ipa", 2, 2), _F("ipb", 4, 4))),
    KvmExit.S390_RESET: Layout("s390_reset_flags", (_F("s390_reset_flags", 0),)),
    KvmExit.DCR: Layout("dcr", (_F("dcrn", 0, 4), _F("data", 4, 4), _F("is_write", 8, 1))),
    KvmExit.INTERNAL_ERROR: Layout(
        "internal",
        (_F("suberror", 0, 4, names=VALUE_NAMES["KVM_INTERNAL_ERROR_"]), _F("ndata", 4, 4), _ARGS("data", 8, 16)),
        {1: ("emulation_failure", _EMULATION_FAILURE)}),
    KvmExit.OSI: Layout("osi", (_ARGS("gprs", 0, 32),)),
    KvmExit.PAPR_HCALL: Layout("papr_hcall", (_F("nr", 0), _F("ret", 8), _ARGS("args", 16, 9))),
    KvmExit.S390_UCONTROL: Layout("s390_ucontrol", (_F("trans_exc_code", 0), _F("pgm_code", 8, 4))),
    KvmExit.S390_TSCH: Layout("s390_tsch", (_F("subchannel_id", 0, 2), _F("subchannel_nr", 2, 2),
                                            _F("io_int_parm", 4, 4), _F("io_int_word", 8, 4), _F("ipb", 12, 4),
                                            _F("dequeued", 16, 1))),
    KvmExit.EPR: Layout("epr", (_F("epr", 0, 4),)),
    KvmExit.SYSTEM_EVENT: Layout("system_event", (_F("type", 0, 4, names=VALUE_NAMES["KVM_SYSTEM_EVENT_"]),
                                                  _F("ndata", 4, 4), _ARGS("data", 8, 16))),
    KvmExit.S390_STSI: Layout("s390_stsi", (_F("addr", 0), _F("ar", 8, 1), _F("fc", 10, 1), _F("sel1", 11, 1),
                                            _F("sel2", 12, 2))),
    KvmExit.IOAPIC_EOI: Layout("eoi", (_F("vector", 0, 1),)),
    KvmExit.HYPERV: Layout(
        "hyperv", (_F("type", 0, 4, names=VALUE_NAMES["KVM_EXIT_HYPERV_"]), _ARGS("u", 8, 4)),
        {1: ("hyperv.synic", (_F("type", 0, 4, names=VALUE_NAMES["KVM_EXIT_HYPERV_"]), _F("msr", 8, 4),
                              _F("control", 16), _F("evt_page", 24), _F("msg_page", 32))),
         2: ("hyperv.hcall", (_F("type", 0, 4, names=VALUE_NAMES["KVM_EXIT_HYPERV_"]), _F("input", 8),
                              _F("result", 16), _ARGS("params", 24, 2))),
         3: ("hyperv.syndbg", (_F("type", 0, 4, names=VALUE_NAMES["KVM_EXIT_HYPERV_"]), _F("msr", 8, 4),
                               _F("control", 16), _F("status", 24), _F("send_page", 32)))}),
    KvmExit.ARM_NISV: Layout("arm_nisv", (_F("esr_iss", 0), _F("fault_ipa", 8))),
    KvmExit.X86_RDMSR: Layout("msr", (_F("error", 0, 1), _F("reason", 8, 4, names=VALUE_NAMES["KVM_MSR_EXIT_REASON_"],
                                                             bits=True), _F("index", 12, 4), _F("data", 16))),
    KvmExit.XEN: Layout(
        "xen", (_F("type", 0, 4, names=VALUE_NAMES["KVM_EXIT_XEN_"]), _ARGS("u", 8, 4)),
        {1: ("xen.hcall", (_F("type", 0, 4, names=VALUE_NAMES["KVM_EXIT_XEN_"]), _F("longmode", 8, 4),
                           _F("cpl", 12, 4), _F("input", 16), _F("result", 24), _ARGS("params", 32, 6)))}),
    KvmExit.RISCV_SBI: Layout("riscv_sbi", (_F("extension_id", 0), _F("function_id", 8), _ARGS("args", 16, 6))),
    KvmExit.RISCV_CSR: Layout("riscv_csr", (_F("csr_num", 0), _F("new_value", 8), _F("write_mask", 16),
                                            _F("ret_value", 24))),
    KvmExit.NOTIFY: Layout("notify", (_F("flags", 0, 4, names=VALUE_NAMES["KVM_NOTIFY_CONTEXT_"], bits=True),)),
    KvmExit.LOONGARCH_IOCSR: Layout("iocsr_io", (_F("phys_addr", 0), _F("data", 8, 1, 8), _F("len", 16, 4),
                                                 _F("is_write", 20, 1))),
    KvmExit.MEMORY_FAULT: Layout("memory_fault", (_F("flags", 0, names=VALUE_NAMES["KVM_MEMORY_EXIT_FLAG_"],
                                                     bits=True), _F("gpa", 8), _F("size", 16))),
    KvmExit.TDX: Layout("tdx", (_F("flags", 0), _F("nr", 8), _ARGS("u", 16, 3))),  # u: its union, as words
    KvmExit.ARM_SEA: Layout("arm_sea", (_F("flags", 0), _F("esr", 8), _F("gva", 16), _F("gpa", 24))),
}
_LAYOUTS[KvmExit.X86_WRMSR] = _LAYOUTS[KvmExit.X86_RDMSR]

#: KVM_EXIT_* code -> :class:`Layout` of its union member (every member but io and mmio,
#: whose fields the trace holds as columns of their own).
LAYOUTS: Mapping[int, Layout] = MappingProxyType({int(k): v for k, v in _LAYOUTS.items()})


def _value(raw: bytes, f: Field, item: int) -> int:
    at = f.offset + item * f.size
    return int.from_bytes(raw[at:at + f.size], "little")


def _name(f: Field, v: int) -> str | None:
    if not f.names:
        return None
    if not f.bits:
        return f.names.get(v, "?")
    names = [n for bit, n in sorted(f.names.items()) if v & bit]
    rest = v & ~sum(f.names)
    if rest:
        names.append(f"{rest:#x}")
    return "|".join(names) if names else None


def decode(code: int, words: Sequence[int], nbytes: int = UNION_BYTES) -> tuple[str, dict[str, object]]:
    """The member's name and its fields' values from the union's first ``nbytes`` as u64 ``words``.

    Values are ints, lists of ints for arrays (cut to the items carried;
    ``insn_bytes`` to its ``insn_size``), and for a named field a
    ``<field>_name`` beside it. ("", {}) for an exit without a member here.
    """
    layout = LAYOUTS.get(int(code))
    if layout is None:
        return "", {}
    raw = b"".join(int(w).to_bytes(8, "little") for w in words)[:nbytes]
    member, fields = layout.member, layout.fields
    if layout.variants and len(raw) >= fields[0].offset + fields[0].size:
        member, fields = layout.variants.get(_value(raw, fields[0], 0), (member, fields))
    out: dict[str, object] = {}
    for f in fields:
        items = min(f.count, (len(raw) - f.offset) // f.size) if len(raw) > f.offset else 0
        if items <= 0:
            continue
        if f.count == 1:
            v = _value(raw, f, 0)
            out[f.name] = v
            name = _name(f, v)
            if name is not None:
                out[f"{f.name}_name"] = name
        else:
            vals = [_value(raw, f, i) for i in range(items)]
            if f.name == "insn_bytes" and isinstance(out.get("insn_size"), int):
                vals = vals[:out["insn_size"]]
            out[f.name] = vals
    return member, out


#: Fields that are counts, sizes or small codes: shown in decimal (the others in hex).
_DECIMAL = frozenset({"ndata", "insn_size", "cpu", "len", "is_write", "error", "vector", "exception", "type",
                      "suberror", "error_code", "longmode", "cpl", "dequeued", "icptcode", "ar", "fc"})


def describe(values: Mapping[str, object]) -> str:
    """Decoded fields as one line: ``suberror=1 (EMULATION), ndata=8, insn_bytes=cc eb fe``."""
    parts = []
    for k, v in values.items():
        if k.endswith("_name"):
            continue
        if isinstance(v, list):
            text = " ".join(f"{x:02x}" for x in v) if k == "insn_bytes" else ", ".join(f"{x:#x}" for x in v)
            parts.append(f"{k}=[{text}]")
        else:
            name = values.get(f"{k}_name")
            parts.append(f"{k}={v}" if k in _DECIMAL or v < 10 else f"{k}={v:#x}")
            if name:
                parts[-1] += f" ({name})"
    return ", ".join(parts)


def _check() -> None:
    """Every layout names a member of tables/exits/kvm (used by the tests)."""
    for code, layout in LAYOUTS.items():
        assert KVM_EXITS[code].member == layout.member, (code, layout.member)
