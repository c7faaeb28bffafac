"""Who handled an access, four ways; device names by the map of each access's time;
the map versions in the trace file; the recorder's re-reads (with a stand-in monitor)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from kvmtrace.analysis.handlers import (HANDLERS, IOEVENTFD_FLAG_DATAMATCH, IOEVENTFD_FLAG_DEASSIGN,
                                        IOEVENTFD_FLAG_PIO, classify, handler_of, io_table, zones)
from kvmtrace.kernel.events import EVENT_DTYPE, EventKind
from kvmtrace.tables.devices import DeviceMap
from kvmtrace.tables.devices.timeline import DeviceTimeline
from kvmtrace.tables.ioctls import KvmIoctl
from kvmtrace.trace import Trace
from kvmtrace.tracefile import TraceWriter, read_trace

from ..support.evbuild import Ev

MTREE = Path(__file__).resolve().parents[1] / "data" / "mtree"
START = (MTREE / "libvirt-pc-i440fx.txt").read_text()  # paused: no PCI BARs yet
LATER = (MTREE / "pc-seabios-ipxe-virtio-net.txt").read_text()  # virtio-pci at 0xc000


def _ioctl(e: Ev, cmd, addr, length, flags=0, datamatch=0, err=0, **kw):
    return e.add(EventKind.IOCTL, reason=int(cmd), gpa=addr, info1=length, count=flags, rip=datamatch, err=err, **kw)


# ------------------------------------------------------------------ zones


def test_zones_open_and_close_with_their_ioctls():
    e = Ev()
    _ioctl(e, KvmIoctl.REGISTER_COALESCED_MMIO, 0x70, 1, flags=1)  # pio zone
    _ioctl(e, KvmIoctl.REGISTER_COALESCED_MMIO, 0xA0000, 0x20000)  # memory zone
    _ioctl(e, KvmIoctl.IOEVENTFD, 0xC010, 2, IOEVENTFD_FLAG_PIO | IOEVENTFD_FLAG_DATAMATCH, datamatch=1)
    _ioctl(e, KvmIoctl.IOEVENTFD, 0xC010, 2, IOEVENTFD_FLAG_PIO | IOEVENTFD_FLAG_DATAMATCH, datamatch=0)
    _ioctl(e, KvmIoctl.IOEVENTFD, 0xFEBFB000, 0, 0)  # an MMIO eventfd of any length
    _ioctl(e, KvmIoctl.IOEVENTFD, 0xC010, 2, IOEVENTFD_FLAG_PIO | IOEVENTFD_FLAG_DATAMATCH | IOEVENTFD_FLAG_DEASSIGN,
           datamatch=1)
    _ioctl(e, KvmIoctl.UNREGISTER_COALESCED_MMIO, 0xA0000, 0x20000)
    _ioctl(e, KvmIoctl.IOEVENTFD, 0xC000, 2, IOEVENTFD_FLAG_PIO, err=-17)  # failed: not a zone
    z = zones(e.frame())
    assert list(z["kind"].astype(str)) == ["coalesced", "coalesced", "ioeventfd", "ioeventfd", "ioeventfd"]
    assert list(z["space"].astype(str)) == ["io", "memory", "io", "io", "memory"]
    assert list(z["value"]) == [0, 0, 1, 0, 0]
    end = np.iinfo(np.int64).max
    assert z["end_ns"].iloc[0] == end and z["end_ns"].iloc[1] < end  # the memory zone was unregistered
    assert z["end_ns"].iloc[2] < end and z["end_ns"].iloc[3] == end  # queue 1's eventfd deassigned
    assert str(z["addr"].dtype) == "uint64" and z.index.name == "zone"


def test_no_ioctls_no_zones():
    z = zones(Ev().pio(0x70, True).frame())
    assert len(z) == 0 and list(z.columns)[:3] == ["pid", "kind", "space"]


# ------------------------------------------------------------------ classify


def _named(space, addrs, dm):
    tl = DeviceTimeline.from_trace({"domains": [{"pid": 1, "memory_map_text": dm}]})
    return tl.names(space, np.array(addrs, dtype=np.uint64), None, np.ones(len(addrs), np.int64))


def test_deduction_from_device_names():
    ports = [0x70, 0x70, 0xC010, 0xC010, 0xC012, 0x40, 0x71, 0x1234]
    write = [True, False, True, True, True, True, True, True]
    user = [False, True, False, True, False, False, True, False]
    dev, off, ker = _named("io", ports, LATER)
    assert list(dev)[:3] == ["rtc-index", "rtc-index", "virtio-pci"] and off[2] == 16
    got = classify("io", userspace=user, write=write, addr=ports, size=[1, 1, 2, 2, 1, 1, 1, 1], device=dev,
                   offset=off, in_kernel=ker)
    assert [HANDLERS[c] for c in got] == ["coalesced", "vmm", "ioeventfd", "vmm", "kernel", "kernel", "vmm",
                                          "kernel"]


def test_deduction_of_modern_notify_mmio():
    dev, off, ker = _named("memory", [0xFEBFB000, 0xFEBF8000, 0xFEC00000], LATER)
    got = classify("memory", userspace=[False] * 3, write=[True] * 3, addr=[0xFEBFB000, 0xFEBF8000, 0xFEC00000],
                   size=[2, 4, 4], device=dev, offset=off, in_kernel=ker)
    assert [HANDLERS[c] for c in got] == ["ioeventfd", "kernel", "kernel"]


def test_zones_decide_by_time_address_length_and_datamatch():
    e = Ev()
    e.pio(0xC010, True, size=2)  # before the eventfd: (a userspace exit in life; here unpaired)
    _ioctl(e, KvmIoctl.IOEVENTFD, 0xC010, 2, IOEVENTFD_FLAG_PIO | IOEVENTFD_FLAG_DATAMATCH, datamatch=0)
    _ioctl(e, KvmIoctl.REGISTER_COALESCED_MMIO, 0x70, 1, flags=1)
    e.pio(0xC010, True, size=2, value=0)
    e.pio(0xC010, True, size=2, value=5)  # no datamatch
    e.pio(0xC010, True, size=1, value=0)  # wrong length
    e.pio(0x70, True)
    e.pio(0x70, False)  # coalescing takes writes only
    ev = e.frame()
    z = zones(ev)
    pio = ev[ev["kind"] == EventKind.PIO]
    n = len(pio)
    dev, off, ker = _named("io", pio["port"].to_numpy(), LATER)
    got = classify("io", userspace=np.zeros(n, bool), write=pio["op"].to_numpy() == 1, addr=pio["port"].to_numpy(),
                   size=pio["size"].to_numpy(), device=dev, offset=off, in_kernel=ker, ts=pio["ts_ns"].to_numpy(),
                   pid=pio["pid"].to_numpy(), value=pio["value"].to_numpy(), zone_table=z)
    assert [HANDLERS[c] for c in got] == ["kernel", "ioeventfd", "kernel", "kernel", "coalesced", "kernel"]


def test_handler_of_one_row():
    dm = DeviceMap.from_mtree(LATER)
    assert handler_of(dm.port(0x70), False, True, 0x70) == "coalesced"
    assert handler_of(dm.port(0xC010), False, True, 0xC010) == "ioeventfd"
    assert handler_of(dm.port(0xC010), True, True, 0xC010) == "vmm"
    assert handler_of(dm.port(0x40), False, True, 0x40) == "kernel"
    assert handler_of(None, False, True, 0x1234) == "kernel"


def test_io_table_rows_by_device_and_handler():
    dev = pd.Categorical(["rtc-index", "rtc-index", "rtc-index", "virtio-pci"])
    t = io_table(np.array([0x70, 0x70, 0x70, 0xC010]), np.array([True, True, False, True]), np.array([1, 1, 1, 2]),
                 dev, np.array([2, 2, 3, 1], dtype=np.int8), np.ones(4, np.int64), ("port", "size"))
    assert t.to_dict("records") == [
        {"port": 0x70, "direction": "read", "size": 1, "device": "rtc-index", "handled_by": "vmm", "userspace": True,
         "count": 1},
        {"port": 0x70, "direction": "write", "size": 1, "device": "rtc-index", "handled_by": "coalesced",
         "userspace": False, "count": 2},
        {"port": 0xC010, "direction": "write", "size": 2, "device": "virtio-pci", "handled_by": "ioeventfd",
         "userspace": False, "count": 1}]


# ------------------------------------------------------------------ timeline


def test_an_access_is_named_by_the_map_of_its_time_or_the_next_read():
    header = {"domains": [{"name": "g", "pid": 7, "memory_map_text": START}]}
    maps = [{"pid": 7, "t_ns": 5_000, "reason": "unnamed port 0xc010", "text": LATER},
            {"pid": 7, "t_ns": 9_000, "reason": "end of recording", "error": "the domain is gone"}]
    tl = DeviceTimeline.from_trace(header, maps)
    assert [f.error for f in tl.failures] == ["the domain is gone"]
    names, off, _ = tl.names("io", np.array([0xC010, 0xC010, 0x70, 0x1234], np.uint64),
                             np.array([1_000, 8_000, 1_000, 1_000]), np.full(4, 7))
    assert list(names) == ["virtio-pci", "virtio-pci", "rtc-index", "unknown"]
    assert list(off[:2]) == [16, 16]
    merged = tl.merged()
    assert merged.port(0xC010).name == "virtio-pci" and merged.port(0x70).name == "rtc-index"
    assert DeviceMap.from_mtree(START).port(0xC010) is None


def test_an_unchanged_reread_and_no_reread():
    header = {"domains": [{"name": "g", "pid": 7, "memory_map_text": START}]}
    tl = DeviceTimeline.from_trace(header, [{"pid": 7, "t_ns": 1, "reason": "end", "unchanged": True}])
    assert tl.names("io", [0x70])[0][0] == "rtc-index"
    assert tl.merged().port(0xC010) is None


# ------------------------------------------------------------------ the trace file


def _events(n):
    a = np.zeros(n, EVENT_DTYPE)
    a["kind"] = EventKind.PIO
    a["port"] = 0xC010
    a["op"] = 1
    a["size"] = 2
    a["pid"] = 7
    a["ts_ns"] = np.arange(n) + 10_000
    return a


def test_map_versions_survive_a_cut_short_file(tmp_path):
    p = tmp_path / "t.kvmtrace"
    w = TraceWriter(p, {"domains": [{"name": "g", "pid": 7, "memory_map_text": START}]})
    w.write(_events(3), {})
    w.write_memory_map({"pid": 7, "t_ns": 10_001, "reason": "unnamed port 0xc010", "text": LATER})
    w.write(_events(2), {})
    w.abandon()  # no trailer, no footer
    d = read_trace(p)
    assert not d.complete and d.table.num_rows == 5
    assert [m["reason"] for m in d.memory_maps] == ["unnamed port 0xc010"]
    t = Trace(read_trace(p, arrays=True))
    assert set(t.df_pio()["device"].astype(str)) == {"virtio-pci"}


def test_map_versions_in_a_complete_file_and_the_report_notes(tmp_path):
    from kvmtrace.present.report import report_dict

    p = tmp_path / "t.kvmtrace"
    w = TraceWriter(p, {"domains": [{"name": "g", "pid": 7, "memory_map_text": START}], "probes": []})
    w.write(_events(3), {"start_time_ns": 10_000})
    w.write_memory_map({"pid": 7, "t_ns": 10_001, "reason": "unnamed port 0xc010", "text": LATER})
    w.write_memory_map({"pid": 7, "t_ns": 10_005, "reason": "end of recording", "error": "the domain is gone"})
    w.close({"start_time_ns": 10_000, "end_time_ns": 20_000})
    t = Trace(read_trace(p, arrays=True))
    assert t.complete and len(t.data.memory_maps) == 2
    d = report_dict(t)
    assert d["pio"] == [{"port": 0xC010, "direction": "write", "size": 2, "device": "virtio-pci",
                         "handled_by": "ioeventfd", "userspace": False, "count": 3}]
    assert [m["status"] for m in d["memory_maps"]] == ["read", "not read: the domain is gone"]
    assert d["handled_by_method"].startswith("deduced")
    from kvmtrace.present.formats import render_markdown

    md = render_markdown(t)
    assert "could not be re-read" in md and "ioeventfd" in md


# ------------------------------------------------------------------ the recorder's re-reads


def _guest(pid=7, text=START):
    return SimpleNamespace(pid=pid, uri="qemu:///system", uuid="u-1", name="g", memory_map_text=text)


def _wait(watch, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while len(watch.versions) < n and time.monotonic() < deadline:
        watch.poll()
        time.sleep(0.01)


def test_an_unnamed_port_asks_for_the_map_once():
    from kvmtrace.record.mapwatch import MapWatch

    asked, written = [], []
    watch = MapWatch([_guest()], written.append, reader=lambda uri, uuid: asked.append(uuid) or LATER,
                     min_interval=0.0)
    watch.observe(_events(4))  # 0xc010: not in the start map
    _wait(watch, 1)
    assert asked == ["u-1"] and written[0]["reason"] == "unnamed port 0xc010" and written[0]["text"] == LATER
    watch.observe(_events(4))  # named now: no new read
    a = _events(1)
    a["port"] = 0x1234  # unassigned in QEMU too
    watch.observe(a)
    _wait(watch, 2)
    watch.observe(a)  # asked once for it, not again
    watch.poll()
    assert asked == ["u-1", "u-1"] and written[1].get("unchanged")
    watch.finish()
    assert written[-1]["reason"] == "end of recording" and len(asked) == 3


def test_a_reader_that_fails_or_hangs_never_fails_the_recording():
    from kvmtrace.record.mapwatch import MapWatch

    def fail(uri, uuid):
        raise RuntimeError("the domain is gone")

    written = []
    MapWatch([_guest()], written.append, reader=fail).finish()
    assert written == [{"pid": 7, "domain": "g", "t_ns": written[0]["t_ns"], "reason": "end of recording",
                        "error": "the domain is gone"}]

    release = threading.Event()
    written.clear()
    watch = MapWatch([_guest()], written.append, reader=lambda uri, uuid: release.wait() and LATER,
                     end_timeout=0.2)
    t0 = time.monotonic()
    watch.finish()
    assert time.monotonic() - t0 < 2
    assert "no answer from QEMU's monitor within 0.2 s" in written[0]["error"]
    release.set()


def test_a_guest_without_a_libvirt_identity_is_never_asked():
    from kvmtrace.record.mapwatch import MapWatch

    written = []
    watch = MapWatch([SimpleNamespace(pid=7, name="x", memory_map_text=None)], written.append,
                     reader=lambda *_: pytest.fail("asked"))
    watch.observe(_events(2))
    watch.finish()
    assert written == [] and watch.devices(7).port(0x70).name == "rtc-index"  # the built-in table


def test_top_keys_say_who_handled_it():
    from kvmtrace.kernel.events import AGGREGATE
    from kvmtrace.live.counter import Snapshot
    from kvmtrace.live.top import snapshot_frame

    a = np.zeros(2, EVENT_DTYPE)
    a["pid"] = 7
    a["kind"] = EventKind.PIO | AGGREGATE
    a["port"] = [0x70, 0xC010]
    a["op"] = 1
    a["size"] = [1, 2]
    a["value"] = [23, 29]
    rows = pd.DataFrame({n: a[n] for n in EVENT_DTYPE.names if not n.startswith("pad")})
    snap = Snapshot(t=1.0, interval_s=1.0, delta=rows, total=rows, domains={7: "g"}, vcpus={})
    df = snapshot_frame(snap, {7: DeviceMap.from_mtree(LATER)})
    keys = set(df.loc[df["dimension"] == "port", "key"])
    assert keys == {"0x0070 write (rtc-index, coalesced)", "0xc010 write (virtio-pci, ioeventfd)"}


@pytest.mark.parametrize("chunk", [None, 97])
def test_the_batchwise_report_labels_as_the_whole_trace_does(chunk):
    from kvmtrace.trace import load, load_for_report

    path = Path(__file__).resolve().parents[2] / "sample-traces" / "demo-finite.kvmtrace"
    whole, part = load(path).io_tables, load_for_report(path, chunk_events=chunk).io_tables
    for key in ("pio", "mmio"):
        pd.testing.assert_frame_equal(part[key].reset_index(drop=True).astype(str),
                                      whole[key].reset_index(drop=True).astype(str))
