"""Tests for kvmtrace.tables.tpformat: format files, print-format tables, tracefs reading.

Fixtures under tests/data/formats/ mirror tracefs (``events/<system>/<name>/format``):
``linux-6.18`` holds files copied from a 6.18 host, ``linux-5.4`` a hand-written
kvm_exit in the shape Linux 5.4 used (five fields, no flag table, VMX reason 7
still called PENDING_INTERRUPT).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmtrace.tables.tpformat import (
    EventFormat,
    Field,
    FormatParseError,
    SymbolTable,
    TracepointNotFoundError,
    eval_c_int,
    flag_tables,
    parse_format,
    print_tables,
    read_format,
    read_formats,
    symbolic_tables,
)

from ..support import paths

FORMATS = paths.DATA / "formats"
LINUX_6_18 = FORMATS / "linux-6.18"
LINUX_5_4 = FORMATS / "linux-5.4"


# --------------------------------------------------------------------------
# Format files
# --------------------------------------------------------------------------


def test_kvm_exit_6_18_layout() -> None:
    fmt = read_format("kvm", "kvm_exit", LINUX_6_18)
    assert (fmt.system, fmt.name, fmt.id, fmt.full_name) == ("kvm", "kvm_exit", 103, "kvm/kvm_exit")
    assert fmt.field_names == (
        "exit_reason", "guest_rip", "isa", "info1", "info2",
        "intr_info", "error_code", "vcpu_id", "requests",
    )
    assert [f.name for f in fmt.common_fields] == [
        "common_type", "common_flags", "common_preempt_count", "common_pid",
    ]
    assert fmt.field("exit_reason") == Field("exit_reason", "unsigned int", 8, 4, False)
    assert fmt.field("guest_rip") == Field("guest_rip", "unsigned long", 16, 8, False)
    assert fmt.field("isa").ctype == "u32"
    assert fmt.field("common_pid").signed
    assert fmt.has("vcpu_id") and fmt.has("common_type") and not fmt.has("nope")
    assert fmt.print_fmt.startswith('"vcpu %u reason %s%s%s rip 0x%lx')
    assert fmt.text == (LINUX_6_18 / "events/kvm/kvm_exit/format").read_text()


def test_kvm_exit_old_kernel_lacks_fields() -> None:
    fmt = read_format("kvm", "kvm_exit", LINUX_5_4)
    assert fmt.field_names == ("exit_reason", "guest_rip", "isa", "info1", "info2")
    assert not fmt.has("vcpu_id")
    with pytest.raises(KeyError, match=r"kvm/kvm_exit has no field 'vcpu_id'.*exit_reason"):
        fmt.field("vcpu_id")
    assert fmt.print_fmt.startswith('"reason %s rip 0x%lx info %llx %llx"')


@pytest.mark.parametrize(
    ("system", "name", "fields"),
    [
        ("kvm", "kvm_entry", ("vcpu_id", "rip", "immediate_exit", "intr_info", "error_code")),
        ("kvm", "kvm_pio", ("rw", "port", "size", "count", "val")),
        ("kvm", "kvm_mmio", ("type", "len", "gpa", "val")),
        ("kvm", "kvm_userspace_exit", ("reason", "errno")),
        ("syscalls", "sys_enter_ioctl", ("__syscall_nr", "fd", "cmd", "arg")),
    ],
)
def test_fixture_fields(system: str, name: str, fields: tuple[str, ...]) -> None:
    fmt = read_format(system, name, LINUX_6_18)
    assert fmt.system == system and fmt.name == name
    assert fmt.field_names == fields


def test_field_details() -> None:
    ioctl = read_format("syscalls", "sys_enter_ioctl", LINUX_6_18)
    assert ioctl.field("__syscall_nr") == Field("__syscall_nr", "int", 8, 4, True)
    assert ioctl.field("cmd").size == 8  # unsigned int widened to a long slot
    entry = read_format("kvm", "kvm_entry", LINUX_6_18)
    assert entry.field("immediate_exit") == Field("immediate_exit", "bool", 24, 1, False)
    errno = read_format("kvm", "kvm_userspace_exit", LINUX_6_18).field("errno")
    assert errno.signed and errno.ctype == "int"


ODD_FORMAT = """\
name: odd_event
ID: 7
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:1;
\tfield:__data_loc char[] filename;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u8 saddr[sizeof(struct sockaddr_in6)];\toffset:28;\tsize:28;\tsigned:0;
\tfield:u64 old_style;\toffset:56;\tsize:8;
\tfield:int older_signed;\toffset:64;\tsize:4;
\tfield:const char * ptr;\toffset:72;\tsize:8;\tsigned:0;

