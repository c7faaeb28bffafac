"""Tests for kvmtrace.tables.exits, the one source of truth for exit codes.

Three kinds of check:

* agreement with the tracepoint formats of the recorded 6.18 fixtures (the
  live tracefs of the machine is checked in tests/kernel/test_exits.py);
* agreement with the uapi headers (``asm/vmx.h``, ``asm/svm.h``,
  ``linux/kvm.h`` including the ``struct kvm_run`` union), for every copy
  found on the machine (skipped if none is installed);
* unit tests of decoding and lookups.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmtrace.tables.exits import (
    KVM_EXITS,
    SVM_EXIT_NAMES,
    VMX_EXIT_FLAG_NAMES,
    VMX_EXIT_NAMES,
    ExitCode,
    ExitNames,
    Isa,
    KvmExit,
    SvmExit,
    VmxExit,
    VmxExitFlag,
    VmxReason,
    c_defines,
    decode_vmx,
    hw_exit_name,
    isa_from_names,
    kvm_exit_info,
    kvm_exit_name,
    kvm_exit_names_from_format,
    tables_from_format,
)
from kvmtrace.tables.tpformat import (
    EventFormat,
    eval_c_int,
    parse_format,
    read_format,
)

from ..support.exit_tables import disagreements as _disagreements
from ..support.paths import DATA

FORMATS = DATA / "formats"
LINUX_6_18 = FORMATS / "linux-6.18"
LINUX_5_4 = FORMATS / "linux-5.4"

# Names older kernels used for a code that has since been renamed.  Only these
# may differ between an installed header and the built-in tables.
VMX_RENAMED = {7: {"PENDING_INTERRUPT"}}


# --------------------------------------------------------------------------
# Agreement with tracepoint formats
# --------------------------------------------------------------------------


def test_builtin_tables_match_6_18_fixture() -> None:
    kvm_exit = read_format("kvm", "kvm_exit", LINUX_6_18)
    userspace = read_format("kvm", "kvm_userspace_exit", LINUX_6_18)
    assert _disagreements(kvm_exit, userspace) == []
    # The built-in tables name exactly what 6.18 prints, no more (SVM_EXIT_ERR aside).
    tables = tables_from_format(kvm_exit)
    assert set(tables.vmx) == set(VMX_EXIT_NAMES)
    assert set(tables.svm) == set(SVM_EXIT_NAMES)


# --------------------------------------------------------------------------
# Agreement with the uapi headers
# --------------------------------------------------------------------------


def _header_copies(*relpaths: str) -> list[Path]:
    """Installed copies of a uapi header, one per distinct content."""
    candidates: list[Path] = []
    for rel in relpaths:
        candidates += [Path("/usr/include") / rel, Path("/usr/include/x86_64-linux-gnu") / rel]
        candidates += sorted(Path("/usr/src").glob(f"linux-headers-*/include/uapi/{rel}"))
        candidates += sorted(Path("/usr/src").glob(f"linux-headers-*/arch/x86/include/uapi/{rel}"))
    seen: set[str] = set()
    found: list[Path] = []
    for path in candidates:
        if path.is_file():
            text = path.read_text(errors="replace")
            if text not in seen:
                seen.add(text)
                found.append(path)
    return found


def _need(paths: list[Path], what: str) -> list[Path]:
    if not paths:
        pytest.skip(f"no {what} installed (linux-libc-dev or linux-headers-*)")
    return paths


_DEFINE_RE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+([^\\\n]+?)[ \t]*(?:/\*.*)?$", re.M)


def _defines(*texts: str) -> dict[str, int]:
    """Integer #defines of the texts, resolving names defined earlier."""
    values: dict[str, int] = {}
    for text in texts:
        for name, expr in _DEFINE_RE.findall(text):
            value = _eval(expr, values)
            if value is not None:
                values[name] = value
    return values


