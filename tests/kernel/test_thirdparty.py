"""Guests nobody here wrote, recorded for real, each by kvmtrace AND by bpftrace on the same run.

* QEMU's own SeaBIOS booting disk-less on ``pc`` and on ``q35`` (no
  <loader>, <boot dev='hd'/>, no disks);
* SeaBIOS + iPXE (Debian's ipxe-qemu) with a virtio-net NIC on 2 vCPUs
  (<boot dev='network'/>).

A guest's path depends on timing on this host (every instruction is
emulated, and tracing changes how far SeaBIOS gets in a few seconds), so
nothing is compared with a stored number: each domain starts paused, both
tracers attach, it resumes, runs a few seconds, is paused again, both stop,
and only then is it destroyed. Every (port, direction, size), (gpa, type,
len), userspace exit reason and per-thread count must then be equal.

On this host iPXE never reaches its virtio driver (untraced, SeaBIOS and
iPXE make ~2,350 IO and 16 MMIO exits in ~45 s and then stop with an
emulation failure, KVM_EXIT_INTERNAL_ERROR; no access to virtio-net's BAR at
0xc000 ever happens): its test checks that the BAR SeaBIOS maps is named by
the map read at the end. The accesses to virtio-net itself (the BAR named
``virtio-pci`` at 0xc000, notify writes taken by an ioeventfd) are checked
with a ROM of this file that drives QEMU's virtio-net as a legacy driver does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from kvmtrace.kernel.events import EventKind
from kvmtrace.record.domain import connect, resolve
from kvmtrace.trace import load

from ..support.cli import kvmtrace_cmd
from ..support.kernel import URI, BpftraceRun, keyed, wait_for_line

RUN_S = 4.0  # guest time per recording
IMAGES = Path("/var/lib/libvirt/images")  # libvirt's QEMU runs sandboxed: guest files live here

BPFTRACE = """
tracepoint:kvm:kvm_pio /pid == %(pid)d/ { @pio[args->port, args->rw, args->size] = count(); @pio_tid[tid] = count(); }
tracepoint:kvm:kvm_mmio /pid == %(pid)d/ { @mmio[args->gpa, args->type, args->len] = count();
                                          @mmio_tid[tid, args->type] = count(); }
tracepoint:kvm:kvm_userspace_exit /pid == %(pid)d/ { @uexit[args->reason, args->errno] = count();
                                                    @uexit_tid[tid, args->reason, args->errno] = count(); }
"""


def seabios_xml(name: str, machine: str, vcpus: int = 1, network: bool = False) -> str:
    nic = ("<interface type='user'><model type='virtio'/>"
           "<address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/></interface>"
           if network else "")
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>{vcpus}</vcpu>
  <os><type arch='x86_64' machine='{machine}'>hvm</type><boot dev='{"network" if network else "hd"}'/></os>
  <devices><controller type='usb' model='none'/><memballoon model='none'/>{nic}</devices>
</domain>"""


def run_both(name: str, xml: str, out: Path, run_s: float = RUN_S, record_args: tuple[str, ...] = (),
             before_stop=None) -> dict:
    """Create ``xml`` paused, attach bpftrace and `kvmtrace record`, resume, run ``run_s``,
    pause, stop both, destroy. Returns the bpftrace maps, the record's stderr and rc."""
    import libvirt

    conn = connect(URI)
    dom = conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
    bpf = rec = None
    try:
        pid = resolve(conn, name).pid
        bpf = BpftraceRun(BPFTRACE % {"pid": pid})
        bpf.start({"kvm_pio", "kvm_mmio", "kvm_userspace_exit"}, start_timeout=60, attach_timeout=30)
        rec = subprocess.Popen(kvmtrace_cmd("record", "--domain", name, "-o", str(out), *record_args),
                               stderr=subprocess.PIPE)
        lines: list[str] = []
        wait_for_line(rec.stderr, "recording", 60, lines)
        dom.resume()
        time.sleep(run_s)
        if before_stop is not None:
            before_stop(dom, pid)
        elif dom.isActive():
            dom.suspend()  # both tracers see the same last event
            time.sleep(0.3)
        rec.send_signal(signal.SIGINT)
        rest = rec.stderr.read().decode()
        rc = rec.wait(timeout=60)
        bpf.stop(wait=30)
        maps = bpf.maps()
    finally:
        for p in (rec, bpf and bpf.proc):
            if p is not None and p.poll() is None:
                p.kill()
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass
    return {"rc": rc, "stderr": "".join(lines) + rest, "bpftrace": {n.lstrip("@"): keyed(maps, n) for n in maps},
            "pid": pid}


