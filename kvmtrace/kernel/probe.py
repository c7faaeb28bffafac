"""The kernel side: build, attach, drain and detach the BPF probes with bcc.

This is the only module that imports bcc. It knows nothing of libvirt or of
the trace file: it is handed the tgids to trace and hands back batches of
raw events as numpy arrays of EVENT_DTYPE.
"""

from __future__ import annotations

import ctypes
import importlib.resources
import mmap
import os
import platform
import re
import select
from dataclasses import dataclass

import numpy as np

from kvmtrace.errors import BccError
from kvmtrace.kernel.layouts import ProbePlan, kernel_version, plan_probes
from kvmtrace.kernel.events import (AGGREGATE, EVENT_DTYPE, KEY_DTYPE, NO_VCPU, SCHED_PROBES, TRACEPOINTS,
                                    VCPU_TIME_IN_GUEST, EventKind,
                                    ThreadSched, VcpuState, bpf_defines)

#: Default ring buffer size: 2^13 pages = 32 MiB, about 320k events of slack.
DEFAULT_RINGBUF_PAGES = 1 << 13


def probes_dir() -> str:
    """Where the installed package keeps the BPF C (kvmtrace/kernel/bpf)."""
    return str(importlib.resources.files("kvmtrace.kernel.bpf"))


#: ``#include "name.bpf.h"``: one of kvmtrace's own kernel-side headers.
_BPF_HEADER = re.compile(r'^\s*#\s*include\s+"([\w.-]+\.bpf\.h)"\s*$')


def bpf_source(path: str, _within: tuple[str, ...] = ()) -> str:
    """The C text bcc compiles for ``path``: the file with kvmtrace's ``.bpf.h`` headers inlined.

    A shim for bcc: it rewrites its map syntax (``targets.lookup(&k)`` becomes
    a helper call on the map) in its main source only. Its edits to an
    included header are dropped (bcc's BFrontendAction writes out the main
    file's rewrite buffer alone), and the header's calls go through the map
    struct's null function pointers: the load fails ("unknown opcode 8d").
    So each ``#include "x.bpf.h"`` is replaced by the header's text (which
    the preprocessor then keeps or drops, as it would the include), between
    ``#line`` markers that keep compiler messages naming the right file and
    line. Other headers (kvmtrace.h, the kernel's) are left to the preprocessor.
    bcc reads a ``src_file`` into text anyway: compiling this text instead
    changes nothing else (the programs are byte-identical to those of the
    source before its split into headers).
    """
    if path in _within:
        raise ValueError(f"{path} includes itself (through {' -> '.join(_within)})")
    with open(path) as f:
        lines = f.read().splitlines()
    out = [f'#line 1 "{path}"']
    for number, line in enumerate(lines, 1):
        match = _BPF_HEADER.match(line)
        if match is None:
            out.append(line)
            continue
        out.append(bpf_source(os.path.join(os.path.dirname(path), match.group(1)), (*_within, path)))
        out.append(f'#line {number + 1} "{path}"')
    return "\n".join(out) + "\n"


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
    from kvmtrace.tables.tpformat import parse_format

    return {f.name for f in parse_format(text).fields}


