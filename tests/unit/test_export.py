"""export_perfetto: a Chrome Trace Event JSON timeline whose slices match the events written."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from kvmtrace.errors import MissingTraceEventError, OutputError
from kvmtrace.kernel.events import AGGREGATE, EVENT_DTYPE, EventKind, MmioOp
from kvmtrace.present.perfetto import export_perfetto
from kvmtrace.tables.ioctls import KvmIoctl
from kvmtrace.trace import load
from kvmtrace.tracefile import TraceWriter

from ..support.evbuild import Ev
from ..support.timeline import cat, export, ns

IO_INSTRUCTION, EPT_VIOLATION, HLT, EXTERNAL_INTERRUPT = 30, 48, 12, 1
HPET, IOAPIC = 0xFED00000, 0xFEC00000
START = 1_000  # recording start (ns); Ev's first event comes 1 µs later
DOMAIN = {"name": "g", "uuid": "00000000-0000-0000-0000-000000000001", "pid": 100,
          "vcpu_threads": {"0": 100, "1": 101}}


def write_trace(path: Path, ev: Ev, header: dict | None = None, trailer: dict | None = None):
    f = ev.frame()
    a = np.zeros(len(f), EVENT_DTYPE)
    for c in f.columns:
        a[c] = f[c].to_numpy()
    w = TraceWriter(path, header if header is not None else {"domains": [DOMAIN]})
    w.write(a, {"start_time_ns": START})
    w.close({"start_time_ns": START, "end_time_ns": ev.t + 1_000, "lost_events": 0, **(trailer or {})})
    return load(path)


def inside(child: dict, parents: list[dict]) -> list[dict]:
    """The slices of ``parents`` on the child's track that contain it."""
    c0, c1 = ns(child["ts"]), ns(child["ts"]) + ns(child.get("dur", 0))
    return [p for p in parents if (p["pid"], p["tid"]) == (child["pid"], child["tid"])
            and ns(p["ts"]) <= c0 and c1 <= ns(p["ts"]) + ns(p["dur"])]


def counter_totals(counters: list[dict], name: str, window_us: float) -> Counter:
    """Undo the change-only sampling: each sample holds until the next (the last for one window)."""
    s = sorted((e for e in counters if e["name"] == name), key=lambda e: e["ts"])
    total: Counter = Counter()
    for a, b in zip(s, s[1:] + [None]):
        windows = 1 if b is None else round((b["ts"] - a["ts"]) / window_us)
        for k, v in a["args"].items():
            total[k] += v * windows
    return total


# --------------------------------------------------------------------------
# A host where kvm_exit / kvm_entry fire
# --------------------------------------------------------------------------


def hw_loop() -> Ev:
    e = Ev()
    e.exit(IO_INSTRUCTION).pio(0x43, True).entry()  # in kernel: kvm-pit
    e.exit(IO_INSTRUCTION).pio(0x80, True).uexit_io(0x80, True).run(dt=3000).entry()
    e.exit(IO_INSTRUCTION).uexit_io(0x71, False).run(dt=5000).pio(0x71, False).entry()
    e.exit(EPT_VIOLATION).mmio(HPET, MmioOp.UNSATISFIED_READ).uexit_mmio(HPET, False).run(dt=7000)
    e.mmio(HPET, MmioOp.READ).entry()
    e.exit(HLT).entry(dt=250_000)
    e.exit(EXTERNAL_INTERRUPT).uexit(0, err=-4).run().entry()  # -EINTR restart: no userspace slice
    e.exit(IO_INSTRUCTION, vcpu=1, tid=101).pio(0x70, True, tid=101).uexit_io(0x70, True, tid=101)
    e.run(tid=101, dt=2000).entry(vcpu=1, tid=101)
    e.exit(EPT_VIOLATION).mmio(IOAPIC, MmioOp.WRITE).entry()  # in kernel: kvm-ioapic
    return e


