"""vCPU time batch by batch (analysis.vcpu_stream) equals the whole-trace
analysis (analysis.vcpu_time) to the nanosecond: on random event sequences
in random file order, cut into batches of every size down to one event,
with threads known at attach or only from their sched events, first edges
that correct the state at attach, kvm_exit/kvm_entry or none, events before
the start and after the end, and per-interval windows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kvmtrace.analysis.vcpu_stream import VcpuTimeStream
from kvmtrace.analysis.vcpu_time import segments, vcpu_time
from kvmtrace.kernel.events import EventFlag, EventKind, SchedOp

START, END = 10_000, 90_000
KINDS = [EventKind.RUN, EventKind.USERSPACE_EXIT, EventKind.SCHED_SWITCH, EventKind.WAKEUP, EventKind.PIO]
GUEST = [EventKind.EXIT, EventKind.ENTRY]


def random_trace(rng: np.random.Generator, guest_edges: bool, n: int = 400):
    tids = [101, 102, 103, 104]
    kinds = KINDS + (GUEST if guest_edges else [])
    kind = rng.choice(np.array(kinds, dtype=np.uint8), n)
    tid = rng.choice(np.array(tids, dtype=np.uint32), n)
    tid[tid == 104] = np.where(kind[tid == 104] == EventKind.PIO, 104, 105)  # 105: never in the header
    ts = rng.integers(START - 3_000, END + 3_000, n)
    ts[rng.random(n) < 0.1] = 50_000  # ties
    ev = pd.DataFrame({
        "ts_ns": ts.astype(np.uint64), "kind": kind, "tid": tid, "pid": np.full(n, 7, np.uint32),
        "op": rng.integers(0, 2, n).astype(np.uint8),  # SchedOp.OUT / IN for switches
        "reason": rng.choice(np.array([0, 1, 2], dtype=np.uint32), n),  # prev_state: 0 runnable
        "flags": np.where(rng.random(n) < 0.2, EventFlag.PREEMPT, 0).astype(np.uint8),
    })
    ev = ev.sample(frac=1, random_state=int(rng.integers(1 << 30))).reset_index(drop=True)  # file order
    states = {}
    for t, (in_run, sched) in zip((101, 102, 103), [(True, "on_cpu"), (False, "asleep"), (True, "runnable")]):
        states[str(t)] = {"vcpu": t - 101, "pid": 7, "tid": t, "in_run": in_run, "sched": sched}
    return ev, {"vcpu_states": states}


def stream(ev: pd.DataFrame, header: dict, sizes: list[int], end_ns: int | None, edges=None) -> VcpuTimeStream:
    s = VcpuTimeStream(header, START, end_ns, bool(np.isin(ev["kind"], GUEST).any()), edges)
    bounds = np.cumsum([0] + sizes)
    parts = [ev.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    floors = [int(p["ts_ns"].min()) for p in parts]
    for i, p in enumerate(parts):
        s.add({c: p[c].to_numpy() for c in p.columns}, min(floors[i + 1:]) if i + 1 < len(parts) else None)
    return s.finish()


def batch_sizes(rng, n: int, how: str) -> list[int]:
    if how == "one":
        return [1] * n
    if how == "whole":
        return [n]
    out = []
    while sum(out) < n:
        out.append(int(rng.integers(1, 60)))
    return out


VCPUS = {101: 0, 102: 1, 103: 2}


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("guest_edges", [False, True])
@pytest.mark.parametrize("how", ["one", "random", "whole"])
def test_batch_by_batch_equals_the_whole(seed, guest_edges, how):
    rng = np.random.default_rng(seed)
    ev, header = random_trace(rng, guest_edges)
    want = vcpu_time(ev, header, START, END, VCPUS)
    got = stream(ev, header, batch_sizes(rng, len(ev), how), END).frame(VCPUS)
    pd.testing.assert_frame_equal(got, want)
    assert set(got["tid"]) == {101, 102, 103, 105}  # 104 had no sched event: no thread of the analysis
    assert ("in_guest_s" in got.columns) == guest_edges


@pytest.mark.parametrize("seed", range(6))
def test_the_windows_sum_as_the_whole_timelines(seed):
    rng = np.random.default_rng(100 + seed)
    ev, header = random_trace(rng, True)
    edges = np.array([START, 20_000, 35_000, 50_000, 50_001, 70_000, END], dtype=np.int64)
    tl = segments(ev, header, START, END)
    want = tl.in_windows(edges)
    s = stream(ev, header, batch_sizes(rng, len(ev), "random"), END, edges)
    for i, t in enumerate(tl.tid.tolist()):
        np.testing.assert_array_equal(s.win[t], want[:, i, :], err_msg=f"thread {t}")


def test_a_file_without_an_end_ends_at_its_last_event():
    rng = np.random.default_rng(7)
    ev, header = random_trace(rng, False)
    last = int(ev["ts_ns"].max())
    want = vcpu_time(ev, header, START, last, VCPUS)
    got = stream(ev, header, batch_sizes(rng, len(ev), "random"), None).frame(VCPUS)
    pd.testing.assert_frame_equal(got, want)


def test_a_resolved_thread_holds_nothing_back():
    """Memory: once a thread's first edges are in, only the events after the cut are kept."""
    n = 10_000
    ts = np.arange(START, START + 4 * n, 4, dtype=np.uint64)
    kind = np.tile(np.array([EventKind.SCHED_SWITCH, EventKind.SCHED_SWITCH, EventKind.RUN,
                             EventKind.USERSPACE_EXIT], dtype=np.uint8), n // 4)
    op = np.tile(np.array([SchedOp.OUT, SchedOp.IN, 0, 0], dtype=np.uint8), n // 4)
    ev = pd.DataFrame({"ts_ns": ts, "kind": kind, "tid": np.full(n, 101, np.uint32), "pid": np.full(n, 7, np.uint32),
                       "op": op, "reason": np.zeros(n, np.uint32), "flags": np.zeros(n, np.uint8)})
    header = {"vcpu_states": {"101": {"vcpu": 0, "pid": 7, "tid": 101, "in_run": True, "sched": "on_cpu"}}}
    s = VcpuTimeStream(header, START, START + 4 * n, False)
    for a in range(0, n, 1000):
        p = ev.iloc[a:a + 1000]
        last = a + 1000 >= n
        s.add({c: p[c].to_numpy() for c in p.columns}, None if last else int(ts[a + 1000]))
        if not last:  # (the last batch waits for finish())
            assert sum(len(h) for h in s.held) == 0
    got = s.finish().frame({101: 0})
    pd.testing.assert_frame_equal(got, vcpu_time(ev, header, START, START + 4 * n, {101: 0}))