def report_json(path: Path) -> dict:
    r = subprocess.run(kvmtrace_cmd("report", "--format", "json", str(path)), capture_output=True, text=True,
                       timeout=120, check=True)
    return json.loads(r.stdout)


def assert_same_as_bpftrace(path: Path, run: dict) -> None:
    """Every count kvmtrace recorded equals bpftrace's on the same run."""
    bt = run["bpftrace"]
    ev = load(path).events
    ev = ev[ev["pid"] == run["pid"]]
    pio = ev[ev["kind"] == EventKind.PIO]
    mm = ev[ev["kind"] == EventKind.MMIO]
    ux = ev[ev["kind"] == EventKind.USERSPACE_EXIT]
    assert Counter(zip(pio["port"], pio["op"], pio["size"])) == Counter(bt.get("pio", {}))
    assert Counter(zip(mm["gpa"], mm["op"], mm["size"])) == Counter(bt.get("mmio", {}))
    assert Counter(zip(ux["reason"], ux["err"])) == Counter(bt.get("uexit", {}))
    # per vCPU thread
    assert Counter(pio["tid"]) == Counter({k[0]: n for k, n in bt.get("pio_tid", {}).items()})
    assert Counter(zip(mm["tid"], mm["op"])) == Counter(bt.get("mmio_tid", {}))
    assert Counter(zip(ux["tid"], ux["reason"], ux["err"])) == Counter(bt.get("uexit_tid", {}))
    # and the report's rows sum to the same (a VMM-answered MMIO read counts once there)
    rep = report_json(path)
    ours = Counter()
    for r in rep["pio"]:
        ours[(r["port"], 1 if r["direction"] == "write" else 0, r["size"])] += r["count"]
    assert ours == Counter(bt.get("pio", {}))
    theirs = Counter({k: n for k, n in bt.get("uexit", {}).items() if k[1] >= 0})
    assert Counter({(r["code"], 0): r["count"] for r in rep["userspace_exits"]}) == \
        Counter({(k[0], 0): n for k, n in theirs.items()})


@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_seabios_diskless_counts_equal_bpftrace_and_rtc_index_writes_are_coalesced(kernel, tmp_path, machine):
    name = f"kvmtrace-test-seabios-{machine}-{uuid.uuid4().hex[:6]}"
    out = tmp_path / "seabios.kvmtrace"
    run = run_both(name, seabios_xml(name, machine), out)
    assert run["rc"] == 0, run["stderr"]
    assert sum(run["bpftrace"].get("pio", {}).values()) > 100, "SeaBIOS made too few port accesses to compare"
    assert_same_as_bpftrace(out, run)
    rep = report_json(out)
    assert rep["complete"] and rep["lost_events"] == 0
    rtc = [r for r in rep["pio"] if r["port"] == 0x70 and r["direction"] == "write"]
    assert rtc, "SeaBIOS wrote no RTC index in the recording"
    assert {r["handled_by"] for r in rtc} == {"coalesced"}
    assert all(r["device"] == "rtc-index" and not r["userspace"] for r in rtc)
    assert {r["handled_by"] for r in rep["pio"] if r["device"].startswith("kvm-")} <= {"kernel"}
    assert all((r["handled_by"] == "vmm") == r["userspace"] for r in rep["pio"] + rep["mmio"])
    # every device QEMU names at the end is named in the report
    t = load(out)
    for r in rep["pio"]:
        if r["device"] == "unknown":
            assert t.device_map.port(r["port"]) is None, r
    text = subprocess.run(kvmtrace_cmd("report", str(out)), capture_output=True, text=True, check=True).stdout
    assert "coalesced" in text and "rtc-index" in text


def test_ipxe_virtio_net_two_vcpus_counts_equal_bpftrace_and_the_bar_is_named(kernel, tmp_path):
    name = f"kvmtrace-test-ipxe-{uuid.uuid4().hex[:6]}"
    out = tmp_path / "ipxe.kvmtrace"
    run = run_both(name, seabios_xml(name, "pc", vcpus=2, network=True), out)
    assert run["rc"] == 0, run["stderr"]
    assert_same_as_bpftrace(out, run)
    t = load(out)
    assert len(t.domains[0]["vcpu_threads"]) == 2
    # SeaBIOS assigned virtio-net's legacy I/O BAR after the start: the map
    # read at the start does not have it, the one read at the end does.
    from kvmtrace.tables.devices import DeviceMap

    start = DeviceMap.from_header(t.header)
    assert start.port(0xC000) is None
    assert t.device_map.port(0xC000).name == "virtio-pci"
    assert any(m.get("reason") == "end of recording" for m in t.data.memory_maps)
    pio = t.df_pio()
    at_bar = pio[(pio["port"] >= 0xC000) & (pio["port"] < 0xC020)]
    assert set(at_bar["device"].astype(str)) <= {"virtio-pci"}
    for r in report_json(out)["pio"]:
        if r["device"] == "unknown":
            assert t.device_map.port(r["port"]) is None, r