print fmt: "comm=%s file=%s", REC->comm, __get_str(filename)
"""


def test_arrays_data_loc_and_missing_signed() -> None:
    fmt = parse_format(ODD_FORMAT, system="test")
    assert fmt.id == 7 and fmt.full_name == "test/odd_event"
    comm = fmt.field("comm")
    assert (comm.ctype, comm.array_len, comm.size, comm.is_array) == ("char", 16, 16, True)
    filename = fmt.field("filename")
    assert filename.ctype == "__data_loc char[]" and filename.is_dynamic and not filename.is_array
    saddr = fmt.field("saddr")
    assert (saddr.ctype, saddr.array_len, saddr.size) == ("__u8", 0, 28)
    assert fmt.field("old_style").signed is False  # inferred: u64
    assert fmt.field("older_signed").signed is True  # inferred: int
    assert fmt.field("ptr").ctype == "const char *"
    assert fmt.symbolic_tables() == []


def test_minimal_format_without_id_or_print_fmt() -> None:
    fmt = parse_format("name: bare\nformat:\n")
    assert fmt == EventFormat("", "bare", None, (), (), "")


@pytest.mark.parametrize(
    "text",
    ["", "hello world\n", "ID: 3\nformat:\n", "name: x\n\tfield:int a;\tsize:4;\n", "name: x\nID: abc\n"],
)
def test_parse_errors(text: str) -> None:
    with pytest.raises(FormatParseError):
        parse_format(text)


# --------------------------------------------------------------------------
# __print_symbolic / __print_flags
# --------------------------------------------------------------------------


def test_kvm_exit_tables_6_18() -> None:
    fmt = read_format("kvm", "kvm_exit", LINUX_6_18)
    vmx, svm = fmt.symbolic_tables()
    assert vmx.expr == "REC->exit_reason & 0xffff"
    assert vmx.values[7] == "INTERRUPT_WINDOW"
    assert vmx.values[30] == "IO_INSTRUCTION"
    assert vmx.values[85] == "MSR_WRITE_IMM"
    assert svm.expr == "REC->exit_reason"
    assert svm.values[0x40 + 13] == "GP excp"
    assert svm.values[0x4D] == "GP excp"
    assert svm.values[-1] == "invalid_guest_state"
    assert svm.values[0x8000FFFD] == "vmgexit_hypervisor_feature"
    assert svm.values[0x0A6] == "idle-halt"
    assert not vmx.unparsed and not svm.unparsed
    (flags,) = fmt.flag_tables()
    assert flags.kind == "flags" and flags.delimiter == " "
    assert flags.expr == "REC->exit_reason & ~0xffff"
    assert dict(flags.values) == {0x80000000: "FAILED_VMENTRY"}
    assert [t.kind for t in print_tables(fmt.print_fmt)] == ["symbolic", "symbolic", "flags"]


def test_kvm_exit_tables_5_4() -> None:
    fmt = read_format("kvm", "kvm_exit", LINUX_5_4)
    vmx, svm = fmt.symbolic_tables()
    assert vmx.values[7] == "PENDING_INTERRUPT"
    assert 74 not in vmx.values
    assert svm.values[0x7B] == "io" and svm.values[-1] == "invalid_guest_state"
    assert fmt.flag_tables() == []


def test_adjacent_string_literals() -> None:
    fmt = read_format("kvm", "kvm_userspace_exit", LINUX_6_18)
    (table,) = fmt.symbolic_tables()
    assert table.expr == "REC->reason"
    assert table.values[2] == "KVM_EXIT_IO"
    assert table.values[0] == "KVM_EXIT_UNKNOWN"
    assert table.values[30] == "KVM_EXIT_X86_WRMSR"
    assert all(v.startswith("KVM_EXIT_") for v in table.values.values())


def test_kvm_mmio_table() -> None:
    (table,) = read_format("kvm", "kvm_mmio", LINUX_6_18).symbolic_tables()
    assert dict(table.values) == {0: "unsatisfied-read", 1: "read", 2: "write"}


def test_hex_plus_expression_value() -> None:
    (table,) = symbolic_tables('"%s", __print_symbolic(REC->x, { 0x040 + 13, "GP excp" })')
    assert dict(table.values) == {0x4D: "GP excp"}


def test_tables_ignore_strings_and_keep_unparsed_entries() -> None:
    pf = (
        '"__print_symbolic(fake, { 1, \\"no\\" }) %s %s", '
        '__print_symbolic(REC->a, { 1, "one" }, { FOO_ENUM, "foo" }, { 1, "dup" }, '
        '{ 0x2, "tw" "o, \\"quoted\\"" }), '
        '__print_flags_u64(REC->b, "|", { 1ULL << 0, "A" }, { (1UL << 2), "C" })'
    )
    (sym,) = symbolic_tables(pf)
    assert dict(sym.values) == {1: "one", 2: 'two, "quoted"'}  # first entry wins, as in the kernel
    assert sym.unparsed == ('{ FOO_ENUM, "foo" }',)
    (flags,) = flag_tables(pf)
    assert flags.delimiter == "|" and dict(flags.values) == {1: "A", 4: "C"}


def test_symbol_table_lookup_and_render() -> None:
    sym = SymbolTable("REC->x", {-1: "err", 3: "three"})
    assert sym.name(-1) == sym.name(2**64 - 1) == "err"
    assert sym.name(4) is None and sym.name(4, "?") == "?"
    assert sym.render(3) == "three" and sym.render(9) == "0x9"
    flags = SymbolTable("REC->f", {1: "A", 4: "C"}, kind="flags", delimiter=" ")
    assert flags.render(5) == "A C"
    assert flags.render(0x15) == "A C 0x10"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0x040 + 13", 0x4D),
        ("-1", -1),
        ("0xffffffff", 0xFFFFFFFF),
        ("1UL << 3", 8),
        ("(1ULL<<31)", 0x80000000),
        ("(u64)0x10", 0x10),
        ("010", 8),
        ("0x400 | 0x3", 0x403),
        ("~0", -1),
        ("FOO", None),
        ("1 / 2", None),
        ("", None),
        ("__import__('os')", None),
    ],
)
def test_eval_c_int(text: str, value: int | None) -> None:
    assert eval_c_int(text) == value


# --------------------------------------------------------------------------
# Reading tracefs
# --------------------------------------------------------------------------


def test_read_formats_keeps_raw_text() -> None:
    names = ["kvm_exit", "kvm_entry", "kvm_pio", "kvm_mmio", "kvm_userspace_exit"]
    formats = read_formats("kvm", names, LINUX_6_18)
    assert list(formats) == names
    for name, fmt in formats.items():
        raw = (LINUX_6_18 / "events" / "kvm" / name / "format").read_text()
        assert fmt.text == raw
        assert parse_format(fmt.text, system="kvm") == fmt


def test_read_formats_missing() -> None:
    with pytest.raises(TracepointNotFoundError, match=r"kvm/kvm_nope.*modprobe"):
        read_formats("kvm", ["kvm_exit", "kvm_nope"], LINUX_6_18)
    assert list(read_formats("kvm", ["kvm_exit", "kvm_nope"], LINUX_5_4, missing_ok=True)) == ["kvm_exit"]


def test_read_format_without_tracefs(tmp_path: Path) -> None:
    with pytest.raises(TracepointNotFoundError, match="tracefs is not mounted"):
        read_format("kvm", "kvm_exit", tmp_path)