def _eval(expr: str, defines: dict[str, int]) -> int | None:
    def sub(m: re.Match[str]) -> str:
        return str(defines[m.group(0)]) if m.group(0) in defines else m.group(0)

    return eval_c_int(re.sub(r"\b[A-Za-z_]\w*\b", sub, expr))


def _macro_entries(text: str, macro: str) -> list[tuple[str, str]]:
    """``{ EXPR, "name" }`` pairs of a multi-line ``#define MACRO \\`` table."""
    m = re.search(rf"#define\s+{macro}\s*\\\n((?:.*\\\n)*.*)", text)
    assert m, f"{macro} not found"
    return re.findall(r'\{\s*([^,{}]+?)\s*,\s*"([^"]*)"\s*\}', m.group(1))


def _vmx_headers() -> list[Path]:
    return _need(_header_copies("asm/vmx.h"), "uapi asm/vmx.h")


def test_vmx_table_matches_header() -> None:
    for path in _vmx_headers():
        text = path.read_text()
        defines = _defines(text)
        entries = _macro_entries(text, "VMX_EXIT_REASONS")
        assert len(entries) > 50, path
        for expr, name in entries:
            code = _eval(expr, defines)
            assert code is not None, (path, expr)
            if VMX_EXIT_NAMES.get(code) != name:
                assert name in VMX_RENAMED.get(code, ()), f"{path}: VMX {code} is {name!r} there"
        for define, code in defines.items():
            if define.startswith("EXIT_REASON_"):
                short = define[len("EXIT_REASON_"):]
                assert VmxExit[short] == code or short in VMX_RENAMED.get(code, ()), (path, define)


def test_vmx_flags_match_header() -> None:
    for path in _vmx_headers():
        text = path.read_text()
        defines = _defines(text)
        for expr, name in _macro_entries(text, "VMX_EXIT_REASON_FLAGS"):
            assert VMX_EXIT_FLAG_NAMES[_eval(expr, defines) or 0] == name, path
        assert defines["VMX_EXIT_REASONS_FAILED_VMENTRY"] == VmxExitFlag.FAILED_VMENTRY
        if "VMX_EXIT_REASONS_SGX_ENCLAVE_MODE" in defines:
            assert defines["VMX_EXIT_REASONS_SGX_ENCLAVE_MODE"] == VmxExitFlag.SGX_ENCLAVE_MODE


def test_svm_table_matches_header() -> None:
    for path in _need(_header_copies("asm/svm.h"), "uapi asm/svm.h"):
        text = path.read_text()
        # The exception vectors (DE_VECTOR...) live in asm/kvm.h next to svm.h.
        kvm_h = path.with_name("kvm.h")
        defines = _defines(kvm_h.read_text() if kvm_h.is_file() else "", text)
        entries = _macro_entries(text, "SVM_EXIT_REASONS")
        assert len(entries) > 80, path
        for expr, name in entries:
            code = _eval(expr, defines)
            assert code is not None, (path, expr)
            assert SVM_EXIT_NAMES.get(code) == name, f"{path}: SVM {code:#x} is {name!r} there"
            # Member names follow the header's macros.
            member = SvmExit(code).name
            single = re.fullmatch(r"SVM_EXIT_(\w+)|SVM_(VMGEXIT_\w+)", expr)
            excp = re.fullmatch(r"SVM_EXIT_EXCP_BASE\s*\+\s*(\w+)_VECTOR", expr)
            if single:
                assert member == (single.group(1) or single.group(2)), (path, expr)
            elif excp:
                assert member == f"EXCP_{excp.group(1)}", (path, expr)
        assert defines["SVM_EXIT_ERR"] == SvmExit.ERR == -1


def _kvm_h_copies() -> list[Path]:
    return _need(_header_copies("linux/kvm.h"), "uapi linux/kvm.h")


