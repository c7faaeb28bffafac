"""The kernel side: build, attach, drain and detach the BPF probes with bcc.

This is the only module that imports bcc. It knows nothing of libvirt or of
the trace file: it is handed the tgids to trace and hands back batches of
raw events as numpy arrays of EVENT_DTYPE.
"""

from __future__ import annotations

import ctypes
import importlib.resources
import os
from dataclasses import dataclass

import numpy as np

from .errors import BccError
from .events import EVENT_DTYPE, TRACEPOINTS, EventKind, bpf_defines

#: Default ring buffer size: 2^13 pages = 32 MiB, about 320k events of slack.
DEFAULT_RINGBUF_PAGES = 1 << 13


def probes_dir() -> str:
    """Where the installed package keeps probes/*.bpf.c."""
    return str(importlib.resources.files("kvmtrace.probes"))


def available_tracepoints(tracefs: str) -> dict[str, str]:
    """event name -> format text, for each kvmtrace tracepoint this kernel has."""
    found = {}
    for system, name, _kind in TRACEPOINTS:
        fmt = os.path.join(tracefs, "events", system, name, "format")
        try:
            with open(fmt) as f:
                found[name] = f.read()
        except FileNotFoundError:
            continue
    return found


def format_fields(text: str) -> set[str]:
    """Field names declared in a tracepoint format file's text."""
    from .tpformat import parse_format

    return {f.name for f in parse_format(text).fields}


@dataclass
class Counters:
    """In-kernel per-kind counts: events for a traced guest, and those lost."""

    matched: dict[str, int]
    lost: dict[str, int]

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())


class Probes:
    """The compiled and attached probes. Use as a context manager."""

    def __init__(
        self,
        formats: dict[str, str],
        *,
        ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
        capture_values: bool = False,
    ):
        try:
            from bcc import BPF
        except ImportError as e:
            raise BccError(
                "bcc is not importable from this Python",
                "apt-get install python3-bpfcc and run kvmtrace from a virtualenv "
                "made by /usr/bin/python3 -m venv --system-site-packages (./setup.sh)",
            ) from e
        self.probes = list(formats)
        fields = {name: format_fields(text) for name, text in formats.items()}
        cflags = bpf_defines(
            probes=self.probes,
            fields=fields,
            ringbuf_pages=ringbuf_pages,
            capture_values=capture_values,
        )
        pdir = probes_dir()
        cflags.append(f"-I{pdir}")
        self._chunks: list[bytes] = []
        try:
            # TRACEPOINT_PROBE programs attach as they load.
            self.bpf = BPF(src_file=os.path.join(pdir, "kvmtrace.bpf.c").encode(), cflags=cflags)
        except Exception as e:  # bcc raises bare Exception for compile/load/attach
            raise BccError(
                f"building or attaching the BPF probes failed: {e}",
                "check the kernel headers (/lib/modules/$(uname -r)/build) and "
                "that the kernel supports BPF ring buffers (Linux >= 5.8)",
            ) from e
        self._targets = self.bpf["targets"]
        self._callback = self._make_callback()
        self.bpf["events"].open_ring_buffer(self._callback)

    def _make_callback(self):
        chunks = self._chunks
        string_at = ctypes.string_at

        def on_event(_ctx, data, size):
            chunks.append(string_at(data, size))

        return on_event

    def add_target(self, tgid: int, index: int = 0) -> None:
        """Trace the VMM process ``tgid`` (its events get domain ``index``)."""
        self._targets[ctypes.c_uint32(tgid)] = ctypes.c_uint32(index)

    def add_kvm_run(self, tid: int, address: int) -> None:
        """Where vCPU thread ``tid``'s struct kvm_run is mapped in its VMM."""
        self.bpf["kvm_run_addr"][ctypes.c_uint32(tid)] = ctypes.c_uint64(address)

    def poll(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for events and collect them."""
        self.bpf.ring_buffer_poll(timeout_ms)

    def consume(self) -> None:
        """Collect whatever is in the ring buffer now, without waiting."""
        self.bpf.ring_buffer_consume()

    def take(self) -> np.ndarray:
        """The events collected since the last call, as an EVENT_DTYPE array."""
        if not self._chunks:
            return np.zeros(0, dtype=EVENT_DTYPE)
        raw = b"".join(self._chunks)
        self._chunks.clear()
        return np.frombuffer(raw, dtype=EVENT_DTYPE)

    @property
    def pending(self) -> int:
        return len(self._chunks)

    def counters(self) -> Counters:
        def read(name: str) -> dict[str, int]:
            table = self.bpf[name]
            return {k.name: int(sum(table[ctypes.c_int(k.value)])) for k in EventKind}

        return Counters(matched=read("matched"), lost=read("lost"))

    def close(self) -> None:
        """Detach every probe and free the maps."""
        bpf = getattr(self, "bpf", None)
        if bpf is not None:
            self.bpf = None
            bpf.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
