"""The demo guest ROM (kvmtrace.guest): built by nasm, exits known in advance.

The unit tests only need nasm.  The ``kernel`` tests run the ROM for real under
KVM (bare QEMU and through libvirt) and count its exits with bpftrace, an
independent tracer, on the kvm:kvm_pio, kvm:kvm_mmio and kvm:kvm_userspace_exit
tracepoints, filtered to the one QEMU process: every count must equal
kvmtrace.guest.expected() exactly.  They need root, /dev/kvm, QEMU, bpftrace
and (for the libvirt test) libvirtd; they are skipped only when /dev/kvm or
nasm is missing, anything else is a failure.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

from kvmtrace import guest
from kvmtrace.guest import (
    GuestBuildError,
    Workload,
    build_rom,
    domain_xml,
    expected,
    qemu_argv,
)

needs_nasm = pytest.mark.skipif(
    shutil.which("nasm") is None, reason="nasm is not installed: apt-get install nasm"
)
needs_kvm = pytest.mark.skipif(
    not os.path.exists("/dev/kvm"), reason="/dev/kvm is missing: no KVM on this machine"
)

# Small distinct primes: a count attributed to the wrong kind shows at once.
PRIMES = Workload(23, 29, 31, 37, 41, 43, 47)
# Zero counts must skip their kind entirely (not run the loop body once).
SOME_ZERO = Workload(port_writes=0, rtc_reads=29, pit_writes=0, pit_reads=37,
                     hpet_writes=0, hpet_reads=43, ioapic_writes=0)
ALL_ZERO = Workload(0, 0, 0, 0, 0, 0, 0)

KVM_EXIT_NAMES = {2: "IO", 5: "HLT", 6: "MMIO", 8: "SHUTDOWN", 17: "INTERNAL_ERROR"}
KVM_MMIO_TYPES = {0: "unsatisfied-read", 1: "read", 2: "write"}
LIBVIRT_URI = "qemu:///system"

# bpftrace program: counts per kind for one process (PID is substituted: the
# builtin "cpid" for a child started with -c, or a literal pid), plus the
# status the process passes to exit_group().
COUNT_PROGRAM = """
tracepoint:kvm:kvm_pio /pid == PID/ { @pio[args->port, args->rw, args->size] = count(); }
tracepoint:kvm:kvm_mmio /pid == PID/ { @mmio[args->gpa, args->type, args->len] = count(); }
tracepoint:kvm:kvm_userspace_exit /pid == PID/ { @uexit[args->reason, args->errno] = count(); }
tracepoint:syscalls:sys_enter_exit_group /pid == PID/ { @exit_status = args->error_code; }
"""

# A 2-second counting window for the steady test: the 1st tick opens it, the
# 5th closes it, the 6th ends bpftrace.
STEADY_WINDOW = """
interval:ms:500 {
    @ticks = @ticks + 1;
    if (@ticks == 1) { @on = 1; @t0 = nsecs; }
    if (@ticks == 5) { @on = 0; @t1 = nsecs; }
    if (@ticks == 6) { exit(); }
}
"""

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
    ],
)
def test_bad_workloads_rejected(kwargs, error):
    with pytest.raises(error):
        Workload(**kwargs)


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
    args = [a.get("value") for a in root.findall(f"{{{guest.QEMU_XML_NS}}}commandline/"
                                                 f"{{{guest.QEMU_XML_NS}}}arg")]
    assert args == ["-device", "isa-debug-exit,iobase=0xf4,iosize=1"]


def test_domain_xml_escaping_and_options(tmp_path):
    text = domain_xml(name="a<b>&'c\"", rom_path=tmp_path / "r&d.rom",
                      memory_mib=32, debug_exit=False)
    root = ET.fromstring(text)
    assert root.findtext("name") == "a<b>&'c\""
    assert root.findtext("os/loader") == str(tmp_path / "r&d.rom")
    assert root.findtext("memory") == "32"
    assert root.find("uuid") is None
    assert root.find(f"{{{guest.QEMU_XML_NS}}}commandline") is None
    for bad in ("", "a/b", " x"):
        with pytest.raises(ValueError):
            domain_xml(name=bad, rom_path=tmp_path / "r.rom")
    with pytest.raises(ValueError):
        domain_xml(rom_path=tmp_path / "r.rom", uuid="not-a-uuid")
    with pytest.raises(ValueError):
        domain_xml(rom_path=tmp_path / "r.rom", memory_mib=0)


# --------------------------------------------------------------------------
# Kernel tests: run the ROM under KVM and count its exits with bpftrace
# --------------------------------------------------------------------------


def _qemu_binary() -> str:
    path = shutil.which("qemu-system-x86_64")
    assert path, "qemu-system-x86_64 is not installed: apt-get install qemu-system-x86"
    # bpftrace -c refuses a bare name that PATH resolves twice (/bin, /usr/bin).
    return os.path.realpath(path)


def _bpftrace(program: str, *, command: str | None = None, timeout: float = 120) -> dict:
    """Run bpftrace with JSON output and return its maps: {"@name": value}."""
    bpftrace = shutil.which("bpftrace")
    assert bpftrace, "bpftrace is not installed: apt-get install bpftrace"
    argv = [bpftrace, "-f", "json", "-e", program]
    if command is not None:
        # Started by bpftrace only after every probe is attached.  bpftrace
        # splits the string on spaces (no shell), so no path may hold one.
        argv += ["-c", command]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"bpftrace failed:\n{result.stderr}"
    maps = {}
    for line in result.stdout.splitlines():
        if line.strip():
            record = json.loads(line)
            if record.get("type") == "map":
                maps.update(record["data"])
    return maps


def _keys(table: dict) -> dict[tuple[int, ...], int]:
    """bpftrace JSON map keys "a,b,c" -> (a, b, c)."""
    return {tuple(int(part) for part in key.split(",")): n for key, n in table.items()}


def _observed(maps: dict) -> dict:
    """bpftrace's counts, in the shape of expected() (without userspace flags)."""
    pio = {(port, "write" if rw else "read", size): n
           for (port, rw, size), n in _keys(maps.get("@pio", {})).items()}
    mmio = {(gpa, KVM_MMIO_TYPES.get(kind, str(kind)), length): n
            for (gpa, kind, length), n in _keys(maps.get("@mmio", {})).items()}
    exits: dict[str, int] = {}
    restarts = 0
    for (reason, errno), n in _keys(maps.get("@uexit", {})).items():
        if errno == -4:  # KVM_RUN returned -EINTR: a signal, not an exit
            restarts += n
        else:
            name = KVM_EXIT_NAMES.get(reason, f"reason {reason}")
            if errno:
                name += f" errno {errno}"
            exits[name] = exits.get(name, 0) + n
    return {"pio": pio, "mmio": mmio, "userspace_exits": exits, "restarts": restarts,
            "exit_status": maps.get("@exit_status")}


