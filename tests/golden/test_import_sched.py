"""`kvmtrace import` of a real trace-cmd report with the scheduler's lines
(../shared/real-traces/hip24-vmx-6x-tcreport-mixed-events.txt, an Intel host
nobody here recorded): the sched rows, the KVM_RUN edges and the vCPU time,
each checked against figures this test derives from the text itself with its
own regular expressions, not with the importer's."""

from __future__ import annotations

import json
import re

import pytest

from kvmtrace.kernel.events import EventKind, SchedOp

from ..support.cli import run as cli
from ..support.importing import kind, run
from ..support.paths import REAL_TRACES

MIXED = REAL_TRACES / "hip24-vmx-6x-tcreport-mixed-events.txt"
needs_real = pytest.mark.skipif(not MIXED.exists(), reason=f"the real Intel traces are absent ({MIXED})")

_LINE = re.compile(r"^ *(.*?)-(\d+) +\[(\d+)\] +(\d+)\.(\d{6}): +(\w+): +(.*?)\s*$")
_SWITCH = re.compile(r"(.+?):(\d+) \[-?\d+\] (\S+) ==> (.+?):(\d+) \[-?\d+\]")
_WAKEUP = re.compile(r"(.+?):(\d+) \[-?\d+\] CPU:\d+")
_RUN_LOOP = {"kvm_exit", "kvm_entry", "kvm_pio", "kvm_mmio", "kvm_userspace_exit", "kvm_fpu"}
_STORED = {"kvm_exit", "kvm_entry", "kvm_pio", "kvm_mmio", "kvm_userspace_exit"}  # one row per line


def _is_kvm_run(event: str, body: str) -> bool:
    return event == "sys_enter_ioctl" and re.search(r"cmd: 0x0*ae80,", body) is not None


def _truth() -> dict:
    """What the text says, read here: the vCPU threads, their scheduler lines, the span, on-CPU time."""
    lines = []
    for raw in MIXED.read_text().splitlines():
        m = _LINE.match(raw)
        if m:
            comm, tid, cpu, sec, usec, event, body = m.groups()
            lines.append((int(sec) * 1_000_000 + int(usec), int(tid), event, body))
    vcpu = {tid for _, tid, ev, body in lines if ev in _RUN_LOOP or _is_kvm_run(ev, body)}
    sides = []  # (µs, tid, "out"/"in", prev_state)
    switch_lines = wakeups = other_sides = 0
    span = [ts for ts, _, ev, body in lines if ev in _STORED or _is_kvm_run(ev, body)]
    runs = [ts for ts, _, ev, body in lines if _is_kvm_run(ev, body)]
    marks = []  # (µs, tid, "out"/"in"/"own"): the switches and the thread's own run-loop lines
    for ts, _tid, ev, body in lines:
        if _tid in vcpu and (ev in ("kvm_exit", "kvm_entry", "kvm_userspace_exit") or _is_kvm_run(ev, body)):
            marks.append((ts, _tid, "own"))
        if ev == "sched_switch":
            prev, state, nxt = (lambda g: (int(g[1]), g[2], int(g[4])))(_SWITCH.fullmatch(body).groups())
            if prev in vcpu or nxt in vcpu:
                switch_lines += 1
                span.append(ts)
            if prev in vcpu:
                sides.append((ts, prev, "out", state))
                marks.append((ts, prev, "out"))
            if nxt in vcpu:
                sides.append((ts, nxt, "in", None))
                marks.append((ts, nxt, "in"))
            other_sides += sum(1 for p in (prev, nxt) if p and p not in vcpu)  # the idle task (0) makes no row
        elif ev == "sched_wakeup" and int(_WAKEUP.fullmatch(body).group(2)) in vcpu:
            wakeups += 1
            span.append(ts)
    start, end = min(span), max(span)
    on_cpu, breaks = {}, 0
    for t in vcpu:
        mine = [(ts, d) for ts, tid, d, _ in sides if tid == t]
        if not mine:
            continue
        # On a CPU from a switch in, or a run-loop line of the thread itself (it runs there), to
        # the next switch out (from the start if the first switch is out). The text misses some
        # switches (in after in, out after out): the earlier edge counts.
        total, since = 0, (start if mine[0][1] == "out" else None)
        breaks += sum(1 for a, b in zip(mine, mine[1:]) if a[1] == b[1])
        for ts, d in sorted(((ts, d) for ts, tid, d in marks if tid == t), key=lambda x: x[0]):
            if d in ("in", "own") and since is None:
                since = ts
            elif d == "out" and since is not None:
                total += ts - since
                since = None
        if since is not None:
            total += end - since
        on_cpu[t] = total
    return {"vcpu": vcpu, "sides": sides, "switch_lines": switch_lines, "wakeups": wakeups,
            "other_sides": other_sides, "breaks": breaks,
            "start_us": start, "end_us": end, "on_cpu_us": on_cpu, "runs_us": runs}


