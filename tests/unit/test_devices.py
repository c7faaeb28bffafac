"""kvmtrace.tables.devices: device names from QEMU's `info mtree -f` and the built-in PC table.

The fixtures in tests/data/mtree are real QEMU 7.2 output captured on the
project's machines (see tests/data/mtree/README.md for the exact commands).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest

from kvmtrace.tables import devices
from kvmtrace.tables.devices import (
    BUILTIN_RANGES,
    DESCRIPTIONS,
    MTREE_COMMAND,
    UNKNOWN,
    DeviceMap,
    MemoryMapError,
    MemoryMapWarning,
    Region,
    capture_command,
    parse_mtree,
)
from kvmtrace.errors import KvmtraceError

from ..support import paths

DATA = paths.DATA / "mtree"
FLAT = ["pc-i440fx", "q35", "libvirt-pc-i440fx", "pc-i440fx-seabios", "q35-seabios",
        "pc-i440fx-owners", "pc-i440fx-stdio"]


def text(name: str) -> str:
    # newline="" keeps the CRLF line ends QEMU's monitor sends
    with open(DATA / f"{name}.txt", encoding="utf-8", newline="") as f:
        return f.read()


@pytest.fixture(scope="module")
def maps() -> dict[str, DeviceMap]:
    return {name: DeviceMap.from_mtree(text(name)) for name in FLAT}


def test_capture_command():
    assert capture_command() == MTREE_COMMAND == "info mtree -f"


def test_fixtures_are_real_crlf_monitor_output():
    raw = (DATA / "pc-i440fx.txt").read_bytes()
    assert raw.startswith(b"FlatView #0\r\n") and b"\r\n" in raw
    assert b"(prio 0, i/o): kvm-ioapic" in raw


# ---------------------------------------------------------------- the parser

@pytest.mark.parametrize("name", FLAT)
def test_both_spaces_come_from_the_map(maps, name):
    dm = maps[name]
    assert dm.sources == {"memory": "mtree", "io": "mtree"}
    assert all(r.source == "mtree" for r in dm.regions())


@pytest.mark.parametrize("name", FLAT)
def test_demo_guest_addresses(maps, name):
    """The accesses of the demo ROM (kvmtrace.demo.guest) get QEMU's names."""
    dm = maps[name]
    hpet = dm.mmio(0xFED00010)
    assert hpet.name == "hpet" and (hpet.start, hpet.end) == (0xFED00000, 0xFED003FF)
    assert not hpet.in_kernel and hpet.kind == "i/o"
    assert dm.mmio(0xFED00000) == hpet
    ioapic = dm.mmio(0xFEC00000)
    assert ioapic.name == "kvm-ioapic" and ioapic.in_kernel
    assert (ioapic.start, ioapic.end) == (0xFEC00000, 0xFEC00FFF)
    assert dm.mmio(0xFEE00300).name == "kvm-apic-msi" and dm.mmio(0xFEE00300).in_kernel
    assert dm.mmio(0xFEE00300).priority == 4096

    assert dm.port(0x80).name == "ioport80" and not dm.port(0x80).in_kernel
    assert dm.port(0x71).name == "rtc" and dm.port(0x71).offset == 1
    assert dm.port(0x70).name == "rtc-index"
    for port in (0x40, 0x43):
        pit = dm.port(port)
        assert pit.name == "kvm-pit" and pit.in_kernel and (pit.start, pit.end) == (0x40, 0x43)
    assert dm.port(0x20).name == dm.port(0xA1).name == "kvm-pic"
    assert dm.port(0x4D1).name == "kvm-elcr" and dm.port(0x4D1).in_kernel
    assert dm.port(0x7E).name == "kvmvapic" and not dm.port(0x7E).in_kernel  # no dash: userspace
    assert dm.port(0xCFC).name == "pci-conf-data"
    assert dm.port(0x510).name == "fwcfg"


