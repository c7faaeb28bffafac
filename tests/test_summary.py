"""The report's counts on hand-built run loops whose answers are known."""

import pandas as pd

from kvmtrace.analysis.summary import hardware_exits, mmio, port_io, summarize, userspace_exits
from kvmtrace.events import MmioOp
from kvmtrace.exits import ExitNames

from .evbuild import Ev

NAMES = ExitNames.builtin()


def rows(df, keys):
    return {tuple(r[k] for k in keys): r["count"] for r in df.to_dict("records")}


def demo_like():
    """What the demo guest's recording looks like (no kvm_exit/kvm_entry)."""
    e = Ev()
    for _ in range(3):  # out 0x80: QEMU
        e.pio(0x80, True).uexit_io(0x80, True).run()
    e.pio(0x43, True)  # in-kernel PIT write ...
    e.uexit_io(0x71, False).run().pio(0x71, False)  # ... then an RTC read QEMU answers
    e.pio(0x80, True).uexit_io(0x80, True).run()  # a QEMU write ...
    e.pio(0x40, False)  # ... then an in-kernel PIT read
    for _ in range(2):  # HPET read answered by QEMU: two kvm_mmio events, one access
        e.mmio(0xFED00000, MmioOp.UNSATISFIED_READ).uexit_mmio(0xFED00000, False).run()
        e.mmio(0xFED00000, MmioOp.READ)
    e.mmio(0xFEC00000, MmioOp.WRITE)  # IOAPIC, in kernel
    e.mmio(0xFEC00000, MmioOp.READ)  # in-kernel read: no unsatisfied-read before it
    e.mmio(0xFED00010, MmioOp.WRITE).uexit_mmio(0xFED00010, True).run()
    e.uexit(0, err=-4).run()  # KVM_RUN interrupted: not an exit
    return e.frame()


def test_port_io_split_kernel_and_userspace():
    got = rows(port_io(demo_like()), ["port", "direction", "size", "userspace"])
    assert got == {
        (0x40, "read", 1, False): 1,
        (0x43, "write", 1, False): 1,
        (0x71, "read", 1, True): 1,
        (0x80, "write", 1, True): 4,
    }


def test_mmio_reads_answered_by_the_vmm_count_once():
    got = rows(mmio(demo_like()), ["gpa", "direction", "len", "userspace"])
    assert got == {
        (0xFEC00000, "read", 4, False): 1,
        (0xFEC00000, "write", 4, False): 1,
        (0xFED00000, "read", 4, True): 2,
        (0xFED00010, "write", 4, True): 1,
    }


def test_userspace_exits_name_code_member_and_skip_eintr():
    df = userspace_exits(demo_like(), NAMES, duration_s=2.0)
    assert list(df.columns) == ["reason", "code", "member", "fields", "count", "rate"]
    got = {r["reason"]: (r["code"], r["member"], r["count"], r["rate"]) for r in df.to_dict("records")}
    assert got == {"IO": (2, "io", 5, 2.5), "MMIO": (6, "mmio", 3, 1.5)}
    assert df.loc[df.reason == "IO", "fields"].item() == "direction,size,port,count,data_offset"


def test_summary_counts_restarts_apart():
    s = summarize(demo_like(), NAMES, 1.0)
    assert s.interrupted_runs == 1 and s.failed_runs == 0 and s.userspace_fields_known
    assert s.exits.empty


def test_hardware_exits_decode_vmx_flags_and_unknown_codes():
    e = Ev()
    e.exit(30).entry().exit(30).entry().exit(0x80000021).exit(12, isa=1).exit(0x7B, isa=2).exit(999)
    df = hardware_exits(e.frame(), NAMES, 1.0)
    got = {(r["isa"], r["reason"], r["code"], r["flags"]): r["count"] for r in df.to_dict("records")}
    assert got == {
        ("VMX", "IO_INSTRUCTION", 30, ""): 2,
        ("VMX", "INVALID_STATE", 33, "FAILED_VMENTRY"): 1,
        ("VMX", "HLT", 12, ""): 1,
        ("SVM", "io", 0x7B, ""): 1,
        ("VMX", "UNKNOWN(0x3e7)", 999, ""): 1,
    }


def test_empty_trace_gives_empty_tables():
    s = summarize(Ev().frame(), NAMES, 0.0)
    assert s.pio.empty and s.mmio.empty and s.userspace_exits.empty and s.exits.empty
    assert isinstance(s.pio, pd.DataFrame)


def test_pairing_at_the_edges():
    """A read the VMM answers whose completion falls after the end: its exit is counted
    apart, and the rows count exactly the kvm_pio events."""
    e = Ev()
    e.pio(0x80, True).uexit_io(0x80, True).run()
    e.uexit_io(0x71, False)  # the recording stops before KVM_RUN completes the read
    ev = e.frame()
    got = rows(port_io(ev), ["port", "direction", "size", "userspace"])
    assert got == {(0x80, "write", 1, True): 1}
    s = summarize(ev, NAMES, 1.0)
    assert s.unpaired_userspace_io == 1


def test_pairing_needs_the_same_port():
    """An exit whose kvm_run names another port does not claim a neighbouring access."""
    e = Ev()
    e.pio(0x43, True)  # in-kernel PIT write
    e.uexit_io(0x80, True).run()  # an exit for a port whose kvm_pio is not in the trace
    got = rows(port_io(e.frame()), ["port", "direction", "size", "userspace"])
    assert got == {(0x43, "write", 1, False): 1}


def test_threads_are_paired_apart():
    e = Ev()
    e.pio(0x80, True, tid=1)
    e.pio(0x43, True, tid=2)  # another vCPU, interleaved
    e.uexit_io(0x80, True, tid=1).run(tid=1)
    got = rows(port_io(e.frame()), ["port", "direction", "size", "userspace"])
    assert got == {(0x80, "write", 1, True): 1, (0x43, "write", 1, False): 1}