def _kvm_exit_defines(text: str) -> dict[str, int]:
    """The KVM_EXIT_* reason block (not KVM_EXIT_IO_IN, KVM_EXIT_HYPERV_SYNIC, ...)."""
    start = re.search(r"^#define KVM_EXIT_UNKNOWN\s+0\b", text, re.M)
    assert start, "KVM_EXIT_UNKNOWN not found"
    out: dict[str, int] = {}
    for line in text[start.start():].splitlines():
        m = re.match(r"#define KVM_EXIT_(\w+)\s+(\d+)", line)
        if not m:
            break
        out[m.group(1)] = int(m.group(2))
    return out


def test_kvm_exit_codes_match_header() -> None:
    for path in _kvm_h_copies():
        exits = _kvm_exit_defines(path.read_text())
        assert len(exits) > 30, path
        for name, code in exits.items():
            assert KvmExit[name] == code, (path, name)
            assert kvm_exit_name(code) == name


_EXIT_COMMENT_RE = re.compile(r"/\*\s*(KVM_EXIT_\w+(?:\s*/\s*KVM_EXIT_\w+)*)(?:\s*\([^)]*\))?\s*\*/")


def _block(text: str, open_brace: int) -> str:
    depth = 0
    for i in range(open_brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_brace + 1:i]
    raise AssertionError("unbalanced braces")


def _statements(body: str) -> Iterator[str]:
    depth, start = 0, 0
    for i, c in enumerate(body):
        depth += {"{": 1, "}": -1}.get(c, 0)
        if c == ";" and depth == 0:
            yield body[start:i].strip()
            start = i + 1


def _declared_names(stmt: str) -> list[str]:
    stmt = re.sub(r"\[[^\]]*\]", "", stmt)
    if "," in stmt:  # "__u64 r11, r12, r13;"
        head, *rest = stmt.split(",")
        return [re.findall(r"\w+", head)[-1], *(r.strip() for r in rest)]
    return [re.findall(r"\w+", stmt)[-1]]


def _struct_fields(body: str, header: str) -> list[str]:
    """Top-level field names of a struct body; anonymous unions/structs flattened, padding dropped."""
    names: list[str] = []
    for stmt in _statements(body):
        if "{" in stmt:
            after = stmt[stmt.rindex("}") + 1:].strip()
            if after:
                names += _declared_names(after)
            else:
                names += _struct_fields(_block(stmt, stmt.index("{")), header)
        elif stmt:
            names += _declared_names(stmt)
    return [n for n in names if not n.startswith("pad")]


def _named_struct_fields(header: str, tag: str) -> list[str]:
    m = re.search(rf"\bstruct\s+{tag}\s*\{{", header)
    assert m, f"struct {tag} not in header"
    return _struct_fields(_block(header, m.end() - 1), header)


def _kvm_run_members(header: str) -> dict[str, tuple[str, list[str]]]:
    """Exit name -> (union member, its fields), read from ``struct kvm_run``'s comments."""
    run = re.search(r"struct kvm_run\s*\{", header)
    assert run, "struct kvm_run not found"
    run_body = _block(header, run.end() - 1)
    union = re.search(r"\bunion\s*\{", run_body)
    assert union
    body = _block(run_body, union.end() - 1)
    # Comments naming exits become markers; other comments and cpp lines go.
    body = _EXIT_COMMENT_RE.sub(lambda m: " @" + m.group(1).replace("/", " ") + "@ ", body)
    body = re.sub(r"/\*.*?\*/", " ", body, flags=re.S)
    body = "\n".join(line for line in body.splitlines() if not line.strip().startswith("#"))
    members: dict[str, tuple[str, list[str]]] = {}
    for stmt in _statements(body):
        marker = re.match(r"@([^@]*)@", stmt)
        if not marker:
            continue
        decl = stmt[marker.end():].strip()
        if "{" in decl:
            member = _declared_names(decl[decl.rindex("}") + 1:])[0]
            fields = _struct_fields(_block(decl, decl.index("{")), header)
        else:
            member = _declared_names(decl)[0]
            tag = re.match(r"struct\s+(\w+)\s+\w+$", decl)
            fields = _named_struct_fields(header, tag.group(1)) if tag else []
        for exit_name in re.findall(r"KVM_EXIT_(\w+)", marker.group(1)):
            members[exit_name] = (member, fields)
    return members


