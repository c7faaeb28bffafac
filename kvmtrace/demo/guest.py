"""The kvmtrace demo guest: a firmware ROM whose VM exits are known in advance.

``rom.asm`` (next to this file) is a 64 KiB firmware image that QEMU runs as
its BIOS.  It switches to 32-bit protected mode and then performs a fixed
number of port and MMIO accesses of six kinds (see :class:`Workload`), each of
which is exactly one KVM exit.  Some are emulated by QEMU (they reach userspace
as ``KVM_EXIT_IO`` / ``KVM_EXIT_MMIO``), some by the kernel (the PIT and the
IOAPIC: no userspace exit).  That makes the guest a ground truth for a tracer:
:func:`expected` says what a finite run must show.

A steady guest (``steady=True``) repeats its pass for ever, by default as
fast as the host emulates it, so its exit rates follow the host's load.  A
*paced* steady guest (``tick_hz > 0``, e.g. :data:`PACED`) starts one pass per
tick of the in-kernel PIT instead and halts in between, so its exit rates are
set by a clock: ``tick_rate`` passes per second, as long as a pass fits in a
tick.  :func:`expected_setup` gives its one-time interrupt-controller and
timer programming, :func:`expected_per_tick` what each tick adds and
:func:`expected_rates` the resulting events per second.

Typical use::

    from kvmtrace.demo.guest import Workload, build_rom, expected
    from kvmtrace.demo.machine import domain_xml
    w = Workload(port_writes=23, rtc_reads=29)
    rom = build_rom(w)                      # /var/lib/libvirt/images/kvmtrace-demo-<hash>.rom
    xml = domain_xml(rom_path=rom)          # for virsh create / virDomainCreateXML
    truth = expected(w)

    paced = PACED                           # 100 passes a second, for ever
    rates = expected_rates(paced)           # e.g. port 0x80: 97 * 99.9985 /s

Only the standard library (and kvmtrace's errors) is used, and importing this
module does nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import os
import pathlib
import shutil
import subprocess
import tempfile

from kvmtrace.errors import GuestBuildError

__all__ = [
    "DEBUG_EXIT_PORT",
    "DEFAULT_DOMAIN_NAME",
    "DEFAULT_OUT_DIR",
    "FINITE_EXIT_STATUS",
    "GuestBuildError",
    "MAX_TICK_HZ",
    "PACED",
    "PIT_HZ",
    "ROM_SIZE",
    "RESET_VECTOR",
    "Workload",
    "build_rom",
    "expected",
    "expected_per_tick",
    "expected_rates",
    "expected_setup",
]

ROM_SIZE = 0x10000
"""Size of the firmware image: QEMU maps it at 0xF0000 and at 0xFFFF0000."""

RESET_VECTOR = 0xFFF0
"""ROM offset of the first instruction the CPU runs (linear 0xFFFFFFF0)."""

DEFAULT_OUT_DIR = "/var/lib/libvirt/images"
"""libvirt runs QEMU with ``-sandbox on`` and confined: keep the ROM here."""

DEFAULT_DOMAIN_NAME = "linux10.0421"

DEBUG_EXIT_PORT = 0xF4
"""Port of QEMU's ``isa-debug-exit`` device; the finite ROM writes 0 to it."""

FINITE_EXIT_STATUS = (0 << 1) | 1
"""QEMU's exit status after the finite ROM's write of 0 to isa-debug-exit."""

# What the ROM touches (must match rom.asm).
PORT_DELAY = 0x80  # out: QEMU's "ioport80"
PORT_RTC = 0x71  # in: CMOS/RTC data, QEMU
PORT_PIT_CMD = 0x43  # out: PIT command, in-kernel PIT
PORT_PIT0 = 0x40  # in: PIT channel 0, in-kernel PIT
HPET_CONFIG = 0xFED00010  # 4-byte write, QEMU's HPET
HPET_CAPS = 0xFED00000  # 4-byte read, QEMU's HPET
IOAPIC_REGSEL = 0xFEC00000  # 4-byte write, KVM's IOAPIC
# Paced mode only (tick_hz > 0): set up once, all emulated in the kernel.
PORT_PIC1 = 0x20  # master 8259 command: ICW1, then one EOI per interrupt
PORT_PIC1_DATA = 0x21  # master 8259 data: ICW2..ICW4, mask
PORT_PIC2 = 0xA0  # slave 8259 command: ICW1
PORT_PIC2_DATA = 0xA1  # slave 8259 data: ICW2..ICW4, mask
LAPIC_SVR = 0xFEE000F0  # 4-byte write: enable the local APIC
LAPIC_LVT0 = 0xFEE00350  # 4-byte write: LINT0 = ExtINT (the PIC's way in)

