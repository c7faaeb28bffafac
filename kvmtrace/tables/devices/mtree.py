"""The parser of QEMU's flat memory map, the HMP command ``info mtree -f`` (:data:`MTREE_COMMAND`).

Each line of a flat view is ``START-END (prio P, KIND): NAME [@OFFSET]
[owner...] [KVM]`` (``system/memory.c:mtree_print_flatview``).  The block
whose ``AS`` lines include ``"memory"`` is the MMIO space, the one with
``"I/O"`` the port space.  Ranges named after the block's root region
(``io @...`` in the I/O space) are the root's "unassigned" fill: no device,
and left out here.

Pure Python; importing this module has no side effects.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from kvmtrace.errors import MemoryMapError
from kvmtrace.tables.devices.builtin import DESCRIPTIONS
from kvmtrace.tables.devices.region import _GPA_MAX, Region, is_in_kernel

__all__ = ["MTREE_COMMAND", "MemoryMapError", "capture_command", "parse_mtree"]

MTREE_COMMAND = "info mtree -f"
"""The QEMU HMP command whose output :meth:`DeviceMap.from_mtree` reads
(through libvirt: ``virsh qemu-monitor-command --hmp DOMAIN 'info mtree -f'``)."""


def capture_command() -> str:
    """The HMP command that prints the map :meth:`DeviceMap.from_mtree` reads."""
    return MTREE_COMMAND


_FLATVIEW = re.compile(r"^\s*FlatView #(\d+)\s*$")
_AS = re.compile(r'^\s*AS "(?P<name>[^"]*)", root: (?P<root>.*?)\s*$')
_ROOT = re.compile(r"^\s*Root memory region: (?P<root>.*?)\s*$")
_RANGE = re.compile(
    r"^\s*(?P<start>[0-9a-fA-F]+)-(?P<end>[0-9a-fA-F]+)"
    r" \(prio (?P<prio>-?\d+), (?P<kind>[^)]*)\): (?P<rest>.*?)\s*$"
)
_TREE = re.compile(r"^\s*(address-space|memory-region): ")
# What follows the name: owner info (`-o`), then one accelerator tag per AS that
# has a slot for the range (only KVM implements has_memory).
_OWNER = re.compile(r"\s+(?:(?:owner|parent):\{[^{}]*\}|orphan)\s*$")
_ACCEL = re.compile(r"\s+KVM\s*$")
_OFFSET = re.compile(r"\s+@([0-9a-fA-F]+)\s*$")
_AS_SPACE = {"memory": "memory", "I/O": "io"}


@dataclass
class _Block:
    number: int
    address_spaces: list[str] = dataclasses.field(default_factory=list)
    root: str | None = None
    ranges: list[tuple[int, int, int, str, str, int, bool]] = dataclasses.field(default_factory=list)


def _split_rest(rest: str) -> tuple[str, int, bool]:
    """``NAME [@OFFSET] [owner:{..}] [KVM]...`` -> (name, offset, kvm_slot)."""
    kvm_slot = False
    while True:
        m = _ACCEL.search(rest)
        if m:
            kvm_slot = True
            rest = rest[: m.start()]
            continue
        m = _OWNER.search(rest)
        if m:
            rest = rest[: m.start()]
            continue
        break
    offset = 0
    m = _OFFSET.search(rest)
    if m:
        offset = int(m.group(1), 16)
        rest = rest[: m.start()]
    return rest.strip(), offset, kvm_slot


def _blocks(text: str) -> tuple[list[_Block], bool]:
    blocks: list[_Block] = []
    tree = False
    for line in text.splitlines():
        m = _FLATVIEW.match(line)
        if m:
            blocks.append(_Block(int(m.group(1))))
            continue
        if _TREE.match(line):
            tree = True
            continue
        if not blocks:
            continue  # a monitor banner, an echoed command line, ...
        block = blocks[-1]
        m = _AS.match(line)
        if m:
            block.address_spaces.append(m.group("name"))
            continue
        m = _ROOT.match(line)
        if m:
            block.root = m.group("root")
            continue
        m = _RANGE.match(line)
        if m:
            start, end = int(m.group("start"), 16), int(m.group("end"), 16)
            if start > end or end > _GPA_MAX:
                continue
            name, offset, kvm_slot = _split_rest(m.group("rest"))
            kind = m.group("kind").strip()
            kind = kind[3:] if kind.startswith("nv-") else kind  # non-volatile flag
            block.ranges.append((start, end, int(m.group("prio")), kind, name, offset, kvm_slot))
    return blocks, tree


def parse_mtree(text: str | bytes) -> list[Region]:
    """The regions of the "memory" and "I/O" address spaces in ``info mtree -f`` output.

    Lines that are not part of a flat view (a monitor banner, an echoed
    prompt, other address spaces' blocks) are skipped; so are the root
    region's unassigned ranges.  Returns ``[]`` when the text holds no flat
    view of either space.  Raises :class:`MemoryMapError` for the nested
    ``info mtree`` view (without ``-f``), which does not say which region
    answers an address.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise TypeError(f"expected the text of `{MTREE_COMMAND}`, not {type(text).__name__}")
    blocks, tree = _blocks(text)
    regions: list[Region] = []
    seen: set[str] = set()
    for block in blocks:
        for as_name in block.address_spaces:
            space = _AS_SPACE.get(as_name)
            if space is None or space in seen:
                continue
            seen.add(space)
            for start, end, prio, kind, name, offset, kvm_slot in block.ranges:
                if not name or name == block.root:
                    continue  # the root region's own (unassigned) ops
                regions.append(Region(
                    start=start, end=end, name=name, space=space, kind=kind,
                    in_kernel=is_in_kernel(name), source="mtree",
                    description=DESCRIPTIONS.get(name, ""),
                    priority=prio, offset=offset, kvm_slot=kvm_slot,
                ))
    if not seen and tree:
        raise MemoryMapError(
            "this is QEMU's nested `info mtree` view, which does not say which region answers an address",
            f"capture the flat view with the HMP command '{MTREE_COMMAND}'",
        )
    return regions
