"""What a timeline draws: one :class:`_Source` of rows per kind of slice or instant.

Each source holds its rows' absolute times, durations and tracks, and a
``body`` that writes the rest of each row's JSON (name, category, args) on
demand, a chunk at a time: hardware exits, userspace exits, accesses the
kernel answered, and a launch's KVM ioctls and steps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kvmtrace.kernel.events import NO_VCPU, EventKind
from kvmtrace.tables.exits import KvmExit, kvm_exit_info
from kvmtrace.tables.ioctls import KvmIoctl, ioctl_name

_MEM_REGION = (int(KvmIoctl.SET_USER_MEMORY_REGION), int(KvmIoctl.SET_USER_MEMORY_REGION2))
_NO_MEMBER = '"none"'  # kvm_run member of an exit that fills none (HLT, SHUTDOWN, ...)


@dataclass
class _Source:
    """Rows of one kind of event to draw: absolute times, track, and how to write the rest.

    ``dur`` is -1 for an instant.  ``body(rows)`` gives, for row numbers
    ``rows``, the JSON members after pid/tid: ``"name":..,"cat":..,"args":{..}``.
    """

    key: str
    start: np.ndarray  # int64 ns, CLOCK_MONOTONIC
    dur: np.ndarray  # int64 ns, -1: instant
    pid: np.ndarray  # int64
    tid: np.ndarray  # int64, before overlap lanes
    body: Callable[[np.ndarray], list[str]]
    keep: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if self.keep is None:
            self.keep = np.ones(len(self.start), dtype=bool)


class _Names:
    """JSON-encoded strings, each encoded once."""

    def __init__(self):
        self._cache: dict[str, str] = {}

    def __call__(self, s: str) -> str:
        out = self._cache.get(s)
        if out is None:
            # Raw UTF-8, no \\u escapes: older Perfetto importers reject them.
            out = self._cache[s] = json.dumps(s, ensure_ascii=False)
        return out


def _kvm_exit_label(names, code: int) -> str:
    name = names.kvm.get(int(code))
    return f"KVM_EXIT_{name}" if name else f"KVM_EXIT code {int(code)}"


def _hardware_exits(trace, q: _Names) -> tuple[_Source | None, pd.DataFrame | None]:
    ev = trace.events
    kind = ev["kind"].to_numpy()
    is_exit = kind == EventKind.EXIT
    if not is_exit.any():
        return None, None
    x = trace.df_exits()
    raw = ev[is_exit]
    # correlate's rows and the kvm_exit events, both in (pid, tid, ts, file order):
    # the raw fields correlate does not carry (rip, info1, ...) come from the events.
    r_order = np.lexsort((np.arange(len(raw)), raw["ts_ns"].to_numpy(), raw["tid"].to_numpy(),
                          raw["pid"].to_numpy()))
    x_order = np.lexsort((np.arange(len(x)), x["ts_ns"].to_numpy(), x["tid"].to_numpy(), x["pid"].to_numpy()))
    if not np.array_equal(raw["ts_ns"].to_numpy(np.int64)[r_order], x["ts_ns"].to_numpy(np.int64)[x_order]):
        raise AssertionError("correlate's exits do not match the trace's kvm_exit events")  # pragma: no cover

    def from_raw(col: str) -> np.ndarray:
        out = np.empty(len(x), dtype=raw[col].dtype)
        out[x_order] = raw[col].to_numpy()[r_order]
        return out

    raw_reason, raw_isa = from_raw("reason"), from_raw("isa")
    rip, info1, info2 = from_raw("rip"), from_raw("info1"), from_raw("info2")
    intr, errc = from_raw("intr_info"), from_raw("error_code")
    ts = x["ts_ns"].to_numpy(np.int64)
    entry = x["entry_ts_ns"].to_numpy(np.int64)
    dur = np.where(entry >= 0, entry - ts, 0)
    access = x["access"].astype(str).to_numpy()
    device = np.full(len(x), "", dtype=object)
    pio, mmio = access == "pio", access == "mmio"
    if pio.any():
        device[pio] = np.asarray(trace.device_map.name_ports(x["port"].to_numpy()[pio]), dtype=object)
    if mmio.any():
        device[mmio] = np.asarray(trace.device_map.name_gpas(x["gpa"].to_numpy()[mmio]), dtype=object)
    names = trace.names
    hw_name: dict[tuple[int, int], str] = {}
    cols = {c: x[c].to_numpy() for c in ("vcpu", "port", "size", "count", "gpa", "len", "handling_ns",
                                         "service_ns", "userspace_reason", "failed_vmentry")}
    isa_s = x["isa"].astype(str).to_numpy()
    handled = x["handled"].astype(str).to_numpy()
    direction = x["direction"].astype(str).to_numpy()

    def body(rows: np.ndarray) -> list[str]:
        out = []
        for i in rows.tolist():
            key = (int(raw_isa[i]), int(raw_reason[i]))
            nm = hw_name.get(key)
            if nm is None:
                nm = hw_name[key] = q(names.hw(key[0], key[1]))
            a = [f'"exit_code":"{key[1]:#x}","isa":"{isa_s[i]}","rip":"{int(rip[i]):#x}",'
                 f'"info1":"{int(info1[i]):#x}","info2":"{int(info2[i]):#x}",'
                 f'"intr_info":"{int(intr[i]):#x}","error_code":"{int(errc[i]):#x}"']
            if cols["vcpu"][i] != NO_VCPU:
                a.append(f'"vcpu":{int(cols["vcpu"][i])}')
            a.append(f'"handled":"{handled[i]}"')
            if cols["failed_vmentry"][i]:
                a.append('"failed_vmentry":true')
            if entry[i] >= 0:
                a.append(f'"handling_ns":{int(cols["handling_ns"][i])}')
            else:
                a.append('"kvm_entry":"none traced (recording ended, event lost, or not recorded)"')
            if pio[i]:
                a.append(f'"access":"pio","port":"{int(cols["port"][i]):#x}","size":{int(cols["size"][i])},'
                         f'"count":{int(cols["count"][i])},"direction":"{direction[i]}","device":{q(device[i])}')
            elif mmio[i]:
                a.append(f'"access":"mmio","gpa":"{int(cols["gpa"][i]):#x}","len":{int(cols["len"][i])},'
                         f'"direction":"{direction[i]}","device":{q(device[i])}')
            if handled[i] == "userspace":
                a.append(f'"userspace_reason":{q(_kvm_exit_label(names, cols["userspace_reason"][i]))}')
                if cols["service_ns"][i] >= 0:
                    a.append(f'"service_ns":{int(cols["service_ns"][i])}')
            out.append(f'"name":{nm},"cat":"kvm_exit","args":{{{",".join(a)}}}')
        return out

    src = _Source("hardware_exits", ts, dur.astype(np.int64), x["pid"].to_numpy(np.int64),
                  x["tid"].to_numpy(np.int64), body)
    return src, x


def _userspace_exits(trace, q: _Names) -> tuple[_Source, pd.DataFrame]:
    r = trace.df_userspace_exits()
    ts = r["ts_ns"].to_numpy(np.int64)
    run = r["run_ts_ns"].to_numpy(np.int64)
    dur = np.where(run >= 0, run - ts, 0)
    names = trace.names
    code = r["code"].to_numpy()
    known = r["fields_known"].to_numpy()
    port, size, count = r["port"].to_numpy(), r["size"].to_numpy(), r["count"].to_numpy()
    gpa, length = r["gpa"].to_numpy(), r["len"].to_numpy()
    service = r["service_ns"].to_numpy()
    direction = r["direction"].astype(str).to_numpy()
    device = r["device"].astype(str).to_numpy()
    pid, tid = r["pid"].to_numpy(np.int64), r["tid"].to_numpy(np.int64)
    values = r["values"].astype(str).to_numpy()  # the other members' decoded values
    name_cache: dict[tuple, str] = {}
    io, mm = int(KvmExit.IO), int(KvmExit.MMIO)

    def name_of(i: int) -> str:
        c, k = int(code[i]), bool(known[i])
        key = (c, k, int(port[i]) if c == io else int(gpa[i]) if c == mm else 0, direction[i], device[i])
        nm = name_cache.get(key)
        if nm is None:
            label = f"VMM: {_kvm_exit_label(names, c)}"
            if k and c == io:
                label += f" port {key[2]:#x} {direction[i]} ({device[i]})"
            elif k and c == mm:
                label += f" {key[2]:#x} {direction[i]} ({device[i]})"
            nm = name_cache[key] = q(label)
        return nm

    def body(rows: np.ndarray) -> list[str]:
        out = []
        for i in rows.tolist():
            c = int(code[i])
            member = kvm_exit_info(c).member
            a = [f'"kvm_run":{q(member) if member else _NO_MEMBER}']
            if not known[i]:
                if member:
                    a.append('"fields":"not recorded"')
            elif c == io:
                a.append(f'"direction":"{"out" if direction[i] == "write" else "in"}","size":{int(size[i])},'
                         f'"port":"{int(port[i]):#x}","count":{int(count[i])},"device":{q(device[i])}')
            elif c == mm:
                a.append(f'"phys_addr":"{int(gpa[i]):#x}","len":{int(length[i])},'
                         f'"is_write":{"true" if direction[i] == "write" else "false"},"device":{q(device[i])}')
            elif values[i]:
                a.append(f'"values":{q(values[i])}')
            if service[i] >= 0:
                a.append(f'"service_ns":{int(service[i])}')
            else:
                a.append('"next_KVM_RUN":"none traced (recording ended or event lost)"')
            out.append(f'"name":{name_of(i)},"cat":"userspace_exit","args":{{{",".join(a)}}}')
        return out

    return _Source("userspace_exits", ts, dur.astype(np.int64), pid, tid, body), r


def _in_kernel(trace, q: _Names) -> list[_Source]:
    """kvm_pio / kvm_mmio accesses the kernel answered, as instants."""
    values = trace.values_captured
    out = []
    for space, df in (("pio", trace.df_pio()), ("mmio", trace.df_mmio())):
        d = df[~df["userspace"].to_numpy()]
        if d.empty:
            continue
        addr = (d["port"] if space == "pio" else d["gpa"]).to_numpy()
        size = (d["size"] if space == "pio" else d["len"]).to_numpy()
        count = d["count"].to_numpy() if space == "pio" else None
        device = d["device"].astype(str).to_numpy()
        direction = d["direction"].astype(str).to_numpy()
        value = d["value"].to_numpy()
        cache: dict[tuple, str] = {}

        def body(rows: np.ndarray, addr=addr, size=size, count=count, device=device, direction=direction,
                 value=value, cache=cache, space=space) -> list[str]:
            res = []
            for i in rows.tolist():
                key = (device[i], int(addr[i]), direction[i])
                nm = cache.get(key)
                if nm is None:
                    nm = cache[key] = q(f"{key[0]} {key[1]:#x} {key[2]}")
                if space == "pio":
                    a = f'"port":"{key[1]:#x}","size":{int(size[i])},"count":{int(count[i])}'
                else:
                    a = f'"gpa":"{key[1]:#x}","len":{int(size[i])}'
                a += f',"direction":"{key[2]}","device":{q(key[0])},"handled":"kernel"'
                if values:
                    a += f',"value":"{int(value[i]):#x}"'
                res.append(f'"name":{nm},"cat":"kvm_{space}","args":{{{a}}}')
            return res

        out.append(_Source("in_kernel_accesses", d["ts_ns"].to_numpy(np.int64), np.full(len(d), -1, np.int64),
                           d["pid"].to_numpy(np.int64), d["tid"].to_numpy(np.int64), body))
    return out


def _launch(trace, q: _Names, guest_pid: Callable[[int], int]) -> list[_Source]:
    """The VMM's KVM ioctls and the launch steps, on one track per guest (tid set later)."""
    ev = trace.events
    io = ev[(ev["kind"] == EventKind.IOCTL).to_numpy()]
    if io.empty and not trace.launched:
        return []
    out = []
    if not io.empty:
        reason, port, err = io["reason"].to_numpy(), io["port"].to_numpy(), io["err"].to_numpy()
        gpa, info1, rip = io["gpa"].to_numpy(), io["info1"].to_numpy(), io["rip"].to_numpy()
        slot, flags, itid = io["size"].to_numpy(), io["count"].to_numpy(), io["tid"].to_numpy()

        def body(rows: np.ndarray) -> list[str]:
            res = []
            for i in rows.tolist():
                cmd = int(reason[i])
                a = f'"tid":{int(itid[i])},"fd":{int(port[i])},"result":{int(err[i])}'
                if cmd in _MEM_REGION:
                    a += (f',"slot":{int(slot[i])},"flags":"{int(flags[i]):#x}",'
                          f'"guest_phys_addr":"{int(gpa[i]):#x}","memory_size":"{int(info1[i]):#x}",'
                          f'"userspace_addr":"{int(rip[i]):#x}"')
                elif cmd == KvmIoctl.CREATE_VCPU:
                    a += f',"vcpu_id":{int(gpa[i])}'
                else:
                    a += f',"arg":"{int(gpa[i]):#x}"'
                res.append(f'"name":{q(ioctl_name(cmd))},"cat":"kvm_ioctl","args":{{{a}}}')
            return res

        pids = np.array([guest_pid(int(p)) for p in io["pid"].to_numpy()], dtype=np.int64)
        out.append(_Source("ioctls", io["ts_ns"].to_numpy(np.int64), io["info2"].to_numpy(np.int64), pids,
                           np.zeros(len(io), np.int64), body))
    steps = trace.df_lifecycle()
    steps = steps[~steps["step"].astype(str).str.startswith("KVM_")]
    if not steps.empty:
        step, detail, stid = steps["step"].astype(str).to_numpy(), steps["detail"].to_numpy(), steps["tid"].to_numpy()

        def body_steps(rows: np.ndarray) -> list[str]:
            res = []
            for i in rows.tolist():
                a = f'"tid":{int(stid[i])}' if stid[i] else ""
                if isinstance(detail[i], str) and detail[i]:
                    a += ("," if a else "") + f'"detail":{q(detail[i])}'
                res.append(f'"name":{q(step[i])},"cat":"lifecycle","args":{{{a}}}')
            return res

        d = steps["duration_ns"].to_numpy(np.int64)
        pids = np.array([guest_pid(-1)] * len(steps), dtype=np.int64)
        out.append(_Source("lifecycle", steps["ts_ns"].to_numpy(np.int64), np.where(d >= 0, d, -1), pids,
                           np.zeros(len(steps), np.int64), body_steps))
    return out