PIT_HZ = 1193182
"""The PIT's input clock in Hz (KVM's ``KVM_PIT_FREQ``)."""

MAX_TICK_HZ = 10000
"""Highest ``Workload.tick_hz``.  KVM itself limits a periodic PIT to one tick
per ``kvm.min_timer_period_us`` (200 us by default, i.e. 5000 Hz)."""

ENDINGS = ("debug_exit", "emulation_failure", "triple_fault")
"""How a finite ROM ends (rom.asm's ENDING 0, 1, 2): isa-debug-exit; lidt of an
empty IDT and int3 (KVM_EXIT_INTERNAL_ERROR, suberror 1, on a host whose KVM
emulates every instruction, as the development machines: measured); the same
and ud2 (a triple fault: KVM_EXIT_SHUTDOWN, measured there too)."""

MAX_VCPUS = 8
AP_WRITES = (59, 61, 67, 71, 73, 79, 83)
"""Port 0x80 writes of the application processor with APIC id k (1..7): AP_WRITES[k - 1]."""
LAPIC_ID = 0xFEE00020  # 4-byte read by each AP: its APIC id (in-kernel APIC)
LAPIC_ICR = 0xFEE00300  # 4-byte writes by the BSP: INIT, SIPI, SIPI

IRQCHIPS = ("kernel", "split", "off")
"""Where the interrupt controllers are: KVM's (the default); the local APIC in
KVM and the PIC, PIT and IOAPIC in QEMU (kernel_irqchip=split, what QEMU's
q35 with an IOMMU and most clouds run); or all of them in QEMU
(kernel_irqchip=off)."""

_MAX_COUNT = 2**31


