"""The run loop, exit by exit, on hand-built event frames whose answers are known."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kvmtrace.analysis.runloop import (
    CORRELATE_COLUMNS,
    UNPAIRED_KEYS,
    USERSPACE_RUNS_COLUMNS,
    _segments,
    correlate,
    unpaired,
    userspace_runs,
)
from kvmtrace.analysis.summary import ThreadOrder
from kvmtrace.analysis.threadview import ThreadView
from kvmtrace.errors import MissingTraceEventError
from kvmtrace.kernel.events import AGGREGATE, EVENT_DTYPE, NO_VCPU, EventKind, MmioOp

from ..support.evbuild import Ev

IO_INSTRUCTION, EPT_VIOLATION, HLT, EXTERNAL_INTERRUPT = 30, 48, 12, 1
KVM_EXIT_IO, KVM_EXIT_MMIO, KVM_EXIT_HLT = 2, 6, 5
HPET = 0xFED00000


def one(df):
    assert len(df) == 1, df
    return df.iloc[0].to_dict()


def test_in_kernel_pio():
    e = Ev().exit(IO_INSTRUCTION, vcpu=3, dt=1000).pio(0x70, True, dt=150).entry(vcpu=3, dt=350)
    r = one(correlate(e.frame()))
    assert r["ts_ns"] == 2000 and r["vcpu"] == 3 and r["isa"] == "VMX" and r["code"] == IO_INSTRUCTION
    assert r["handled"] == "kernel" and not r["to_userspace"] and r["userspace_reason"] == 0
    assert (r["access"], r["port"], r["size"], r["count"], r["direction"]) == ("pio", 0x70, 1, 1, "write")
    assert (r["gpa"], r["len"]) == (0, 0)
    assert (r["entry_ts_ns"], r["handling_ns"], r["service_ns"]) == (2500, 500, -1)
    assert not r["failed_vmentry"]
    assert set(unpaired(e.frame()).values()) == {0}


def test_pio_write_to_userspace():
    e = Ev().exit(IO_INSTRUCTION, dt=1000).pio(0x80, True, dt=100).uexit_io(0x80, True, dt=200)
    e.run(dt=7000).entry(dt=300)
    r = one(correlate(e.frame()))
    assert r["handled"] == "userspace" and r["to_userspace"] and r["userspace_reason"] == KVM_EXIT_IO
    assert (r["access"], r["port"], r["direction"]) == ("pio", 0x80, "write")
    assert r["handling_ns"] == 100 + 200 + 7000 + 300
    assert r["service_ns"] == 7000
    assert set(unpaired(e.frame()).values()) == {0}


def test_pio_read_to_userspace_traces_the_access_after_run():
    e = Ev().exit(IO_INSTRUCTION, dt=1000).uexit_io(0x71, False, dt=200).run(dt=5000)
    e.pio(0x71, False, dt=100).entry(dt=100)
    r = one(correlate(e.frame()))
    assert r["handled"] == "userspace" and r["userspace_reason"] == KVM_EXIT_IO
    assert (r["access"], r["port"], r["direction"], r["size"]) == ("pio", 0x71, "read", 1)
    assert (r["handling_ns"], r["service_ns"]) == (5400, 5000)
    assert set(unpaired(e.frame()).values()) == {0}


def test_mmio_read_to_userspace_is_one_access():
    e = Ev().exit(EPT_VIOLATION, dt=1000).mmio(HPET, MmioOp.UNSATISFIED_READ, length=4, dt=100)
    e.uexit_mmio(HPET, False, dt=100).run(dt=3000).mmio(HPET, MmioOp.READ, length=4, dt=100).entry(dt=100)
    r = one(correlate(e.frame()))
    assert r["handled"] == "userspace" and r["userspace_reason"] == KVM_EXIT_MMIO
    assert (r["access"], r["gpa"], r["len"], r["direction"]) == ("mmio", HPET, 4, "read")
    assert (r["port"], r["size"]) == (0, 0)
    assert (r["handling_ns"], r["service_ns"]) == (3400, 3000)
    # The completing "read" is the same access, not a stray one.
    assert unpaired(e.frame())["access_without_exit"] == 0


def test_mmio_write_in_kernel_and_second_access_counted():
    e = Ev().exit(EPT_VIOLATION).mmio(0xFEC00000, MmioOp.WRITE).mmio(0xFEC00010, MmioOp.WRITE).entry()
    r = one(correlate(e.frame()))
    assert (r["access"], r["gpa"], r["direction"], r["handled"]) == ("mmio", 0xFEC00000, "write", "kernel")
    assert unpaired(e.frame())["access_without_exit"] == 1


def test_hlt_in_kernel():
    e = Ev().exit(HLT, dt=1000).entry(dt=250_000)
    r = one(correlate(e.frame()))
    assert (r["code"], r["handled"], r["access"], r["direction"]) == (HLT, "kernel", "none", "")
    assert (r["handling_ns"], r["service_ns"]) == (250_000, -1)


def test_eintr_restart_is_not_an_exit():
    e = Ev().exit(EXTERNAL_INTERRUPT, dt=1000).uexit(0, err=-4, dt=100).run(dt=900).entry(dt=100)
    f = e.frame()
    r = one(correlate(f))
    assert r["handled"] == "kernel" and not r["to_userspace"] and r["userspace_reason"] == 0
    assert (r["handling_ns"], r["service_ns"]) == (1100, -1)
    assert userspace_runs(f).empty
    u = unpaired(f)
    assert u["run_without_userspace_exit"] == 0 and u["userspace_exit_without_exit"] == 0
    assert set(u.values()) == {0}


def test_real_exit_after_a_restart_is_the_one_attached():
    e = Ev().exit(IO_INSTRUCTION, dt=1000).pio(0x80, True).uexit(0, err=-4).run()
    e.uexit_io(0x80, True, dt=100).run(dt=2000).entry()
    r = one(correlate(e.frame()))
    assert r["to_userspace"] and r["userspace_reason"] == KVM_EXIT_IO and r["service_ns"] == 2000


def test_two_guests_same_vcpu_ids_and_tids_kept_apart_by_pid():
    # Both guests' vCPU 0 run on a thread numbered 100 (different PID
    # namespaces) and their events interleave in time.
    e = Ev()
    e.exit(IO_INSTRUCTION, vcpu=0, pid=1, tid=100, dt=10)  # t=1010
    e.exit(HLT, vcpu=0, pid=2, tid=100, dt=10)  # t=1020
    e.pio(0x80, True, pid=1, tid=100, dt=10)  # 1030
    e.uexit_io(0x80, True, pid=1, tid=100, dt=10)  # 1040
    e.entry(vcpu=0, pid=2, tid=100, dt=10)  # 1050: guest 2's HLT done
    e.exit(EPT_VIOLATION, vcpu=0, pid=2, tid=100, dt=10)  # 1060
    e.run(pid=1, tid=100, dt=10)  # 1070
    e.mmio(0xFEC00000, MmioOp.WRITE, pid=2, tid=100, dt=10)  # 1080
    e.entry(vcpu=0, pid=1, tid=100, dt=10)  # 1090
    e.entry(vcpu=0, pid=2, tid=100, dt=10)  # 1100
    df = correlate(e.frame())
    got = {(r["pid"], r["ts_ns"]): (r["code"], r["handled"], r["access"], r["handling_ns"], r["service_ns"])
           for r in df.to_dict("records")}
    assert got == {
        (1, 1010): (IO_INSTRUCTION, "userspace", "pio", 80, 30),
        (2, 1020): (HLT, "kernel", "none", 30, -1),
        (2, 1060): (EPT_VIOLATION, "kernel", "mmio", 40, -1),
    }
    assert list(df["ts_ns"]) == [1010, 1020, 1060]  # rows in time order
    assert set(unpaired(e.frame()).values()) == {0}


def test_file_order_does_not_matter():
    """Per-CPU ring buffers interleave; events are put back in time order per thread."""
    e = Ev()
    for i in range(5):
        e.exit(IO_INSTRUCTION, tid=100 + i % 2, vcpu=i % 2).pio(0x80, True, tid=100 + i % 2)
        e.uexit_io(0x80, True, tid=100 + i % 2).run(tid=100 + i % 2).entry(tid=100 + i % 2, vcpu=i % 2)
    f = e.frame()
    shuffled = f.sample(frac=1.0, random_state=7)
    pd.testing.assert_frame_equal(correlate(shuffled), correlate(f))
    pd.testing.assert_frame_equal(userspace_runs(shuffled), userspace_runs(f))
    assert unpaired(shuffled) == unpaired(f)


def test_unpaired_edges_are_counted():
    e = Ev()
    e.run(dt=10)  # the vCPU's first KVM_RUN: no userspace exit before it
    e.entry(dt=10)  # entry before the thread's first exit
    e.pio(0x80, True, dt=10)  # an access before any exit (recording started mid-exit)
    e.exit(IO_INSTRUCTION, dt=10).pio(0x80, True).uexit_io(0x80, True).run().entry()
    e.entry()  # a second entry: its exit was lost
    e.exit(HLT).entry()
    e.uexit(KVM_EXIT_HLT)  # after an entry, inside no exit; and no KVM_RUN after it
    e.uexit_io(0x80, True)  # no KVM_RUN between the two: both lack one
    e.run()
    e.uexit(0, err=-4)  # a restart the recording ended before answering
    e.exit(IO_INSTRUCTION).pio(0x70, True)  # the recording stops before the entry
    f = e.frame()
    assert unpaired(f) == {
        "exit_without_entry": 1,
        "entry_without_exit": 2,
        "userspace_exit_without_run": 1,
        "restart_without_run": 1,
        "run_without_userspace_exit": 1,
        "userspace_exit_without_exit": 2,
        "access_without_exit": 1,
    }
    df = correlate(f)
    assert list(df["handled"]) == ["userspace", "kernel", "unknown"]
    last = df.iloc[-1]
    assert (last["entry_ts_ns"], last["handling_ns"], last["service_ns"], last["access"]) == (-1, -1, -1, "pio")
    runs = userspace_runs(f)
    assert list(runs["service_ns"] >= 0) == [True, False, True]


def test_unknown_when_the_trace_ends_inside_userspace():
    e = Ev().exit(IO_INSTRUCTION).pio(0x80, True).uexit_io(0x80, True)
    r = one(correlate(e.frame()))
    assert (r["handled"], r["to_userspace"], r["entry_ts_ns"], r["service_ns"]) == ("userspace", True, -1, -1)
    assert unpaired(e.frame())["userspace_exit_without_run"] == 1


def test_failed_vmentry_and_basic_codes():
    e = Ev()
    e.exit(0x80000021, tid=1).entry(tid=1)  # VMX INVALID_STATE | FAILED_VMENTRY
    e.exit(0x10000000 | IO_INSTRUCTION, tid=2).entry(tid=2)  # SMI_PENDING_MTF flag: not a failure
    e.exit(0xFFFFFFFF, isa=2, tid=3).entry(tid=3)  # SVM_EXIT_ERR: VMRUN failed
    e.exit(0x7B, isa=2, tid=4).entry(tid=4)  # SVM io
    e.exit(0x80000021, isa=0, tid=5)  # unknown ISA: the code as recorded
    df = correlate(e.frame())
    got = [(r["isa"], r["code"], r["failed_vmentry"]) for r in df.to_dict("records")]
    assert got == [
        ("VMX", 33, True),
        ("VMX", IO_INSTRUCTION, False),
        ("SVM", 0xFFFFFFFF, True),
        ("SVM", 0x7B, False),
        ("UNKNOWN", 0x80000021, False),
    ]


def test_vcpu_from_the_threads_entry_when_kvm_exit_has_none():
    e = Ev().exit(HLT, vcpu=NO_VCPU).entry(vcpu=5)
    assert one(correlate(e.frame()))["vcpu"] == 5


def test_columns_and_dtypes_are_fixed():
    e = Ev().exit(IO_INSTRUCTION).pio(0x80, True).uexit_io(0x80, True).run().entry()
    for df, spec, index in ((correlate(e.frame()), CORRELATE_COLUMNS, "exit"),
                            (userspace_runs(e.frame()), USERSPACE_RUNS_COLUMNS, "run")):
        assert list(df.columns) == list(spec)
        assert {c: str(t) for c, t in df.dtypes.items()} == spec
        assert df.index.name == index and df.index.dtype == np.int64
        assert not any(t == object for t in df.dtypes)
    cor = correlate(e.frame())
    assert list(cor["handled"].cat.categories) == ["kernel", "userspace", "unknown"]
    assert list(cor["access"].cat.categories) == ["none", "pio", "mmio"]
    assert list(cor["direction"].cat.categories) == ["", "read", "write"]
    assert list(cor["isa"].cat.categories) == ["UNKNOWN", "VMX", "SVM"]


def test_empty_frame_gives_empty_frames_with_the_same_columns():
    f = Ev().frame()
    assert list(f.columns) == [n for n in EVENT_DTYPE.names if not n.startswith("pad")] and f.empty
    cor, runs = correlate(f), userspace_runs(f)
    assert cor.empty and list(cor.columns) == list(CORRELATE_COLUMNS)
    assert runs.empty and {c: str(t) for c, t in runs.dtypes.items()} == USERSPACE_RUNS_COLUMNS
    assert unpaired(f) == dict.fromkeys(UNPAIRED_KEYS, 0)


def test_correlate_without_kvm_exit_names_the_missing_event():
    e = Ev().pio(0x80, True).uexit_io(0x80, True).run()
    with pytest.raises(MissingTraceEventError, match="kvm:kvm_exit") as info:
        correlate(e.frame())
    assert "userspace_runs" in str(info.value)
    assert len(userspace_runs(e.frame())) == 1


def test_counts_mode_recordings_are_refused():
    # record --mode counts: aggregate rows (kind | AGGREGATE, value = how many) and HIST rows.
    e = Ev().exit(HLT).entry().uexit_io(0x80, True).run()
    e.add(EventKind.USERSPACE_EXIT.value | AGGREGATE, reason=KVM_EXIT_IO, value=23)
    for analysis in (correlate, userspace_runs, unpaired):
        with pytest.raises(MissingTraceEventError, match="--mode events"):
            analysis(e.frame())
    h = Ev().add(EventKind.HIST, op=0, reason=KVM_EXIT_IO, port=10, value=5)
    with pytest.raises(MissingTraceEventError, match="counts-mode"):
        userspace_runs(h.frame())


def test_missing_columns_are_named():
    f = Ev().exit(HLT).entry().frame().drop(columns=["isa"])
    with pytest.raises(ValueError, match="isa"):
        correlate(f)


# --------------------------------------------------------------------------
# userspace_runs on recordings shaped like this machine's (no kvm_exit/entry)
# --------------------------------------------------------------------------


def demo_recording(seed=0):
    """The demo guest's recording as this host makes it: two vCPU threads of
    one QEMU, kvm_pio / kvm_mmio / kvm_userspace_exit / KVM_RUN only, random
    service times, threads interleaved in time, file order jittered."""
    rng = np.random.default_rng(seed)
    e = Ev()
    tids = (4242, 4243)
    for i in range(400):
        tid = int(tids[rng.integers(2)])
        dt = lambda: int(rng.integers(50, 20_000))  # noqa: E731
        what = i % 7
        if what == 0:  # out 0x80, QEMU
            e.pio(0x80, True, tid=tid, pid=4200, dt=dt()).uexit_io(0x80, True, tid=tid, pid=4200, dt=dt())
            e.run(tid=tid, pid=4200, dt=dt())
        elif what == 1:  # RTC read answered by QEMU
            e.uexit_io(0x71, False, tid=tid, pid=4200, dt=dt()).run(tid=tid, pid=4200, dt=dt())
            e.pio(0x71, False, tid=tid, pid=4200, dt=dt())
        elif what == 2:  # HPET read answered by QEMU
            e.mmio(HPET, MmioOp.UNSATISFIED_READ, tid=tid, pid=4200, dt=dt())
            e.uexit_mmio(HPET, False, tid=tid, pid=4200, dt=dt()).run(tid=tid, pid=4200, dt=dt())
            e.mmio(HPET, MmioOp.READ, tid=tid, pid=4200, dt=dt())
        elif what == 3:  # in-kernel PIT write
            e.pio(0x43, True, tid=tid, pid=4200, dt=dt())
        elif what == 4:  # KVM_RUN interrupted
            e.uexit(0, err=-4, tid=tid, pid=4200, dt=dt()).run(tid=tid, pid=4200, dt=dt())
        elif what == 5:  # HPET write to QEMU
            e.mmio(HPET + 0x10, MmioOp.WRITE, tid=tid, pid=4200, dt=dt())
            e.uexit_mmio(HPET + 0x10, True, tid=tid, pid=4200, dt=dt()).run(tid=tid, pid=4200, dt=dt())
        else:  # HLT to QEMU (no kernel irqchip), no kvm_run fields; QEMU calls another
            # KVM ioctl (traced at its return) before KVM_RUN
            e.uexit(KVM_EXIT_HLT, tid=tid, pid=4200, dt=dt()).add(EventKind.IOCTL, tid=tid, pid=4200, dt=dt())
            e.run(tid=tid, pid=4200, dt=dt())
    e.add(EventKind.CLOSE, tid=4200, pid=4200).add(EventKind.PROC_EXIT, tid=4200, pid=4200)
    f = e.frame()
    jitter = np.arange(len(f)) + rng.integers(0, 6, len(f))
    return f.iloc[np.argsort(jitter, kind="stable")]


def test_userspace_runs_service_times_match_a_simple_loop():
    f = demo_recording()
    assert not f["kind"].isin([EventKind.EXIT, EventKind.ENTRY]).any()
    runs = userspace_runs(f)

    # Independent answer: walk each thread's events in time order.
    expected = []
    for (pid, tid), g in f.sort_values("ts_ns", kind="stable").groupby(["pid", "tid"], sort=False):
        rows = g.to_dict("records")
        for i, r in enumerate(rows):
            if r["kind"] != EventKind.USERSPACE_EXIT or r["err"] < 0:
                continue
            nxt = rows[i + 1] if i + 1 < len(rows) else None
            while nxt is not None and nxt["kind"] not in (EventKind.RUN, EventKind.USERSPACE_EXIT):
                i += 1
                nxt = rows[i + 1] if i + 1 < len(rows) else None
            run = nxt["ts_ns"] if nxt is not None and nxt["kind"] == EventKind.RUN else -1
            expected.append((int(r["ts_ns"]), int(tid), int(r["reason"]), int(run),
                             int(run) - int(r["ts_ns"]) if run >= 0 else -1))
    expected.sort()
    got = list(zip(runs["ts_ns"], runs["tid"], runs["code"], runs["run_ts_ns"], runs["service_ns"]))
    assert [tuple(int(x) for x in g) for g in got] == expected
    n_real = int(((f["kind"] == EventKind.USERSPACE_EXIT) & (f["err"] >= 0)).sum())
    assert len(runs) == n_real and (runs["service_ns"] > 0).all()
    assert (runs["vcpu"] == NO_VCPU).all()  # nothing in the events names the vCPU
    assert set(unpaired(f).values()) == {0}


def test_userspace_runs_kvm_run_fields():
    f = demo_recording()
    runs = userspace_runs(f)
    io = runs[runs["code"] == KVM_EXIT_IO]
    assert set(zip(io["port"], io["direction"], io["size"], io["count"])) == {(0x80, "write", 1, 1),
                                                                              (0x71, "read", 1, 1)}
    assert (io["gpa"] == 0).all() and (io["len"] == 0).all() and io["fields_known"].all()
    mm = runs[runs["code"] == KVM_EXIT_MMIO]
    assert set(zip(mm["gpa"], mm["direction"], mm["len"])) == {(HPET, "read", 4), (HPET + 0x10, "write", 4)}
    assert (mm["port"] == 0).all()
    hlt = runs[runs["code"] == KVM_EXIT_HLT]
    assert len(hlt) and (hlt["direction"] == "").all() and not hlt["fields_known"].any()
    assert runs["ts_ns"].is_monotonic_increasing


def test_userspace_runs_vcpu_from_threads_and_header():
    f = demo_recording()
    doms = [{"name": "demo", "pid": 4200, "vcpu_threads": {"0": 4242, "1": 4243}}]
    runs = userspace_runs(f, domains=doms)
    assert set(zip(runs["tid"], runs["vcpu"])) == {(4242, 0), (4243, 1)}
    # kvm_exit/kvm_entry of the same thread name it too, without a header.
    e = Ev().exit(IO_INSTRUCTION, vcpu=7, tid=9).pio(0x80, True, tid=9).uexit_io(0x80, True, tid=9)
    e.run(tid=9).entry(vcpu=7, tid=9)
    assert one(userspace_runs(e.frame()))["vcpu"] == 7


def test_runs_flag_without_fields():
    # An IO exit whose kvm_run could not be read: no port, no direction.
    e = Ev().add(EventKind.USERSPACE_EXIT, reason=KVM_EXIT_IO, port=0x80, op=1).run()
    r = one(userspace_runs(e.frame()))
    assert (r["fields_known"], r["port"], r["direction"]) == (False, 0, "")


def test_analyses_import_no_kernel_modules():
    code = (
        "import sys\n"
        "import kvmtrace.analysis.runloop, kvmtrace.analysis.latency\n"
        "print(','.join(m for m in ('bcc', 'libvirt', 'libvirt_qemu', 'kvmtrace.kernel.probe') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_unpaired_without_kvm_exit_equals_the_segment_accounting():
    """Without kvm_exit events unpaired() skips the per-exit segments; what it counts is what
    they would count: every kvm_entry unpaired, nothing attached or left out of an exit."""
    f = demo_recording(seed=3)
    entries = Ev().entry(tid=4242, pid=4200).entry(tid=4243, pid=4200).frame()
    f = pd.concat([f, entries], ignore_index=True)
    got = unpaired(f)
    full = _segments(ThreadView(f)).unpaired
    assert {k: got[k] for k in full} == full == {"exit_without_entry": 0, "entry_without_exit": 2,
                                                  "userspace_exit_without_exit": 0, "access_without_exit": 0}
    order = ThreadOrder.of(f)
    assert unpaired(f, order) == got
    pd.testing.assert_frame_equal(userspace_runs(f, order=order), userspace_runs(f))