@needs_real
def test_real_trace_sched_rows_and_run_edges(tmp_path):
    truth = _truth()
    assert truth["vcpu"] == {150750}  # 150742 (QEMU's main loop) has ioctls and kvm_set_irq, no run-loop line
    res, trace, ev = run(tmp_path, src=MIXED)
    assert res.sched["lines"] == {"sched_switch": 515, "sched_wakeup": 256}
    assert truth["switch_lines"] == 515  # every switch in this capture is the vCPU thread's, on one side
    assert res.sched["kept"] == {"sched_switch": len(truth["sides"]), "sched_wakeup": truth["wakeups"]}
    assert res.sched["other_threads"] == {"sched_switch": truth["other_sides"], "sched_wakeup": 256 - truth["wakeups"]}
    # The text is an excerpt (gaps of 0.3 to 2.4 s with no line at all): the switches across a gap do not pair.
    assert res.sched["out_of_sequence"] == truth["breaks"] > 0
    sw = kind(ev, EventKind.SCHED_SWITCH)
    got = [(int(ts) // 1000, int(tid), "out" if op == SchedOp.OUT else "in")
           for ts, tid, op in zip(sw["ts_ns"], sw["tid"], sw["op"])]
    assert got == [(ts, tid, d) for ts, tid, d, _ in truth["sides"]]
    # prev_state: S and D asleep (non-zero); R (trace-cmd's plugin prints no "+") runnable, 0.
    outs = sw[sw["op"] == SchedOp.OUT]
    states = [s for _, _, d, s in truth["sides"] if d == "out"]
    assert list(outs["reason"]) == [{"R": 0, "S": 1, "D": 2}[s] for s in states]
    assert (outs["flags"] == 0).all() and (sw["pid"] == 150750).all()
    assert len(kind(ev, EventKind.WAKEUP)) == truth["wakeups"]
    # The KVM_RUN edges: one RUN per sys_enter_ioctl KVM_RUN, at its time; the kvm_fpu loads in them folded.
    r = kind(ev, EventKind.RUN)
    assert list(r["ts_ns"] // 1000) == truth["runs_us"] and len(truth["runs_us"]) == 8
    assert res.run_edges == {"sys_enter_ioctl": 8}
    assert res.folded["kvm_fpu load inside a KVM_RUN ioctl (its sys_enter_ioctl is the edge)"] == 8
    assert (trace.start_ns, trace.end_ns) == (truth["start_us"] * 1000, truth["end_us"] * 1000)


@needs_real
def test_real_trace_vcpu_time_in_the_json_report(tmp_path):
    truth = _truth()
    out = tmp_path / "mixed.kvmtrace"
    r = cli("import", str(MIXED), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "scheduler: read 515 sched_switch, 256 sched_wakeup lines" in r.stderr
    assert f"{truth['breaks']} switches of vCPU threads out of sequence" in r.stderr
    assert "KVM_RUN entered (RUN): 8 from sys_enter_ioctl KVM_RUN" in r.stderr
    d = json.loads(cli("report", str(out), "--format", "json").stdout)
    rows = d["vcpu_time"]
    assert [(x["vcpu"], x["tid"]) for x in rows] == [(0, 150750)]
    x = rows[0]
    span_s = (truth["end_us"] - truth["start_us"]) / 1e6
    states = ("guest_s", "halted_s", "vmm_s", "vmm_waiting_s", "preempted_s")
    # The states cover the recorded time exactly (µs timestamps: the JSON's 6 decimals are exact).
    assert x["total_s"] == pytest.approx(span_s, abs=1e-9) == d["duration_s"]
    assert sum(x[s] for s in states) == pytest.approx(x["total_s"], abs=2e-6)
    # On a CPU (guest + vmm) exactly as long as the switch lines say, and off it the rest.
    on_s = truth["on_cpu_us"][150750] / 1e6
    assert x["guest_s"] + x["vmm_s"] == pytest.approx(on_s, abs=2e-6)
    assert x["halted_s"] + x["vmm_waiting_s"] + x["preempted_s"] == pytest.approx(span_s - on_s, abs=2e-6)
    assert 0 < on_s < span_s