@dataclasses.dataclass(frozen=True)
class Workload:
    """How many accesses of each kind one pass of the ROM performs.

    Every access is exactly one VM exit.  The defaults are distinct primes so
    that any two kinds mixed up by a tracer give visibly wrong totals.
    ``steady=False`` runs one pass and then ends QEMU through isa-debug-exit;
    ``steady=True`` repeats the pass for ever (a constant exit load).

    ``tick_hz`` (0, or 1 .. :data:`MAX_TICK_HZ`; non-zero only with
    ``steady=True``) paces a steady guest: 0 (the default) loops as fast as
    the host emulates the guest, so the exit rates vary with host load; N
    starts one pass N times a second, timed by the in-kernel PIT (channel 0,
    mode 2, divisor :attr:`pit_divisor`), and halts in between.  The rates
    then follow the clock (:attr:`tick_rate` passes a second), not the
    host's speed, as long as a pass takes well under a tick.  A pass that
    takes longer than a tick finds the next tick already pending and starts
    at once: short overruns are caught up (KVM's PIT delivers late ticks one
    after another), but if passes are always longer than a tick, the rates
    are throughput-bound again.  On the development machines (every guest
    instruction emulated) a pass of the defaults takes about 35-40 ms; one
    of the :data:`PACED` preset takes about 2 ms (single passes up to 8 ms
    under heavy load), inside its 10 ms tick.
    """

    port_writes: int = 997  # out 0x80, al           -> KVM_EXIT_IO
    rtc_reads: int = 503  # in al, 0x71             -> KVM_EXIT_IO
    pit_writes: int = 257  # out 0x43, al (in-kernel PIT)
    pit_reads: int = 263  # in al, 0x40  (in-kernel PIT)
    hpet_writes: int = 127  # 4-byte write 0xFED00010 -> KVM_EXIT_MMIO
    hpet_reads: int = 131  # 4-byte read 0xFED00000  -> KVM_EXIT_MMIO
    ioapic_writes: int = 137  # 4-byte write 0xFEC00000 (in-kernel IOAPIC)
    steady: bool = False
    tick_hz: int = 0  # passes per second (paced steady mode); 0: unpaced
    irqs: int = 0  # finite: PIT interrupts to wait for (sti; hlt) before the pass; needs tick_hz
    ending: str = "debug_exit"  # finite: "debug_exit", "emulation_failure" or "triple_fault"
    vcpus: int = 1  # 2..8: the BSP starts the APs, AP k writes port 0x80 AP_WRITES[k - 1] times

    def __post_init__(self) -> None:
        if self.ending not in ENDINGS:
            raise ValueError(f"Workload.ending must be one of {', '.join(ENDINGS)}, not {self.ending!r}")
        if self.ending != "debug_exit" and self.steady:
            raise ValueError(f"Workload.ending={self.ending!r} needs steady=False: a steady guest never ends")
        if not isinstance(self.vcpus, int) or isinstance(self.vcpus, bool) or not 1 <= self.vcpus <= MAX_VCPUS:
            raise ValueError(f"Workload.vcpus must be in 1 .. {MAX_VCPUS}, not {self.vcpus!r}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "ending":
                continue
            if field.name == "steady":
                if not isinstance(value, bool):
                    raise TypeError(f"Workload.steady must be a bool, not {value!r}")
                continue
            # bool is an int subclass: Workload(port_writes=True) is a mistake.
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"Workload.{field.name} must be an int, not {value!r}")
            if field.name == "tick_hz":
                if not 0 <= value <= MAX_TICK_HZ:
                    raise ValueError(
                        f"Workload.tick_hz must be 0 (unpaced) or 1 .. {MAX_TICK_HZ},"
                        f" not {value}"
                    )
                continue
            if not 0 <= value < _MAX_COUNT:
                raise ValueError(
                    f"Workload.{field.name} must be in 0 .. 2**31-1, not {value}"
                )
        if self.tick_hz and not self.steady and not self.irqs:
            raise ValueError(
                f"Workload.tick_hz={self.tick_hz} needs steady=True (the endless paced loop)"
                " or irqs > 0 (a finite run that waits for that many interrupts)"
            )
        if self.irqs and (self.steady or not self.tick_hz):
            raise ValueError(f"Workload.irqs={self.irqs} needs tick_hz > 0 and steady=False")

    @property
    def irqs_per_tick(self) -> int:
        """PIT interrupts per pass: the smallest k >= 1 whose divisor fits 16 bits.

        1 for ``tick_hz`` >= 19; the PIT cannot tick slower than about 18.2 Hz, so
        slower paces count k interrupts per pass (e.g. 19 for 1 Hz).  0 when
        unpaced.  rom.asm computes the same.
        """
        return _pit_setting(self.tick_hz)[1]

    @property
    def pit_divisor(self) -> int:
        """PIT channel 0's divisor: round(PIT_HZ / (tick_hz * irqs_per_tick)),
        halves rounded up; 0 when unpaced."""
        return _pit_setting(self.tick_hz)[0]

    @property
    def tick_rate(self) -> float:
        """Passes per second that the clock sets: PIT_HZ / (pit_divisor *
        irqs_per_tick), e.g. 99.9985 for ``tick_hz=100`` (divisor 11932); 0.0
        when unpaced.  Measured rates are this times the per-tick counts."""
        divisor, k = _pit_setting(self.tick_hz)
        return PIT_HZ / (divisor * k) if k else 0.0

    def defines(self) -> dict[str, int]:
        """The nasm ``-D`` defines that build this workload (see rom.asm).

        The ending, interrupts and vCPUs are only defined when not their
        defaults, so the default ROMs are the images built before they existed.
        """
        values = dataclasses.asdict(self)
        values["ending"] = ENDINGS.index(self.ending)
        out = {name.upper(): int(value) for name, value in values.items()}
        for name, default in (("ENDING", 0), ("IRQS", 0), ("VCPUS", 1)):
            if out[name] == default:
                del out[name]
        return out


def _pit_setting(tick_hz: int) -> tuple[int, int]:
    """(divisor, irqs_per_tick) for *tick_hz*, as rom.asm computes them; (0, 0)
    for 0."""
    if not tick_hz:
        return 0, 0
    k = 1
    while True:
        hz = tick_hz * k
        divisor = (2 * PIT_HZ + hz) // (2 * hz)  # round half up
        if divisor <= 0xFFFF:
            return divisor, k
        k += 1


PACED = Workload(
    port_writes=97,
    rtc_reads=53,
    pit_writes=29,
    pit_reads=31,
    hpet_writes=13,
    hpet_reads=11,
    ioapic_writes=17,
    steady=True,
    tick_hz=100,
)
"""A paced steady guest for sample series and run-to-run comparisons: 100
passes a second (PIT divisor 11932: 99.9985 Hz), each of 251 accesses (174 of
them userspace exits) and one EOI.  A pass takes about 2 ms on the
development machines (single ones up to 8 ms under heavy load), inside its
10 ms tick, so the rates are the clock's: port 0x80 9,700 writes/s, the RTC
5,300 reads/s, and so on (:func:`expected_rates`); measured over 3 s, with
and without a CPU hog beside the guest, within 0.1 % of that."""


