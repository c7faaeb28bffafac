"""kernel/btf.py: struct member offsets from BTF, on a hand-built blob and on
this kernel's own /sys/kernel/btf/vmlinux."""

from __future__ import annotations

import os
import struct

import pytest

from kvmtrace.errors import BccError
from kvmtrace.kernel.btf import VMLINUX_BTF, struct_offsets, task_offsets


def _btf(tmp_path, members: list[tuple[str, int]], name="task_struct"):
    """A BTF blob: an INT, a FUNC_PROTO with one param (to step over), then the struct."""
    strings = b"\0int\0" + name.encode() + b"\0" + b"\0".join(m.encode() for m, _ in members) + b"\0"
    at = {"int": 1, name: 5}
    off = 5 + len(name) + 1
    for m, _ in members:
        at[m] = off
        off += len(m) + 1
    types = struct.pack("<III", at["int"], 1 << 24, 4) + struct.pack("<I", 32)  # INT, 32 bits
    types += struct.pack("<III", 0, (13 << 24) | 1, 1) + struct.pack("<II", 0, 1)  # FUNC_PROTO, 1 param
    types += struct.pack("<III", at[name], (4 << 24) | len(members), 4096)
    types += b"".join(struct.pack("<III", at[m], 1, byte * 8) for m, byte in members)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    path = tmp_path / "btf"
    path.write_bytes(hdr + types + strings)
    return str(path)


def test_offsets_of_a_hand_built_struct(tmp_path):
    path = _btf(tmp_path, [("__state", 24), ("pid", 1264), ("tgid", 1268)])
    assert task_offsets(path) == {"pid": 1264, "tgid": 1268, "state": 24}
    old = _btf(tmp_path, [("state", 16), ("pid", 1000), ("tgid", 1004)])  # before Linux 5.14
    assert task_offsets(old) == {"pid": 1000, "tgid": 1004, "state": 16}


def test_a_missing_struct_or_file_says_so(tmp_path):
    with pytest.raises(BccError, match="not in"):
        struct_offsets("task_struct", ("pid",), _btf(tmp_path, [("x", 0)], name="other"))
    with pytest.raises(BccError, match="CONFIG_DEBUG_INFO_BTF"):
        struct_offsets("task_struct", ("pid",), str(tmp_path / "none"))


@pytest.mark.skipif(not os.access(VMLINUX_BTF, os.R_OK), reason="this kernel has no readable BTF")
def test_this_kernels_task_struct():
    off = task_offsets()
    assert off["tgid"] == off["pid"] + 4  # pid_t pid; pid_t tgid; side by side in every kernel
    assert 0 < off["state"] < off["pid"]