@pytest.mark.parametrize("name", ["pc-i440fx", "libvirt-pc-i440fx", "q35"])
def test_in_kernel_matches_the_demo_ground_truth(maps, name):
    """kvmtrace.demo.guest.expected() says which accesses reach userspace: the map agrees."""
    from kvmtrace.demo.guest import Workload, expected

    truth = expected(Workload())
    dm = maps[name]
    assert truth["pio"] and truth["mmio"]
    for port, _op, _size, userspace in truth["pio"]:
        assert dm.port(port).in_kernel == (not userspace), hex(port)
    for gpa, _op, _size, userspace in truth["mmio"]:
        assert dm.mmio(gpa).in_kernel == (not userspace), hex(gpa)


def test_serial_only_where_the_guest_has_one(maps):
    for name in ("pc-i440fx", "q35", "pc-i440fx-seabios", "q35-seabios"):
        serial = maps[name].port(0x3FB)
        assert serial.name == "serial" and (serial.start, serial.end) == (0x3F8, 0x3FF)
    # the libvirt demo domain and the stdio capture have no serial port (-nodefaults)
    assert maps["libvirt-pc-i440fx"].port(0x3F8) is None
    assert maps["pc-i440fx-stdio"].port(0x3F8) is None
    assert list(maps["libvirt-pc-i440fx"].name_ports([0x3F8])) == [UNKNOWN]


def test_isa_debug_exit_and_acpi_absent_under_libvirt(maps):
    assert maps["pc-i440fx"].port(0xF4).name == "isa-debug-exit"
    lv = maps["libvirt-pc-i440fx"]
    assert lv.port(0xF4).name == "isa-debug-exit"
    assert lv.port(0xAE00) is None and lv.port(0xB2) is None  # libvirt runs QEMU with -no-acpi
    assert maps["pc-i440fx"].port(0xAE00).name == "acpi-pci-hotplug"
    assert maps["pc-i440fx"].port(0xAFE2).name == "acpi-gpe0"


def test_unassigned_root_fill_is_not_a_device(maps):
    dm = maps["pc-i440fx"]
    # "0000000000000010-000000000000001f (prio 0, i/o): io @0000000000000010"
    assert "@0000000000000010" in text("pc-i440fx")
    assert dm.port(0x10) is None and dm.port(0xFFFF) is None
    assert all(r.name != "io" for r in dm.regions("io"))
    # the memory space has no fill: its root "system" is a container
    assert dm.mmio(0x1_0000_0000) is None and dm.mmio(0xFEB00000) is None


def test_memory_regions_exactly(maps):
    dm = maps["pc-i440fx"]
    got = [(r.start, r.end, r.kind, r.name, r.offset, r.kvm_slot) for r in dm.regions("memory")]
    assert got == [
        (0x0, 0xBFFFF, "ram", "pc.ram", 0, True),
        (0xC0000, 0xDFFFF, "rom", "pc.rom", 0, True),
        (0xE0000, 0xEFFFF, "ram", "pc.ram", 0xE0000, True),
        (0xF0000, 0xFFFFF, "rom", "pc.bios", 0, True),
        (0x100000, 0xFFFFFF, "ram", "pc.ram", 0x100000, True),
        (0xFEC00000, 0xFEC00FFF, "i/o", "kvm-ioapic", 0, False),
        (0xFED00000, 0xFED003FF, "i/o", "hpet", 0, False),
        (0xFEE00000, 0xFEEFFFFF, "i/o", "kvm-apic-msi", 0, False),
        (0xFFFF0000, 0xFFFFFFFF, "rom", "pc.bios", 0, True),  # the demo's 64 KiB ROM
    ]


def test_every_range_line_of_the_io_view_is_accounted_for(maps):
    for name in FLAT:
        lines = text(name).splitlines()
        start = next(i for i, line in enumerate(lines) if line.strip() == 'AS "I/O", root: io')
        ranges = []
        for line in lines[start + 2:]:
            m = re.match(r"\s+([0-9a-f]{16})-([0-9a-f]{16}) \(prio -?\d+, [^)]+\): (\S+)", line)
            if not m:
                break
            ranges.append((int(m.group(1), 16), int(m.group(2), 16), m.group(3)))
        assert ranges[0][0] == 0 and ranges[-1][1] == 0xFFFF  # the whole port space
        devices_only = [(s, e) for s, e, n in ranges if n != "io"]
        assert [(r.start, r.end) for r in maps[name].regions("io")] == devices_only, name