HALT = Workload(port_writes=0, rtc_reads=0, pit_writes=0, pit_reads=0, hpet_writes=0, hpet_reads=0,
               ioapic_writes=0)
"""A guest that halts with interrupts off at once: an empty pass, the final
write to port 0xF4, then ``cli; hlt`` for ever.  Started without
isa-debug-exit (``start_demo(..., debug_exit=False)``) the write is one
KVM_EXIT_IO to nothing and the domain stays up with its vCPU asleep inside
KVM_RUN: nothing (no timer: the ROM programs none) ever wakes it."""


def _resource(name: str):
    return importlib.resources.files(__package__).joinpath(name)


def build_rom(
    workload: Workload | None = None,
    out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR,
) -> pathlib.Path:
    """Assemble ``rom.asm`` for *workload* and return the ROM's path.

    The file is ``<out_dir>/kvmtrace-demo-<hash>.rom``, where the hash covers
    the assembler source and the workload, mode 0644.  An existing file with
    identical contents is reused, otherwise the file is replaced atomically.
    Raises :class:`GuestBuildError` when nasm is missing or fails, when the
    image is not exactly 64 KiB, or when *out_dir* is not writable.
    """
    if workload is None:
        workload = Workload()
    nasm = shutil.which("nasm")
    if nasm is None:
        raise GuestBuildError("nasm not found", "apt-get install nasm")

    source = _resource("rom.asm")
    defines = workload.defines()
    key = source.read_bytes() + repr(sorted(defines.items())).encode()
    digest = hashlib.sha256(key).hexdigest()[:16]
    out_dir = pathlib.Path(out_dir)
    target = out_dir / f"kvmtrace-demo-{digest}.rom"

    with tempfile.TemporaryDirectory(prefix="kvmtrace-rom-") as tmp, \
            importlib.resources.as_file(source) as source_path:
        output = pathlib.Path(tmp) / "rom.bin"
        argv = [nasm, "-f", "bin"]
        argv += [f"-D{name}={value}" for name, value in defines.items()]
        argv += ["-o", str(output), str(source_path)]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise GuestBuildError(f"cannot run {nasm}: {exc}", "apt-get install nasm") from exc
        if result.returncode != 0:
            said = "; ".join(line.strip() for line in result.stderr.splitlines() if line.strip())
            raise GuestBuildError(f"nasm failed (exit {result.returncode}) on {source_path}: {said}",
                                  "rom.asm or the workload's defines are broken")
        image = output.read_bytes()

    if len(image) != ROM_SIZE:
        raise GuestBuildError(
            f"nasm produced {len(image)} bytes, not {ROM_SIZE}: rom.asm is broken"
        )
    if image[RESET_VECTOR] != 0xEA:  # jmp ptr16:16 at the reset vector
        raise GuestBuildError("no far jump at the ROM's reset vector: rom.asm is broken")

    try:
        if target.is_file() and target.read_bytes() == image:
            if target.stat().st_mode & 0o777 != 0o644:
                target.chmod(0o644)
            return target
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=".kvmtrace-demo-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(image)
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, target)
        except BaseException:
            pathlib.Path(tmp_name).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise GuestBuildError(f"cannot write {target}: {exc}", "run as root or pass a writable out_dir") from exc
    return target


def _add(table: dict, key, count: int) -> None:
    if count:
        table[key] = table.get(key, 0) + count


def _with_exits(pio: dict, mmio: dict) -> dict[str, dict]:
    exits: dict[str, int] = {}
    _add(exits, "IO", sum(n for key, n in pio.items() if key[3]))
    _add(exits, "MMIO", sum(n for key, n in mmio.items() if key[3]))
    return {"pio": pio, "mmio": mmio, "userspace_exits": exits}


