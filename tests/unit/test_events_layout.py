"""struct kt_event (probes/kvmtrace.h) and EVENT_DTYPE must agree byte for byte."""

import shutil
import subprocess

import pytest

from kvmtrace.kernel.events import EVENT_DTYPE, EventKind, bpf_defines
from kvmtrace.kernel.probe import probes_dir


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
    subprocess.run(["cc", f"-I{probes_dir()}", "-o", str(exe), str(src)], check=True)
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


def test_probe_source_uses_no_magic_numbers_python_owns():
    src = (open(f"{probes_dir()}/kvmtrace.bpf.c").read())
    assert "0xAE80" not in src.upper().replace("KT_KVM_RUN", "")
    assert "KT_KIND_PIO" in src and "KT_KVM_RUN" in src