def test_hardware_exits_hold_their_userspace_exits(tmp_path):
    t = write_trace(tmp_path / "hw.kvmtrace", hw_loop())
    doc, ph, res = export(t, tmp_path / "hw.json", counter_window_ms=0.002)

    hw = cat(ph, "kvm_exit")
    assert Counter(e["name"] for e in hw) == {"IO_INSTRUCTION": 4, "EPT_VIOLATION": 2, "HLT": 1,
                                              "EXTERNAL_INTERRUPT": 1}
    vmm = cat(ph, "userspace_exit")
    assert sorted(e["name"] for e in vmm) == [
        "VMM: KVM_EXIT_IO port 0x70 write (rtc-index)",
        "VMM: KVM_EXIT_IO port 0x71 read (rtc)",
        "VMM: KVM_EXIT_IO port 0x80 write (ioport80)",
        "VMM: KVM_EXIT_MMIO 0xfed00000 read (hpet)",
    ]
    # Each VMM slice lies inside the hardware exit that caused it, on the same track.
    for v in vmm:
        (parent,) = inside(v, hw)
        assert parent["name"] == ("EPT_VIOLATION" if "MMIO" in v["name"] else "IO_INSTRUCTION")
        assert parent["args"]["handled"] == "userspace"
    assert sorted(e["name"] for e in ph["i"]) == ["kvm-ioapic 0xfec00000 write", "kvm-pit 0x43 write"]
    for i in ph["i"]:
        (parent,) = inside(i, hw)
        assert parent["args"]["handled"] == "kernel"
    assert res.events["hardware_exits"] == 8 and res.events["userspace_exits"] == 4
    assert res.events["in_kernel_accesses"] == 2 and res.overlap_moved == 0 and not res.truncated

    # Times: µs since the recording started; the first exit is 1 µs after it and lasts to its entry.
    first = min(hw, key=lambda e: e["ts"])
    assert (first["ts"], first["dur"]) == (1.0, 2.0) and first["name"] == "IO_INSTRUCTION"
    assert first["args"]["access"] == "pio" and first["args"]["port"] == "0x43"
    assert first["args"]["device"] == "kvm-pit" and first["args"]["direction"] == "write"
    assert first["args"]["handling_ns"] == 2000 and first["args"]["isa"] == "VMX"
    assert first["args"]["exit_code"] == "0x1e" and first["args"]["vcpu"] == 0

    rtc = next(e for e in vmm if "0x71" in e["name"])
    assert rtc["dur"] == 5.0
    assert rtc["args"] == {"kvm_run": "io", "direction": "in", "size": 1, "port": "0x71", "count": 1,
                           "device": "rtc", "service_ns": 5000}
    (rtc_exit,) = inside(rtc, hw)
    assert rtc_exit["args"]["userspace_reason"] == "KVM_EXIT_IO" and rtc_exit["args"]["service_ns"] == 5000
    hpet = next(e for e in vmm if "MMIO" in e["name"])
    assert hpet["args"] == {"kvm_run": "mmio", "phys_addr": "0xfed00000", "len": 4, "is_write": False,
                            "device": "hpet", "service_ns": 7000}
    hlt = next(e for e in hw if e["name"] == "HLT")
    assert hlt["dur"] == 250.0 and hlt["args"]["handled"] == "kernel" and "access" not in hlt["args"]

    # Tracks: one process for the guest, one track per vCPU thread.
    names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in ph["M"] if e["name"].endswith("_name")}
    assert names == {(100, None): "domain g (QEMU pid 100)", (100, 100): "vCPU 0 (tid 100)",
                     (100, 101): "vCPU 1 (tid 101)"}
    assert {(e["pid"], e["tid"]) for e in vmm} == {(100, 100), (100, 101)}

    # Counters: every exit counted once, per KVM_EXIT_* reason.
    assert counter_totals(ph["C"], "userspace exits per 0.002 ms", 2.0) == {"KVM_EXIT_IO": 3, "KVM_EXIT_MMIO": 1}
    assert counter_totals(ph["C"], "hardware exits per 0.002 ms", 2.0) == {"kvm_exit": 8}