def test_region_names_with_spaces_and_offsets(maps):
    dm = maps["pc-i440fx-seabios"]
    assert dm.mmio(0xFEBF0500).name == "bochs dispi interface"
    assert dm.mmio(0xFEBF0400).name == "vga ioports remapped"
    mmio = dm.mmio(0xFEBF0200)
    assert mmio.name == "vga.mmio" and mmio.offset == 0x180 and mmio.priority == 1
    assert dm.mmio(0xFD000000).name == "vga.vram" and dm.mmio(0xFD000000).kind == "ram"
    assert dm.mmio(0xA0000).name == "vga-lowmem" and dm.mmio(0xA0000).kind == "i/o"
    assert dm.port(0x1CE).name == "vbe" and dm.port(0x3C0).name == "vga"
    assert dm.port(0x402).name == "isa-debugcon" and dm.port(0x505).name == "pvpanic"
    assert dm.port(0x378).name == "parallel"
    assert dm.port(0x600).name == "acpi-evt" and dm.port(0x608).name == "acpi-tmr"
    assert dm.port(0xCF9).name == "piix3-reset-control" and dm.port(0xCF9).priority == 1
    assert dm.port(0xCFA).name == "pci-conf-idx" and dm.port(0xCFA).offset == 2


def test_q35_specific_ranges(maps):
    q = maps["q35"]
    assert q.port(0xCC0).name == "acpi-pci-hotplug" and q.port(0xCD8).name == "acpi-cpu-hotplug"
    assert q.port(0xCF9).name == "lpc-reset-control"
    assert q.port(0x1F0) is None  # no legacy IDE on Q35
    qs = maps["q35-seabios"]
    assert qs.mmio(0xB0000000).name == "pcie-mmcfg-mmio" and qs.mmio(0xBFFFFFFF).name == "pcie-mmcfg-mmio"
    assert qs.mmio(0xFED1C000).name == "lpc-rcrb-mmio"
    assert qs.port(0x620).name == "acpi-gpe0" and qs.port(0x660).name == "sm-tco"


def test_ram_and_rom_are_named_and_say_so(maps):
    dm = maps["pc-i440fx"]
    ram = dm.mmio(0xB8000)
    assert ram.name == "pc.ram" and ram.kind == "ram" and ram.kvm_slot and "unexpected" in ram.description
    rom = dm.mmio(0xFFFFFFF0)
    assert rom.name == "pc.bios" and rom.kind == "rom"
    assert list(dm.name_gpas(np.array([0xB8000, 0xFFFFFFF0], dtype=np.uint64))) == ["pc.ram", "pc.bios"]


def test_owner_annotations_are_not_part_of_names(maps):
    plain, owners = maps["pc-i440fx"], maps["pc-i440fx-owners"]
    assert "owner:{dev path=/machine/unattached/device[5]}" in text("pc-i440fx-owners")
    key = lambda dm: [(r.space, r.start, r.end, r.name, r.kind, r.offset, r.kvm_slot) for r in dm.regions()]  # noqa: E731
    assert key(owners) == key(plain)


def test_stdio_monitor_echo_is_skipped(maps):
    dm = maps["pc-i440fx-stdio"]
    assert "\x1b[K" in text("pc-i440fx-stdio")
    assert all(re.fullmatch(r"[\w.\-]+", r.name) for r in dm.regions())
    assert len(dm.regions("memory")) == 8 and dm.mmio(0xFFFE0000).name == "pc.bios"


def test_tree_view_is_rejected_with_the_fix():
    with pytest.raises(MemoryMapError) as e:
        DeviceMap.from_mtree(text("pc-i440fx-tree"))
    assert isinstance(e.value, KvmtraceError)
    assert "info mtree -f" in str(e.value) and "nested" in str(e.value)


