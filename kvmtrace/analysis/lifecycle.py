"""A guest's life as its VMM drove KVM: creation timeline, memory slots, end.

Built from the IOCTL, RUN, CLOSE and PROC_EXIT events of a recording made by
``kvmtrace launch`` (or ``record --start``), which sees the VMM from before
KVM_CREATE_VM; pure pandas.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kvmtrace.kernel.events import EventKind
from kvmtrace.tables.ioctls import KvmIoctl, ioctl_name

#: The ioctls a timeline shows one by one; the rest are counted per name.
MILESTONES = {
    int(KvmIoctl.CREATE_VM): "KVM_CREATE_VM",
    int(KvmIoctl.CREATE_VCPU): "KVM_CREATE_VCPU",
    int(KvmIoctl.SET_USER_MEMORY_REGION): "KVM_SET_USER_MEMORY_REGION",
    int(KvmIoctl.SET_USER_MEMORY_REGION2): "KVM_SET_USER_MEMORY_REGION2",
}
DETAILED = {"KVM_CREATE_IRQCHIP", "KVM_SET_CPUID2", "KVM_SET_SREGS", "KVM_SET_REGS", "KVM_CREATE_PIT2"}

LIFECYCLE_COLUMNS = ["ts_ns", "t_ns", "step", "tid", "detail", "duration_ns"]


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=LIFECYCLE_COLUMNS)
    df = df.sort_values("ts_ns", kind="stable", ignore_index=True)
    df = df.astype({"ts_ns": "int64", "t_ns": "int64", "tid": "uint32", "duration_ns": "int64"})
    df["step"] = df["step"].astype("category")
    df["detail"] = df["detail"].astype("string")
    df.index.name = "step_no"
    return df


def lifecycle(events: pd.DataFrame, header: dict, trailer: dict | None) -> pd.DataFrame:
    """The guest's creation and end, step by step.

    Columns: ts_ns (int64, CLOCK_MONOTONIC), t_ns (int64, since the
    virDomainCreateXML call, or since the first event without one), step
    (category: "virDomainCreateXML called", "KVM_CREATE_VM", "KVM_CREATE_VCPU",
    "KVM_SET_USER_MEMORY_REGION", ..., "first KVM_RUN", "first exit",
    "last exit", "KVM fd closed", "VMM exited"), tid (uint32), detail (string:
    the ioctl's decoded argument and result), duration_ns (int64; -1 where a
    step has no duration).
    """
    launch = header.get("launch", {})
    ended = (trailer or {}).get("launch", {})
    rows: list[dict] = []

    def add(ts, step, tid=0, detail="", duration=-1):
        rows.append({"ts_ns": int(ts), "t_ns": 0, "step": step, "tid": int(tid), "detail": detail,
                     "duration_ns": int(duration)})

    if "create_called_ns" in launch:
        add(launch["create_called_ns"], "virDomainCreateXML called",
            duration=launch["create_returned_ns"] - launch["create_called_ns"])
        add(launch["create_returned_ns"], "virDomainCreateXML returned (paused)")
    if "resumed_ns" in ended:
        add(ended["resumed_ns"], "virDomainResume")

    io = events[events["kind"] == EventKind.IOCTL]
    for r in io.itertuples(index=False):
        name = ioctl_name(int(r.reason))
        if r.reason in MILESTONES or name in DETAILED:
            if r.reason == KvmIoctl.CREATE_VCPU:
                detail = f"vcpu {r.gpa} -> fd {r.err}"
            elif r.reason == KvmIoctl.CREATE_VM:
                detail = f"-> fd {r.err}"
            elif r.reason in (KvmIoctl.SET_USER_MEMORY_REGION, KvmIoctl.SET_USER_MEMORY_REGION2):
                detail = f"slot {r.size} flags {r.count:#x} gpa {r.gpa:#x} size {r.info1:#x}"
            else:
                detail = f"fd {r.port} -> {r.err}"
            add(r.ts_ns, name, r.tid, detail, r.info2)

    run = events[events["kind"] == EventKind.RUN]
    for tid, first in run.groupby("tid")["ts_ns"].min().items():
        add(first, "first KVM_RUN", tid)
    exits = events[events["kind"].isin([EventKind.EXIT, EventKind.USERSPACE_EXIT, EventKind.PIO, EventKind.MMIO])]
    exits = exits[~((exits["kind"] == EventKind.USERSPACE_EXIT) & (exits["err"] < 0))]
    if len(exits):
        first, last = exits.iloc[0], exits.iloc[-1]
        add(first["ts_ns"], "first exit", first["tid"], _describe(first))
        add(last["ts_ns"], "last exit", last["tid"], _describe(last))
    for r in events[events["kind"] == EventKind.CLOSE].itertuples(index=False):
        add(r.ts_ns, "KVM fd closed", r.tid, f"fd {r.port}")
    for r in events[events["kind"] == EventKind.PROC_EXIT].itertuples(index=False):
        add(r.ts_ns, "VMM exited", r.tid)

    df = _frame(rows)
    if len(df):
        origin = launch.get("create_called_ns", int(df["ts_ns"].min()))
        df["t_ns"] = df["ts_ns"] - origin
    return df


def _describe(ev: pd.Series) -> str:
    kind = int(ev["kind"])
    if kind == EventKind.PIO:
        return f"kvm_pio {'write' if ev['op'] else 'read'} port {int(ev['port']):#x}"
    if kind == EventKind.MMIO:
        return f"kvm_mmio gpa {int(ev['gpa']):#x}"
    if kind == EventKind.USERSPACE_EXIT:
        return f"kvm_userspace_exit reason {int(ev['reason'])}"
    return f"kvm_exit reason {int(ev['reason']):#x}"


def memory_slots(events: pd.DataFrame) -> pd.DataFrame:
    """The guest's KVM memory slots as the VMM left them (the last setting of each).

    Columns: slot (uint32), flags (uint32), gpa (uint64), size (uint64, bytes),
    set_count (int64: how often the slot was set); slots deleted (size 0) are
    left out. Index: slot.
    """
    io = events[(events["kind"] == EventKind.IOCTL)
                & events["reason"].isin([int(KvmIoctl.SET_USER_MEMORY_REGION), int(KvmIoctl.SET_USER_MEMORY_REGION2)])
                & (events["err"] == 0)]
    cols = {"slot": "uint32", "flags": "uint32", "gpa": "uint64", "size": "uint64", "set_count": "int64"}
    if io.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in cols.items()}).set_index("slot")
    io = io.sort_values("ts_ns", kind="stable")
    g = io.groupby("size")  # `size` holds the slot number for these events
    final = g.tail(1).set_index("size")
    df = pd.DataFrame({
        "slot": final.index.to_numpy(np.uint32),
        "flags": final["count"].to_numpy(np.uint32),
        "gpa": final["gpa"].to_numpy(np.uint64),
        "size": final["info1"].to_numpy(np.uint64),
        "set_count": g.size().reindex(final.index).to_numpy(np.int64),
    })
    df = df[df["size"] > 0].sort_values("gpa").astype(cols).set_index("slot")
    return df
