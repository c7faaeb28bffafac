"""The demo ROM's other endings, its interrupt controllers in QEMU and its
application processors, each recorded by `kvmtrace record` through libvirt
and counted by bpftrace on the same run (per vCPU thread):

* an emulation failure (empty IDT + int3): one KVM_EXIT_INTERNAL_ERROR whose
  kvm_run.internal values (suberror 1 EMULATION, ndata, flags, instruction
  bytes) equal what QEMU itself printed of them in the domain's log;
* a triple fault (empty IDT + ud2): one KVM_EXIT_SHUTDOWN (measured here:
  the emulating host triple-faults too, as a VMX/SVM CPU would);
* the same finite interrupt-driven ROM with the irqchip in the kernel, split
  and with kernel_irqchip=off: PIC/PIT/IOAPIC (and, off, LAPIC) accesses move
  from the kernel to the VMM; off, each interrupt wait becomes a HLT or
  IRQ_WINDOW_OPEN exit; split, some become IRQ_WINDOW_OPEN exits;
* four vCPUs, each with its own prime count: every per-vCPU row exact.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import libvirt
import pytest

from bench.harness.tracers.bpftrace import BpftraceRun, keyed
from kvmtrace.demo.guest import IOAPIC_REGSEL, Workload, expected, expected_by_vcpu
from kvmtrace.demo.run import resume, start_demo, stop_demo
from kvmtrace.record.domain import resolve

from ..support.cli import kvmtrace_cmd
from ..support.kernel import URI, wait_for_line

PRIMES = dict(port_writes=23, rtc_reads=29, pit_writes=31, pit_reads=37, hpet_writes=41, hpet_reads=43,
              ioapic_writes=47)

PER_THREAD = """
tracepoint:kvm:kvm_pio /pid == %(pid)d/ { @pio[tid, args->port, args->rw, args->size] = count(); }
tracepoint:kvm:kvm_mmio /pid == %(pid)d/ { @mmio[tid, args->gpa, args->type, args->len] = count(); }
tracepoint:kvm:kvm_userspace_exit /pid == %(pid)d/ { @uexit[tid, args->reason, args->errno] = count(); }
"""

EXIT_NAMES = {2: "IO", 5: "HLT", 6: "MMIO", 7: "IRQ_WINDOW_OPEN", 8: "SHUTDOWN", 17: "INTERNAL_ERROR"}


def _record(workload: Workload, tmp: Path, *, irqchip: str = "kernel", mode: str = "events",
            until_paused: bool = False, extra: tuple[str, ...] = ()) -> dict:
    """Start the ROM's domain paused, attach kvmtrace and bpftrace, resume it and
    record until it ends (or, ``until_paused``, until QEMU stops it after an
    internal error: then SIGINT). Returns the JSON report, bpftrace's maps and
    the domain's vCPU threads."""
    name = f"kvmtrace-test-run-{uuid.uuid4().hex[:8]}"
    out = tmp / f"{name}.kvmtrace"
    conn, dom = start_demo(workload, URI, name=name, paused=True, replace=True, irqchip=irqchip)
    bpf = rec = None
    log = Path(f"/var/log/libvirt/qemu/{name}.log")
    try:
        guest = resolve(conn, name)
        bpf = BpftraceRun(PER_THREAD % {"pid": guest.pid})
        bpf.start({"kvm_pio", "kvm_mmio", "kvm_userspace_exit"}, start_timeout=60, attach_timeout=30)
        rec = subprocess.Popen(kvmtrace_cmd("record", "--mode", mode, *extra, "--domain", name, "-o", str(out)),
                               stderr=subprocess.PIPE)
        wait_for_line(rec.stderr, "recording", 60)
        resume(dom)
        if until_paused:
            deadline = time.monotonic() + 120
            while dom.info()[0] != libvirt.VIR_DOMAIN_PAUSED:
                assert time.monotonic() < deadline, "the guest did not stop on its emulation failure"
                time.sleep(0.2)
            time.sleep(0.5)  # the failing exit is in; let the recorder take it
            rec.send_signal(signal.SIGINT)
        rest = rec.stderr.read().decode()
        assert rec.wait(timeout=120) == 0, rest
        bpf.stop(wait=60)
        maps = bpf.maps()
    finally:
        for p in (rec, bpf and bpf.proc):
            if p is not None and p.poll() is None:
                p.kill()
        if bpf is not None:
            bpf.cleanup()
        stop_demo(dom)
    report = json.loads(subprocess.run(kvmtrace_cmd("report", "--format", "json", str(out)),
                                       capture_output=True, check=True).stdout)
    text = subprocess.run(kvmtrace_cmd("report", str(out)), capture_output=True, text=True, check=True).stdout
    return {"report": report, "text": text, "bpf": {k.lstrip("@"): keyed(maps, k) for k in maps},
            "threads": {int(v): int(t) for v, t in guest.vcpu_threads.items()},
            "log": log.read_text(errors="replace") if log.exists() else "", "path": out}