@pytest.mark.parametrize("junk", [
    "",
    "\r\n",
    "unknown command: 'info'\r\n",
    "FlatView #0\n AS \"memory\", root: system\n Root memory region: system\n  No rendered FlatView\n",
    "FlatView #0\n  zzzz-0000 (prio 0, i/o): nonsense\n  00000010-0000000f (prio 0, i/o): backwards\n",
    "  00000000fed00000-00000000fed003ff (prio 0, i/o): hpet\n",  # a range outside any FlatView
])
def test_weird_text_falls_back_to_builtin(junk):
    assert parse_mtree(junk) == []
    dm = DeviceMap.from_mtree(junk)
    assert dm.sources == {"memory": "builtin", "io": "builtin"}
    assert dm.port(0x71).name == "rtc" and dm.port(0x71).source == "builtin"
    bare = DeviceMap.from_mtree(junk, fallback=False)
    assert bare.sources == {"memory": "none", "io": "none"} and len(bare) == 0
    assert bare.port(0x71) is None and bare.mmio(0xFED00000) is None
    assert list(bare.name_ports([0x71, 0x80])) == [UNKNOWN, UNKNOWN]


def test_one_space_missing_takes_builtin_for_that_space_only():
    lines = text("pc-i440fx").splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if 'AS "I/O"' in line) - 1
    io_only = "".join(lines[start:])
    assert "kvm-ioapic" not in io_only
    dm = DeviceMap.from_mtree(io_only)
    assert dm.sources == {"memory": "builtin", "io": "mtree"}
    assert dm.mmio(0xFEC00000).source == "builtin" and dm.mmio(0xFEC00000).name == "kvm-ioapic"
    assert dm.port(0x10) is None  # unassigned in this guest's map: no builtin guess


def test_parse_accepts_bytes_and_rejects_other_types():
    assert parse_mtree(text("q35").encode()) == parse_mtree(text("q35"))
    with pytest.raises(TypeError):
        parse_mtree(None)


# ---------------------------------------------------------------- builtin table

def test_builtin_table_is_one_consistent_table():
    dm = DeviceMap.builtin()
    assert dm.sources == {"memory": "builtin", "io": "builtin"}
    assert len(dm) == len(BUILTIN_RANGES)  # nothing overlapped, nothing was split
    for space, first, last, name, kind, _note, source in BUILTIN_RANGES:
        assert name in DESCRIPTIONS, name
        assert source.startswith("hw/"), name
        r = dm.lookup(space, first)
        assert (r.start, r.end, r.name, r.kind) == (first, last, name, kind)
        assert r.in_kernel == name.startswith("kvm-")
        if space == "io":
            assert last <= 0xFFFF


@pytest.mark.parametrize("port, name, in_kernel", [
    (0x00, "dma-chan", False), (0x0F, "dma-cont", False), (0x20, "kvm-pic", True),
    (0xA1, "kvm-pic", True), (0x40, "kvm-pit", True), (0x43, "kvm-pit", True),
    (0x60, "i8042-data", False), (0x64, "i8042-cmd", False), (0x61, "pcspk", False),
    (0x70, "rtc-index", False), (0x71, "rtc", False), (0x80, "ioport80", False),
    (0x8F, "dma-page", False), (0x92, "port92", False), (0x4D0, "kvm-elcr", True),
    (0x1F0, "ide", False), (0x1F7, "ide", False), (0x3F6, "ide", False), (0x170, "ide", False),
    (0x376, "ide", False), (0x3F8, "serial", False), (0x3FF, "serial", False),
    (0x2F8, "serial", False), (0x3E8, "serial", False), (0x2EF, "serial", False),
    (0x378, "parallel", False), (0x3C0, "vga", False), (0x3DA, "vga", False),
    (0x3F2, "fdc", False), (0x3F7, "fdc", False), (0xCF8, "pci-conf-idx", False),
    (0xCFB, "pci-conf-idx", False), (0xCF9, "reset-control", False),
    (0xCFC, "pci-conf-data", False), (0xCFF, "pci-conf-data", False),
    (0x510, "fwcfg", False), (0x511, "fwcfg", False), (0x514, "fwcfg.dma", False),
    (0x51B, "fwcfg.dma", False), (0x600, "acpi-evt", False), (0x604, "acpi-cnt", False),
    (0x608, "acpi-tmr", False), (0xAFE0, "acpi-gpe0", False), (0x402, "isa-debugcon", False),
    (0xF4, "isa-debug-exit", False), (0x501, "isa-debug-exit", False),
    (0xAF00, "acpi-cpu-hotplug", False), (0xAE00, "acpi-pci-hotplug", False),
    (0x5658, "vmport", False),
])
def test_builtin_ports(port, name, in_kernel):
    r = DeviceMap.builtin().port(port)
    assert (r.name, r.in_kernel, r.source) == (name, in_kernel, "builtin")
    assert r.description


