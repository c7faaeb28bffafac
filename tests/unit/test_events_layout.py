"""The BPF C and Python agree: struct kt_event (kvmtrace/kernel/bpf/kvmtrace.h) and
EVENT_DTYPE byte for byte, and every constant they share is written once, in Python."""

import glob
import os
import re
import shutil
import subprocess

import pytest

from kvmtrace.kernel.events import (
    EVENT_DTYPE,
    KVM_RUN,
    MMIO_PAGE_SIZE,
    NO_VCPU,
    EventKind,
    MmioOp,
    PioOp,
    RunIoDirection,
    bpf_defines,
)
from kvmtrace.kernel.probe import bpf_source, probes_dir
from kvmtrace.tables.ioctls import KVMIO, ioctl_type

#: Every probe with all its optional fields: the largest program of each kind.
ALL_PROBES = {
    "kvm_exit": {"isa", "info1", "intr_info", "vcpu_id"},
    "kvm_entry": {"rip", "immediate_exit", "intr_info"},
    "kvm_pio": set(),
    "kvm_mmio": set(),
    "kvm_userspace_exit": {"errno"},
    "kvm_fpu": {"load"},
    "sys_enter_ioctl": set(),
    "sys_exit_ioctl": set(),
    "sys_enter_close": set(),
    "sched_process_exit": {"group_dead"},
    "sched_switch": set(),
    "sched_wakeup": set(),
    "sched_wakeup_new": set(),
}
#: task_struct offsets for the sched probes (any values: nothing runs).
TASK = {"pid": 1264, "tgid": 1268, "state": 24}


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to lay out the struct")
def test_c_struct_matches_numpy_dtype(tmp_path):
    fields = EVENT_DTYPE.names
    src = tmp_path / "layout.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n"
        "typedef uint64_t u64; typedef uint32_t u32; typedef int32_t s32; typedef uint8_t u8;\n"
        '#include "kvmtrace.h"\n'
        "int main(void) {\n"
        '  printf("size %zu\\n", sizeof(struct kt_event));\n'
        + "".join(f'  printf("{f} %zu %zu\\n", offsetof(struct kt_event, {f}), sizeof(((struct kt_event *)0)->{f}));\n'
                  for f in fields)
        + "  return 0;\n}\n")
    exe = tmp_path / "layout"
    # The header sizes arrays by constants Python generates (KT_STATE_COUNT).
    flags = bpf_defines(probes=[], fields={}, ringbuf_pages=1)
    subprocess.run(["cc", f"-I{probes_dir()}", *flags, "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == f"size {EVENT_DTYPE.itemsize}"
    for line in filter(None, out[1:]):
        name, offset, size = line.split()
        assert (int(offset), int(size)) == (EVENT_DTYPE.fields[name][1], EVENT_DTYPE.fields[name][0].itemsize), name


def test_bpf_defines_come_from_python_enums():
    flags = bpf_defines(probes=["kvm_exit", "kvm_pio"], fields={"kvm_exit": {"isa", "vcpu_id"}}, ringbuf_pages=64)
    assert f"-DKT_KIND_PIO={EventKind.PIO.value}" in flags
    assert "-DKT_PROBE_KVM_EXIT" in flags and "-DKT_PROBE_KVM_PIO" in flags
    assert "-DKT_PROBE_KVM_ENTRY" not in flags
    assert "-DKT_HAVE_KVM_EXIT_ISA" in flags and "-DKT_HAVE_KVM_EXIT_VCPU_ID" in flags
    assert "-DKT_HAVE_KVM_EXIT_INFO1" not in flags  # an old kernel's kvm_exit
    assert "-DKT_CAPTURE_VALUES" not in flags
    assert "-DKT_KVM_EXIT_IO=2" in flags and "-DKT_KVM_EXIT_MMIO=6" in flags
    with pytest.raises(ValueError, match="power of two"):
        bpf_defines(probes=[], fields={}, ringbuf_pages=3)


def _defines(flags: list[str]) -> dict[str, int]:
    return {m[1]: int(m[2].rstrip("U"), 0) for f in flags if (m := re.fullmatch(r"-D(\w+)=(\S+)", f))}


def test_bpf_defines_carry_the_values_python_owns():
    d = _defines(bpf_defines(probes=[], fields={}, ringbuf_pages=1))
    assert (d["KT_PIO_READ"], d["KT_PIO_WRITE"]) == (PioOp.READ, PioOp.WRITE)
    assert (d["KT_MMIO_UNSATISFIED_READ"], d["KT_MMIO_READ"], d["KT_MMIO_WRITE"]) == (0, 1, 2)
    assert d["KT_MMIO_WRITE"] == MmioOp.WRITE
    assert d["KT_NO_VCPU"] == NO_VCPU and d["KT_MMIO_PAGE_SIZE"] == MMIO_PAGE_SIZE
    # KT_IOC_TYPE() in kvmtrace.h is ioctl_type() of the ioctl table.
    assert (KVM_RUN >> d["KT_IOC_TYPESHIFT"]) & d["KT_IOC_TYPEMASK"] == ioctl_type(KVM_RUN) == d["KT_KVMIO"] == KVMIO
    # The probe copies kvm_run.io.direction into op; the C asserts this at build time too.
    assert [int(x) for x in RunIoDirection] == [int(PioOp.READ), int(PioOp.WRITE)]


def _bpf_files() -> dict[str, str]:
    return {os.path.basename(p): open(p).read() for p in glob.glob(f"{probes_dir()}/*.[ch]")}


def test_probe_source_uses_no_magic_numbers_python_owns():
    files = _bpf_files()
    assert {"kvmtrace.bpf.c", "kvmtrace.h", "maps.bpf.h", "emit_events.bpf.h", "emit_counts.bpf.h"} <= set(files)
    for name, src in files.items():
        code = re.sub(r"/\*.*?\*/|//[^\n]*", "", src, flags=re.S)  # comments may say the values
        assert "0XAE80" not in code.upper(), name
        for magic in ("op == 0", "op == 1", "? 1 : 0", "? 2 : 0", "0xfff", ">> 8", "& 0xff", "4096", "0xFFFFFFFF"):
            assert magic not in code, (name, magic)
    assert "KT_KIND_PIO" in files["kvmtrace.bpf.c"] and "KT_KVM_RUN" in files["kvmtrace.bpf.c"]


def test_bpf_source_inlines_the_bpf_headers_and_keeps_line_numbers():
    main = f"{probes_dir()}/kvmtrace.bpf.c"
    text = bpf_source(main)
    assert not re.search(r'#\s*include\s+"\w+\.bpf\.h"', text)
    assert '#include "kvmtrace.h"' in text  # plain C headers are the preprocessor's
    for header in ("maps.bpf.h", "emit_events.bpf.h", "emit_counts.bpf.h"):
        assert text.count(f'#line 1 "{probes_dir()}/{header}"') == 1
    # After a header, the main file resumes at the line following its #include.
    lines = open(main).read().splitlines()
    resumed = [int(n) for n in re.findall(rf'#line (\d+) "{re.escape(main)}"', text)]
    headers = re.findall(r'^\s*#\s*include\s+"\w+\.bpf\.h"', open(main).read(), flags=re.M)
    assert resumed[0] == 1 and len(resumed) == 1 + len(headers) >= 5
    for n in resumed[1:]:
        assert lines[n - 2].lstrip("#").strip().startswith("include") and lines[n - 2].endswith('.bpf.h"')


def test_bpf_source_refuses_an_include_cycle(tmp_path):
    (tmp_path / "a.bpf.h").write_text('#include "b.bpf.h"\n')
    (tmp_path / "b.bpf.h").write_text('#include "a.bpf.h"\n')
    (tmp_path / "m.bpf.c").write_text('#include "a.bpf.h"\nint x;\n')
    with pytest.raises(ValueError, match="includes itself"):
        bpf_source(str(tmp_path / "m.bpf.c"))


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C preprocessor")
@pytest.mark.parametrize("counts", [False, True])
@pytest.mark.parametrize("raw", [False, True])
def test_one_ifdef_picks_the_modes_emit_code(counts, raw):
    """The preprocessed probe source has one mode's code and every constant
    replaced, with raw or regular tracepoints, launch's ioctl probes and both RUN edges."""
    flags = bpf_defines(probes=list(ALL_PROBES), fields=ALL_PROBES, ringbuf_pages=1, counts_mode=counts,
                        raw={"kvm_pio", "kvm_mmio", "kvm_userspace_exit", "kvm_entry"} if raw else set(),
                        launch=True, run_by_syscall=not raw, task_offsets=TASK)
    out = subprocess.run(["cc", "-E", "-P", f"-I{probes_dir()}", *flags, "-"], input=bpf_source(
        f"{probes_dir()}/kvmtrace.bpf.c"), capture_output=True, text=True, check=True).stdout
    assert ("kt_bump" in out) is counts and ("last_thread" in out) is not counts
    assert ("ringbuf_submit" in out) is not counts
    leftover = set(re.findall(r"\bKT_[A-Z0-9_]+\b", out))
    assert not leftover, leftover  # every KT_ constant the C names is defined
