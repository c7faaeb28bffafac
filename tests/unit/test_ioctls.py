"""Tests for kvmtrace.tables.ioctls, the one table of KVM ioctl numbers.

* Against the installed uapi header: a C program generated from the table's
  names prints every macro the header defines, and each number must match
  (names the header lacks are reported, not failed: they are newer than the
  header).  The other way round, every ioctl the header defines must be in the
  table unless it is for another architecture.  Both skip, saying why, when
  ``cc`` or /usr/include/linux/kvm.h is missing.
* The table itself: no number used twice, shared numbers only where meant.
* ``ioctl_name`` on known, unknown-KVM and non-KVM numbers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from kvmtrace.tables import ioctls
from kvmtrace.tables.ioctls import KVM_IOCTLS, KVMIO, IoctlInfo, KvmIoctl, ioctl_info, ioctl_name, ioctl_type

HEADER = Path("/usr/include/linux/kvm.h")

#: Header ioctls the table leaves out on purpose: not for x86.
NOT_X86_PREFIXES = ("KVM_S390_", "KVM_PPC_", "KVM_ARM_", "KVM_RISCV_", "KVM_LOONGARCH_", "__KVM_DEPRECATED_")
NOT_X86 = {
    "KVM_CREATE_SPAPR_TCE": "PowerPC",
    "KVM_CREATE_SPAPR_TCE_64": "PowerPC",
    "KVM_ALLOCATE_RMA": "PowerPC",
    "KVM_DIRTY_TLB": "PowerPC BookE",
    "KVM_GET_REG_LIST": "Arm, RISC-V, LoongArch (x86 has KVM_GET_MSR_INDEX_LIST)",
}

#: The numbers issued on more than one kind of fd, each one entry on purpose.
SHARED = {
    "KVM_CHECK_EXTENSION": "system|vm",
    "KVM_ENABLE_CAP": "vm|vcpu",
    "KVM_GET_STATS_FD": "vm|vcpu",
    "KVM_SET_TSC_KHZ": "vm|vcpu",
    "KVM_GET_TSC_KHZ": "vm|vcpu",
    "KVM_MEMORY_ENCRYPT_OP": "vm|vcpu",
    "KVM_GET_MSRS": "system|vcpu",
    "KVM_GET_SUPPORTED_HV_CPUID": "system|vcpu",
    "KVM_SET_DEVICE_ATTR": "vcpu|device",
    "KVM_GET_DEVICE_ATTR": "system|vcpu|device",
    "KVM_HAS_DEVICE_ATTR": "system|vcpu|device",
}


def _is_x86(name: str) -> bool:
    return not name.startswith(NOT_X86_PREFIXES) and name not in NOT_X86


def _need_cc_and_header() -> str:
    cc = shutil.which("cc")
    missing = [what for what, ok in (("cc", cc is not None), (str(HEADER), HEADER.is_file())) if not ok]
    if missing:
        pytest.skip("needs a C compiler and the kernel uapi headers (apt install gcc linux-libc-dev): "
                    + ", ".join(missing) + " missing")
    return cc


def _c_program(names: list[str]) -> str:
    lines = ["#include <stdio.h>", "#include <linux/kvm.h>", "int main(void)", "{"]
    for name in names:
        lines += [f"#ifdef {name}",
                  f'\tprintf("%s 0x%08lx\\n", "{name}", (unsigned long)({name}));',
                  "#else",
                  f'\tprintf("%s missing\\n", "{name}");',
                  "#endif"]
    return "\n".join(lines + ["\treturn 0;", "}", ""])


@pytest.fixture(scope="module")
def header_numbers(tmp_path_factory) -> tuple[dict[str, int], list[str], dict[str, str]]:
    """(number of each table name the header defines, names it lacks,
    names it defines but cannot expand on this host -> compiler message)."""
    cc = _need_cc_and_header()
    tmp = tmp_path_factory.mktemp("kvmh")
    names = sorted(i.name for i in KVM_IOCTLS.values())
    unusable: dict[str, str] = {}
    # A macro whose struct the header no longer defines fails to compile:
    # drop it, note it, and compile the rest (at most once per name).
    for _ in range(len(names) + 1):
        src = tmp / "kvm_ioctls.c"
        wanted = [n for n in names if n not in unusable]
        src.write_text(_c_program(wanted))
        r = subprocess.run([cc, "-o", str(tmp / "kvm_ioctls"), str(src)], capture_output=True, text=True)
        if r.returncode == 0:
            break
        c_lines = src.read_text().splitlines()
        bad = {}
        for m in re.finditer(rf"^{re.escape(str(src))}:(\d+):\d+: error: (.*)$", r.stderr, re.M):
            hit = re.search(r'"(KVM_\w+)"', c_lines[int(m.group(1)) - 1])
            if hit:
                bad.setdefault(hit.group(1), m.group(2))
        if not bad:
            pytest.fail(f"cc could not compile the generated program:\n{r.stderr}")
        unusable.update(bad)
    out = subprocess.run([str(tmp / "kvm_ioctls")], capture_output=True, text=True, check=True).stdout
    numbers, missing = {}, []
    for line in out.splitlines():
        name, value = line.split()
        if value == "missing":
            missing.append(name)
        else:
            numbers[name] = int(value, 16)
    return numbers, missing, unusable


def _kernel_headers_version() -> str:
    text = Path("/usr/include/linux/version.h").read_text() if Path("/usr/include/linux/version.h").exists() else ""
    m = re.search(r"LINUX_VERSION_CODE (\d+)", text)
    if not m:
        return "unknown version"
    code = int(m.group(1))
    return f"{code >> 16}.{(code >> 8) & 0xFF}"


def test_every_number_matches_the_header(header_numbers):
    numbers, missing, unusable = header_numbers
    by_name = {i.name: i for i in KVM_IOCTLS.values()}
    wrong = {n: f"table {by_name[n].cmd:#010x}, header {v:#010x}" for n, v in numbers.items() if by_name[n].cmd != v}
    assert not wrong, f"numbers differ from {HEADER}: {wrong}"
    assert len(numbers) + len(missing) + len(unusable) == len(KVM_IOCTLS)
    if missing or unusable:
        note = (f"{HEADER} (linux-libc-dev {_kernel_headers_version()}) lacks {len(missing)} of the table's "
                f"{len(KVM_IOCTLS)} ioctls, so they are unchecked: {', '.join(sorted(missing))}")
        if unusable:
            note += f"; defined but not expandable: {unusable}"
        warnings.warn(note, stacklevel=1)
        print(note)
    # The ioctls kvmtrace's probes decode are not allowed to be among them,
    # except the one that is newer than many installed headers.
    probe_names = {f"KVM_{m.name}" for m in KvmIoctl} - {"KVM_SET_USER_MEMORY_REGION2"}
    assert not probe_names & (set(missing) | set(unusable))


def test_header_numbers_are_distinct(header_numbers):
    """The header agrees no two different table entries share a number."""
    numbers, _, _ = header_numbers
    seen: dict[int, str] = {}
    clashes = []
    for name, value in sorted(numbers.items()):
        if value in seen:
            clashes.append((seen[value], name, f"{value:#010x}"))
        seen[value] = name
    assert not clashes


def test_every_x86_ioctl_of_the_header_is_in_the_table(tmp_path):
    cc = _need_cc_and_header()
    src = tmp_path / "all.c"
    src.write_text("#include <linux/kvm.h>\n")
    macros = subprocess.run([cc, "-dM", "-E", str(src)], capture_output=True, text=True, check=True).stdout
    defined = set(re.findall(r"^#define (\w+) .*\b_IO[RW]*\s*\(\s*KVMIO\b", macros, re.M))
    assert "KVM_RUN" in defined and "KVM_CREATE_VM" in defined, "could not find the ioctl macros in the -dM output"
    table = {i.name for i in KVM_IOCTLS.values()}
    assert sorted(n for n in defined - table if _is_x86(n)) == []
    assert sorted(n for n in table if not _is_x86(n)) == []


def test_no_number_is_used_twice():
    # The mapping would silently keep the last of two rows with one number,
    # so look at the rows it is built from.
    rows = ioctls._TABLE
    by_cmd: dict[int, list[str]] = {}
    for row in rows:
        by_cmd.setdefault(row.cmd, []).append(row.name)
    assert {hex(c): n for c, n in by_cmd.items() if len(n) > 1} == {}
    assert len(rows) == len(KVM_IOCTLS) == len({r.name for r in rows})


def test_shared_numbers_are_one_entry_with_every_scope():
    multi = {i.name: i.scope for i in KVM_IOCTLS.values() if len(i.scopes) > 1}
    assert multi == SHARED


def test_entries_are_well_formed():
    for cmd, info in KVM_IOCTLS.items():
        assert cmd == info.cmd
        assert ioctl_type(cmd) == KVMIO, info.name
        assert 0 <= cmd < 1 << 32, info.name
        assert info.name.startswith("KVM_") and info.name.isupper(), info.name
        assert info.arg and all(s in ioctls.SCOPES for s in info.scopes), info.name


def test_probe_ioctls_are_in_the_table():
    for member in KvmIoctl:
        assert KVM_IOCTLS[member.value].name == f"KVM_{member.name}"


def test_scope_is_checked():
    with pytest.raises(ValueError, match="unknown scope"):
        IoctlInfo(0xAE80, "KVM_RUN", "vcpu|guest", "none")
    with pytest.raises(ValueError, match="not in the order"):
        IoctlInfo(0x4068AEA3, "KVM_ENABLE_CAP", "vcpu|vm", "struct kvm_enable_cap")
    with pytest.raises(ValueError, match="not in the order"):
        IoctlInfo(0x4068AEA3, "KVM_ENABLE_CAP", "vm|vm", "struct kvm_enable_cap")
    assert IoctlInfo(0x4068AEA3, "KVM_ENABLE_CAP", "vm|vcpu", "x").scopes == ("vm", "vcpu")


@pytest.mark.parametrize(("cmd", "name"), [
    (0xAE00, "KVM_GET_API_VERSION"),
    (0xAE01, "KVM_CREATE_VM"),
    (0xAE41, "KVM_CREATE_VCPU"),
    (0xAE80, "KVM_RUN"),
    (0x4020AE46, "KVM_SET_USER_MEMORY_REGION"),
    (0x40A0AE49, "KVM_SET_USER_MEMORY_REGION2"),
    (0x8090AE81, "KVM_GET_REGS"),
    (0x4068AEA3, "KVM_ENABLE_CAP"),
    (0x0000AEA3, "KVM_GET_TSC_KHZ"),
    (0x8070AE9F, "KVM_GET_PIT2"),
    (0x8040AE9F, "KVM_GET_VCPU_EVENTS"),
    (0xC040AED5, "KVM_PRE_FAULT_MEMORY"),
    (0x8090AE81 - (1 << 32), "KVM_GET_REGS"),  # sign-extended, as a signed 32-bit field reads it
])
def test_ioctl_name_known(cmd, name):
    assert ioctl_name(cmd) == name
    assert ioctl_info(cmd) is not None and ioctl_info(cmd).name == name


@pytest.mark.parametrize(("cmd", "name"), [
    (0xC040AEFF, "KVM_IOCTL(dir=RW, nr=0xff, size=64)"),
    (0x0000AE07, "KVM_IOCTL(dir=NONE, nr=0x07, size=0)"),  # KVM_TRACE_PAUSE, long gone
    (0x4008AE06, "KVM_IOCTL(dir=W, nr=0x06, size=8)"),
    (0x8010AEAD, "KVM_IOCTL(dir=R, nr=0xad, size=16)"),  # KVM_PPC_RESIZE_HPT_PREPARE
])
def test_ioctl_name_unknown_kvm(cmd, name):
    assert ioctl_name(cmd) == name
    assert ioctl_info(cmd) is None


@pytest.mark.parametrize(("cmd", "name"), [
    (0x5401, "ioctl(0x00005401)"),  # TCGETS
    (0x80086601, "ioctl(0x80086601)"),  # FS_IOC_GETFLAGS
    (0, "ioctl(0x00000000)"),
    (-1, "ioctl(0xffffffff)"),
])
def test_ioctl_name_not_kvm(cmd, name):
    assert ioctl_name(cmd) == name


@pytest.mark.parametrize("cmd", [None, "KVM_RUN", 1.5e300, float("nan"), object(), 1 << 80])
def test_ioctl_name_never_raises(cmd):
    assert isinstance(ioctl_name(cmd), str)
    ioctl_info(cmd)


def test_import_is_stdlib_only_and_quiet():
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import kvmtrace.tables.ioctls\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(','.join(sorted(new - set(sys.stdlib_module_names) - {'kvmtrace'})))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert (r.stdout.strip(), r.stderr) == ("", "")