@pytest.mark.parametrize("gpa, name, in_kernel", [
    (0xFEE00000, "kvm-apic-msi", True), (0xFEE00FFF, "kvm-apic-msi", True),
    (0xFEC00000, "kvm-ioapic", True), (0xFEC00FFF, "kvm-ioapic", True),
    (0xFED00000, "hpet", False), (0xFED003FF, "hpet", False), (0xFED40000, "tpm-tis-mmio", False),
    (0xFFFFFFF0, "pc.bios", False), (0xFFFC0000, "pc.bios", False), (0xA0000, "vga-lowmem", False),
    (0xB0000000, "pcie-mmcfg-mmio", False), (0xFED1C000, "lpc-rcrb-mmio", False),
])
def test_builtin_mmio(gpa, name, in_kernel):
    r = DeviceMap.builtin().mmio(gpa)
    assert (r.name, r.in_kernel) == (name, in_kernel)


def test_builtin_gaps():
    b = DeviceMap.builtin()
    assert b.port(0x10) is None and b.port(0xFFFF) is None
    assert b.mmio(0xFED00400) is None and b.mmio(0x1000) is None and b.mmio(2**64 - 1) is None


@pytest.mark.parametrize("name", ["pc-i440fx", "q35", "pc-i440fx-seabios", "q35-seabios"])
def test_builtin_names_agree_with_qemu(maps, name):
    """Where a captured map has a device at a built-in range's start, it has the same name."""
    dm, checked = maps[name], 0
    for r in DeviceMap.builtin().regions():
        m = dm.lookup(r.space, r.start)
        if m is None or m.kind != "i/o" or r.kind != "i/o" or r.name == "reset-control":
            continue
        assert m.name == r.name, (hex(r.start), m.name, r.name)
        assert m.in_kernel == r.in_kernel
        checked += 1
    assert checked >= 25


# ---------------------------------------------------------------- vectorised

def _scalar_names(dm: DeviceMap, space: str, values) -> list[str]:
    out = []
    for v in values:
        r = dm.lookup(space, int(v))
        out.append(r.name if r is not None else UNKNOWN)
    return out