def _rows(report: dict) -> dict:
    return {"pio": {(r["port"], r["direction"], r["size"], r["userspace"]): r["count"] for r in report["pio"]},
            "mmio": {(r["gpa"], r["direction"], r["len"], r["userspace"]): r["count"] for r in report["mmio"]},
            "userspace_exits": {r["reason"]: r["count"] for r in report["userspace_exits"]}}


def _bpf_totals(bpf: dict, tids: set[int] | None = None) -> dict:
    """bpftrace's counts as the report shows them (a VMM-answered MMIO read once)."""
    pio, mmio, uexit = Counter(), Counter(), Counter()
    for (tid, port, rw, size), n in bpf.get("pio", {}).items():
        if tids is None or tid in tids:
            pio[(port, "write" if rw else "read", size)] += n
    for (tid, gpa, typ, length), n in bpf.get("mmio", {}).items():
        if (tids is None or tid in tids) and typ != 1:  # "read" completes an "unsatisfied-read"
            mmio[(gpa, "write" if typ == 2 else "read", length)] += n
        if (tids is None or tid in tids) and typ == 1 and not bpf["mmio"].get((tid, gpa, 0, length)):
            mmio[(gpa, "read", length)] += n  # a read the kernel answered
    for (tid, reason, errno), n in bpf.get("uexit", {}).items():
        if (tids is None or tid in tids) and errno >= 0:
            uexit[EXIT_NAMES.get(reason, str(reason))] += n
    return {"pio": dict(pio), "mmio": dict(mmio), "userspace_exits": dict(uexit)}


def _without_userspace(table: dict) -> dict:
    out = Counter()
    for (a, d, s, _u), n in table.items():
        out[(a, d, s)] += n
    return dict(out)


def _qemu_extra_data(log: str) -> list[int]:
    """QEMU's own print of kvm_run.internal.data after "KVM internal error. Suberror: 1"."""
    return [int(v, 16) for _i, v in re.findall(r"extra data\[(\d+)\]: 0x([0-9a-f]+)", log)]


@pytest.mark.parametrize("mode", ["events", "counts"])
def test_emulation_failure_shows_its_suberror_and_data(kernel, tmp_path, mode):
    w = Workload(**PRIMES, ending="emulation_failure")
    run = _record(w, tmp_path, until_paused=True, mode=mode)
    rep, truth = run["report"], expected(w)
    assert _rows(rep) == truth
    assert _bpf_totals(run["bpf"])["userspace_exits"] == truth["userspace_exits"]
    (row,) = [r for r in rep["userspace_exits"] if r["reason"] == "INTERNAL_ERROR"]
    assert row["code"] == 17 and row["member"] == "internal" and row["count"] == 1
    (detail,) = row["details"]
    assert detail["member"] == "emulation_failure" and detail["count"] == 1
    assert detail["suberror"] == 1 and detail["suberror_name"] == "EMULATION"
    # QEMU printed the same kvm_run it acted on: ndata entries, data[0] the flags,
    # data[1..2] insn_size and the instruction bytes, data[3] the first exit-info word.
    data = _qemu_extra_data(run["log"])
    assert "KVM internal error. Suberror: 1" in run["log"]
    assert detail["ndata"] == len(data)
    assert detail["flags"] == data[0]
    if mode == "counts":  # its keys hold the first 16 bytes: suberror, ndata, flags
        assert detail["bytes"] == 16 and "insn_size" not in detail
        return
    raw = data[1].to_bytes(8, "little") + data[2].to_bytes(8, "little")
    assert detail["insn_size"] == raw[0] and bytes(detail["insn_bytes"]) == raw[1:1 + raw[0]]
    assert detail["insn_bytes"][0] == 0xCC  # int3
    assert detail["data[3]"] == data[3]
    assert "EMULATION" in run["text"] and "emulation_failure" in run["text"]
    print(f"\nINTERNAL_ERROR: {detail['text']}; QEMU's extra data: {[hex(x) for x in data]}")


def test_triple_fault_is_one_shutdown_exit(kernel, tmp_path):
    w = Workload(**PRIMES, ending="triple_fault")
    run = _record(w, tmp_path)
    rep, truth = run["report"], expected(w)
    assert _rows(rep) == truth and truth["userspace_exits"]["SHUTDOWN"] == 1
    assert _bpf_totals(run["bpf"])["userspace_exits"] == truth["userspace_exits"]
    (row,) = [r for r in rep["userspace_exits"] if r["reason"] == "SHUTDOWN"]
    assert row["member"] == "" and row["details"] == []  # KVM_EXIT_SHUTDOWN fills no member


