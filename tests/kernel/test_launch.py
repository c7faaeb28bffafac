"""kvmtrace launch for real: the demo guest created from its XML under the
tracer, its creation timeline, its memory slots, and every exit from the
first instruction."""

from __future__ import annotations

import json
import re
import subprocess
import uuid

import pytest

from kvmtrace.demo.guest import Workload, build_rom, expected
from kvmtrace.demo.machine import domain_xml
from kvmtrace.trace import load

from ..support.cli import kvmtrace_cmd
from ..support.kernel import URI, kvmtrace_progs

WORKLOAD = Workload(port_writes=23, rtc_reads=29, pit_writes=31, pit_reads=37,
                    hpet_writes=41, hpet_reads=43, ioapic_writes=47)


def kvm_regions(mtree: str) -> set[tuple[int, int]]:
    """(start, size) of the regions QEMU's flat view of "memory" backs with KVM slots."""
    block = mtree[mtree.index('AS "memory"'):]
    block = block[: block.find("\nFlatView") if "\nFlatView" in block else len(block)]
    found = set()
    for m in re.finditer(r"^\s+([0-9a-f]{16})-([0-9a-f]{16}) \(prio -?\d+, (?:ram|rom|romd)\): .* KVM$", block, re.M):
        start, end = int(m.group(1), 16), int(m.group(2), 16)
        found.add((start, end - start + 1))
    return found


@pytest.fixture(scope="module")
def launched(tmp_path_factory, kernel):
    d = tmp_path_factory.mktemp("launch")
    name = f"kvmtrace-test-launch-{uuid.uuid4().hex[:8]}"
    xml = d / "dom.xml"
    xml.write_text(domain_xml(name=name, rom_path=str(build_rom(WORKLOAD))))
    out = d / "launch.kvmtrace"
    r = subprocess.run(kvmtrace_cmd("launch", str(xml), "-o", str(out)), capture_output=True, text=True, timeout=180)
    subprocess.run(["virsh", "-c", URI, "destroy", name], capture_output=True)
    return r, out


def test_launch_records_until_the_guest_ends(launched):
    r, out = launched
    assert r.returncode == 0, r.stderr
    assert "stopped (domain stopped)" in r.stderr
    assert kvmtrace_progs() == []


def test_timeline_order(launched):
    _r, out = launched
    life = load(out).df_lifecycle()
    steps = list(life["step"].astype(str))
    first = {s: steps.index(s) for s in set(steps)}
    last = {s: len(steps) - 1 - steps[::-1].index(s) for s in set(steps)}
    assert steps[0] == "virDomainCreateXML called"
    assert first["KVM_CREATE_VM"] < first["KVM_CREATE_VCPU"]
    assert last["KVM_CREATE_VCPU"] < first["first KVM_RUN"] < first["first exit"] <= first["last exit"]
    assert first["virDomainCreateXML returned (paused)"] < first["virDomainResume"] < first["first KVM_RUN"]
    assert (life["t_ns"].diff().dropna() >= 0).all()
    assert steps.count("KVM_CREATE_VCPU") == 1  # one vCPU


def test_memory_slots_are_the_guests_ram_and_rom(launched):
    _r, out = launched
    t = load(out)
    slots = t.df_memslots()
    regions = kvm_regions(t.domains[0]["memory_map_text"])
    assert {(int(g), int(s)) for g, s in zip(slots["gpa"], slots["size"])} == regions
    # 16 MiB of RAM (with the legacy ROM windows below 1 MiB) plus the 64 KiB BIOS at 4 GiB - 64 KiB.
    assert int(slots["size"].sum()) == 16 * 2**20 + 2**16


def test_every_exit_from_the_first_instruction(launched):
    _r, out = launched
    rep = json.loads(subprocess.run(kvmtrace_cmd("report", "--format", "json", str(out)),
                                    capture_output=True, check=True).stdout)
    truth = expected(WORKLOAD)
    assert {(r["port"], r["direction"], r["size"], r["userspace"]): r["count"] for r in rep["pio"]} == truth["pio"]
    assert {(r["gpa"], r["direction"], r["len"], r["userspace"]): r["count"] for r in rep["mmio"]} == truth["mmio"]
    assert {r["reason"]: r["count"] for r in rep["userspace_exits"]} == truth["userspace_exits"]
    assert rep["lifecycle"][0]["step"] == "virDomainCreateXML called"


def test_bad_xml(kernel, tmp_path):
    xml = tmp_path / "bad.xml"
    xml.write_text("<domain type='kvm'><name>x</name>")
    r = subprocess.run(kvmtrace_cmd("launch", str(xml), "-o", str(tmp_path / "t.kvmtrace")),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3
    assert "not well-formed XML" in r.stderr and r.stderr.count("\n") == 1
    assert kvmtrace_progs() == []


def test_name_clash_with_a_running_domain(kernel, domain_name, tmp_path):
    from kvmtrace.demo.run import start_demo, stop_demo

    _conn, dom = start_demo(Workload(steady=True), URI, name=domain_name, paused=True)
    try:
        xml = tmp_path / "dom.xml"
        xml.write_text(domain_xml(name=domain_name, rom_path=str(build_rom(WORKLOAD))))
        r = subprocess.run(kvmtrace_cmd("launch", str(xml), "-o", str(tmp_path / "t.kvmtrace")),
                           capture_output=True, text=True, timeout=60)
    finally:
        stop_demo(dom)
    assert r.returncode == 3
    assert "already running" in r.stderr and "destroy" in r.stderr
    assert kvmtrace_progs() == []


def test_guest_that_dies_at_once_keeps_what_was_recorded(kernel, domain_name, tmp_path):
    """All counts 0: the ROM's first act is ending QEMU through isa-debug-exit."""
    w = Workload(port_writes=0, rtc_reads=0, pit_writes=0, pit_reads=0, hpet_writes=0, hpet_reads=0,
                 ioapic_writes=0)
    xml = tmp_path / "dom.xml"
    xml.write_text(domain_xml(name=domain_name, rom_path=str(build_rom(w))))
    out = tmp_path / "t.kvmtrace"
    r = subprocess.run(kvmtrace_cmd("launch", str(xml), "-o", str(out)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    t = load(out)
    assert t.complete
    assert {(k[0], k[1]): n for k, n in expected(w)["pio"].items()} == {(0xF4, "write"): 1}
    assert [(r["port"], r["count"]) for r in t.summary.pio.to_dict("records")] == [(0xF4, 1)]
    steps = list(t.df_lifecycle()["step"].astype(str))
    assert "KVM_CREATE_VM" in steps and "first exit" in steps
    assert kvmtrace_progs() == []


def test_the_syscall_probes_go_at_the_first_kvm_run(launched):
    """No syscall tracepoint stays attached while the guest runs: the ioctl
    probes take KVM ioctls until the VMM's first KVM_RUN and are detached then."""
    from kvmtrace.kernel.events import EventKind

    r, out = launched
    assert "the guest runs: detached sys_enter_ioctl, sys_exit_ioctl, sys_enter_close" in r.stderr
    t = load(out)
    assert t.header["run_edge"] == "kvm_fpu"
    ev = t.events
    first_run = ev.loc[ev["kind"] == EventKind.RUN, "ts_ns"].min()
    ioctls = ev[ev["kind"] == EventKind.IOCTL]
    assert len(ioctls) and (ioctls["ts_ns"] < first_run).all()
