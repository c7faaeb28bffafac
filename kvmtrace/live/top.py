"""`kvmtrace top`: live exit rates per reason, device and vCPU (kvm_stat's habits).

Refreshes every interval on a terminal; ``--batch`` prints one snapshot and
exits; ``--log FILE [--csv]`` appends every interval to a file, for running
as a service. Counting happens in the kernel (counts mode).
"""

from __future__ import annotations

import csv
import io
import sys
import time
from typing import TextIO

import numpy as np
import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from kvmtrace.analysis.handlers import handler_of
from kvmtrace.analysis.summary import hardware_exits, mmio, port_io, userspace_exits, weighted
from kvmtrace.kernel.events import EventKind
from kvmtrace.tables.exits import ExitNames
from kvmtrace.live.counter import LiveCounter, Snapshot, vcpu_seconds
from kvmtrace.live.serve import guest_parts

NAMES = ExitNames.builtin()
COLUMNS = ["time_s", "domain", "dimension", "key", "rate", "total"]
DIMENSIONS = ["userspace exit", "exit", "port", "mmio", "vcpu", "vcpu time"]
#: ``vcpu time`` rows (key "vcpu N (tid T) STATE"): rate is the state's share of
#: the interval (seconds per second), total the milliseconds since the start.
#: Where kvm_exit/kvm_entry fire (VMX/SVM) STATE is also in_guest and
#: exit_handling, the two parts of guest.
VCPU_TIME = "vcpu time"


class _DeviceNames:
    """Each live guest's device names, QEMU's map read again when a port or
    page it does not name shows up (record.mapwatch; nothing is written)."""

    def __init__(self, live: LiveCounter):
        from kvmtrace.record.mapwatch import MapWatch

        self.live = live
        self.watch = MapWatch(live.guests, write=lambda _version: None)

    def update(self, rows: pd.DataFrame) -> dict:
        self.watch.ensure(self.live.guests)
        if len(rows):
            self.watch.observe(rows)
        return {g.pid: self.watch.devices(g.pid) for g in self.live.guests}


def _long(frame: pd.DataFrame, dimension: str, keyfn, domain: str) -> list[dict]:
    return [{"domain": domain, "dimension": dimension, "key": keyfn(r), "count": int(r["count"])}
            for r in frame.to_dict("records")]


def _table(rows: pd.DataFrame, domains: dict[int, str], vcpus: dict[int, int], devmaps) -> pd.DataFrame:
    """Long form counts: domain, dimension, key, count."""
    out: list[dict] = []
    rows = weighted(rows)
    for pid, name in domains.items():
        r = rows[rows["pid"] == pid]
        devmap = devmaps.get(pid)
        out += _long(userspace_exits(r, NAMES, 1.0), "userspace exit", lambda x: x["reason"], name)
        out += _long(hardware_exits(r, NAMES, 1.0), "exit", lambda x: f"{x['isa']} {x['reason']}", name)

        def where(x, region, address):
            # a live guest ran before the probes: deduced (analysis.handlers.DEDUCTION)
            return handler_of(region, bool(x["userspace"]), x["direction"] == "write", address)

        def port_key(x):
            dev = devmap.port(int(x["port"])) if devmap else None
            return f"{x['port']:#06x} {x['direction']} ({dev.name if dev else '?'}, {where(x, dev, int(x['port']))})"

        def mmio_key(x):
            dev = devmap.mmio(int(x["gpa"])) if devmap else None
            return f"{x['gpa']:#x} {x['direction']} ({dev.name if dev else '?'}, {where(x, dev, int(x['gpa']))})"

        out += _long(port_io(r), "port", port_key, name)
        out += _long(mmio(r), "mmio", mmio_key, name)
        u = r[(r["k"] == EventKind.USERSPACE_EXIT) & (r["err"] >= 0)]
        for tid, n in u.groupby("tid")["w"].sum().items():
            out.append({"domain": name, "dimension": "vcpu", "key": f"vcpu {vcpus.get(int(tid), '?')} (tid {tid})",
                        "count": int(n)})
        for vcpu, tid, state, secs in vcpu_seconds(r, pid, vcpus) + guest_parts(r, pid, vcpus):
            out.append({"domain": name, "dimension": VCPU_TIME,
                        "key": f"vcpu {'?' if vcpu is None else vcpu} (tid {tid}) {state}", "count": secs * 1e3})
    return pd.DataFrame(out, columns=["domain", "dimension", "key", "count"])