def expected(workload: Workload, irqchip: str = "kernel") -> dict[str, dict]:
    """Ground truth for ONE run of *workload*'s ROM, as the kernel sees it.

    Returns ``{"pio": {(port, "write"|"read", size, userspace): n},
    "mmio": {(gpa, "write"|"read", length, userspace): n},
    "userspace_exits": {"IO": n, "MMIO": m, ...}}``, where ``userspace`` tells
    whether the access is handed to the VMM (a ``KVM_EXIT_IO``/``KVM_EXIT_MMIO``
    exit of ``KVM_RUN``) or handled in the kernel.  Kinds with a count of 0 are
    left out, so the dicts compare equal to counters of what was observed.

    For a finite workload this includes its ending: the final write of 0 to
    port 0xF4 (isa-debug-exit), one ``INTERNAL_ERROR`` or one ``SHUTDOWN``
    userspace exit (see :data:`ENDINGS`).  For a steady workload it describes
    one pass of the endless loop (no ending).  For a paced workload
    (``tick_hz > 0``, steady) it is :func:`expected_per_tick`: one pass plus
    its EOI write(s) to port 0x20; the one-time setup is
    :func:`expected_setup`.  A finite workload with ``irqs`` includes that
    setup and its ``irqs`` EOIs; with ``vcpus > 1`` it is the sum over the
    vCPUs of :func:`expected_by_vcpu`.

    ``irqchip="off"`` (QEMU's PIC, PIT, IOAPIC and local APIC: the domain's
    kernel_irqchip=off) hands every access to the VMM, and each of the
    ``irqs`` waits is one more userspace exit, HLT or IRQ_WINDOW_OPEN
    (which, depends on timing): ``"interrupt_waits": irqs`` counts them
    together. ``irqchip="split"`` hands the PIC, PIT and IOAPIC accesses to
    the VMM and keeps the local APIC's (and HLT) in the kernel; QEMU injects
    the PIC's interrupt itself (KVM_INTERRUPT) and, when the guest cannot
    take it yet, asks for an interrupt window: some of the waits end in an
    IRQ_WINDOW_OPEN exit, how many depends on timing (not counted here).

    Each access is one exit and one ``kvm_pio`` or ``kvm_mmio`` event, except an
    MMIO read completed by the VMM (the HPET reads): ``kvm_mmio`` fires twice for
    it, "unsatisfied-read" when KVM hands it to userspace and "read" when the
    answer comes back.  It is counted once here.
    """
    total: dict[str, dict] = {"pio": {}, "mmio": {}, "userspace_exits": {}}
    for part in expected_by_vcpu(workload, irqchip).values():
        for table, counts in part.items():
            for key, n in counts.items():
                _add(total.setdefault(table, {}), key, n)
    return total


def expected_by_vcpu(workload: Workload, irqchip: str = "kernel") -> dict[int, dict[str, dict]]:
    """:func:`expected` per vCPU (its index, the APIC id): the BSP (0) does
    everything but the APs' work; AP k reads its APIC id and writes port 0x80
    ``AP_WRITES[k - 1]`` times.  Every vCPU of the domain has an entry."""
    if irqchip not in IRQCHIPS:
        raise ValueError(f"irqchip must be one of {', '.join(IRQCHIPS)}, not {irqchip!r}")
    w = workload
    user = irqchip in ("split", "off")  # the PIC, PIT and IOAPIC are QEMU's
    lapic_user = irqchip == "off"  # and the local APIC too
    pio: dict[tuple[int, str, int, bool], int] = {}
    mmio: dict[tuple[int, str, int, bool], int] = {}
    add = _add

    if w.vcpus > 1:
        add(mmio, (LAPIC_SVR, "write", 4, lapic_user), 1)
        add(mmio, (LAPIC_ICR, "write", 4, lapic_user), 3)
    if w.irqs:
        setup = expected_setup(w, irqchip)
        for key, n in setup["pio"].items():
            add(pio, key, n)
        for key, n in setup["mmio"].items():
            add(mmio, key, n)
    add(pio, (PORT_DELAY, "write", 1, True), w.port_writes)
    add(pio, (PORT_RTC, "read", 1, True), w.rtc_reads)
    add(pio, (PORT_PIT_CMD, "write", 1, user), w.pit_writes)
    add(pio, (PORT_PIT0, "read", 1, user), w.pit_reads)
    if not w.steady and w.ending == "debug_exit":
        add(pio, (DEBUG_EXIT_PORT, "write", 1, True), 1)
    # Paced: the timer handler's EOI, once per PIT interrupt (in-kernel PIC).
    add(pio, (PORT_PIC1, "write", 1, user), w.irqs if w.irqs else w.irqs_per_tick)
    add(mmio, (HPET_CONFIG, "write", 4, True), w.hpet_writes)
    add(mmio, (HPET_CAPS, "read", 4, True), w.hpet_reads)
    add(mmio, (IOAPIC_REGSEL, "write", 4, user), w.ioapic_writes)
    out = {0: _with_exits(pio, mmio)}
    if not w.steady and w.ending != "debug_exit":
        out[0]["userspace_exits"]["INTERNAL_ERROR" if w.ending == "emulation_failure" else "SHUTDOWN"] = 1
    if lapic_user and w.irqs:
        out[0]["interrupt_waits"] = {"HLT or IRQ_WINDOW_OPEN": w.irqs}
    for k in range(1, w.vcpus):
        ap_pio: dict = {}
        ap_mmio: dict = {}
        add(ap_mmio, (LAPIC_ID, "read", 4, lapic_user), 1)
        add(ap_pio, (PORT_DELAY, "write", 1, True), AP_WRITES[k - 1])
        out[k] = _with_exits(ap_pio, ap_mmio)
    return out


