"""The demo guest ROM (kvmtrace.demo.guest): built by nasm, exits known in advance.

These tests only need nasm: they build the ROM and check the ground truth and
the domain XML.  tests/kernel/test_guest_rom.py runs the ROM for real and
counts its exits with bpftrace.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from kvmtrace.demo import guest
from kvmtrace.demo.guest import (
    PACED,
    GuestBuildError,
    Workload,
    build_rom,
    expected,
    expected_per_tick,
    expected_rates,
    expected_setup,
)
from kvmtrace.demo.machine import QEMU_XML_NS, domain_xml

needs_nasm = pytest.mark.skipif(
    shutil.which("nasm") is None, reason="nasm is not installed: apt-get install nasm"
)

# Small distinct primes: a count attributed to the wrong kind shows at once.
PRIMES = Workload(23, 29, 31, 37, 41, 43, 47)
ALL_ZERO = Workload(0, 0, 0, 0, 0, 0, 0)

# --------------------------------------------------------------------------
# Unit tests: building the ROM, the ground truth, the domain XML
# --------------------------------------------------------------------------


@needs_nasm
def test_rom_is_64k_with_reset_vector(tmp_path):
    rom = build_rom(Workload(), tmp_path)
    data = rom.read_bytes()
    assert len(data) == guest.ROM_SIZE == 65536
    assert rom.parent == tmp_path
    assert rom.name.startswith("kvmtrace-demo-") and rom.suffix == ".rom"
    assert rom.stat().st_mode & 0o777 == 0o644
    # At 0xFFF0: jmp far ptr16:16 (EA, offset, segment) to F000:start.
    vector = data[guest.RESET_VECTOR:guest.RESET_VECTOR + 5]
    assert vector[0] == 0xEA
    offset = int.from_bytes(vector[1:3], "little")
    segment = int.from_bytes(vector[3:5], "little")
    assert segment == 0xF000
    assert offset < guest.RESET_VECTOR
    assert data[offset] == 0xFA  # start: cli
    assert b"kvmtrace-demo port_writes=997 " in data


@needs_nasm
def test_rom_reused_and_distinct(tmp_path):
    first = build_rom(PRIMES, tmp_path)
    mtime = first.stat().st_mtime_ns
    again = build_rom(Workload(23, 29, 31, 37, 41, 43, 47), tmp_path)
    assert again == first
    assert again.stat().st_mtime_ns == mtime  # identical file left alone

    others = [
        build_rom(Workload(23, 29, 31, 37, 41, 43, 53), tmp_path),
        build_rom(Workload(29, 23, 31, 37, 41, 43, 47), tmp_path),
        build_rom(Workload(23, 29, 31, 37, 41, 43, 47, steady=True), tmp_path),
    ]
    paths = {first, *others}
    assert len(paths) == 4
    assert len({p.read_bytes() for p in paths}) == 4


@needs_nasm
def test_rom_rewritten_when_damaged(tmp_path):
    rom = build_rom(PRIMES, tmp_path)
    good = rom.read_bytes()
    rom.write_bytes(b"junk")
    rom.chmod(0o600)
    assert build_rom(PRIMES, tmp_path) == rom
    assert rom.read_bytes() == good
    assert rom.stat().st_mode & 0o777 == 0o644


@needs_nasm
def test_large_counts_build(tmp_path):
    rom = build_rom(Workload(2**31 - 1, 0, 0, 0, 0, 0, 2**31 - 1), tmp_path)
    assert rom.stat().st_size == guest.ROM_SIZE


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"port_writes": -1}, ValueError),
        ({"rtc_reads": 2**31}, ValueError),
        ({"pit_writes": 1.0}, TypeError),
        ({"pit_reads": "3"}, TypeError),
        ({"hpet_writes": True}, TypeError),
        ({"hpet_reads": None}, TypeError),
        ({"steady": 1}, TypeError),
        ({"steady": True, "tick_hz": -1}, ValueError),
        ({"steady": True, "tick_hz": 10001}, ValueError),
        ({"steady": True, "tick_hz": True}, TypeError),
        ({"steady": True, "tick_hz": 100.0}, TypeError),
        ({"steady": True, "tick_hz": "100"}, TypeError),
        ({"steady": False, "tick_hz": 100}, ValueError),  # only steady runs are paced
        ({"tick_hz": 1}, ValueError),
    ],
)
def test_bad_workloads_rejected(kwargs, error):
    with pytest.raises(error):
        Workload(**kwargs)


def test_tick_hz_bounds_accepted():
    assert Workload().tick_hz == 0 and Workload(steady=True).tick_hz == 0
    for hz in (1, 18, 19, 100, 10000):
        assert Workload(steady=True, tick_hz=hz).tick_hz == hz


def test_pit_setting():
    assert (PACED.tick_hz, PACED.pit_divisor, PACED.irqs_per_tick) == (100, 11932, 1)
    assert PACED.tick_rate == pytest.approx(1193182 / 11932)
    assert guest.PIT_HZ == 1193182
    unpaced = Workload(steady=True)
    assert (unpaced.pit_divisor, unpaced.irqs_per_tick, unpaced.tick_rate) == (0, 0, 0.0)
    # Below ~18.2 Hz the 16-bit divisor cannot reach: k interrupts per pass.
    assert (Workload(steady=True, tick_hz=1).pit_divisor,
            Workload(steady=True, tick_hz=1).irqs_per_tick) == (62799, 19)
    assert Workload(steady=True, tick_hz=18).irqs_per_tick == 2
    assert Workload(steady=True, tick_hz=19).irqs_per_tick == 1
    # 1193182 / 164 = 7275.5 exactly: halves round up.
    assert Workload(steady=True, tick_hz=164).pit_divisor == 7276
    for hz in range(1, guest.MAX_TICK_HZ + 1):
        w = Workload(steady=True, tick_hz=hz)
        d, k = w.pit_divisor, w.irqs_per_tick
        assert 1 <= d <= 0xFFFF and k >= 1
        assert d == (2 * guest.PIT_HZ + hz * k) // (2 * hz * k)
        if k > 1:  # k is the smallest that fits
            assert round(guest.PIT_HZ / (hz * (k - 1))) > 0xFFFF
        # Rounding the divisor: at most half a PIT period off (10 kHz: 119, +0.27 %).
        assert abs(w.tick_rate / hz - 1) <= 0.5 / d + 1e-12


@needs_nasm
def test_unpaced_rom_has_no_pacing(tmp_path):
    """tick_hz=0 builds the ROM of before: nothing of the pacing code in it."""
    nasm = shutil.which("nasm")
    source = pathlib.Path(guest.__file__).with_name("rom.asm")
    for workload in (Workload(), Workload(steady=True), PRIMES):
        rom = build_rom(workload, tmp_path).read_bytes()
        assert b"tick_hz" not in rom
        # The same image as a build that never heard of TICK_HZ.
        defines = {k: v for k, v in workload.defines().items() if k != "TICK_HZ"}
        plain = tmp_path / "plain.rom"
        subprocess.run([nasm, "-f", "bin", *(f"-D{k}={v}" for k, v in defines.items()),
                        "-o", str(plain), str(source)], check=True)
        assert plain.read_bytes() == rom
        assert b"\xfb\xf4" not in rom  # no sti; hlt
    assert build_rom(PACED, tmp_path).read_bytes() != build_rom(
        Workload(97, 53, 29, 31, 13, 11, 17, steady=True), tmp_path).read_bytes()


@needs_nasm
@pytest.mark.parametrize("hz", [1, 7, 18, 19, 100, 164, 5000, 10000])
def test_paced_rom_matches_python(tmp_path, hz):
    """nasm and Workload agree on the PIT divisor and interrupts per pass, and
    the image programs the PIT with them (mov al,0x34; out 0x43,al; ...)."""
    w = Workload(1, 0, 0, 0, 0, 0, 0, steady=True, tick_hz=hz)
    rom = build_rom(w, tmp_path).read_bytes()
    assert rom[guest.RESET_VECTOR] == 0xEA
    tag = (f" steady=1 tick_hz={hz} pit_divisor={w.pit_divisor}"
           f" irqs_per_tick={w.irqs_per_tick}\0").encode()
    assert tag in rom
    pit = bytes([0xB0, 0x34, 0xE6, 0x43, 0xB0, w.pit_divisor & 0xFF, 0xE6, 0x40,
                 0xB0, w.pit_divisor >> 8, 0xE6, 0x40])
    assert rom.count(pit) == 1
    # The timer handler: mov al,0x20; out 0x20,al (EOI); inc ebp.
    assert rom.count(bytes([0xB0, 0x20, 0xE6, 0x20, 0x45])) == 1


def test_workload_is_frozen():
    with pytest.raises(AttributeError):
        PRIMES.port_writes = 1  # type: ignore[misc]


def test_build_without_nasm(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(GuestBuildError, match="apt-get install nasm"):
        build_rom(PRIMES, tmp_path)


@needs_nasm
def test_build_into_unusable_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(GuestBuildError, match="cannot write"):
        build_rom(PRIMES, blocker / "sub")


def test_expected_finite():
    truth = expected(PRIMES)
    assert truth == {
        "pio": {
            (0x80, "write", 1, True): 23,
            (0x71, "read", 1, True): 29,
            (0x43, "write", 1, False): 31,
            (0x40, "read", 1, False): 37,
            (0xF4, "write", 1, True): 1,  # isa-debug-exit
        },
        "mmio": {
            (0xFED00010, "write", 4, True): 41,
            (0xFED00000, "read", 4, True): 43,
            (0xFEC00000, "write", 4, False): 47,
        },
        "userspace_exits": {"IO": 23 + 29 + 1, "MMIO": 41 + 43},
    }


def test_expected_zero_and_steady():
    assert expected(ALL_ZERO) == {
        "pio": {(0xF4, "write", 1, True): 1},
        "mmio": {},
        "userspace_exits": {"IO": 1},
    }
    steady = expected(Workload(steady=True))  # one pass, no debug-exit write
    assert (0xF4, "write", 1, True) not in steady["pio"]
    assert steady["userspace_exits"] == {"IO": 997 + 503, "MMIO": 127 + 131}


def test_expected_paced():
    setup = expected_setup(PACED)
    assert setup == {
        "pio": {
            (0x20, "write", 1, False): 1,  # ICW1 (master)
            (0x21, "write", 1, False): 4,  # ICW2..ICW4, mask 0xFE
            (0xA0, "write", 1, False): 1,  # ICW1 (slave)
            (0xA1, "write", 1, False): 4,  # ICW2..ICW4, mask 0xFF
            (0x43, "write", 1, False): 1,  # 0x34: channel 0, mode 2
            (0x40, "write", 1, False): 2,  # divisor low, high
        },
        "mmio": {
            (0xFEE000F0, "write", 4, False): 1,  # LAPIC SVR: enable
            (0xFEE00350, "write", 4, False): 1,  # LAPIC LVT0: ExtINT
        },
        "userspace_exits": {},  # all of it in the kernel
    }
    per_tick = expected_per_tick(PACED)
    assert per_tick == expected(PACED) == {
        "pio": {
            (0x80, "write", 1, True): 97,
            (0x71, "read", 1, True): 53,
            (0x43, "write", 1, False): 29,
            (0x40, "read", 1, False): 31,
            (0x20, "write", 1, False): 1,  # the timer handler's EOI
        },
        "mmio": {
            (0xFED00010, "write", 4, True): 13,
            (0xFED00000, "read", 4, True): 11,
            (0xFEC00000, "write", 4, False): 17,
        },
        "userspace_exits": {"IO": 97 + 53, "MMIO": 13 + 11},  # no HLT exit
    }
    rates = expected_rates(PACED)
    assert rates["pio"][(0x80, "write", 1, True)] == pytest.approx(97 * 1193182 / 11932)
    assert rates["pio"][(0x20, "write", 1, False)] == pytest.approx(99.9985, abs=1e-4)
    assert rates["userspace_exits"]["IO"] == pytest.approx(150 * PACED.tick_rate)

    # Slower than the PIT can tick: several interrupts (and EOIs) per pass.
    slow = Workload(1, 0, 0, 0, 0, 0, 0, steady=True, tick_hz=1)
    assert expected_per_tick(slow)["pio"] == {(0x80, "write", 1, True): 1,
                                             (0x20, "write", 1, False): 19}
    assert expected_setup(slow) == expected_setup(PACED)
    # An empty pass still waits for its tick.
    idle = Workload(0, 0, 0, 0, 0, 0, 0, steady=True, tick_hz=50)
    assert expected(idle) == {"pio": {(0x20, "write", 1, False): 1}, "mmio": {},
                              "userspace_exits": {}}

    # Unpaced: no setup, and no per-tick truth.
    for unpaced in (Workload(), Workload(steady=True), PRIMES):
        assert expected_setup(unpaced) == {"pio": {}, "mmio": {}, "userspace_exits": {}}
        with pytest.raises(ValueError):
            expected_per_tick(unpaced)
        with pytest.raises(ValueError):
            expected_rates(unpaced)


def test_domain_xml(tmp_path):
    rom = tmp_path / "x.rom"
    uid = "6c3c1f5a-3b8e-4c57-9a36-7d0a4c1f2e10"
    text = domain_xml(rom_path=rom, uuid=uid)
    root = ET.fromstring(text)
    assert root.tag == "domain" and root.get("type") == "kvm"
    assert root.findtext("name") == "linux10.0421"
    assert root.findtext("uuid") == uid
    assert root.find("memory").get("unit") == "MiB" and root.findtext("memory") == "16"
    assert root.findtext("vcpu") == "1"
    ostype = root.find("os/type")
    assert (ostype.get("arch"), ostype.get("machine"), ostype.text) == ("x86_64", "pc", "hvm")
    loader = root.find("os/loader")
    assert loader.get("type") == "rom" and loader.text == str(rom)
    assert root.findtext("on_poweroff") == "destroy"
    assert root.findtext("on_crash") == "destroy"
    devices = root.find("devices")
    assert devices.find("disk") is None and devices.find("graphics") is None
    assert devices.find("video") is None
    assert devices.find("memballoon").get("model") == "none"
    usb = devices.find("controller[@type='usb']")
    assert usb is not None and usb.get("model") == "none"
    args = [a.get("value") for a in root.findall(f"{{{QEMU_XML_NS}}}commandline/"
                                                 f"{{{QEMU_XML_NS}}}arg")]
    assert args == ["-device", "isa-debug-exit,iobase=0xf4,iosize=1"]


def test_domain_xml_escaping_and_options(tmp_path):
    text = domain_xml(name="a<b>&'c\"", rom_path=tmp_path / "r&d.rom",
                      memory_mib=32, debug_exit=False)
    root = ET.fromstring(text)
    assert root.findtext("name") == "a<b>&'c\""
    assert root.findtext("os/loader") == str(tmp_path / "r&d.rom")
    assert root.findtext("memory") == "32"
    assert root.find("uuid") is None
    assert root.find(f"{{{QEMU_XML_NS}}}commandline") is None
    for bad in ("", "a/b", " x"):
        with pytest.raises(ValueError):
            domain_xml(name=bad, rom_path=tmp_path / "r.rom")
    with pytest.raises(ValueError):
        domain_xml(rom_path=tmp_path / "r.rom", uuid="not-a-uuid")
    with pytest.raises(ValueError):
        domain_xml(rom_path=tmp_path / "r.rom", memory_mib=0)