class RingReader:
    """Drain a BPF ring buffer of fixed-size records in bulk, with no per-event callback.

    The kernel's BPF ring buffer is mmapped: a consumer page (ours to write),
    then a producer page and the data area, mapped twice in a row so a record
    run that wraps around is still contiguous. Each record is an 8-byte header
    (length, with BUSY and DISCARD bits) and the sample, padded to 8 bytes.
    Every kvmtrace record has the same size, so the records between the
    consumer and producer positions are an array of one numpy dtype: a drain
    is one vectorised busy check, one copy and one store of the new consumer
    position. x86 does not reorder loads with loads, so reading the headers
    before copying the samples sees every committed sample whole.
    """

    BUSY = 1 << 31
    DISCARD = 1 << 30

    def __init__(self, map_fd: int, size: int, sample: np.dtype):
        if size & (size - 1):
            raise ValueError("ring buffer size must be a power of two")
        page = mmap.PAGESIZE
        self._size = size
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        stride = (8 + sample.itemsize + 7) & ~7
        self._rec = np.dtype({"names": ["hdr", "ev"], "formats": ["<u4", sample],
                              "offsets": [0, 8], "itemsize": stride})
        self._poll = select.poll()
        self._poll.register(map_fd, select.POLLIN)
        self.page = page

    def _positions(self) -> tuple[int, int]:
        cons = int.from_bytes(self._cons[0:8], "little")
        prod = int.from_bytes(self._data[0:8], "little")
        return cons, prod

    def wait(self, timeout_ms: int) -> None:
        """Sleep until the kernel signals data (or the timeout passes)."""
        cons, prod = self._positions()
        if cons == prod:
            self._poll.poll(timeout_ms)

    def available(self) -> int:
        cons, prod = self._positions()
        return (prod - cons) // self._rec.itemsize

    def drain(self, limit: int | None = None) -> np.ndarray:
        """Copy out the committed records (up to ``limit``) and release them."""
        cons, prod = self._positions()
        n = (prod - cons) // self._rec.itemsize
        if limit is not None:
            n = min(n, limit)
        if n <= 0:
            return np.zeros(0, dtype=self._rec.fields["ev"][0])
        start = self.page + (cons & (self._size - 1))
        view = np.frombuffer(self._data, dtype=self._rec, count=n, offset=start)
        hdr = view["hdr"]
        busy = (hdr & self.BUSY) != 0
        if busy.any():  # a record still being written: stop before it
            n = int(busy.argmax())
            view, hdr = view[:n], hdr[:n]
        keep = (hdr & self.DISCARD) == 0
        out = view["ev"][keep] if not keep.all() else view["ev"].copy()
        del view, hdr
        self._cons[0:8] = (cons + n * self._rec.itemsize).to_bytes(8, "little")
        return out

    def close(self) -> None:
        self._cons.close()
        self._data.close()


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
        counts_mode: bool = False,
        max_vcpus: int | None = None,
        max_mmio_addresses: int | None = None,
        plan: ProbePlan | None = None,
    ):
        """``plan``: which probes, raw or regular (kvmtrace/kernel/layouts.py);
        by default this kernel's plan for a recording of running guests."""
        try:
            from bcc import BPF
        except ImportError as e:
            raise BccError(
                "bcc is not importable from this Python",
                "apt-get install python3-bpfcc and run kvmtrace from a virtualenv "
                "made by /usr/bin/python3 -m venv --system-site-packages (./setup.sh)",
            ) from e
        fields = {name: format_fields(text) for name, text in formats.items()}
        if plan is None:
            plan = plan_probes(fields, platform.release())
        self.plan = plan
        self.probes = list(plan.probes)
        self._held = list(plan.launch_only)  # detached at the first KVM_RUN
        task = self._task_offsets()  # without BTF the sched probes are left out
        cflags = bpf_defines(
            probes=self.probes,
            fields=fields,
            raw=plan.raw,
            launch=plan.launch,
            run_by_syscall=plan.run_edge == "sys_enter_ioctl",
            ringbuf_pages=1 if counts_mode else ringbuf_pages,
            capture_values=capture_values,
            counts_mode=counts_mode,
            kernel=kernel_version(platform.release()),
            task_offsets=task,
            **({"max_vcpus": max_vcpus} if max_vcpus else {}),
            **({"max_mmio_addresses": max_mmio_addresses} if max_mmio_addresses else {}),
        )
        self.counts_mode = counts_mode
        pdir = probes_dir()
        cflags.append(f"-I{pdir}")
        try:
            # TRACEPOINT_PROBE and RAW_TRACEPOINT_PROBE programs attach as they load.
            source = bpf_source(os.path.join(pdir, "kvmtrace.bpf.c"))
            self.bpf = BPF(text=source.encode(), cflags=cflags)
        except Exception as e:  # bcc raises bare Exception for compile/load/attach
            raise BccError(
                f"building or attaching the BPF probes failed: {e}",
                "check the kernel headers (/lib/modules/$(uname -r)/build) and "
                "that the kernel supports BPF ring buffers (Linux >= 5.8)",
            ) from e
        self._targets = self.bpf[b"targets"]
        self.ring = RingReader(self.bpf[b"events"].map_fd, (1 if counts_mode else ringbuf_pages) * mmap.PAGESIZE,
                               EVENT_DTYPE)

    def _task_offsets(self) -> dict[str, int]:
        """task_struct's offsets for the sched probes; without BTF they are left out."""
        from kvmtrace.kernel.btf import task_offsets

        if not set(SCHED_PROBES) & set(self.probes):
            return {}
        try:
            return task_offsets()
        except BccError:
            self.probes = [p for p in self.probes if p not in SCHED_PROBES]
            return {}

    def add_target(self, tgid: int, index: int = 0) -> None:
        """Trace the VMM process ``tgid`` (its events get domain ``index``)."""
        self._targets[ctypes.c_uint32(tgid)] = ctypes.c_uint32(index)

    def arm(self) -> None:
        """Take KVM ioctls of every process (a launch, before the VMM's pid is known)."""
        self.bpf[b"armed"][ctypes.c_int(0)] = ctypes.c_uint32(1)

    def disarm(self) -> None:
        if self.plan.launch:
            self.bpf[b"armed"][ctypes.c_int(0)] = ctypes.c_uint32(0)

    @property
    def held(self) -> list[str]:
        """The launch's syscall probes still attached (until the first KVM_RUN)."""
        return list(self._held)

    def release_launch_probes(self, force: bool = False) -> bool:
        """Detach the launch's syscall probes once the traced VMM has entered
        KVM_RUN (or now, with ``force``); True if it detached them now."""
        if not self._held:
            return False
        if not force and not self.bpf[b"ran"][ctypes.c_int(0)].value:
            return False
        for name in self._held:
            self.bpf.detach_tracepoint(tp=f"syscalls:{name}".encode())
        self._held = []
        return True

    def stop_matching(self) -> None:
        """Match no new event (of any target, armed or not): what is in the
        ring buffer and the counters then no longer changes but by draining."""
        self.bpf[b"stopped"][ctypes.c_int(0)] = ctypes.c_uint32(1)
        self.bpf[b"targets"].clear()
        self.disarm()

    def add_vcpu(self, pid: int, tid: int, kvm_run: int = 0, in_run: bool = True,
                 sched: ThreadSched = ThreadSched.ON_CPU, at_ns: int = 0) -> None:
        """Enter vCPU thread ``tid`` of VMM ``pid`` (before ``add_target(pid)``),
        with where its struct kvm_run is mapped in the VMM (0: unknown), and
        its state since ``at_ns`` (CLOCK_MONOTONIC; 0: its time counts from
        its first change) for counts mode's per-state time."""
        threads = self.bpf[b"threads"]
        state = threads.Leaf()
        state.pid, state.kvm_run = pid, kvm_run
        state.in_run, state.sched, state.state_ts = int(in_run), int(sched), at_ns
        threads[threads.Key(tid)] = state

    def read_vcpu_time(self, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Counts mode: each vCPU thread's cumulative nanoseconds per state up to
        ``now_ns``, as read_counts() gives counts (keys of kind VCPU_TIME, ``op``
        the VcpuState): the state open since the thread's last change gets the
        time since then. A thread whose kvm_exit/kvm_entry the kernel saw
        (VMX/SVM hosts) has one more row, ``op`` VCPU_TIME_IN_GUEST: the
        in-guest part of GUEST (struct kt_thread's guest_ns, plus the open
        time when GUEST is open and the thread not outside the guest)."""
        rows = []
        for k, t in self.bpf[b"threads"].items():
            ns = [int(t.state_ns[s]) for s in VcpuState]
            opened = _open_state(t.in_run, t.sched)
            since = now_ns - int(t.state_ts) if t.state_ts and now_ns > t.state_ts else 0
            ns[opened] += since
            rows += [(t.pid, k.value, s, n) for s, n in zip(VcpuState, ns) if t.state_ts or n]
            if t.guest_seen:
                in_guest = int(t.guest_ns) + (since if opened == VcpuState.GUEST and not t.guest_out else 0)
                rows.append((t.pid, k.value, VCPU_TIME_IN_GUEST, in_guest))
        keys = np.zeros(len(rows), dtype=KEY_DTYPE)
        totals = np.zeros(len(rows), dtype=np.uint64)
        for i, (pid, tid, s, n) in enumerate(rows):
            keys[i]["pid"], keys[i]["tid"], keys[i]["op"] = pid, tid, int(s)
            keys[i]["kind"] = EventKind.VCPU_TIME
            totals[i] = n
        return keys, totals

    def poll(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for events to arrive."""
        self.ring.wait(timeout_ms)

    def take(self, limit: int | None = None) -> np.ndarray:
        """Every event in the ring buffer now (up to ``limit``), as EVENT_DTYPE."""
        return self.ring.drain(limit)

    @property
    def pending(self) -> int:
        """Events waiting in the ring buffer."""
        return self.ring.available()

    def read_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Counts mode: every aggregate key so far and its cumulative count."""
        items = list(self.bpf[b"counts"].items())
        keys = np.zeros(len(items), dtype=KEY_DTYPE)
        totals = np.zeros(len(items), dtype=np.uint64)
        for i, (k, v) in enumerate(items):
            keys[i] = np.frombuffer(bytes(k), dtype=KEY_DTYPE)[0]
            totals[i] = sum(v)
        return keys, totals

    def counters(self) -> Counters:
        def read(name: str) -> dict[str, int]:
            table = self.bpf[name.encode()]
            return {k.name: int(sum(table[ctypes.c_int(k.value)])) for k in EventKind}

        return Counters(matched=read("matched"), lost=read("lost"))

    def close(self) -> None:
        """Detach every probe and free the maps."""
        bpf = getattr(self, "bpf", None)
        if bpf is not None:
            self.bpf = None
            self._held = []
            self.ring.close()
            bpf.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _open_state(in_run: int, sched: int) -> VcpuState:
    """The state kvmtrace/kernel/bpf/vcpu_time.bpf.h's kt_state() gives."""
    if sched == ThreadSched.RUNNABLE:
        return VcpuState.PREEMPTED
    if sched == ThreadSched.ASLEEP:
        return VcpuState.HALTED if in_run else VcpuState.VMM_WAITING
    return VcpuState.GUEST if in_run else VcpuState.VMM


class CountsDelta:
    """Turns cumulative in-kernel counts into per-interval aggregate rows."""

    def __init__(self):
        self._seen: dict[bytes, int] = {}

    def rows(self, keys: np.ndarray, totals: np.ndarray, ts_ns: int) -> np.ndarray:
        """EVENT_DTYPE rows (kind | AGGREGATE, value = count since the last call)."""
        raw = keys.tobytes()
        width = KEY_DTYPE.itemsize
        delta = np.zeros(len(keys), dtype=np.uint64)
        for i in range(len(keys)):
            kb = raw[i * width:(i + 1) * width]
            total, seen = int(totals[i]), self._seen.get(kb, 0)
            # A vCPU's state time read while open can be a little ahead of
            # what the kernel books at its next change: never a negative delta.
            delta[i] = max(total - seen, 0)
            self._seen[kb] = max(total, seen)
        pick = delta > 0
        keys, delta = keys[pick], delta[pick]
        out = np.zeros(len(keys), dtype=EVENT_DTYPE)
        for name in ("gpa", "pid", "tid", "reason", "isa", "port", "size", "err", "op", "flags"):
            out[name] = keys[name]
        out["kind"] = keys["kind"] | AGGREGATE
        out["value"] = delta
        out["ts_ns"] = ts_ns
        out["vcpu"] = NO_VCPU
        return out