# ---------------------------------------------------------------- virtio-net driven by a ROM of ours

NOTIFY_WRITES = 29  # distinct primes: a count off by one or swapped shows
RTC_INDEX_WRITES = 17
VIRTIO_SLOT = 3

ROM_ASM = f"""
bits 16
org 0
start:
    cli
    mov dx, 0xcf8                       ; BAR0 of 00:{VIRTIO_SLOT:02x}.0 = 0xc000 (legacy virtio I/O BAR)
    mov eax, 0x80000000 | ({VIRTIO_SLOT} << 11) | 0x10
    out dx, eax
    mov dx, 0xcfc
    mov eax, 0xc000
    out dx, eax
    mov dx, 0xcf8                       ; command: I/O space on
    mov eax, 0x80000000 | ({VIRTIO_SLOT} << 11) | 0x04
    out dx, eax
    mov dx, 0xcfc
    mov ax, 1
    out dx, ax
    mov cx, {RTC_INDEX_WRITES}
.rtc:
    mov al, 0x0f
    out 0x70, al                        ; RTC index: a coalesced port in QEMU 7.2
    loop .rtc
    mov dx, 0xc012                      ; device status: ACKNOWLEDGE | DRIVER | DRIVER_OK
    mov al, 7
    out dx, al                          ; QEMU now binds an ioeventfd to each queue's notify
    mov cx, {NOTIFY_WRITES}
.notify:
    mov dx, 0xc010                      ; VIRTIO_PCI_QUEUE_NOTIFY, queue 0
    xor ax, ax
    out dx, ax
    loop .notify
.idle:
    hlt                                 ; interrupts off: halted in the kernel for good
    jmp .idle
    times 0xfff0 - ($ - $$) db 0
    jmp 0xf000:start                    ; the reset vector
    times 0x10000 - ($ - $$) db 0
"""


@pytest.fixture(scope="module")
def virtio_rom(tmp_path_factory):
    asm = tmp_path_factory.mktemp("rom") / "virtio.asm"
    asm.write_text(ROM_ASM)
    rom = IMAGES / f"kvmtrace-test-virtio-{os.getpid()}.rom"
    subprocess.run(["nasm", "-f", "bin", "-o", str(rom), str(asm)], check=True, capture_output=True)
    yield rom
    rom.unlink(missing_ok=True)


def virtio_xml(name: str, rom: Path) -> str:
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>16</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><loader type='rom'>{rom}</loader></os>
  <devices><controller type='usb' model='none'/><memballoon model='none'/>
    <interface type='user'><model type='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x{VIRTIO_SLOT:02x}' function='0x0'/></interface>
  </devices>