def _as_events(truth: dict) -> dict:
    """expected() as the tracepoints show it: an MMIO read the VMM completes is
    an "unsatisfied-read" event followed by a "read" event."""
    pio = {key[:3]: n for key, n in truth["pio"].items()}
    mmio: dict[tuple, int] = {}
    for (gpa, rw, length, userspace), n in truth["mmio"].items():
        mmio[(gpa, rw, length)] = n
        if rw == "read" and userspace:
            mmio[(gpa, "unsatisfied-read", length)] = n
    return {"pio": pio, "mmio": mmio, "userspace_exits": truth["userspace_exits"]}


def _assert_exact(observed: dict, workload: Workload) -> None:
    want = _as_events(expected(workload))
    got = {key: observed[key] for key in want}
    assert got == want
    assert observed["exit_status"] == guest.FINITE_EXIT_STATUS


@pytest.mark.kernel
@needs_kvm
@needs_nasm
def test_finite_rom_exits_qemu(tmp_path):
    rom = build_rom(PRIMES, tmp_path)
    start = time.monotonic()
    result = subprocess.run(qemu_argv(rom, qemu=_qemu_binary()),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == guest.FINITE_EXIT_STATUS, result.stderr
    assert time.monotonic() - start < 30


@pytest.mark.kernel
@needs_kvm
@needs_nasm
@pytest.mark.parametrize("workload", [PRIMES, SOME_ZERO, ALL_ZERO],
                         ids=["primes", "some-zero", "all-zero"])
def test_finite_rom_exact_counts(tmp_path, workload):
    rom = build_rom(workload, tmp_path)
    command = " ".join(qemu_argv(rom, qemu=_qemu_binary()))
    observed = _observed(_bpftrace(COUNT_PROGRAM.replace("PID", "cpid"), command=command))
    _assert_exact(observed, workload)


@pytest.mark.kernel
@needs_kvm
@needs_nasm
def test_steady_rom_keeps_running(tmp_path):
    workload = Workload(steady=True)
    rom = build_rom(workload, tmp_path)
    qemu = subprocess.Popen(qemu_argv(rom, qemu=_qemu_binary()),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Count only inside a window opened and closed by a timer, so that the
        # probes' differing attach and detach times (tens of ms each here) do
        # not skew one kind against another.
        program = COUNT_PROGRAM.replace("PID", f"{qemu.pid} && @on == 1") + STEADY_WINDOW
        maps = _bpftrace(program, timeout=60)
        assert qemu.poll() is None, "the steady ROM ended by itself"
    finally:
        qemu.kill()
        qemu.wait()
    observed = _observed(maps)
    seconds = (maps["@t1"] - maps["@t0"]) / 1e9

    # Every kind ran, in the ratio of one pass, and the guest never left the loop.
    per_pass = _as_events(expected(workload))
    passes = {}
    for table in ("pio", "mmio"):
        assert set(observed[table]) == set(per_pass[table])
        for key, n in per_pass[table].items():
            passes[key] = observed[table][key] / n
    low, high = min(passes.values()), max(passes.values())
    assert low >= 1 and high - low <= 1.01, passes
    rates = {key: round(observed[t][key] / seconds)
             for t in ("pio", "mmio") for key in observed[t]}
    print(f"\nsteady mode, {low:.2f} passes in {seconds:.3f} s;"
          f" events per second: {rates}; userspace exits: {observed['userspace_exits']}")


def _virsh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", LIBVIRT_URI, *args], capture_output=True,
                          text=True, timeout=timeout, check=check)


def _ensure_libvirtd() -> None:
    """Start virtlogd and libvirtd (this machine has no systemd) unless running."""
    if _virsh("uri", check=False, timeout=10).returncode == 0:
        return
    if not os.path.exists("/run/libvirt/virtlogd-sock"):
        subprocess.run(["virtlogd", "-d"], check=True, timeout=30)
    subprocess.run(["libvirtd", "-d"], check=True, timeout=30)
    for _ in range(100):
        if _virsh("uri", check=False, timeout=10).returncode == 0:
            return
        time.sleep(0.1)
    pytest.fail("libvirtd did not come up on qemu:///system")


@pytest.mark.kernel
@needs_kvm
@needs_nasm
def test_libvirt_domain_runs_and_ends(tmp_path):
    _ensure_libvirtd()
    workload = PRIMES
    rom = build_rom(workload)  # under /var/lib/libvirt/images: QEMU is sandboxed
    name = f"kvmtrace-test-{uuid.uuid4().hex[:8]}"
    xml_file = tmp_path / "domain.xml"
    xml_file.write_text(domain_xml(name=name, rom_path=rom))
    # Resume the guest, then wait until its domain is gone (the guest ends it
    # through isa-debug-exit).  bpftrace runs this only once its probes are
    # attached, and keeps counting until it returns.
    runner = tmp_path / "resume-and-wait"
    runner.write_text(
        "#!/bin/sh\n"
        f"virsh -c {LIBVIRT_URI} resume \"$1\" >/dev/null || exit 1\n"
        "i=0\n"
        f"while virsh -c {LIBVIRT_URI} domid \"$1\" >/dev/null 2>&1; do\n"
        "    i=$((i + 1)); [ $i -gt 600 ] && exit 2\n"
        "    sleep 0.05\n"
        "done\n"
    )
    shell = os.path.realpath("/bin/sh")  # bpftrace -c wants an ELF binary

    _virsh("create", "--paused", str(xml_file))
    try:
        assert _virsh("domstate", name).stdout.strip() == "paused"
        pid = int(pathlib.Path(f"/run/libvirt/qemu/{name}.pid").read_text())
        observed = _observed(_bpftrace(COUNT_PROGRAM.replace("PID", str(pid)),
                                       command=f"{shell} {runner} {name}"))
        gone = _virsh("domid", name, check=False)
        assert gone.returncode != 0, "the domain did not end itself"
    finally:
        if _virsh("domid", name, check=False).returncode == 0:
            _virsh("destroy", name, check=False)
    _assert_exact(observed, workload)
