"""Member offsets of kernel structs, from the running kernel's BTF.

The sched raw tracepoints hand the probes ``struct task_struct`` pointers,
and the probes read a task's pid, tgid and state from them. The kernel
headers bcc compiles against need not be the running kernel's (the
development hosts compile against Debian's 6.1 headers on a 6.18 kernel),
and task_struct's layout differs between the two: the offsets come from
/sys/kernel/btf/vmlinux instead, and reach the C as -D flags
(probe.py). Only what that needs of the BTF format (linux/btf.h) is here.
"""

from __future__ import annotations

import struct

from kvmtrace.errors import BccError

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
_MAGIC = 0xEB9F

#: Bytes after the 12-byte ``struct btf_type`` per kind (and per member: vlen).
_FIXED = {1: 4, 14: 4, 17: 4}  # INT, VAR, DECL_TAG
_PER_MEMBER = {3: 0, 4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}  # STRUCT, UNION, ENUM, FUNC_PROTO, DATASEC, ENUM64
_ARRAY, _STRUCT = 3, 4


def struct_offsets(name: str, members: tuple[str, ...], path: str = VMLINUX_BTF) -> dict[str, int]:
    """Byte offset of each of ``members`` (top-level, not bitfields) in ``struct name``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BccError(f"cannot read the kernel's BTF ({path}): {e.strerror}",
                       "the sched probes need a kernel built with CONFIG_DEBUG_INFO_BTF=y") from e
    magic, _version, _flags, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from("<HBBIIIII", data)
    if magic != _MAGIC:
        raise BccError(f"{path} is not BTF (magic {magic:#x})", "check CONFIG_DEBUG_INFO_BTF")
    types = hdr_len + type_off
    strings = hdr_len + str_off

    def string(off: int) -> str:
        end = data.index(b"\0", strings + off)
        return data[strings + off:end].decode()

    pos, end = types, types + type_len
    while pos < end:
        name_off, info, _size = struct.unpack_from("<III", data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        body = pos + 12
        if kind == _ARRAY:
            pos = body + 12
            continue
        pos = body + _FIXED.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen
        if kind != _STRUCT or string(name_off) != name:
            continue
        found = {}
        for i in range(vlen):
            m_name, _m_type, m_off = struct.unpack_from("<III", data, body + 12 * i)
            if info >> 31:  # kind_flag: bitfield size in the top 8 bits
                m_off &= 0xFFFFFF
            found[string(m_name)] = m_off // 8
        missing = [m for m in members if m not in found]
        if missing:
            continue  # another struct of that name (unlikely): keep looking
        return {m: found[m] for m in members}
    raise BccError(f"struct {name} with members {', '.join(members)} is not in {path}",
                   "this kernel's task_struct is not what the sched probes expect")


def task_offsets(path: str = VMLINUX_BTF) -> dict[str, int]:
    """task_struct's pid, tgid and state (``__state`` since 5.14, ``state`` before)."""
    try:
        off = struct_offsets("task_struct", ("pid", "tgid", "__state"), path)
        off["state"] = off.pop("__state")
    except BccError:
        off = struct_offsets("task_struct", ("pid", "tgid", "state"), path)
    return off