def test_lost_entry_partial_overlap_goes_to_an_overlap_track(tmp_path):
    # kvm_entry traced before the VMM's KVM_RUN (events reordered or lost): the VMM
    # slice would stick out of its exit; it moves to a track of its own.
    e = Ev().exit(IO_INSTRUCTION).uexit_io(0x80, True).entry().run()
    e.exit(HLT).entry()
    doc, ph, res = export(write_trace(tmp_path / "t.kvmtrace", e), tmp_path / "t.json")
    assert res.overlap_moved == 1
    (vmm,) = cat(ph, "userspace_exit")
    assert vmm["tid"] != 100
    names = {(m["pid"], m["tid"]): m["args"]["name"] for m in ph["M"] if m["name"] == "thread_name"}
    assert names[(100, vmm["tid"])] == "vCPU 0 (tid 100) [overlap 1]"
    assert len(cat(ph, "kvm_exit")) == 2


def test_exit_without_entry_is_a_zero_length_slice(tmp_path):
    e = Ev().exit(IO_INSTRUCTION).pio(0x43, True).entry().exit(HLT)
    doc, ph, res = export(write_trace(tmp_path / "t.kvmtrace", e), tmp_path / "t.json")
    hlt = next(x for x in cat(ph, "kvm_exit") if x["name"] == "HLT")
    assert hlt["dur"] == 0 and hlt["args"]["handled"] == "unknown" and "kvm_entry" in hlt["args"]


# --------------------------------------------------------------------------
# A host where only the userspace exits and KVM_RUN are traced
# --------------------------------------------------------------------------


def userspace_loop() -> Ev:
    e = Ev()
    e.uexit_io(0x80, True).run(dt=2000)
    e.pio(0x80, True)  # the next exit's access, traced before its userspace exit
    e.uexit_io(0x80, True).run(dt=1500)
    e.pio(0x43, True)  # in kernel
    e.uexit_io(0x71, False).run(dt=4000).pio(0x71, False)  # read answered by the VMM: traced after KVM_RUN
    e.mmio(IOAPIC, MmioOp.WRITE)  # in kernel
    e.mmio(HPET, MmioOp.UNSATISFIED_READ).uexit_mmio(HPET, False).run(dt=3000).mmio(HPET, MmioOp.READ)
    e.uexit(5).run(dt=9000)  # KVM_EXIT_HLT: no kvm_run member
    e.uexit(0, err=-4).run()  # restart, not an exit
    e.uexit_io(0x80, True)  # the recording ends before its KVM_RUN
    return e


def test_userspace_exits_without_hardware_exits(tmp_path):
    t = write_trace(tmp_path / "u.kvmtrace", userspace_loop())
    doc, ph, res = export(t, tmp_path / "u.json", counter_window_ms=0.005)
    assert not cat(ph, "kvm_exit") and "hardware_exits" not in res.events
    vmm = cat(ph, "userspace_exit")
    assert Counter(e["name"] for e in vmm) == {
        "VMM: KVM_EXIT_IO port 0x80 write (ioport80)": 3,
        "VMM: KVM_EXIT_IO port 0x71 read (rtc)": 1,
        "VMM: KVM_EXIT_MMIO 0xfed00000 read (hpet)": 1,
        "VMM: KVM_EXIT_HLT": 1,
    }
    assert len(vmm) == len(t.df_userspace_exits()) == 6
    durs = sorted(e["dur"] for e in vmm)
    assert durs == [0.0, 1.5, 2.0, 3.0, 4.0, 9.0]
    last = max(vmm, key=lambda e: e["ts"])
    assert last["dur"] == 0 and "next_KVM_RUN" in last["args"] and "service_ns" not in last["args"]
    hlt = next(e for e in vmm if e["name"] == "VMM: KVM_EXIT_HLT")
    assert hlt["args"] == {"kvm_run": "none", "service_ns": 9000}
    assert sorted(e["name"] for e in ph["i"]) == ["kvm-ioapic 0xfec00000 write", "kvm-pit 0x43 write"]
    assert ph["i"][0]["args"]["handled"] == "kernel"
    assert {(e["pid"], e["tid"]) for e in vmm + ph["i"]} == {(100, 100)}
    names = {m["args"]["name"] for m in ph["M"] if m["name"] == "thread_name"}
    assert names == {"vCPU 0 (tid 100)"}  # from the header's vcpu_threads
    assert counter_totals(ph["C"], "userspace exits per 0.005 ms", 5.0) == {
        "KVM_EXIT_IO": 4, "KVM_EXIT_MMIO": 1, "KVM_EXIT_HLT": 1}
    assert res.events["counters"] == len(ph["C"])


