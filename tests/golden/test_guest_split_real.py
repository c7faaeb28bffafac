"""The guest split (in_guest / exit_handling) of a real trace-cmd capture from
an Intel host (../shared/real-traces: kvm_exit/kvm_entry, sched_switch and
sched_wakeup, KVM_RUN ioctls), imported: consistent with guest, and the
in-guest time equal to what the text's own lines give, read here without
kvmtrace's importer."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ..support.cli import run as cli
from ..support.paths import REAL_TRACES

MIXED = REAL_TRACES / "hip24-vmx-6x-tcreport-mixed-events.txt"
needs_real = pytest.mark.skipif(not MIXED.exists(), reason=f"the real Intel traces are absent ({MIXED})")
VCPU = 150750  # the capture's one vCPU thread
LINE = re.compile(r"^\s*(.+?)-(\d+)\s+\[\d+\]\s+(\d+)\.(\d{6}):\s+(\w+):\s+(.*)$")
KVM_RUN = 0xAE80


def _by_hand(first: int, last: int) -> int:
    """µs the vCPU thread spent from ``first`` to ``last`` (µs) after a kvm_entry
    and before its next kvm_exit, switch out, userspace exit or KVM_RUN ioctl,
    while on a CPU (after a switch in, or a kvm line of the thread itself: the
    excerpt lacks switch lines), from the text alone."""
    ev = []
    for n, raw in enumerate(MIXED.read_text().splitlines()):
        m = LINE.match(raw)
        if not m:
            continue
        tid, us, name, rest = int(m[2]), int(m[3]) * 1_000_000 + int(m[4]), m[5], m[6]
        if name == "sched_switch":
            prev, nxt = rest.split("==>")
            if prev.split("[")[0].strip().endswith(f":{VCPU}"):
                ev.append((us, n, "out"))
            elif nxt.split("[")[0].strip().endswith(f":{VCPU}"):
                ev.append((us, n, "in"))
        elif tid != VCPU:
            continue
        elif name in ("kvm_entry", "kvm_exit", "kvm_userspace_exit"):
            ev.append((us, n, name))
        elif name == "sys_enter_ioctl" and int(re.search(r"cmd: (0x[0-9a-f]+)", rest)[1], 16) == KVM_RUN:
            ev.append((us, n, "run"))
    ev.sort()
    switches = [k for _, _, k in ev if k in ("in", "out")]
    edges = [k for _, _, k in ev if k in ("kvm_entry", "kvm_exit")]
    on = switches[0] == "out"  # its first switch says where it was before
    in_guest = edges[0] == "kvm_exit"  # and its first edge
    total, t = 0, first
    for us, _, k in ev:
        if in_guest and on:
            total += us - t
        t = us
        if k == "kvm_entry":
            in_guest = True
        elif k in ("kvm_exit", "kvm_userspace_exit", "run", "out"):
            in_guest = False
        on = k != "out"  # a switch in, or a kvm line of the thread itself: on a CPU
    if in_guest and on:
        total += last - t
    return total


@needs_real
def test_real_trace_guest_split(tmp_path):
    out = tmp_path / "mixed.kvmtrace"
    r = cli("import", str(MIXED), "-o", str(out))
    assert r.returncode == 0, r.stderr
    rows = json.loads(cli("report", str(out), "--format", "json").stdout)["vcpu_time"]
    assert [x["tid"] for x in rows] == [VCPU]
    x = rows[0]
    from kvmtrace.trace import load

    t = load(out)
    in_guest_us = _by_hand(t.start_ns // 1000, t.end_ns // 1000)
    # µs timestamps: the JSON's six decimals hold them exactly.
    assert round(x["in_guest_s"] * 1e6) == in_guest_us > 0
    assert round(x["in_guest_s"] * 1e6) + round(x["exit_handling_s"] * 1e6) == round(x["guest_s"] * 1e6)
    assert 0 < x["exit_handling_s"] < x["guest_s"]

    df = t.df_vcpu_time()
    ns = np.round(df[["guest_s", "in_guest_s", "exit_handling_s"]].to_numpy()[0] * 1e9).astype(np.int64)
    assert ns[0] == ns[1] + ns[2] and ns[1] == in_guest_us * 1000
    # The per-window frame adds up to the same.
    w = t.df_vcpu_time_intervals("500ms")
    assert round(w["in_guest_s"].sum() * 1e9) == ns[1] and round(w["exit_handling_s"].sum() * 1e9) == ns[2]
