"""The demo guest ROM (kvmtrace.demo.guest) run for real under KVM (bare QEMU
and through libvirt), its exits counted with bpftrace, an independent tracer,
on the kvm:kvm_pio, kvm:kvm_mmio and kvm:kvm_userspace_exit tracepoints,
filtered to the one QEMU process: every count must equal
kvmtrace.demo.guest.expected() exactly.  For the paced steady mode (tick_hz > 0)
they check that the rates follow the clock, with and without a CPU hog, and
that a stopped run's counts are exactly its setup plus whole passes, one EOI
per timer interrupt the guest itself counted.  They need root, /dev/kvm, QEMU, bpftrace
and (for the libvirt test) libvirtd; they are skipped only when /dev/kvm or
nasm is missing, anything else is a failure.  Building the ROM is checked in
tests/unit/test_guest_rom.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time
import uuid

import pytest

from kvmtrace.demo import guest
from kvmtrace.demo.guest import (
    PACED,
    Workload,
    build_rom,
    expected,
    expected_rates,
    expected_setup,
)
from kvmtrace.demo.machine import domain_xml, qemu_argv

from ..support.kernel import URI as LIBVIRT_URI

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


@needs_kvm
@needs_nasm
def test_finite_rom_exits_qemu(tmp_path):
    rom = build_rom(PRIMES, tmp_path)
    start = time.monotonic()
    result = subprocess.run(qemu_argv(rom, qemu=_qemu_binary()),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == guest.FINITE_EXIT_STATUS, result.stderr
    assert time.monotonic() - start < 30


@needs_kvm
@needs_nasm
@pytest.mark.parametrize("workload", [PRIMES, SOME_ZERO, ALL_ZERO],
                         ids=["primes", "some-zero", "all-zero"])
def test_finite_rom_exact_counts(tmp_path, workload):
    rom = build_rom(workload, tmp_path)
    command = " ".join(qemu_argv(rom, qemu=_qemu_binary()))
    observed = _observed(_bpftrace(COUNT_PROGRAM.replace("PID", "cpid"), command=command))
    _assert_exact(observed, workload)


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
        "    i=$((i + 1)); [ $i -gt 2400 ] && exit 2\n"  # 2 min at the least: a loaded host emulates slowly
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


# --------------------------------------------------------------------------
# Paced steady mode, for real
# --------------------------------------------------------------------------

# A 3-second counting window: the 1st tick opens it, the 7th closes it, the
# 8th ends bpftrace.  The rates are divided by the window's own nsecs.
PACED_WINDOW = """
interval:ms:500 {
    @ticks = @ticks + 1;
    if (@ticks == 1) { @on = 1; @t0 = nsecs; }
    if (@ticks == 7) { @on = 0; @t1 = nsecs; }
    if (@ticks == 8) { exit(); }
}
"""


def _paced_rates(workload: Workload, rom: pathlib.Path, *, hog: bool) -> tuple[dict, dict]:
    """Run the paced ROM in bare QEMU (with a busy loop on the side when *hog*)
    and return (observed events per second in the window, raw observed)."""
    qemu = subprocess.Popen(qemu_argv(rom, qemu=_qemu_binary(), debug_exit=False),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    spinner = None
    try:
        if hog:
            # Its own process group, killed as a whole below; timeout bounds it
            # even if this test is killed.
            spinner = subprocess.Popen(["timeout", "60", "sh", "-c", "while :; do :; done"],
                                       start_new_session=True)
        program = COUNT_PROGRAM.replace("PID", f"{qemu.pid} && @on == 1") + PACED_WINDOW
        maps = _bpftrace(program, timeout=60)
        assert qemu.poll() is None, "the paced ROM ended by itself"
    finally:
        if spinner is not None:
            os.killpg(spinner.pid, signal.SIGKILL)
            spinner.wait()
        qemu.kill()
        qemu.wait()
    observed = _observed(maps)
    seconds = (maps["@t1"] - maps["@t0"]) / 1e9
    rates = {table: {key: n / seconds for key, n in observed[table].items()}
             for table in ("pio", "mmio", "userspace_exits")}
    return rates, observed


@needs_kvm
@needs_nasm
def test_paced_rom_rates_follow_the_clock(tmp_path):
    """Two runs of PACED, the second with a CPU hog beside it: every kind's
    rate is within 2 % of tick_rate x its per-tick count, and the two runs'
    port 0x80 rates are within 2 % of each other."""
    workload = PACED
    rom = build_rom(workload, tmp_path)
    want = _as_events(expected_rates(workload))
    runs = []
    for hog in (False, True):
        rates, observed = _paced_rates(workload, rom, hog=hog)
        # Only the per-tick kinds: no setup in the window, no HLT exit, nothing else.
        assert set(rates["pio"]) == set(want["pio"])
        assert set(rates["mmio"]) == set(want["mmio"])
        assert set(rates["userspace_exits"]) == set(want["userspace_exits"]), observed
        for table in ("pio", "mmio", "userspace_exits"):
            for key, rate in want[table].items():
                assert rates[table][key] == pytest.approx(rate, rel=0.02), (hog, table, key)
        runs.append(rates)
        print(f"\npaced {workload.tick_hz} Hz{' + CPU hog' if hog else ''}:"
              f" port 0x80 {rates['pio'][(0x80, 'write', 1)]:,.1f}/s"
              f" (clock: {want['pio'][(0x80, 'write', 1)]:,.1f}/s),"
              f" EOIs {rates['pio'][(0x20, 'write', 1)]:.2f}/s,"
              f" userspace exits {({k: round(v, 1) for k, v in rates['userspace_exits'].items()})}")
    key = (0x80, "write", 1)
    assert runs[1]["pio"][key] == pytest.approx(runs[0]["pio"][key], rel=0.02)


# The pass in order, as the tracepoints count it (the HPET read's "read" event
# is checked apart: it fires only when QEMU's answer comes back).
_PASS_ORDER = [
    ("pio", (0x80, "write", 1), "port_writes"),
    ("pio", (0x71, "read", 1), "rtc_reads"),
    ("pio", (0x43, "write", 1), "pit_writes"),
    ("pio", (0x40, "read", 1), "pit_reads"),
    ("mmio", (0xFED00010, "write", 4), "hpet_writes"),
    ("mmio", (0xFED00000, "unsatisfied-read", 4), "hpet_reads"),
    ("mmio", (0xFEC00000, "write", 4), "ioapic_writes"),
]


def _rom_linear(offset: int) -> int:
    """Linear address of ROM offset *offset* while the paced ROM runs (flat
    32-bit code at 0xF0000 + offset)."""
    return 0xF0000 + offset


def _registers(name: str) -> dict[str, int]:
    text = _virsh("qemu-monitor-command", "--hmp", name, "info registers").stdout
    return {reg: int(value, 16)
            for reg, value in re.findall(r"\b(E[A-Z]{2})=([0-9a-f]{8})\b", text)}


# The defaults at 10 Hz: a long pass (often caught in progress) and, below the
# PIT's 18.2 Hz, two timer interrupts per pass.
SLOW_PACED = Workload(steady=True, tick_hz=10)


@needs_kvm
@needs_nasm
@pytest.mark.parametrize("workload", [PACED, SLOW_PACED], ids=["paced-100hz", "defaults-10hz"])
def test_paced_rom_exact_counts(tmp_path, workload):
    """Run a paced ROM under libvirt for ~1.5 s from its first instruction,
    suspend it, and account for every event: the setup exactly once, one EOI
    per timer interrupt the guest counted (EBP), whole passes (EDI /
    irqs_per_tick), and at most one pass in progress, cut off in pass order."""
    _ensure_libvirtd()
    rom = build_rom(workload)  # under /var/lib/libvirt/images: QEMU is sandboxed
    image = rom.read_bytes()
    name = f"kvmtrace-test-{uuid.uuid4().hex[:8]}"
    xml_file = tmp_path / "domain.xml"
    xml_file.write_text(domain_xml(name=name, rom_path=rom, debug_exit=False))
    runner = tmp_path / "resume-run-suspend"
    runner.write_text(
        "#!/bin/sh\n"
        f"virsh -c {LIBVIRT_URI} resume \"$1\" >/dev/null || exit 1\n"
        "sleep 1.5\n"
        f"virsh -c {LIBVIRT_URI} suspend \"$1\" >/dev/null || exit 2\n"
    )
    shell = os.path.realpath("/bin/sh")

    _virsh("create", "--paused", str(xml_file))
    try:
        pid = int(pathlib.Path(f"/run/libvirt/qemu/{name}.pid").read_text())
        maps = _bpftrace(COUNT_PROGRAM.replace("PID", str(pid)),
                         command=f"{shell} {runner} {name}")
        assert _virsh("domstate", name).stdout.strip() == "paused"
        regs = _registers(name)
    finally:
        _virsh("destroy", name, check=False)
    observed = _observed(maps)
    pio, mmio = dict(observed["pio"]), dict(observed["mmio"])

    k = workload.irqs_per_tick
    interrupts = regs["EBP"]  # counted by the guest's timer handler
    passes = regs["EDI"] // k  # EDI: interrupts at which the next pass is due
    assert regs["EDI"] % k == 0
    assert regs["EDI"] - k <= interrupts <= regs["EDI"]
    in_pass = interrupts == regs["EDI"]  # else halted, waiting for a tick
    want = 1.5 * workload.tick_rate * k
    assert interrupts >= want / 3, f"only {interrupts} timer interrupts in 1.5 s"

    # Setup: every kind exactly once over.
    setup = _as_events(expected_setup(workload))
    for table, counts in (("pio", pio), ("mmio", mmio)):
        for key, n in setup[table].items():
            assert counts.get(key, 0) >= n, (key, counts.get(key))
            counts[key] -= n
    for key in [(0x21, "write", 1), (0xA0, "write", 1), (0xA1, "write", 1), (0x40, "write", 1)]:
        assert pio.pop(key) == 0
    for key in [(0xFEE000F0, "write", 4), (0xFEE00350, "write", 4)]:
        assert mmio.pop(key) == 0

    # One EOI per interrupt the guest counted.  The handler writes the EOI one
    # instruction before it counts: a stop right between them leaves one more.
    eois = pio.pop((0x20, "write", 1))
    isr = image.index(bytes([0xB0, 0x20, 0xE6, 0x20, 0x45]))  # mov al,0x20; out; inc ebp
    at_inc = regs["EIP"] == _rom_linear(isr + 4)
    assert eois == interrupts + (1 if at_inc else 0), (eois, interrupts, regs)

    # Whole passes, then at most one pass in progress, cut off in pass order.
    remainder = []
    for table, key, field in _PASS_ORDER:
        n = getattr(workload, field)
        counts = pio if table == "pio" else mmio
        left = counts.pop(key, 0) - passes * n
        remainder.append((key, left, n))
    hpet_reads_done = mmio.pop((0xFED00000, "read", 4), 0) - passes * workload.hpet_reads
    assert pio == {} and mmio == {}, f"unexpected events: {pio} {mmio}"
    if not in_pass:
        assert all(left == 0 for _, left, _ in remainder), remainder
    i = 0
    while i < len(remainder) and remainder[i][1] == remainder[i][2]:
        i += 1  # kinds this pass has finished
    if i < len(remainder):
        assert 0 <= remainder[i][1] <= remainder[i][2], remainder  # the kind in progress
        assert all(left == 0 for _, left, _ in remainder[i + 1:]), remainder
    # An HPET read handed to QEMU completes ("read") only when the vCPU runs again.
    hpet_sent = remainder[5][1]
    assert hpet_reads_done in (hpet_sent, hpet_sent - 1)

    # Userspace exits: the QEMU devices only (no HLT, no setup, no EOI).  An
    # RTC read handed to QEMU shows as kvm_pio only once it completes.
    exits = dict(observed["userspace_exits"])
    io_events = passes * (workload.port_writes + workload.rtc_reads) \
        + remainder[0][1] + remainder[1][1]
    assert exits.pop("IO") - io_events in (0, 1)
    assert exits.pop("MMIO") == passes * (workload.hpet_writes + workload.hpet_reads) \
        + remainder[4][1] + remainder[5][1]
    assert exits == {}, exits
    print(f"\npaced {workload.tick_hz} Hz run stopped after {interrupts} timer interrupts and"
          f" {passes} whole passes ({'in a pass' if in_pass else 'halted'}): {eois} EOIs,"
          f" every count accounted for")