def test_no_in_kernel_instants_when_asked(tmp_path):
    t = write_trace(tmp_path / "u.kvmtrace", userspace_loop())
    doc, ph, res = export(t, tmp_path / "u.json", in_kernel=False)
    assert not ph["i"] and len(cat(ph, "userspace_exit")) == 6


# --------------------------------------------------------------------------
# The launch: the VMM's KVM ioctls
# --------------------------------------------------------------------------


def test_launch_ioctls_on_their_own_track(tmp_path):
    e = Ev()
    e.add(EventKind.IOCTL, reason=int(KvmIoctl.CREATE_VM), port=3, err=9, info2=300, dt=10_000)
    e.add(EventKind.IOCTL, reason=int(KvmIoctl.SET_USER_MEMORY_REGION), port=9, size=1, count=2,
          gpa=0x100000, info1=0xF00000, rip=0x7F0000000000, info2=5_000, dt=1_000)
    # Another thread's ioctl starting inside that one and outlasting it: not nestable.
    e.add(EventKind.IOCTL, reason=int(KvmIoctl.CREATE_VCPU), tid=101, port=9, gpa=0, err=13, info2=10_000,
          dt=1_000)
    e.run(tid=101, dt=20_000).uexit_io(0x80, True, tid=101).run(tid=101)
    e.add(EventKind.PROC_EXIT, dt=5_000)
    header = {"domains": [DOMAIN], "launch": {"create_called_ns": 1_500, "create_returned_ns": 50_000}}
    t = write_trace(tmp_path / "l.kvmtrace", e, header, {"launch": {"resumed_ns": 60_000}})
    doc, ph, res = export(t, tmp_path / "l.json")

    io = cat(ph, "kvm_ioctl")
    assert [x["name"] for x in sorted(io, key=lambda x: x["ts"])] == [
        "KVM_CREATE_VM", "KVM_SET_USER_MEMORY_REGION", "KVM_CREATE_VCPU"]
    mem = next(x for x in io if x["name"] == "KVM_SET_USER_MEMORY_REGION")
    assert mem["args"] == {"tid": 100, "fd": 9, "result": 0, "slot": 1, "flags": "0x2",
                           "guest_phys_addr": "0x100000", "memory_size": "0xf00000",
                           "userspace_addr": "0x7f0000000000"}
    assert mem["dur"] == 5.0
    vm = next(x for x in io if x["name"] == "KVM_CREATE_VM")
    assert vm["args"]["result"] == 9 and vm["dur"] == 0.3
    names = {(m["pid"], m["tid"]): m["args"]["name"] for m in ph["M"] if m["name"] == "thread_name"}
    assert names[(100, vm["tid"])] == "VMM (KVM ioctls)"
    vcpu = next(x for x in io if x["name"] == "KVM_CREATE_VCPU")
    assert names[(100, vcpu["tid"])] == "VMM (KVM ioctls) [overlap 1]" and res.overlap_moved == 1
    assert vcpu["args"]["vcpu_id"] == 0 and vcpu["args"]["tid"] == 101
    # The launch steps: virDomainCreateXML holds the ioctls it caused.
    steps = {x["name"]: x for x in cat(ph, "lifecycle", "X") + cat(ph, "lifecycle", "i")}
    assert {"virDomainCreateXML called", "virDomainResume", "first KVM_RUN", "VMM exited"} <= set(steps)
    create = steps["virDomainCreateXML called"]
    assert (create["ts"], create["dur"]) == (0.5, 48.5)
    assert inside(vm, [create]) and inside(mem, [create])
    assert res.events["ioctls"] == 3