def snapshot_frame(snap: Snapshot, devmaps) -> pd.DataFrame:
    """One interval as rows: time_s, domain, dimension, key, rate (/s), total."""
    total = _table(snap.total, snap.domains, snap.vcpus, devmaps)
    delta = _table(snap.delta, snap.domains, snap.vcpus, devmaps)
    keys = ["domain", "dimension", "key"]
    df = total.merge(delta, on=keys, how="left", suffixes=("_total", "_delta")).fillna({"count_delta": 0})
    df["rate"] = df["count_delta"] / snap.interval_s if snap.interval_s > 0 else np.nan
    vt = (df["dimension"] == VCPU_TIME).to_numpy()
    df.loc[vt, "rate"] = df.loc[vt, "rate"] / 1e3  # ms per second -> the state's share
    df["total"] = df["count_total"].round().astype("int64")
    df["time_s"] = round(snap.t, 3)
    df["dimension"] = pd.Categorical(df["dimension"], categories=DIMENSIONS, ordered=True)
    return df[COLUMNS].sort_values(["domain", "dimension", "rate"], ascending=[True, True, False], ignore_index=True)


def render(df: pd.DataFrame, snap: Snapshot, width: int = 80) -> str:
    buf = io.StringIO()
    con = Console(file=buf, width=width, no_color=True, highlight=False)
    n_exits = df.loc[df["dimension"] == "userspace exit", "rate"].sum()
    con.print(f"kvmtrace top - {time.strftime('%H:%M:%S')}, every {snap.interval_s:.1f} s, "
              f"userspace exits {n_exits:,.0f}/s")
    con.print(f"domains: {', '.join(sorted(snap.domains.values())) or 'none running'}")
    for (domain, dimension), part in df.groupby(["domain", "dimension"], sort=False, observed=True):
        if dimension == VCPU_TIME:
            con.print(_vcpu_time_table(domain, part))
            continue
        t = Table(title=f"{domain}: {dimension}", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
        t.add_column(dimension, overflow="fold")
        t.add_column("/s", justify="right", no_wrap=True)
        t.add_column("total", justify="right", no_wrap=True)
        for r in part.head(12).to_dict("records"):
            t.add_row(str(r["key"]), f"{r['rate']:,.0f}", f"{r['total']:,}")
        con.print(t)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def _vcpu_time_table(domain: str, part: pd.DataFrame) -> Table:
    """One row per vCPU, one column per state: its share of the interval, in %
    (and guest's two parts where a vCPU has them; "-" on the others)."""
    from kvmtrace.analysis.vcpu_time import GUEST_PARTS, STATES

    t = Table(title=f"{domain}: where each vCPU's time went, % of the interval", box=box.SIMPLE_HEAD,
              title_justify="left", pad_edge=False)
    t.add_column("vcpu", overflow="fold")
    share: dict[str, dict[str, float]] = {}
    for r in part.to_dict("records"):
        who, state = str(r["key"]).rsplit(" ", 1)
        share.setdefault(who, {})[state] = r["rate"]
    parts = [p for p in GUEST_PARTS if any(p in by_state for by_state in share.values())]
    for s in STATES + tuple(parts):
        t.add_column(s.replace("_", " "), justify="right", no_wrap=True)
    for who, by_state in share.items():
        t.add_row(who, *(f"{100 * by_state.get(s, 0.0):.0f}" for s in STATES),
                  *(f"{100 * by_state[p]:.0f}" if p in by_state else "-" for p in parts))
    return t


def run_top(domain: str | None, uri: str, all_domains: bool, interval: float, batch: bool,
            iterations: int | None, log_path: str | None, as_csv: bool, out: TextIO = sys.stdout) -> int:
    from kvmtrace.record.session import _StopFlag

    with LiveCounter(domain, uri, all_domains) as live:
        # Said once every guest is traced (as record's "recording" and serve's "serving metrics"):
        # a script may start the guest's work from here on and have all of it counted.
        print(f"kvmtrace: counting {', '.join(g.name for g in live.guests) or 'no domain yet'} "
              f"every {interval:g} s; Ctrl-C stops", file=sys.stderr, flush=True)
        names = _DeviceNames(live)
        logf = open(log_path, "a", newline="") if log_path else None
        writer = csv.writer(logf) if logf and as_csv else None
        if writer and logf.tell() == 0:
            writer.writerow(COLUMNS)
        n = 0
        try:
            with _StopFlag() as stop:
                live.sample()
                while not stop.reason:
                    deadline = time.monotonic() + interval
                    while time.monotonic() < deadline and not stop.reason:
                        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                    snap = live.sample()
                    df = snapshot_frame(snap, names.update(snap.delta))
                    n += 1
                    if logf:
                        if writer:
                            writer.writerows(df.itertuples(index=False))
                        else:
                            logf.write(render(df, snap))
                        logf.flush()
                    if batch or not logf:
                        text = render(df, snap)
                        if not batch and out.isatty():
                            out.write("\x1b[H\x1b[2J")  # clear, as top does
                        out.write(text)
                        out.flush()
                    if batch or (iterations is not None and n >= iterations):
                        break
        finally:
            if logf:
                logf.close()
    return 0