def test_kvm_run_members_match_header() -> None:
    for path in _kvm_h_copies():
        text = path.read_text()
        members = _kvm_run_members(text)
        assert members["IO"][0] == "io", path
        for name, code in _kvm_exit_defines(text).items():
            info = KVM_EXITS[code]
            if name not in members:
                assert info.member is None, f"{path}: KVM_EXIT_{name} fills no kvm_run member there"
                continue
            member, fields = members[name]
            assert info.member == member, (path, name)
            missing = set(fields) - set(info.fields)
            assert not missing, f"{path}: {member} has fields {sorted(missing)} not in the table"


# --------------------------------------------------------------------------
# Unit tests
# --------------------------------------------------------------------------


def test_failed_vmentry_decoding() -> None:
    assert decode_vmx(0x80000021) == VmxReason(VmxExit.INVALID_STATE, ("FAILED_VMENTRY",))
    basic, flags = decode_vmx(0x80000021)
    assert (basic, flags) == (33, ("FAILED_VMENTRY",))
    assert hw_exit_name(Isa.VMX, 0x80000021) == "INVALID_STATE"
    assert hw_exit_name(Isa.VMX, 0x80000021, with_flags=True) == "INVALID_STATE FAILED_VMENTRY"
    assert decode_vmx(30) == (30, ())
    assert decode_vmx(0x08000000 | 48) == (48, ("SGX_ENCLAVE_MODE",))
    assert decode_vmx(0x40000000 | 0x80000000 | 2) == (2, ("FAILED_VMENTRY", "UNKNOWN(0x40000000)"))


def test_unknown_codes_never_raise() -> None:
    assert hw_exit_name(Isa.VMX, 5) == "UNKNOWN(0x5)"
    assert hw_exit_name(Isa.VMX, 0xFFFE) == "UNKNOWN(0xfffe)"
    assert hw_exit_name(Isa.SVM, 0x0AB) == "UNKNOWN(0xab)"
    assert hw_exit_name(Isa.UNKNOWN, 30) == "UNKNOWN(0x1e)"
    assert hw_exit_name(99, 30) == "UNKNOWN(0x1e)"
    assert kvm_exit_name(4242) == "UNKNOWN(0x1092)"
    assert kvm_exit_name(-2) == "UNKNOWN(0xfffffffffffffffe)"
    assert kvm_exit_info(200) == ExitCode(200, "UNKNOWN(0xc8)", None, ())


def test_well_known_names() -> None:
    assert hw_exit_name(Isa.VMX, 7) == "INTERRUPT_WINDOW"
    assert VmxExit.INTERRUPT_WINDOW == 7
    assert hw_exit_name(Isa.VMX, 30) == "IO_INSTRUCTION"
    assert hw_exit_name(Isa.VMX, 48) == "EPT_VIOLATION"
    assert [hw_exit_name(1, c) for c in (74, 75, 77, 84, 85)] == [
        "BUS_LOCK", "NOTIFY", "TDCALL", "MSR_READ_IMM", "MSR_WRITE_IMM",
    ]
    assert hw_exit_name(Isa.SVM, 0x040 + 13) == "GP excp"
    assert hw_exit_name(Isa.SVM, 0x040 + 14) == "PF excp"
    assert hw_exit_name(Isa.SVM, 0x040 + 19) == "XF excp"
    assert [hw_exit_name(Isa.SVM, c) for c in (0x400, 0x078, 0x07B, 0x07C, 0x081, 0x403)] == [
        "npf", "hlt", "io", "msr", "hypercall", "vmgexit",
    ]
    assert hw_exit_name(Isa.SVM, 0x80000010) == "vmgexit_page_state_change"
    for err in (-1, 0xFFFFFFFF, 2**64 - 1):
        assert hw_exit_name(Isa.SVM, err) == "invalid_guest_state"
    assert hw_exit_name("svm", 0x7B) == hw_exit_name(2, 0x7B) == "io"