def test_irqchip_in_qemu_moves_the_interrupt_controllers_to_the_vmm(kernel, tmp_path):
    """One finite interrupt-driven ROM, recorded with the irqchip in the kernel,
    split (kernel_irqchip=split: the local APIC in KVM, the PIC, PIT and
    IOAPIC in QEMU) and in QEMU (kernel_irqchip=off): each exact, and the
    difference is where the PIC, PIT, IOAPIC and LAPIC accesses went and the
    HLT / IRQ_WINDOW_OPEN exits. Split gives IRQ_WINDOW_OPEN exits (QEMU
    injects the PIC's interrupt and asks for a window when the guest cannot
    take it), a number the ROM does not fix: 5 of the 11 waits in each of
    4 runs here; kvmtrace and bpftrace must agree on it."""
    w = Workload(**PRIMES, tick_hz=100, irqs=11)
    seen = {}
    for chip in ("kernel", "split", "off"):
        run = _record(w, tmp_path, irqchip=chip)
        rep, truth = run["report"], expected(w, chip)
        rows = _rows(rep)
        assert rows["pio"] == truth["pio"] and rows["mmio"] == truth["mmio"], chip
        bpf = _bpf_totals(run["bpf"])
        assert bpf["pio"] == _without_userspace(truth["pio"]) and bpf["mmio"] == _without_userspace(truth["mmio"])
        assert bpf["userspace_exits"] == rows["userspace_exits"], chip
        exits = dict(rows["userspace_exits"])
        hlt, window = exits.pop("HLT", 0), exits.pop("IRQ_WINDOW_OPEN", 0)
        assert exits == truth["userspace_exits"], chip
        if chip == "off":
            assert hlt + window == w.irqs
        elif chip == "split":
            assert hlt == 0 and 1 <= window <= w.irqs, rows["userspace_exits"]
        else:
            assert hlt + window == 0
        seen[chip] = rows["userspace_exits"]
    moved = {k for k, n in expected(w, "off")["pio"].items() if k[3]} - {k for k, n in expected(w)["pio"].items()}
    assert {k[0] for k in moved} == {0x20, 0x21, 0xA0, 0xA1, 0x40, 0x43}
    split_mmio = {k[0] for k in expected(w, "split")["mmio"] if k[3]} - {k[0] for k in expected(w)["mmio"] if k[3]}
    assert split_mmio == {IOAPIC_REGSEL}  # the local APIC stays in the kernel
    print(f"\nuserspace exits, irqchip in the kernel: {seen['kernel']}; split: {seen['split']}; "
          f"kernel_irqchip=off: {seen['off']}")


def test_counts_mode_mmio_rows_are_the_events_mode_rows(kernel, tmp_path):
    """Counts mode keeps exact MMIO addresses: the same rows as events mode, both the ROM's."""
    w = Workload(**PRIMES)
    truth = expected(w)
    for mode in ("events", "counts"):
        run = _record(w, tmp_path, mode=mode)
        assert _rows(run["report"]) == truth, mode
        assert run["report"]["mmio_granularity"] == "address"
        assert "mmio_note" not in run["report"]


def test_counts_mode_overflow_of_the_address_table_is_counted_per_page(kernel, tmp_path):
    """With room for 2 exact addresses, the ROM's third (the IOAPIC's, first touched
    last) is counted per page: every access still counted, the overflow reported."""
    w = Workload(**PRIMES)
    run = _record(w, tmp_path, mode="counts", extra=("--mmio-addresses", "2"))
    rep = run["report"]
    assert _rows(rep) == expected(w)
    per_page = {r["gpa"]: r["count"] for r in rep["mmio"] if r.get("per_page")}
    assert per_page == {0xFEC00000: w.ioapic_writes}
    assert rep["mmio_note"].startswith(f"{w.ioapic_writes:,} MMIO accesses counted per 4 KiB page (1 pages)")
    assert "the in-kernel table of 2 exact addresses was full" in run["text"].replace("\n", " ")


@pytest.mark.parametrize("mode", ["events", "counts"])
def test_four_vcpus_each_exact(kernel, tmp_path, mode):
    w = Workload(**PRIMES, vcpus=4)
    run = _record(w, tmp_path, mode=mode)
    rep = run["report"]
    truth = expected_by_vcpu(w)
    assert _rows(rep) == expected(w)
    by_vcpu = {v["vcpu"]: v for v in rep["vcpus"]}
    assert sorted(by_vcpu) == [0, 1, 2, 3]
    for k, want in truth.items():
        got = by_vcpu[k]
        assert got["tid"] == run["threads"][k]
        assert got["userspace_exits"] == sum(want["userspace_exits"].values()), k
        assert got["pio"] == sum(want["pio"].values()), k
        assert got["mmio"] == sum(want["mmio"].values()), k
        theirs = _bpf_totals(run["bpf"], {got["tid"]})
        assert theirs["pio"] == _without_userspace(want["pio"]), k
        assert theirs["mmio"] == _without_userspace(want["mmio"]), k
        assert theirs["userspace_exits"] == want["userspace_exits"], k
    print(f"\nper vCPU: {[(v['vcpu'], v['userspace_exits'], v['pio'], v['mmio']) for v in rep['vcpus']]}")