def expected_setup(workload: Workload, irqchip: str = "kernel") -> dict[str, dict]:
    """The one-time accesses a paced ROM makes before its first pass.

    Same shape as :func:`expected`; all of them are emulated in the kernel
    (no userspace exit).  In order: the local APIC enabled (4-byte write of
    0x12F to 0xFEE000F0) and its LINT0 set to ExtINT (0x700 to 0xFEE00350),
    so that the PIC's interrupts reach the vCPU; the master PIC (ICW1 to 0x20;
    ICW2 = vector 0x20, ICW3, ICW4 to 0x21); the slave PIC (ICW1 to 0xA0;
    ICW2 = vector 0x28, ICW3, ICW4 to 0xA1); the masks (0xFE to 0x21: only
    IRQ0; 0xFF to 0xA1); PIT channel 0 in mode 2 (0x34 to 0x43, then the
    divisor's low and high byte to 0x40).  Empty tables for an unpaced
    workload, which sets nothing up.

    A paced run that has handled T timer interrupts has made exactly these,
    plus T writes to 0x20 (EOIs), plus its passes: the first pass starts at
    once and pass n+1 after n * ``irqs_per_tick`` interrupts.
    """
    pio: dict[tuple[int, str, int, bool], int] = {}
    mmio: dict[tuple[int, str, int, bool], int] = {}
    user = irqchip in ("split", "off")  # the PIC and PIT are QEMU's
    lapic_user = irqchip == "off"
    if workload.tick_hz:
        _add(mmio, (LAPIC_SVR, "write", 4, lapic_user), 1)
        _add(mmio, (LAPIC_LVT0, "write", 4, lapic_user), 1)
        _add(pio, (PORT_PIC1, "write", 1, user), 1)
        _add(pio, (PORT_PIC1_DATA, "write", 1, user), 4)
        _add(pio, (PORT_PIC2, "write", 1, user), 1)
        _add(pio, (PORT_PIC2_DATA, "write", 1, user), 4)
        _add(pio, (PORT_PIT_CMD, "write", 1, user), 1)
        _add(pio, (PORT_PIT0, "write", 1, user), 2)
    return _with_exits(pio, mmio)


def expected_per_tick(workload: Workload) -> dict[str, dict]:
    """What each tick of a paced workload adds: one pass plus
    ``irqs_per_tick`` EOI writes to port 0x20 (in-kernel), as :func:`expected`
    shapes it.  HLT is handled in the kernel: no event and no exit for it.
    Raises ValueError for an unpaced workload (``tick_hz == 0``)."""
    if not workload.tick_hz:
        raise ValueError("expected_per_tick() needs a paced workload (tick_hz > 0)")
    return expected(workload)


def expected_rates(workload: Workload) -> dict[str, dict]:
    """Events per second of a paced workload in its steady state:
    :func:`expected_per_tick` times ``workload.tick_rate`` (floats), valid
    while a pass fits in a tick and the host lets the PIT tick that fast:
    KVM stretches a periodic PIT to ``kvm.min_timer_period_us`` (200 us by
    default), so above 5000 Hz the guest gets 5000 ticks a second (measured:
    tick_hz=10000 gave 5000.0/s).  Raises ValueError when unpaced."""
    per_tick = expected_per_tick(workload)
    rate = workload.tick_rate
    return {table: {key: n * rate for key, n in counts.items()}
            for table, counts in per_tick.items()}