@pytest.mark.parametrize(
    ("code", "name", "member", "fields"),
    [
        (0, "UNKNOWN", "hw", ("hardware_exit_reason",)),
        (1, "EXCEPTION", "ex", ("exception", "error_code")),
        (2, "IO", "io", ("direction", "size", "port", "count", "data_offset")),
        (3, "HYPERCALL", "hypercall", ("nr", "args", "ret", "longmode", "flags")),
        (4, "DEBUG", "debug", ("arch",)),
        (5, "HLT", None, ()),
        (6, "MMIO", "mmio", ("phys_addr", "data", "len", "is_write")),
        (7, "IRQ_WINDOW_OPEN", None, ()),
        (8, "SHUTDOWN", None, ()),
        (9, "FAIL_ENTRY", "fail_entry", ("hardware_entry_failure_reason", "cpu")),
        (10, "INTR", None, ()),
        (17, "INTERNAL_ERROR", "internal", ("suberror", "ndata", "data")),
        (24, "SYSTEM_EVENT", "system_event", ("type", "ndata", "flags", "data")),
        (29, "X86_RDMSR", "msr", ("error", "reason", "index", "data")),
        (30, "X86_WRMSR", "msr", ("error", "reason", "index", "data")),
        (31, "DIRTY_RING_FULL", None, ()),
        (33, "X86_BUS_LOCK", None, ()),
        (37, "NOTIFY", "notify", ("flags",)),
        (39, "MEMORY_FAULT", "memory_fault", ("flags", "gpa", "size")),
        (40, "TDX", "tdx", ("flags", "nr", "unknown", "get_quote", "get_tdvmcall_info", "setup_event_notify")),
    ],
)
def test_kvm_exit_members(code: int, name: str, member: str | None, fields: tuple[str, ...]) -> None:
    assert kvm_exit_info(code) == ExitCode(code, name, member, fields)
    assert kvm_exit_name(code) == name


def test_enums_are_consistent() -> None:
    assert [int(e) for e in KvmExit] == list(range(len(KvmExit)))
    assert set(KVM_EXITS) == {int(e) for e in KvmExit}
    assert len(set(VMX_EXIT_NAMES.values())) == len(VMX_EXIT_NAMES)
    assert len(set(SVM_EXIT_NAMES.values())) == len(SVM_EXIT_NAMES)
    assert {int(i) for i in Isa} == {0, 1, 2}


def test_exit_names_prefer_trace_tables() -> None:
    old = read_format("kvm", "kvm_exit", LINUX_5_4)
    names = ExitNames.from_formats(old)
    assert names.source == "trace+builtin"
    assert names.hw(Isa.VMX, 7) == "PENDING_INTERRUPT"  # what Linux 5.4 called it
    assert names.hw(Isa.VMX, 74) == "BUS_LOCK"  # 5.4 had no name: built-in fills in
    assert names.hw(Isa.VMX, 0x80000021, with_flags=True) == "INVALID_STATE FAILED_VMENTRY"
    assert names.hw(Isa.SVM, 0xFFFFFFFF) == "invalid_guest_state"
    assert names.hw(Isa.SVM, 0x403) == "vmgexit"
    assert names.kvm_exit(2) == "IO"
    assert ExitNames.from_formats(old, prefer_trace=False).hw(Isa.VMX, 7) == "INTERRUPT_WINDOW"
    assert ExitNames.from_formats().source == "builtin"
    assert ExitNames.builtin().hw_table(Isa.SVM)[0x400] == "npf"
    assert dict(ExitNames.builtin().hw_table(Isa.UNKNOWN)) == {}