# --------------------------------------------------------------------------
# Cutting big traces, compression, errors
# --------------------------------------------------------------------------


def test_max_events_keeps_the_earliest(tmp_path):
    t = write_trace(tmp_path / "hw.kvmtrace", hw_loop())
    doc, ph, res = export(t, tmp_path / "cut.json", max_events=3)
    drawn = ph["X"] + ph["i"]
    assert len(drawn) == 3 and res.truncated and doc["otherData"]["truncated_by_max_events"]
    # The first exit, its kvm-pit access, then the second exit.
    assert sorted((e["ts"], e["name"]) for e in drawn) == [
        (1.0, "IO_INSTRUCTION"), (2.0, "kvm-pit 0x43 write"), (4.0, "IO_INSTRUCTION")]
    assert all(c["ts"] < 5.0 for c in ph["C"])


def test_time_window(tmp_path):
    t = write_trace(tmp_path / "hw.kvmtrace", hw_loop())
    # From 3.5 µs to 13.5 µs: the second exit (4 µs, its VMM slice at 6 µs) and the third (11 µs, 12 µs).
    doc, ph, res = export(t, tmp_path / "w.json", start_s=3.5e-6, end_s=13.5e-6)
    assert sorted((e["ts"], e["name"]) for e in ph["X"]) == [
        (4.0, "IO_INSTRUCTION"), (6.0, "VMM: KVM_EXIT_IO port 0x80 write (ioport80)"),
        (11.0, "IO_INSTRUCTION"), (12.0, "VMM: KVM_EXIT_IO port 0x71 read (rtc)")]
    assert res.window_s == pytest.approx((3.5e-6, 13.5e-6)) and not res.truncated


def test_gzip_output(tmp_path):
    t = write_trace(tmp_path / "hw.kvmtrace", hw_loop())
    doc, ph, res = export(t, tmp_path / "hw.json.gz")
    with open(tmp_path / "hw.json.gz", "rb") as fh:
        assert fh.read(2) == b"\x1f\x8b"
    assert len(cat(ph, "kvm_exit")) == 8 and res.bytes == (tmp_path / "hw.json.gz").stat().st_size
    assert not (tmp_path / "hw.json.gz.part").exists()


def test_accepts_a_path(tmp_path):
    write_trace(tmp_path / "hw.kvmtrace", hw_loop())
    doc, ph, res = export(tmp_path / "hw.kvmtrace", tmp_path / "hw.json")
    assert res.events["hardware_exits"] == 8


def test_errors(tmp_path):
    t = write_trace(tmp_path / "hw.kvmtrace", hw_loop())
    with pytest.raises(ValueError, match="format"):
        export_perfetto(t, tmp_path / "x.pftrace", format="protobuf")
    with pytest.raises(ValueError, match="end_s"):
        export_perfetto(t, tmp_path / "x.json", start_s=2, end_s=1)
    with pytest.raises(OutputError):
        export_perfetto(t, tmp_path / "no" / "such" / "dir" / "x.json")
    counts = Ev().add(EventKind.PIO | AGGREGATE, port=0x80, value=5)
    c = write_trace(tmp_path / "c.kvmtrace", counts, {"mode": "counts", "domains": [DOMAIN]})
    with pytest.raises(MissingTraceEventError, match="counts"):
        export_perfetto(c, tmp_path / "c.json")
