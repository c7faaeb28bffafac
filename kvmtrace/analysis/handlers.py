"""Who handled each port or MMIO access, four ways: kernel, ioeventfd, coalesced, vmm.

* ``vmm``: KVM_RUN returned to the VMM with it (a userspace exit, paired
  with the access through its kvm_run fields).
* ``ioeventfd``: a write KVM matched to an eventfd the VMM registered with
  KVM_IOEVENTFD: no exit; a QEMU thread is woken (virtio queue notifies).
* ``coalesced``: a write into a zone the VMM registered with
  KVM_REGISTER_COALESCED_MMIO (MMIO, or port I/O with its ``pio`` field):
  KVM appends it to the coalesced ring and QEMU replays it at its next exit.
* ``kernel``: a device KVM emulates itself (the PIC, PIT, IOAPIC, LAPIC).

Two ways to tell, by what the trace holds:

* ``ioctls``: a recording from the guest's creation (``kvmtrace launch``,
  ``record --start``) saw the KVM_IOEVENTFD and (UN)REGISTER_COALESCED_MMIO
  QEMU made while building the VM, with their argument (the probe reads
  struct kvm_ioeventfd and kvm_coalesced_mmio_zone into the IOCTL event: gpa
  = address, info1 = length, count = flags or pio, rip = datamatch): each
  access is matched against the zones registered at its time. The probes
  stop taking ioctls at the guest's first KVM_RUN (no syscall tracepoint
  stays attached while it runs), so zones registered later (virtio's
  ioeventfds) are deduced as below.
* ``deduced``: for a guest that ran before the recording, from the device
  QEMU's memory map names at the address (see :data:`DEDUCTION`).

Pure numpy and pandas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kvmtrace.kernel.events import EventKind
from kvmtrace.tables.ioctls import KvmIoctl

__all__ = ["HANDLERS", "DEDUCTION", "classify", "zones"]

HANDLERS = ("kernel", "ioeventfd", "coalesced", "vmm")
"""The four words, in this order everywhere (a category's order, a code's value)."""
KERNEL, IOEVENTFD, COALESCED, VMM = range(4)

# uapi linux/kvm.h
IOEVENTFD_FLAG_DATAMATCH = 1 << 0
IOEVENTFD_FLAG_PIO = 1 << 1
IOEVENTFD_FLAG_DEASSIGN = 1 << 2

#: QEMU 7.2's regions registered as coalesced (memory_region_add_coalescing /
#: memory_region_set_coalescing): the RTC index port (hw/rtc/mc146818rtc.c,
#: port 0x70), the VGA low-memory window (hw/display/vga.c) and Cirrus's
#: (hw/display/cirrus_vga.c).
COALESCED_REGIONS = frozenset({"rtc-index", "vga-lowmem", "cirrus-low-memory"})
#: virtio-pci's legacy I/O BAR ("virtio-pci") has its queue notify register at
#: offset 16 (VIRTIO_PCI_QUEUE_NOTIFY, 2 bytes); the modern notify regions
#: are named "virtio-pci-notify-<device>". QEMU binds an ioeventfd to each
#: queue's notify address once the driver sets DRIVER_OK
#: (hw/virtio/virtio-pci.c: virtio_pci_ioeventfd_assign).
VIRTIO_LEGACY = "virtio-pci"
VIRTIO_LEGACY_NOTIFY = 16
VIRTIO_NOTIFY_PREFIX = "virtio-pci-notify"

DEDUCTION = ("deduced (the guest ran before the recording, so its ioeventfd and coalesced-zone ioctls were "
             "not seen), from QEMU's device at the address: a userspace exit -> vmm; a kvm-* device -> kernel; "
             "a write to a virtio notify register -> ioeventfd; a write to a region QEMU 7.2 coalesces "
             "(rtc-index, vga-lowmem, cirrus-low-memory) -> coalesced; else kernel")
FROM_IOCTLS = ("from the KVM_IOEVENTFD and KVM_(UN)REGISTER_COALESCED_MMIO ioctls QEMU made while the launch "
               "watched it build the VM (a write matching one registered at its time -> ioeventfd or "
               "coalesced); the zones it registers once the guest runs (virtio's ioeventfds, bound when the "
               "driver sets DRIVER_OK) are not seen and are deduced from QEMU's device at the address: "
               "a userspace exit -> vmm; a kvm-* device -> kernel; a write to a virtio notify register -> "
               "ioeventfd; a write to rtc-index, vga-lowmem or cirrus-low-memory -> coalesced; else kernel")

_END = np.iinfo(np.int64).max


def zones(ev: pd.DataFrame) -> pd.DataFrame:
    """The ioeventfds and coalesced zones the VMMs registered, with when each held.

    Columns: pid (uint32), kind (category ioeventfd/coalesced), space
    (category io/memory), addr (uint64), len (uint64; 0 for an ioeventfd
    of any length), datamatch (bool), value (uint64: the datamatch value),
    start_ns, end_ns (int64; end_ns the int64 max while still registered).
    From successful IOCTL events only; an ioctl the probe could not read
    leaves addr and len 0 (such a zone matches nothing).
    """
    k = ev["kind"].to_numpy()
    cmd = ev["reason"].to_numpy()
    want = (k == EventKind.IOCTL) & (ev["err"].to_numpy() == 0) & np.isin(
        cmd, [int(KvmIoctl.IOEVENTFD), int(KvmIoctl.REGISTER_COALESCED_MMIO), int(KvmIoctl.UNREGISTER_COALESCED_MMIO)])
    rows = ev[want].sort_values("ts_ns", kind="stable")
    out: list[dict] = []
    open_: dict[tuple, list[int]] = {}
    for r in rows.itertuples(index=False):
        pid, addr, length, flags, t = int(r.pid), int(r.gpa), int(r.info1), int(r.count), int(r.ts_ns)
        if r.reason == KvmIoctl.IOEVENTFD:
            space = "io" if flags & IOEVENTFD_FLAG_PIO else "memory"
            dm = bool(flags & IOEVENTFD_FLAG_DATAMATCH)
            key = ("ioeventfd", pid, space, addr, length, dm, int(r.rip) if dm else 0)
            if flags & IOEVENTFD_FLAG_DEASSIGN:
                for i in open_.pop(key, []):
                    out[i]["end_ns"] = t
                continue
            open_.setdefault(key, []).append(len(out))
            out.append({"pid": pid, "kind": "ioeventfd", "space": space, "addr": addr, "len": length,
                        "datamatch": dm, "value": int(r.rip) if dm else 0, "start_ns": t, "end_ns": _END})
        elif r.reason == KvmIoctl.REGISTER_COALESCED_MMIO:
            space = "io" if flags else "memory"
            key = ("coalesced", pid, space, addr, length, False, 0)
            open_.setdefault(key, []).append(len(out))
            out.append({"pid": pid, "kind": "coalesced", "space": space, "addr": addr, "len": length,
                        "datamatch": False, "value": 0, "start_ns": t, "end_ns": _END})
        else:  # KVM removes every zone of that space inside the range
            space = "io" if flags else "memory"
            for key in [q for q in open_ if q[0] == "coalesced" and q[1] == pid and q[2] == space
                        and addr <= q[3] and q[3] + q[4] <= addr + length]:
                for i in open_.pop(key):
                    out[i]["end_ns"] = t
    df = pd.DataFrame(out, columns=["pid", "kind", "space", "addr", "len", "datamatch", "value", "start_ns",
                                    "end_ns"])
    df = df.astype({"pid": np.uint32, "addr": np.uint64, "len": np.uint64, "datamatch": bool, "value": np.uint64,
                    "start_ns": np.int64, "end_ns": np.int64})
    df["kind"] = pd.Categorical(df["kind"], categories=["ioeventfd", "coalesced"])
    df["space"] = pd.Categorical(df["space"], categories=["io", "memory"])
    df.index.name = "zone"
    return df


def classify(space: str, *, userspace, write, addr, size, device, offset, in_kernel,
             ts=None, pid=None, value=None, zone_table: pd.DataFrame | None = None,
             deduce: bool | None = None) -> np.ndarray:
    """Per access: its handler's code (int8, an index into :data:`HANDLERS`).

    ``device`` (names), ``offset`` (into the QEMU region, -1 where none) and
    ``in_kernel`` come from :meth:`DeviceTimeline.names`. With ``zone_table``
    (:func:`zones`) the zones registered at each access's time decide
    first; ``deduce`` (default: without a zone table) applies the deduction
    of :data:`DEDUCTION` to the accesses no zone explained (for a guest
    running before the recording, whose early ioctls were not seen).
    ``value`` (the written data, where recorded) checks an ioeventfd's
    datamatch.
    """
    if deduce is None:
        deduce = zone_table is None
    userspace = np.asarray(userspace, dtype=bool)
    write = np.asarray(write, dtype=bool)
    n = len(userspace)
    out = np.full(n, KERNEL, dtype=np.int8)
    rest = ~userspace
    if zone_table is not None:
        addr = np.asarray(addr, dtype=np.uint64)
        size = np.asarray(size, dtype=np.uint64)
        ts = np.zeros(n, np.int64) if ts is None else np.asarray(ts).astype(np.int64)
        pid = None if pid is None else np.asarray(pid)
        z = zone_table[zone_table["space"] == space]
        for kind, code in (("ioeventfd", IOEVENTFD), ("coalesced", COALESCED)):
            for r in z[z["kind"] == kind].itertuples(index=False):
                cand = rest & write & (ts >= r.start_ns) & (ts < r.end_ns)
                if pid is not None:
                    cand &= pid == r.pid
                if kind == "ioeventfd":
                    cand &= (addr == r.addr) & ((r.len == 0) | (size == r.len))
                    if r.datamatch and value is not None:
                        cand &= np.asarray(value, dtype=np.uint64) == r.value
                else:
                    cand &= (addr >= r.addr) & (addr + size <= r.addr + r.len)
                out[cand] = code
                rest &= ~cand
    if deduce:
        names = pd.Categorical(device)
        cats = np.asarray(names.categories, dtype=object)
        codes = names.codes
        offset = np.asarray(offset, dtype=np.int64)
        legacy = np.array([c == VIRTIO_LEGACY for c in cats], dtype=bool)
        modern = np.array([str(c).startswith(VIRTIO_NOTIFY_PREFIX) for c in cats], dtype=bool)
        coal = np.array([c in COALESCED_REGIONS for c in cats], dtype=bool)
        ok = codes >= 0
        notify = np.zeros(n, dtype=bool)
        notify[ok] = modern[codes[ok]] | (legacy[codes[ok]] & (offset[ok] == VIRTIO_LEGACY_NOTIFY))
        coalesced = np.zeros(n, dtype=bool)
        coalesced[ok] = coal[codes[ok]]
        kernel = np.asarray(in_kernel, dtype=bool)
        out[rest & ~kernel & write & notify] = IOEVENTFD
        out[rest & ~kernel & write & coalesced] = COALESCED
    out[userspace] = VMM
    return out


def handler_of(region, userspace: bool, write: bool, address: int) -> str:
    """One row's handler by the deduction (:data:`DEDUCTION`): ``region`` the
    tables.devices Region at ``address`` (None where QEMU names none)."""
    if userspace:
        return "vmm"
    if region is None or region.in_kernel or not write:
        return "kernel"
    offset = address - region.start + region.offset
    if region.name.startswith(VIRTIO_NOTIFY_PREFIX) or (region.name == VIRTIO_LEGACY
                                                          and offset == VIRTIO_LEGACY_NOTIFY):
        return "ioeventfd"
    return "coalesced" if region.name in COALESCED_REGIONS else "kernel"


def as_category(codes: np.ndarray) -> pd.Categorical:
    """Handler codes as the ``handled_by`` category (all four words as categories)."""
    return pd.Categorical.from_codes(np.asarray(codes, dtype=np.int8), categories=list(HANDLERS))


@dataclass
class Labels:
    """Device and handler of a column of accesses, computed once per distinct group.

    ``code``: each access's group (int64); per group: ``addr``, ``write``,
    ``size``, ``device`` (Categorical), ``handled`` (codes into HANDLERS).
    Accesses of one group share address, direction, size, userspace, guest,
    map version and zone epoch, hence device and handler: a report of 10M
    accesses names and classifies a few hundred groups.
    """

    code: np.ndarray
    addr: np.ndarray
    write: np.ndarray
    size: np.ndarray
    device: pd.Categorical
    handled: np.ndarray

    def device_per_access(self) -> pd.Categorical:
        return pd.Categorical.from_codes(np.asarray(self.device.codes)[self.code], categories=self.device.categories)

    def handled_per_access(self) -> np.ndarray:
        return self.handled[self.code]


def label_accesses(ev: pd.DataFrame, sel: np.ndarray, space: str, userspace: np.ndarray, timeline,
                   zone_table: pd.DataFrame | None, deduce: bool | None = None) -> Labels:
    """Device (by the map in effect at each access: a DeviceTimeline) and handler of the
    port (``space`` "io") or MMIO ("memory") accesses at rows ``sel`` of the events frame."""
    from kvmtrace.analysis.summary import group_codes
    from kvmtrace.kernel.events import EventFlag, MmioOp, PioOp

    addr = ev["port" if space == "io" else "gpa"].to_numpy()[sel]
    ts = ev["ts_ns"].to_numpy()[sel]
    pid = ev["pid"].to_numpy()[sel]
    size = ev["size"].to_numpy()[sel]
    write = ev["op"].to_numpy()[sel] == (PioOp.WRITE if space == "io" else MmioOp.WRITE)
    user = np.asarray(userspace, dtype=bool)
    keys = [addr, write, size, user]
    if len(pid) and pid.min() != pid.max():
        keys.append(pid)
    epoch = timeline.epochs(ts, pid)
    if epoch is not None:
        keys.append(epoch)
    value = None
    if zone_table is not None and len(zone_table):
        bounds = np.unique(np.concatenate([zone_table["start_ns"].to_numpy(), zone_table["end_ns"].to_numpy()]))
        keys.append(np.searchsorted(bounds, ts, side="right"))
        if "value" in ev.columns and "flags" in ev.columns and zone_table["datamatch"].any():
            flags = ev["flags"].to_numpy()[sel]
            if len(flags) and ((flags & int(EventFlag.VALUE)) != 0).all():
                value = ev["value"].to_numpy()[sel]
                keys.append(value)
    code, _ = group_codes(keys)
    n = int(code.max()) + 1 if len(code) else 0
    first = np.zeros(n, dtype=np.int64)
    first[code[::-1]] = np.arange(len(code) - 1, -1, -1)  # each group's first access
    g_addr, g_ts, g_pid = addr[first], ts[first], pid[first]
    device, offset, in_kernel = timeline.names(space, g_addr, g_ts, g_pid)
    handled = classify(space, userspace=user[first], write=write[first], addr=g_addr, size=size[first],
                       device=device, offset=offset, in_kernel=in_kernel, ts=g_ts, pid=g_pid,
                       value=None if value is None else value[first], zone_table=zone_table, deduce=deduce)
    return Labels(code, g_addr, write[first], size[first], device, handled)


def labelled_table(labels: Labels, w: np.ndarray, names: tuple[str, str]) -> pd.DataFrame:
    """:func:`io_table` of labelled accesses, summed per group first (``w``: events per access)."""
    counts = np.bincount(labels.code, weights=np.asarray(w, dtype=np.float64), minlength=len(labels.addr))
    return io_table(labels.addr, labels.write, labels.size, labels.device, labels.handled,
                    counts.round().astype(np.int64), names)


def io_table(addr: np.ndarray, write: np.ndarray, size: np.ndarray, device: pd.Categorical, handled: np.ndarray,
             w: np.ndarray, names: tuple[str, str]) -> pd.DataFrame:
    """Accesses summed by (address, direction, size, device, handler).

    ``names``: the address and size columns' names (("port", "size") or
    ("gpa", "len")). Columns: those two with direction between them, device,
    handled_by (one of :data:`HANDLERS`), userspace (handled_by == "vmm"),
    count. Sorted by address, direction, size, then handler from vmm down.
    """
    from kvmtrace.analysis.summary import _group_sum

    device = pd.Categorical(device)
    (a, d, s, dev, h), counts = _group_sum(
        [np.asarray(addr), np.asarray(write, dtype=np.uint8), np.asarray(size), device.codes.astype(np.int64),
         np.asarray(handled, dtype=np.int8)], np.asarray(w, dtype=np.int64))
    cats = np.asarray(device.categories, dtype=object)
    df = pd.DataFrame({names[0]: a, "direction": np.where(d == 1, "write", "read"), names[1]: s,
                       "device": [str(cats[c]) if c >= 0 else "unknown" for c in dev],
                       "handled_by": [HANDLERS[int(x)] for x in h], "userspace": h == VMM, "count": counts})
    df = df[df["count"] > 0]
    df["_h"] = -h[df.index] if len(df) else h[:0]
    return df.sort_values([names[0], "direction", names[1], "_h"], ignore_index=True).drop(columns="_h")


def collapse(table: pd.DataFrame, names: tuple[str, str]) -> pd.DataFrame:
    """An :func:`io_table` summed back to analysis.summary's port_io/mmio rows:
    (address, direction, size, userspace, count), userspace rows first."""
    keys = [names[0], "direction", names[1]]
    out = table.groupby(keys + ["userspace"], as_index=False, sort=False)["count"].sum()
    out = out[keys + ["userspace", "count"]]
    return out.sort_values(keys + ["userspace"], ascending=[True] * len(keys) + [False], ignore_index=True)



def io_tables(ev: pd.DataFrame, timeline, zone_table: pd.DataFrame | None, summary=None, pairing=None,
              completions: np.ndarray | None = None) -> dict[str, pd.DataFrame]:
    """The report's port I/O and MMIO rows by device and handler ({"pio", "mmio"}: :func:`io_table`).

    An events trace: each access labelled (``pairing``, ``completions`` as
    analysis.summary gives them). A counts trace (``summary`` given): its
    rows labelled, by the map and zones at the recording's end.
    """
    from kvmtrace.analysis.summary import kinds_and_weights
    from kvmtrace.kernel.events import EventKind

    out = {}
    for key, space, kind, cols in (("pio", "io", EventKind.PIO, ("port", "size")),
                                   ("mmio", "memory", EventKind.MMIO, ("gpa", "len"))):
        if summary is not None:
            rows = getattr(summary, key)
            addr = rows[cols[0]].to_numpy(np.uint64)
            device, offset, in_kernel = timeline.names(space, addr)
            write = (rows["direction"] == "write").to_numpy()
            handled = classify(space, userspace=rows["userspace"].to_numpy(), write=write, addr=addr,
                               size=rows[cols[1]].to_numpy(), device=device, offset=offset, in_kernel=in_kernel,
                               ts=np.full(len(rows), np.iinfo(np.int64).max - 1), zone_table=zone_table,
                               deduce=True)
            out[key] = io_table(addr, write, rows[cols[1]].to_numpy(), device, handled, rows["count"].to_numpy(),
                                cols)
            continue
        k, w = kinds_and_weights(ev)
        sel = k == kind
        if kind == EventKind.MMIO:
            sel &= ~completions
        labels = label_accesses(ev, sel, space, pairing.to_vmm[sel], timeline, zone_table, deduce=True)
        out[key] = labelled_table(labels, np.asarray(w)[sel], cols)
    return out


class LabelledIo:
    """:func:`io_tables` of a trace fed piece by piece (analysis.batchwise), per pid."""

    def __init__(self, timeline):
        self.timeline = timeline
        self._parts: dict[int, dict[str, list[pd.DataFrame]]] = {}

    def add(self, pid: int, ev: pd.DataFrame, pairing, completions: np.ndarray) -> None:
        parts = self._parts.setdefault(pid, {"pio": [], "mmio": []})
        for key, table in io_tables(ev, self.timeline, None, pairing=pairing, completions=completions).items():
            parts[key].append(table)

    def tables(self, pid: int | None = None) -> dict[str, pd.DataFrame]:
        out = {}
        for key, cols in (("pio", ["port", "direction", "size"]), ("mmio", ["gpa", "direction", "len"])):
            frames = [f for p, parts in self._parts.items() if pid is None or p == pid for f in parts[key] if len(f)]
            if not frames:
                out[key] = pd.DataFrame(columns=[*cols, "device", "handled_by", "userspace", "count"])
                continue
            df = pd.concat(frames, ignore_index=True)
            df = df.groupby([*cols, "device", "handled_by", "userspace"], sort=False, observed=True)["count"].sum()
            df = df.reset_index()
            df["_h"] = -df["handled_by"].map({h: i for i, h in enumerate(HANDLERS)})
            out[key] = df.sort_values([*cols, "_h"], ignore_index=True).drop(columns="_h")
        return out