</domain>"""


def _virtio_rows(rep: dict) -> dict:
    return {(r["port"], r["direction"], r["size"], r["handled_by"]): r["count"] for r in rep["pio"]
            if r["port"] in (0x70, 0xC010, 0xC012)}


EXPECTED = {(0x70, "write", 1, "coalesced"): RTC_INDEX_WRITES, (0xC012, "write", 1, "vmm"): 1,
            (0xC010, "write", 2, "ioeventfd"): NOTIFY_WRITES}


def test_virtio_notify_writes_are_ioeventfd_and_the_bar_is_named_recorded_running(kernel, tmp_path, virtio_rom):
    """record --domain (the guest's creation not seen): named and deduced, exact, equal to bpftrace."""
    name = f"kvmtrace-test-virtio-{uuid.uuid4().hex[:6]}"
    out = tmp_path / "virtio.kvmtrace"
    run = run_both(name, virtio_xml(name, virtio_rom), out, run_s=2.0)
    assert run["rc"] == 0, run["stderr"]
    assert_same_as_bpftrace(out, run)
    rep = report_json(out)
    assert _virtio_rows(rep) == EXPECTED
    names = {r["port"]: r["device"] for r in rep["pio"]}
    assert names[0xC010] == names[0xC012] == "virtio-pci"
    assert names[0x70] == "rtc-index"
    # the map was read again because of the unnamed BAR, while the guest ran
    assert any(m["reason"].startswith("unnamed port 0xc01") and m["status"] == "read" for m in rep["memory_maps"])
    pio = load(out).df_pio()
    assert str(pio["handled_by"].dtype) == "category"
    assert list(pio["handled_by"].cat.categories) == ["kernel", "ioeventfd", "coalesced", "vmm"]
    notify = pio[pio["port"] == 0xC010]
    assert len(notify) == NOTIFY_WRITES and set(notify["handled_by"]) == {"ioeventfd"}
    text = subprocess.run(kvmtrace_cmd("report", str(out)), capture_output=True, text=True, check=True).stdout
    assert "virtio-pci" in text and "ioeventfd" in text and "coalesced" in text


def test_virtio_handlers_from_the_ioctls_under_launch(kernel, tmp_path, virtio_rom):
    """kvmtrace launch sees QEMU register the RTC's coalesced zone while it builds the VM."""
    name = f"kvmtrace-test-virtio-l-{uuid.uuid4().hex[:6]}"
    xml = tmp_path / "virtio.xml"
    xml.write_text(virtio_xml(name, virtio_rom))
    out = tmp_path / "launch.kvmtrace"
    try:
        r = subprocess.run(kvmtrace_cmd("launch", str(xml), "-o", str(out), "--duration", "6"),
                           capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["virsh", "-c", URI, "destroy", name], capture_output=True)
    assert r.returncode == 0, r.stderr
    t = load(out)
    zones = t.handler_zones
    rtc = zones[(zones["kind"] == "coalesced") & (zones["space"] == "io") & (zones["addr"] == 0x70)]
    assert len(rtc) == 1 and rtc["len"].iloc[0] == 1
    # virtio binds its ioeventfds at DRIVER_OK, once the guest runs: the probes
    # stopped taking ioctls at its first KVM_RUN, so the notify writes are deduced.
    assert not ((zones["kind"] == "ioeventfd") & (zones["addr"] == 0xC010)).any()
    rep = report_json(out)
    assert rep["handled_by_method"].startswith("from the KVM_IOEVENTFD")
    assert _virtio_rows(rep) == EXPECTED


def test_a_map_that_cannot_be_read_keeps_its_names_and_says_so(kernel, tmp_path, virtio_rom):
    """QEMU stopped (SIGSTOP) so its monitor cannot answer at the end: the recording still
    completes, the names read before stay, and the report says the last read failed."""
    name = f"kvmtrace-test-virtio-busy-{uuid.uuid4().hex[:6]}"
    out = tmp_path / "busy.kvmtrace"
    timers: list[threading.Timer] = []

    def cont(pid):
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def freeze(dom, pid):
        dom.suspend()
        time.sleep(0.3)
        os.kill(pid, signal.SIGSTOP)  # the monitor no longer answers ...
        timers.append(threading.Timer(9.0, cont, (pid,)))  # ... until well after the end's read gave up
        timers[-1].start()

    try:
        run = run_both(name, virtio_xml(name, virtio_rom), out, run_s=2.0, before_stop=freeze)
    finally:
        for t in timers:
            t.join()
    assert run["rc"] == 0, run["stderr"]
    assert "could not be read again" in run["stderr"]
    rep = report_json(out)
    assert rep["complete"]
    last = rep["memory_maps"][-1]
    assert last["reason"] == "end of recording" and last["status"].startswith("not read: no answer")
    assert _virtio_rows(rep) == EXPECTED  # named by the map read while it ran
    text = subprocess.run(kvmtrace_cmd("report", str(out)), capture_output=True, text=True, check=True).stdout
    assert "could not be re-read" in text and "names kept" in text


def test_a_domain_gone_at_the_end_keeps_its_names_and_says_so(kernel, tmp_path, virtio_rom):
    name = f"kvmtrace-test-virtio-gone-{uuid.uuid4().hex[:6]}"
    out = tmp_path / "gone.kvmtrace"

    def destroy(dom, _pid):
        dom.destroy()
        time.sleep(1.0)  # the recording notices the domain stopped by itself

    run = run_both(name, virtio_xml(name, virtio_rom), out, run_s=2.0, before_stop=destroy)
    assert run["rc"] == 0, run["stderr"]
    rep = report_json(out)
    last = rep["memory_maps"][-1]
    assert last["reason"] == "end of recording" and last["status"].startswith("not read")
    assert _virtio_rows(rep) == EXPECTED
