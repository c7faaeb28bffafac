"""Read QEMU's memory map again while recording: device names that follow the guest.

The map read at the start (the header's ``memory_map_text``) misses what the
firmware maps later: SeaBIOS assigns PCI BARs once the guest runs. A
:class:`MapWatch` looks at every batch of events as it is written; an access
to a port or address the guest's current map does not name asks for the map
again (``info mtree -f`` through libvirt, as at the start), and so does the
end of the recording. Each answer is written to the trace file with its time
(:meth:`TraceWriter.write_memory_map`); a map that could not be read (the
monitor busy, the domain gone) is written as that error and never fails the
recording: the names stay those read before.

Monitor calls run on a worker thread: libvirt waits up to 30 s for a monitor
another client holds, and the recording's loop must keep draining the ring
buffer meanwhile. The end's read waits at most ``end_timeout`` seconds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kvmtrace.kernel.events import AGGREGATE, EventKind
from kvmtrace.tables.devices import DeviceMap

#: An unnamed access asks for the map again at most this often per guest.
MIN_INTERVAL_S = 0.5
#: How long the end of a recording waits for the last map.
END_TIMEOUT_S = 5.0


def read_map(uri: str, uuid: str) -> str:
    """QEMU's ``info mtree -f`` of the running domain ``uuid``; raises with a reason."""
    import libvirt
    import libvirt_qemu

    from kvmtrace.record.domain import connect

    conn = connect(uri)
    try:
        try:
            dom = conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            raise RuntimeError(f"the domain is gone ({e.get_error_message()})") from e
        if not dom.isActive():
            raise RuntimeError("the domain is not running any more")
        try:
            text = libvirt_qemu.qemuMonitorCommand(dom, "info mtree -f",
                                                   libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
        except libvirt.libvirtError as e:
            raise RuntimeError(f"QEMU's monitor did not answer: {e.get_error_message()}") from e
        return text.replace("\r\n", "\n")
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - a connection the domain's end broke
            pass


@dataclass
class _Guest:
    pid: int
    uri: str
    uuid: str
    name: str
    text: str
    devices: DeviceMap
    tried: set = field(default_factory=lambda: {"io": set(), "memory": set()})
    waiting: dict = field(default_factory=lambda: {"io": set(), "memory": set()})
    last_ask: float = float("-inf")
    job: threading.Thread | None = None
    answer: tuple | None = None  # (t_ns, reason, text or None, error)


class MapWatch:
    """Re-reads of each traced guest's memory map, written to the trace as they come."""

    def __init__(self, guests, write: Callable[[dict], None], say: Callable[[str], None] = lambda _m: None,
                 reader: Callable[[str, str], str] = read_map, min_interval: float = MIN_INTERVAL_S,
                 end_timeout: float = END_TIMEOUT_S):
        self._write = write
        self._say = say
        self._reader = reader
        self.min_interval = min_interval
        self.end_timeout = end_timeout
        self.versions: list[dict] = []  # what was written, for the caller's summary
        self._guests: dict[int, _Guest] = {}
        for g in guests:
            self.add(g)

    def add(self, g) -> None:
        text = g.memory_map_text or ""
        dm = _parse(text) or DeviceMap.builtin()
        # A guest without a libvirt identity (a test's stand-in) is never asked again.
        self._guests[g.pid] = _Guest(g.pid, getattr(g, "uri", "") or "", getattr(g, "uuid", "") or "",
                                     str(getattr(g, "name", g.pid)), text, dm)

    def ensure(self, guests) -> None:
        """Watch every guest of ``guests`` not watched yet (a live view's rescan found it)."""
        for g in guests:
            if g.pid not in self._guests:
                self.add(g)

    def devices(self, pid: int) -> DeviceMap | None:
        """The newest map read of guest ``pid`` (None for a guest not watched)."""
        g = self._guests.get(pid)
        return g.devices if g else None

    # -- while recording -----------------------------------------------------

    def observe(self, events: np.ndarray) -> None:
        """Note the ports and addresses of ``events`` that the guests' maps do not name."""
        if not len(events) or not self._guests:
            return
        kind = events["kind"] & ~np.uint8(AGGREGATE)
        for space, k, col in (("io", EventKind.PIO, "port"), ("memory", EventKind.MMIO, "gpa")):
            sel = kind == k
            if not sel.any():
                continue
            for pid in np.unique(events["pid"][sel]):
                g = self._guests.get(int(pid))
                if g is None:
                    continue
                addrs = np.unique(events[col][sel & (events["pid"] == pid)])
                unnamed = addrs[g.devices.index(space, addrs) < 0]
                new = {int(a) for a in unnamed} - g.tried[space]
                g.waiting[space] |= new
        self.poll()

    def poll(self) -> None:
        """Write the answers that came; ask again where unnamed accesses wait."""
        now = time.monotonic()
        for g in self._guests.values():
            self._collect(g)
            if g.job is None and g.uuid and (g.waiting["io"] or g.waiting["memory"]) \
                    and now - g.last_ask >= self.min_interval:
                io, mem = g.waiting["io"], g.waiting["memory"]
                reason = f"unnamed port {min(io):#x}" if io else f"unnamed address {min(mem):#x}"
                for space in ("io", "memory"):
                    g.tried[space] |= g.waiting[space]
                    g.waiting[space] = set()
                self._ask(g, reason)

    def finish(self) -> None:
        """At the recording's end: one more read of each guest's map, waited for up to end_timeout."""
        deadline = time.monotonic() + self.end_timeout
        for g in self._guests.values():
            if g.job is not None:
                g.job.join(max(0.0, deadline - time.monotonic()))
                self._collect(g)
            if g.job is None and g.uuid:
                self._ask(g, "end of recording")
        for g in self._guests.values():
            if g.job is not None:
                g.job.join(max(0.0, deadline - time.monotonic()))
            if not self._collect(g) and g.uuid:
                self._emit(g, time.monotonic_ns(), "end of recording", None,
                           f"no answer from QEMU's monitor within {self.end_timeout:g} s (busy?)")

    # -- internals -----------------------------------------------------------

    def _ask(self, g: _Guest, reason: str) -> None:
        g.last_ask = time.monotonic()
        g.answer = None

        def work():
            try:
                text, error = self._reader(g.uri, g.uuid), ""
            except Exception as e:  # noqa: BLE001 - any failure is written down, never raised
                text, error = None, str(e) or type(e).__name__
            g.answer = (time.monotonic_ns(), reason, text, error)

        g.job = threading.Thread(target=work, name=f"kvmtrace-mtree-{g.pid}", daemon=True)
        g.job.start()

    def _collect(self, g: _Guest) -> bool:
        """Write the finished read of ``g``, if any; True if one was written."""
        if g.job is None or g.job.is_alive() or g.answer is None:
            return False
        g.job = None
        t_ns, reason, text, error = g.answer
        g.answer = None
        self._emit(g, t_ns, reason, text, error)
        return True

    def _emit(self, g: _Guest, t_ns: int, reason: str, text: str | None, error: str) -> None:
        version = {"pid": g.pid, "domain": g.name, "t_ns": t_ns, "reason": reason}
        dm = _parse(text) if text else None
        if text and dm is None:
            error = f"the monitor's answer holds no flat view: {text.strip()[:120]!r}"
        if dm is None:
            version["error"] = error
            self._say(f"QEMU's memory map of {g.name} could not be read again ({reason}): {error}; "
                      "keeping the device names read before")
        elif text == g.text:
            version["unchanged"] = True
        else:
            version["text"] = text
            g.text, g.devices = text, dm
        self.versions.append(version)
        self._write(version)  # a write that fails (a full disk) is the recording's own OutputError


def _parse(text: str) -> DeviceMap | None:
    from kvmtrace.errors import MemoryMapError

    if not text:
        return None
    try:
        dm = DeviceMap.from_mtree(text, fallback=True)
    except (MemoryMapError, TypeError):
        return None
    return dm if "mtree" in dm.sources.values() else None
