"""Live counts for `kvmtrace top` and `kvmtrace serve`: counts mode without a file.

The probes aggregate in the kernel (record --mode counts); a LiveCounter
reads the cumulative counts when asked and turns them into the same
aggregate rows a counts-mode trace holds, so the report's analyses compute
the tables. Guests are traced by domain; with ``all_domains`` the running
domains are looked up again at every refresh, so guests started later join.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kvmtrace.record.domain import GuestProcess, connect, resolve, running_domains
from kvmtrace.kernel.events import EVENT_DTYPE, PADDING
from kvmtrace.record.session import RecordOptions, Session

RESCAN_SECONDS = 5.0


def rows_frame(rows: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame({n: rows[n] for n in EVENT_DTYPE.names if n not in PADDING})
    df.index.name = "event"
    return df


@dataclass
class Snapshot:
    """Counts over one interval and since the start, per domain."""

    t: float  # seconds since start
    interval_s: float
    delta: pd.DataFrame  # aggregate rows counted during the interval
    total: pd.DataFrame  # aggregate rows counted since the start
    domains: dict[int, str]  # pid -> domain name
    vcpus: dict[int, int]  # tid -> vcpu index


def vcpu_seconds(rows: pd.DataFrame, pid: int, vcpus: dict[int, int]) -> list[tuple[int | None, int, str, float]]:
    """(vcpu, tid, state, seconds) of the VCPU_TIME rows of VMM ``pid``: every
    state of every vCPU thread (0.0 where it spent none), by vcpu."""
    from kvmtrace.kernel.events import AGGREGATE, EventKind, VcpuState

    r = rows[(rows["kind"] == (EventKind.VCPU_TIME | AGGREGATE)) & (rows["pid"] == pid)]
    ns = r.groupby(["tid", "op"])["value"].sum().to_dict() if len(r) else {}
    out = []
    for tid in sorted({int(t) for t, _ in ns}, key=lambda t: (vcpus.get(t, 1 << 30), t)):
        for s in VcpuState:
            out.append((vcpus.get(tid), tid, s.name.lower(), int(ns.get((tid, int(s)), 0)) / 1e9))
    return out


class LiveCounter:
    """Counts-mode probes on one domain or all; read with :meth:`sample`."""

    def __init__(self, domain: str | None, uri: str, all_domains: bool = False):
        self.domain = domain
        self.uri = uri
        self.all_domains = all_domains
        self.session = Session(RecordOptions(domain=domain, all_domains=all_domains, uri=uri, mode="counts",
                                             progress_interval=0), log=io.StringIO())
        self.conn = None
        self._last_rescan = 0.0
        self._start = self._last = time.monotonic()
        self._prev: np.ndarray | None = None

    def start(self) -> LiveCounter:
        s = self.session
        s.preflight()
        self.conn = connect(self.uri)
        guests = running_domains(self.conn) if self.all_domains else [resolve(self.conn, self.domain)]
        s.attach()
        for g in guests:
            s.trace(g)
        self._start = self._last = self._last_rescan = time.monotonic()
        return self

    def _rescan(self) -> None:
        known = {g.uuid for g in self.session.guests}
        for g in running_domains(self.conn):
            if g.uuid not in known:
                self.session.trace(g)

    @property
    def guests(self) -> list[GuestProcess]:
        return self.session.guests

    def cumulative(self) -> pd.DataFrame:
        """Every count since the start, as aggregate rows."""
        from kvmtrace.kernel.probe import CountsDelta

        now = time.monotonic_ns()
        keys, totals = self.session.probes.read_counts()
        vkeys, vtotals = self.session.probes.read_vcpu_time(now)
        keys, totals = np.concatenate([keys, vkeys]), np.concatenate([totals, vtotals])
        return rows_frame(CountsDelta().rows(keys, totals, now))

    def sample(self) -> Snapshot:
        now = time.monotonic()
        if self.all_domains and now - self._last_rescan >= RESCAN_SECONDS:
            self._rescan()
            self._last_rescan = now
        total = self.cumulative()
        delta = total.copy()
        if self._prev is not None and len(total):
            key_cols = [c for c in total.columns if c not in ("ts_ns", "value")]
            prev = self._prev.set_index(key_cols)["value"]
            before = prev.reindex(pd.MultiIndex.from_frame(total[key_cols])).fillna(0).to_numpy(np.uint64)
            now_v = total["value"].to_numpy(np.uint64)
            delta["value"] = np.where(now_v > before, now_v - before, 0).astype(np.uint64)
            delta = delta[delta["value"] > 0]
        self._prev = total
        interval = now - self._last
        self._last = now
        vcpus = {tid: v for g in self.guests for v, tid in g.vcpu_threads.items()}
        return Snapshot(now - self._start, interval, delta, total, {g.pid: g.name for g in self.guests}, vcpus)

    def close(self) -> None:
        probes = self.session.probes
        if probes is not None and probes.bpf is not None:
            probes.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