def test_exit_names_from_raw_text_and_trace_only_codes() -> None:
    kvm_exit_text = (LINUX_6_18 / "events/kvm/kvm_exit/format").read_text()
    userspace_text = (LINUX_6_18 / "events/kvm/kvm_userspace_exit/format").read_text().replace(
        '{ 30, "KVM_EXIT_" "X86_WRMSR" }', '{ 30, "KVM_EXIT_" "X86_WRMSR" }, { 99, "KVM_EXIT_" "FUTURE" }'
    )
    names = ExitNames.from_formats(kvm_exit_text, userspace_text)
    assert names.kvm_exit(99) == "FUTURE"
    assert names.kvm_exit(40) == "TDX"  # not printed by 6.18, known built-in
    assert names.hw(1, 85) == "MSR_WRITE_IMM"
    assert kvm_exit_names_from_format(userspace_text)[2] == "IO"


def _fake_kvm_exit(print_fmt: str) -> EventFormat:
    return parse_format(f"name: kvm_exit\nID: 1\nformat:\n\nprint fmt: {print_fmt}\n", system="kvm")


def test_tables_from_format_orders_by_names() -> None:
    swapped = _fake_kvm_exit(
        '"%s", (REC->isa == 2) ? __print_symbolic(REC->exit_reason, { 0x400, "npf" }, { 0x07b, "io" }) '
        ': __print_symbolic(REC->exit_reason, { 48, "EPT_VIOLATION" }, { 30, "IO_INSTRUCTION" })'
    )
    tables = tables_from_format(swapped)
    assert dict(tables.vmx) == {48: "EPT_VIOLATION", 30: "IO_INSTRUCTION"}
    assert dict(tables.svm) == {0x400: "npf", 0x7B: "io"}
    only_svm = tables_from_format(_fake_kvm_exit('"%s", __print_symbolic(REC->exit_reason, { 0x400, "npf" })'))
    assert dict(only_svm.svm) == {0x400: "npf"} and not only_svm.vmx
    nothing = tables_from_format(_fake_kvm_exit('"reason %d", REC->exit_reason'))
    assert not nothing.vmx and not nothing.svm and not nothing.vmx_flags


@pytest.mark.parametrize(
    ("names", "isa"),
    [
        (["EXIT_NPF"], Isa.SVM),
        (["npf", "hlt", "io", "msr"], Isa.SVM),
        (["hlt"], Isa.SVM),
        (["SVM_EXIT_IOIO", "SVM_EXIT_MSR"], Isa.SVM),
        (["EPT_VIOLATION", "IO_INSTRUCTION"], Isa.VMX),
        (["HLT"], Isa.VMX),
        (["EXIT_REASON_EPT_MISCONFIG", "ept_violation"], Isa.VMX),
        (["PENDING_INTERRUPT"], Isa.VMX),
        ([], Isa.UNKNOWN),
        (["banana"], Isa.UNKNOWN),
        (["EPT_VIOLATION", "npf"], Isa.UNKNOWN),
    ],
)
def test_isa_from_names(names: list[str], isa: Isa) -> None:
    assert isa_from_names(names) is isa


def test_c_defines() -> None:
    defs = c_defines()
    assert defs["KVMTRACE_KVM_EXIT_IO"] == 2
    assert defs["KVMTRACE_KVM_ISA_VMX"] == 1 and defs["KVMTRACE_KVM_ISA_SVM"] == 2
    assert defs["KVMTRACE_EXIT_REASON_INTERRUPT_WINDOW"] == 7
    assert defs["KVMTRACE_VMX_EXIT_REASONS_FAILED_VMENTRY"] == 0x80000000
    assert defs["KVMTRACE_SVM_EXIT_IOIO"] == 0x7B
    assert defs["KVMTRACE_SVM_VMGEXIT_PSC"] == 0x80000010
    assert c_defines("")["KVM_EXIT_MMIO"] == 6
