"""The report's counts on hand-built run loops whose answers are known."""

import numpy as np
import pandas as pd
import pytest

from kvmtrace.analysis.summary import (
    ThreadOrder,
    _group_sum,
    dense_codes,
    group_codes,
    hardware_exits,
    mmio,
    port_io,
    service_times,
    summarize,
    userspace_exits,
)
from kvmtrace.kernel.events import MmioOp
from kvmtrace.tables.exits import ExitNames

from ..support.evbuild import Ev

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


# --------------------------------------------------------------------------
# The numpy machinery under the tables: thread order and group numbering
# --------------------------------------------------------------------------


def random_threads(seed, n=3000, threads=((1, 10), (1, 11), (2, 10), (2, 7)), shuffle=True):
    """Events of several threads (two share a tid in different processes), timestamps with ties,
    interleaved; ``shuffle`` puts some of a thread's events out of time order in the file."""
    rng = np.random.default_rng(seed)
    which = rng.integers(len(threads), size=n)
    pid = np.array([threads[i][0] for i in which], dtype=np.uint32)
    tid = np.array([threads[i][1] for i in which], dtype=np.uint32)
    ts = np.sort(rng.integers(0, n // 3, n)).astype(np.uint64)  # many equal timestamps
    if shuffle:
        swap = rng.choice(n, n // 10, replace=False)
        ts[swap] = ts[rng.permutation(swap)]
    return pid, tid, ts


def expected_order(pid, tid, ts):
    """Thread (numbered by first appearance), then time, then file order."""
    key = pid.astype(np.uint64) << np.uint64(32) | tid.astype(np.uint64)
    first = {k: i for i, k in reversed(list(enumerate(key.tolist())))}
    thread = np.array([sorted(first, key=first.get).index(k) for k in key.tolist()])
    return np.lexsort((np.arange(len(ts)), ts, thread))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shuffle", [False, True])
def test_thread_order_is_thread_time_file_order(seed, shuffle):
    pid, tid, ts = random_threads(seed, shuffle=shuffle)
    order = ThreadOrder(pid, tid, ts)
    assert order.perm is not None and (order.positions() == expected_order(pid, tid, ts)).all()
    keys = list(zip(order.thread_pid.tolist(), order.thread_tid.tolist()))
    assert keys == list(dict.fromkeys(zip(pid.tolist(), tid.tolist())))  # numbered by first appearance
    assert [keys[t] for t in order.thread] == list(zip(pid.tolist(), tid.tolist()))


def test_thread_order_of_one_thread():
    pid, tid, ts = random_threads(5, threads=((3, 30),), shuffle=False)
    order = ThreadOrder(pid, tid, ts)
    assert order.perm is None and order.thread is None  # as written: nothing sorted or stored
    assert (order.positions() == np.arange(len(ts))).all()
    pid, tid, ts = random_threads(5, threads=((3, 30),), shuffle=True)
    order = ThreadOrder(pid, tid, ts)
    assert order.thread is None and (order.positions() == expected_order(pid, tid, ts)).all()
    empty = ThreadOrder(pid[:0], tid[:0], ts[:0])
    assert len(empty.positions()) == 0 and len(empty.rows(np.zeros(0, bool))) == 0


@pytest.mark.parametrize("threads", [((1, 10), (1, 11), (2, 10)), ((1, 10),)])
def test_thread_order_rows_and_neighbours(threads):
    pid, tid, ts = random_threads(9, threads=threads)
    order = ThreadOrder(pid, tid, ts)
    mask = np.random.default_rng(1).random(len(ts)) < 0.4
    all_rows = order.positions()
    rows = order.rows(mask)
    assert (rows == all_rows[mask[all_rows]]).all()  # a subset keeps thread order
    thread = list(zip(pid.tolist(), tid.tolist()))
    same = [thread[a] == thread[b] for a, b in zip(rows[:-1], rows[1:])] + [False]
    assert order.next_on_thread(rows).tolist() == same
    at = np.arange(0, len(rows), 3)
    for step in (-1, 1):
        nb, ok = order.neighbours(rows, at, step)
        for i, a in enumerate(at):
            has = 0 <= a + step < len(rows) and thread[rows[a + step]] == thread[rows[a]]
            assert ok[i] == has and (not has or nb[i] == rows[a + step])


def random_keys(rng, n):
    """Keys of every kind group_codes takes: small and huge spans, signed, bool."""
    return [
        rng.integers(0, 3, n).astype(np.uint8),
        rng.random(n) < 0.5,
        rng.integers(-5, 5, n).astype(np.int32),
        rng.choice(np.array([0xFED00000, 0xFEC00000, 2**63 + 7], dtype=np.uint64), n),  # spans more than n
        rng.integers(0, 2**62, n),  # every value distinct: renumbering between keys
        np.full(n, 7, dtype=np.uint32),
    ]


@pytest.mark.parametrize("seed", range(3))
def test_group_codes_and_sums_match_pandas(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    keys = random_keys(rng, n)
    for pick in ([0], [3], [1, 0], [0, 2, 1], [4, 0], [0, 4, 3], [5, 1], list(range(6))):
        ks = [keys[i] for i in pick]
        df = pd.DataFrame({f"k{i}": k for i, k in zip(pick, ks)})
        g = df.groupby(list(df.columns), sort=True)
        code, values = group_codes(ks)
        assert (code == g.ngroup().to_numpy()).all(), pick
        expected = g.size().index.to_frame(index=False)
        for v, k, col in zip(values, ks, df.columns):
            assert v.dtype == k.dtype and (v == expected[col].to_numpy()).all()
        w = rng.integers(0, 4, n)
        (*vals,), sums = _group_sum(ks, w)
        assert (sums == df.assign(w=w).groupby(list(df.columns), sort=True)["w"].sum().to_numpy()).all()
    c, u = dense_codes(keys[3])
    uniq, inverse = np.unique(keys[3], return_inverse=True)
    assert (u == uniq).all() and (c == inverse).all()
    assert [len(v) for v in group_codes([keys[0][:0], keys[1][:0]])[1]] == [0, 0]


def test_tables_do_not_depend_on_file_order():
    """Thread order, not file order: a frame and the same events shuffled give the same tables,
    whether the threads are apart or one."""
    for tids in ((100,), (100, 101, 102)):
        e = Ev()
        rng = np.random.default_rng(3)
        for i in range(300):
            tid = int(rng.choice(tids))
            e.pio(0x80, True, tid=tid).uexit_io(0x80, True, tid=tid).run(tid=tid)
            e.uexit_io(0x71, False, tid=tid).run(tid=tid).pio(0x71, False, tid=tid)
            e.mmio(0xFED00000, MmioOp.UNSATISFIED_READ, tid=tid).uexit_mmio(0xFED00000, False, tid=tid)
            e.run(tid=tid).mmio(0xFED00000, MmioOp.READ, tid=tid)
            if i % 50 == 0:
                e.pio(0x43, True, tid=tid)
        ev = e.frame()
        shuffled = ev.iloc[np.random.default_rng(4).permutation(len(ev))]
        a, b = summarize(ev, NAMES, 1.0), summarize(shuffled, NAMES, 1.0)
        for table in ("userspace_exits", "pio", "mmio"):
            pd.testing.assert_frame_equal(getattr(a, table), getattr(b, table))
        assert a.unpaired_userspace_io == b.unpaired_userspace_io == 0
        assert (a.pio["userspace"] == [False, True, True]).all()
        st, st2 = service_times(ev), service_times(shuffled)
        assert sorted(st["service_ns"]) == sorted(st2["service_ns"]) and (st["service_ns"] == 1000).all()