def _probe_points(dm: DeviceMap, space: str, rng, n: int, top: int) -> np.ndarray:
    edges = []
    for r in dm.regions(space):
        edges += [r.start, r.end, r.start - 1, r.end + 1, (r.start + r.end) // 2]
    edges = [e for e in edges if 0 <= e <= top]
    if top <= 0xFFFF:
        rand = rng.integers(0, top + 1, size=n, dtype=np.uint64)
    else:
        rand = np.concatenate([
            rng.integers(0, 2**63, size=n // 2, dtype=np.uint64) * np.uint64(2),
            rng.integers(0xFE000000, 0x1_0000_0000, size=n // 2, dtype=np.uint64),  # dense near MMIO
            rng.integers(0, 0x0100_0000, size=n // 2, dtype=np.uint64),
        ])
    return np.concatenate([np.array(edges, dtype=np.uint64), rand, np.array([0, top], dtype=np.uint64)])


@pytest.mark.parametrize("name", [None, *FLAT])
def test_vectorised_equals_scalar(maps, name):
    dm = DeviceMap.builtin() if name is None else maps[name]
    rng = np.random.default_rng(23)
    ports = _probe_points(dm, "io", rng, 4000, 0xFFFF)
    got = dm.name_ports(ports.astype(np.uint32))
    assert isinstance(got, pd.Categorical)
    assert list(got) == _scalar_names(dm, "io", ports)
    gpas = _probe_points(dm, "memory", rng, 4000, 2**64 - 1)
    got = dm.name_gpas(gpas)
    assert list(got) == _scalar_names(dm, "memory", gpas)
    flags = dm.in_kernel("memory", gpas)
    assert flags.tolist() == [bool(r and r.in_kernel) for r in (dm.mmio(int(g)) for g in gpas)]


def test_categorical_shape_and_inputs(maps):
    dm = maps["pc-i440fx"]
    cat = dm.name_ports(np.array([0x80, 0x71, 0x10], dtype=np.uint16))
    assert list(cat) == ["ioport80", "rtc", UNKNOWN]
    assert list(cat.categories) == sorted({r.name for r in dm.regions("io")}) + [UNKNOWN]
    # the same categories whatever the input, so frames concatenate without recoding
    assert list(dm.name_ports([0x40]).categories) == list(cat.categories)
    assert len(dm.name_ports(np.array([], dtype=np.uint32))) == 0
    assert len(dm.name_ports([])) == 0
    assert list(dm.name_ports([0x80, -1])) == ["ioport80", UNKNOWN]  # signed input
    assert list(dm.name_ports(pd.Series([0x71], dtype="uint32"))) == ["rtc"]
    assert list(dm.name_gpas(np.array([2**64 - 1], dtype=np.uint64))) == [UNKNOWN]
    assert dm.index("io", [0x80, 0x10]).tolist()[1] == -1
    with pytest.raises(TypeError):
        dm.name_ports(np.array([1.5]))
    with pytest.raises(ValueError):
        dm.name_ports(np.zeros((2, 2), dtype=np.uint32))
    with pytest.raises(ValueError):
        dm.regions("pci")


def test_vectorised_naming_is_fast(maps):
    dm = maps["q35-seabios"]
    ports = np.random.default_rng(997).integers(0, 0x10000, size=2_000_000).astype(np.uint32)
    t0 = time.perf_counter()
    cat = dm.name_ports(ports)
    assert time.perf_counter() - t0 < 5.0
    assert len(cat) == len(ports) and cat.codes.dtype.itemsize <= 2


# ---------------------------------------------------------------- from_header

def test_from_header_reads_the_recorders_domain_entry():
    from kvmtrace.record.domain import GuestProcess

    g = GuestProcess(name="demo", uuid="00000000-0000-0000-0000-000000000001", id=3, uri="qemu:///system",
                     pid=1, memory_map_text=text("libvirt-pc-i440fx"))
    header = {"format_version": 1, "domains": [g.as_dict()]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm = DeviceMap.from_header(header)
    assert dm.sources == {"memory": "mtree", "io": "mtree"}
    assert dm.port(0x3F8) is None and dm.port(0x43).name == "kvm-pit"


def test_from_header_top_level_and_domain_choice():
    pc, q35 = text("pc-i440fx"), text("q35")
    assert DeviceMap.from_header({"memory_map_text": q35}).port(0xCC0).name == "acpi-pci-hotplug"
    header = {"domains": [{"name": "a", "uuid": "u-a", "memory_map_text": pc},
                          {"name": "b", "uuid": "u-b", "memory_map_text": q35}]}
    assert DeviceMap.from_header(header).port(0xCC0) is None  # first domain: pc
    for pick in ("b", "u-b", 1):
        assert DeviceMap.from_header(header, domain=pick).port(0xCC0).name == "acpi-pci-hotplug"
    skip_empty = {"domains": [{"name": "a", "memory_map_text": ""}, {"name": "b", "memory_map_text": q35}]}
    assert DeviceMap.from_header(skip_empty).sources["io"] == "mtree"


@pytest.mark.parametrize("header", [{}, {"domains": []}, {"domains": [{"name": "x"}]},
                                    {"memory_map_text": ""}, {"domains": [{"memory_map_text": None}]}])
def test_from_header_without_a_map_is_builtin_quietly(header):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm = DeviceMap.from_header(header)
    assert dm.sources == {"memory": "builtin", "io": "builtin"}
    assert dm.port(0x80).name == "ioport80"


@pytest.mark.parametrize("bad, words", [
    ("Error: unknown command 'info mtree'", "no flat view"),
    (None, "nested"),  # filled with the tree view below
])
def test_from_header_with_an_unusable_map_warns_and_uses_builtin(bad, words):
    if bad is None:
        bad = text("pc-i440fx-tree")
    with pytest.warns(MemoryMapWarning, match=words):
        dm = DeviceMap.from_header({"domains": [{"name": "d", "memory_map_text": bad}]})
    assert dm.sources == {"memory": "builtin", "io": "builtin"}


def test_from_header_needs_a_mapping():
    with pytest.raises(TypeError):
        DeviceMap.from_header("info mtree -f")


# ---------------------------------------------------------------- Region, DeviceMap, frame

def test_region_validation_and_helpers():
    r = Region(0x3F8, 0x3FF, "serial", "io")
    assert r.size == 8 and 0x3FA in r and 0x400 not in r and "serial" in str(r)
    with pytest.raises(ValueError):
        Region(0, 1, "x", "pci")
    with pytest.raises(ValueError):
        Region(2, 1, "x", "io")
    with pytest.raises(TypeError):
        DeviceMap([("io", 0, 1, "x")])


def test_overlapping_input_prefers_devices_then_priority():
    ram = Region(0x0, 0xFFFF, "ram", "memory", kind="ram", source="mtree")
    dev = Region(0x1000, 0x1FFF, "dev", "memory", kind="i/o", source="mtree")
    hi = Region(0x1800, 0x18FF, "hi", "memory", kind="i/o", priority=1, source="mtree")
    dm = DeviceMap([ram, dev, hi])
    assert [(r.name, r.start, r.end) for r in dm.regions("memory")] == [
        ("ram", 0x0, 0xFFF), ("dev", 0x1000, 0x17FF), ("hi", 0x1800, 0x18FF),
        ("dev", 0x1900, 0x1FFF), ("ram", 0x2000, 0xFFFF)]
    assert dm.mmio(0x2000).offset == 0x2000 and dm.mmio(0x1900).offset == 0x900
    assert dm.sources == {"memory": "mtree", "io": "none"}
    same = DeviceMap([Region(0, 9, "first", "io"), Region(5, 14, "second", "io")])
    assert [(r.name, r.start, r.end) for r in same.regions("io")] == [("first", 0, 9), ("second", 10, 14)]


def test_overlap_resolution_matches_brute_force():
    rng = np.random.default_rng(31)
    for _ in range(200):
        regions = []
        for i in range(int(rng.integers(1, 8))):
            a, b = sorted(int(x) for x in rng.integers(0, 64, size=2))
            regions.append(Region(a, b, f"r{i}", "io", kind=str(rng.choice(["i/o", "ram", "rom"])),
                                  priority=int(rng.integers(-1, 2))))
        dm = DeviceMap(regions)
        pieces = dm.regions("io")
        assert all(p.end < q.start for p, q in zip(pieces, pieces[1:]))
        for port in range(66):
            covering = [(r.kind != "i/o", -r.priority, i) for i, r in enumerate(regions) if port in r]
            want = regions[min(covering)[2]].name if covering else None
            got = dm.port(port)
            assert (got.name if got else None) == want, (port, regions)


def test_df_regions(maps):
    df = maps["pc-i440fx"].df_regions()
    assert df.index.name == "region" and len(df) == len(maps["pc-i440fx"])
    assert not any(dt == object for dt in df.dtypes)
    assert str(df["name"].dtype) == "category" and df["start"].dtype == np.uint64
    row = df[df["name"] == "kvm-ioapic"].iloc[0]
    assert row["space"] == "memory" and row["start"] == 0xFEC00000 and row["size"] == 0x1000
    assert bool(row["in_kernel"]) and row["source"] == "mtree"


def test_repr_and_len(maps):
    assert repr(maps["q35"]).startswith("<DeviceMap memory: 9 from mtree")
    assert len(DeviceMap()) == 0 and DeviceMap().port(0) is None


def test_module_is_pure_and_quiet_at_import():
    code = ("import sys, kvmtrace.tables.devices\n"
            "print(','.join(m for m in ('bcc', 'libvirt', 'libvirt_qemu', 'kvmtrace.kernel.probe') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "" and out.stderr == ""
    assert devices.__all__ and all(hasattr(devices, n) for n in devices.__all__)
