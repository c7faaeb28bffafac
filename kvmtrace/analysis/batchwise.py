"""`kvmtrace report` batch by batch: the report's tables in memory bounded by a chunk, not by the trace.

A trace's events arrive in file order, a record batch at a time
(:meth:`ReportTables.add`). They are gathered into chunks of about
``chunk_events``; of each chunk, every thread's events are taken in thread
order (summary.ThreadOrder: time, ties in file order) and split at a *safe
cut*: a place where no pairing of the report joins an event before it to one
after it. The part before the cuts is analysed by the very functions the
in-memory report uses (summary's tables, pairing and service times,
runloop's correlate and unpaired) and reduced to counts and per-group
duration samples; the rest is carried into the next chunk. Since every
pairing is between neighbours on one thread, and no pair straddles a cut,
the sum of the parts is the analysis of the whole: every count is the same,
and the percentiles are taken over the same samples (kept per group as
uint32 or int64 ns: 4 bytes a userspace exit, not 76 bytes an event).

What a cut must not split, on one thread (the pairings of summary and
runloop):

* an MMIO "unsatisfied-read" and the next MMIO event (its completing read);
* among port accesses, MMIO accesses and userspace IO/MMIO exits with their
  kvm_run fields: an exit and the access just before it (a write, or an
  MMIO exit) or just after it (a port read the VMM answers);
* among userspace exits and KVM_RUN calls: an exit and the KVM_RUN after it
  (both with every userspace exit, as unpaired counts, and with the real
  ones, errno >= 0, as service times pair them);
* a kvm_exit and what follows until the thread's next kvm_exit: once a
  thread has had a kvm_exit, it is cut only just before one.

Where the next event of one of these sequences is not yet read, the cut is
not made there. Time order: events of a thread may arrive out of order (a
thread moving between CPUs), so only events no later event can precede are
cut off: with ``future_min``, the earliest timestamp of every batch still
to come (the caller's first pass over the timestamps), those with ``ts_ns
<= future_min`` are a prefix of every thread's final order, ties included.

Threads before their first kvm_exit: the whole-trace analysis counts their
userspace exits and accesses as "without exit" only if the thread has a
kvm_exit somewhere; such parts are counted aside per thread and added when
the thread's first kvm_exit comes.

Per process (pid): every table is kept per pid as well, for the report's
per-domain counts and ``--domain``.

Two tables need no cut. The userspace exits' kvm_run member values
(analysis.runfields: ``details``) pair nothing: each batch's are counted as
it comes, with the union words (rip, info1, info2, value) that no chunk
keeps. The per-vCPU counts (analysis.vcpus) are counted per piece, their
MMIO accesses less the completions of unsatisfied reads, a pairing no cut
splits (above).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np
import pandas as pd

from kvmtrace.kernel.events import RUN_UNION_COLUMNS, EventFlag, EventKind, MmioOp
from kvmtrace.tables.exits import ExitNames, Isa, KvmExit, kvm_exit_info
from kvmtrace.analysis.batchparts import PidParts, concat, io_merge, merge_samples, regroup
from kvmtrace.analysis.latency import latency_stats_of_samples
from kvmtrace.analysis.rates import DIMENSION_DTYPE, counts, keyed, windows
from kvmtrace.analysis.runfields import detail_groups, details_of, merge_detail_groups
from kvmtrace.analysis.runloop import DIRECTIONS, ISAS, UNPAIRED_KEYS, correlate, unpaired
from kvmtrace.analysis.summary import (EINTR, Summary, ThreadOrder, dense_codes, group_codes, hardware_exits,
                                       mmio, mmio_completions, pair_userspace, port_io, service_times,
                                       userspace_exits)
from kvmtrace.analysis.vcpus import merge_thread_counts, thread_counts, vcpu_rows

__all__ = ["CHUNK_EVENTS", "ReportTables"]

#: Events analysed at a time: the memory of the report is about this many
#: events' columns and temporaries (~150 MB), whatever the trace's length.
CHUNK_EVENTS = 1 << 21
#: A chunk's cut is looked for among each thread's last this many events first.
CUT_WINDOW = 1 << 14

_EXIT = int(EventKind.EXIT)
_PIO = int(EventKind.PIO)
_MMIO = int(EventKind.MMIO)
_UEXIT = int(EventKind.USERSPACE_EXIT)
_RUN = int(EventKind.RUN)
_FIELDS = int(EventFlag.RUN_FIELDS)
_DETAILED = int(EventFlag.RUN_FIELDS | EventFlag.RUN_UNION)
#: Columns only the userspace exits' details read (their kvm_run union words):
#: counted batch by batch in add(), not kept in a chunk.
DETAIL_ONLY_COLUMNS = tuple(c for c in RUN_UNION_COLUMNS if c != "gpa")


def _prev_of(member: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """For each position: the last position before it (same thread) where ``member``, else -1."""
    n = len(member)
    idx = np.where(member, np.arange(n), -1)
    acc = np.maximum.accumulate(idx) if n else idx
    prev = np.full(n, -1, dtype=np.int64)
    prev[1:] = acc[:-1]
    ok = prev >= 0
    prev[ok & (thr[np.maximum(prev, 0)] != thr)] = -1
    return prev


def _next_of(member: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """For each position: the first position at or after it (same thread) where ``member``, else -1."""
    n = len(member)
    idx = np.where(member, np.arange(n), n)
    nxt = np.minimum.accumulate(idx[::-1])[::-1] if n else idx
    bad = (nxt >= n)
    bad[~bad] = thr[nxt[~bad]] != thr[~bad]
    return np.where(bad, -1, nxt)


class _Piece:
    """A part of a chunk cut at safe places: its events as a frame, in file order."""

    def __init__(self, cols: Mapping[str, np.ndarray]):
        self.ev = pd.DataFrame(dict(cols), copy=False)
        self.order = ThreadOrder.of(self.ev)
        self.completions = mmio_completions(self.ev, self.order)


class ReportTables:
    """The report's tables of a trace fed batch by batch (see the module doc).

    ``names``: the trace's ExitNames; ``device_map``: its DeviceMap (names
    of ports and addresses). Feed :meth:`add` every batch in file order,
    then call :meth:`finish` once; then :meth:`summary`, :meth:`vmm_service`,
    :meth:`exit_handling`, :meth:`unpaired`, :meth:`exit_details`,
    :meth:`vcpu_counts`, :meth:`events` and :meth:`ts_range` answer for the
    whole trace or one pid. A batch with userspace exits carrying kvm_run
    union words must hold the union columns (kernel.events.RUN_UNION_COLUMNS).
    """

    def __init__(self, names: ExitNames, device_map, chunk_events: int = CHUNK_EVENTS, io_labels=None):
        self.names = names
        self.device_map = device_map
        self.chunk_events = max(int(chunk_events), 1)
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0
        self._future_min: int | None = None
        self._carry: dict[str, np.ndarray] | None = None
        # (pid, tid) -> [has had a kvm_exit, real userspace exits and accesses before its first one]
        self._threads: dict[tuple[int, int], list] = {}
        self._parts: dict[int, PidParts] = defaultdict(PidParts)
        self.chunks = 0
        self.max_carry = 0  # most events carried from one chunk to the next
        self._rates: dict | None = None
        self.io_labels = io_labels  # analysis.handlers.LabelledIo: rows by device and handler

    def gather_rates(self, vcpu_threads: dict[int, int], start_ns: int, window_s: float | None,
                     trace_has_exit: bool) -> None:
        """Also gather compare's rate tables (analysis.rates.counts, and windows of ``window_s``
        from ``start_ns``); ``trace_has_exit``: whether any kvm_exit is in the trace (the vcpu
        dimension counts hardware exits then, else userspace exits, as rates.keyed decides)."""
        self._rates = {"vcpu_threads": vcpu_threads, "start_ns": start_ns, "window_s": window_s,
                       "has_exit": trace_has_exit}

    # -- feeding --------------------------------------------------------------------------------

    def add(self, cols: Mapping[str, np.ndarray], future_min: int | None) -> None:
        """One batch of events (columns as numpy), in file order; ``future_min``: the
        earliest ts_ns of every later batch (None: there is none)."""
        n = len(next(iter(cols.values()))) if cols else 0
        if n:
            self._details(cols)
            self._pending.append({c: a for c, a in cols.items() if c not in DETAIL_ONLY_COLUMNS})
            self._pending_rows += n
        self._future_min = future_min
        if self._pending_rows >= self.chunk_events:
            self._process(final=False)

    def _details(self, cols: Mapping[str, np.ndarray]) -> None:
        """The batch's userspace exits counted per kvm_run member value, per pid
        (analysis.runfields.detail_groups: no pairing, so no cut is needed)."""
        rows = np.flatnonzero((cols["kind"] == _UEXIT) & (cols["err"] >= 0) & ((cols["flags"] & _DETAILED) != 0))
        if not len(rows):
            return
        missing = [c for c in RUN_UNION_COLUMNS if c not in cols]
        if missing and ((cols["flags"][rows] & int(EventFlag.RUN_UNION)) != 0).any():
            raise ValueError(f"userspace exits with kvm_run union words, fed without {', '.join(missing)}")
        sub = pd.DataFrame({c: cols[c][rows] for c in ("pid", "kind", "flags", "err", "reason", "op", "size", "port",
                                                        *RUN_UNION_COLUMNS) if c in cols}, copy=False)
        pid = sub["pid"].to_numpy()
        pids = np.unique(pid).tolist()
        for p in pids:
            self._parts[int(p)].add_details(detail_groups(sub if len(pids) == 1 else sub[pid == p]))

    def finish(self) -> "ReportTables":
        self._process(final=True)
        return self

    def _process(self, final: bool) -> None:
        parts = ([self._carry] if self._carry is not None else []) + self._pending
        self._pending, self._pending_rows = [], 0
        if not parts:
            return
        buf = {c: np.concatenate([p[c] for p in parts]) if len(parts) > 1 else parts[0][c] for c in parts[0]}
        del parts
        n = len(buf["ts_ns"])
        if final or self._future_min is None:
            done = None
            self._carry = None
        else:
            done = self._done_mask(buf, self._future_min)
            keep = ~done
            self._carry = {c: a[keep] for c, a in buf.items()} if keep.any() else None
            self.max_carry = max(self.max_carry, int(keep.sum()))
            if not done.any():
                return
            if done.all():
                done = None
        piece = buf if done is None else {c: a[done] for c, a in buf.items()}
        del buf
        self.chunks += 1
        if n:
            self._analyse(piece)

    # -- where to cut ----------------------------------------------------------------------------

    def _done_mask(self, buf: dict[str, np.ndarray], future_min: int) -> np.ndarray:
        """Rows of ``buf`` before each thread's last safe cut (see the module doc).

        The cut is looked for among each thread's last CUT_WINDOW events (the
        events before them are then known to be done), and among all of them
        only where none of those is a safe place."""
        order = ThreadOrder(buf["pid"], buf["tid"], buf["ts_ns"])
        pos = order.positions()
        n = len(pos)
        thr = np.zeros(n, dtype=np.int64) if order.thread is None else order.thread[pos].astype(np.int64)
        starts = np.flatnonzero(np.concatenate(([True], thr[1:] != thr[:-1])))
        n_thr = len(order.thread_pid)
        start_t = np.zeros(n_thr, dtype=np.int64)
        end_t = np.zeros(n_thr, dtype=np.int64)
        start_t[thr[starts]] = starts
        end_t[thr[starts]] = np.append(starts[1:], n)
        comp = mmio_completions(pd.DataFrame({c: buf[c] for c in ("kind", "op", "gpa", "pid", "tid", "ts_ns")},
                                             copy=False), order)
        had = np.array([self._threads.get((int(p), int(t)), (False,))[0]
                        for p, t in zip(order.thread_pid, order.thread_tid)], dtype=bool)
        for window in (CUT_WINDOW, None):
            wstart = start_t if window is None else np.maximum(start_t, end_t - window)
            truncated = wstart > start_t
            if truncated.any():
                sel = np.flatnonzero(np.arange(n) >= wstart[thr])
                ex = np.flatnonzero(buf["kind"][pos] == _EXIT)
                ex = ex[ex < wstart[thr[ex]]]
                had_w = had.copy()
                had_w[thr[ex]] = True
            else:
                sel, had_w = np.arange(n), had
            cut, found = self._cuts(buf, pos[sel], sel, thr[sel], truncated, had_w, comp, future_min, start_t)
            if window is None or found[truncated].all():
                break
        done = np.zeros(n, dtype=bool)
        done[pos[np.arange(n) < cut[thr]]] = True
        return done

    def _cuts(self, buf, pos, idx, thr, truncated, had, comp_buf, future_min, start_t):
        """Each thread's last safe cut (a sorted index; its start where none) among the
        sorted positions ``pos`` (indices ``idx``), and whether one was found."""
        k = buf["kind"][pos]
        op = buf["op"][pos]
        eligible = buf["ts_ns"][pos] <= np.uint64(future_min)
        n = len(pos)
        first = np.ones(n, dtype=bool)
        first[1:] = thr[1:] != thr[:-1]
        unsafe = np.zeros(n, dtype=bool)
        cut_off = truncated[thr]  # the thread's events before this window are not looked at

        def pair_risk(member: np.ndarray, prev_bad: np.ndarray, next_bad) -> None:
            """Unsafe where the sequence ``member``'s last element before the cut may
            pair with its first after it: ``prev_bad`` (per position: the element
            before may pair forward) and ``next_bad`` (it may pair with the next one,
            given as a function of the previous and next positions). Where that
            element is before the window, unsafe: it is not looked at."""
            p = _prev_of(member, thr)
            nx = _next_of(member & eligible, thr)
            risky = (p >= 0)
            risky[risky] = prev_bad[p[risky]]
            known = risky & (nx >= 0)
            risky[known] = next_bad(p[known], nx[known])
            unsafe[risky | ((p < 0) & cut_off)] = True

        # MMIO: an unsatisfied read and its completing read.
        is_mmio = k == _MMIO
        gpa = buf["gpa"][pos]
        pair_risk(is_mmio, op == MmioOp.UNSATISFIED_READ,
                  lambda p, x: (op[x] == MmioOp.READ) & (gpa[x] == gpa[p]))
        # Userspace IO/MMIO exits and their accesses.
        reason = buf["reason"][pos]
        err = buf["err"][pos]
        uexit = k == _UEXIT
        real = uexit & (err >= 0)
        io_mm = real & ((reason == KvmExit.IO) | (reason == KvmExit.MMIO)) & ((buf["flags"][pos] & _FIELDS) != 0)
        access = (k == _PIO) | (is_mmio & ~comp_buf[pos])
        forward = io_mm & (reason == KvmExit.IO) & (op == 0)  # a port read: its access comes after it
        backward = io_mm & (((reason == KvmExit.IO) & (op == 1)) | (reason == KvmExit.MMIO))
        pair_risk(io_mm | access, forward | access,
                  lambda p, x: (forward[p] & access[x]) | (access[p] & backward[x]))
        # Userspace exits and the KVM_RUN after them (every exit; the real ones).
        run = k == _RUN
        pair_risk(uexit | run, uexit, lambda p, x: run[x])
        pair_risk(real | run, real, lambda p, x: run[x])
        # kvm_exit: a thread that has had one is cut only just before one.
        is_exit = k == _EXIT
        had_exit = had[thr] | (_prev_of(is_exit, thr) >= 0)
        unsafe |= had_exit & ~is_exit

        safe = np.flatnonzero(eligible & ~first & ~unsafe)
        cut = start_t.copy()
        np.maximum.at(cut, thr[safe], idx[safe])
        found = np.zeros(len(start_t), dtype=bool)
        found[thr[safe]] = True
        return cut, found

    # -- analysing a piece ------------------------------------------------------------------------

    def _analyse(self, cols: dict[str, np.ndarray]) -> None:
        pid = cols["pid"]
        if len(pid) and pid.min() != pid.max():
            codes, pids = dense_codes(pid)
            for i, p in enumerate(pids.tolist()):
                sel = codes == i
                self._analyse_pid(int(p), {c: a[sel] for c, a in cols.items()})
        else:
            self._analyse_pid(int(pid[0]), cols)

    def _analyse_pid(self, pid: int, cols: dict[str, np.ndarray]) -> None:
        piece = _Piece(cols)
        ev, order, comp = piece.ev, piece.order, piece.completions
        parts = self._parts[pid]
        k = cols["kind"]
        ts = cols["ts_ns"]
        parts.events += len(k)
        parts.ts_min = min(parts.ts_min, int(ts.min()))
        parts.ts_max = max(parts.ts_max, int(ts.max()))
        pairing = pair_userspace(ev, comp, order)
        parts.userspace.append(userspace_exits(ev, self.names, 0.0)[["code", "count"]])
        has_exit = bool((k == _EXIT).any())
        if has_exit:
            parts.exits.append(hardware_exits(ev, self.names, 0.0)[["isa", "reason", "code", "flags", "count"]])
        parts.pio.append(port_io(ev, pairing))
        parts.mmio.append(mmio(ev, pairing, comp))
        self.io_labels and self.io_labels.add(pid, ev, pairing, comp)
        merge_thread_counts(parts.threads, thread_counts(ev, comp))
        u = k == _UEXIT
        err = cols["err"][u]
        parts.interrupted += int((err == -EINTR).sum())
        parts.failed += int(((err < 0) & (err != -EINTR)).sum())
        if u.any():
            parts.has_uexit = True
            parts.fields_known |= bool(((cols["flags"][u] & _FIELDS) != 0).any())
        parts.unpaired_io += pairing.unpaired_exits
        self._service(parts, ev, order)
        if has_exit:
            self._handling(parts, ev, order)
        for key, v in unpaired(ev, order).items():
            parts.unpaired[key] += v
        if self._rates is not None:
            self._rate_tables(parts, ev, has_exit)
        self._thread_history(pid, cols, order, comp)

    def _service(self, parts: "PidParts", ev: pd.DataFrame, order: ThreadOrder) -> None:
        """Service time samples per (KVM_EXIT code, device, direction), as Trace._label_exits names them."""
        st = service_times(ev, order)
        if not len(st):
            return
        code = st["code"].to_numpy()
        labels = [""]
        label = np.zeros(len(st), dtype=np.int64)
        for kvm_exit, column, name in ((KvmExit.IO, "port", self.device_map.name_ports),
                                       (KvmExit.MMIO, "gpa", self.device_map.name_gpas)):
            rows = np.flatnonzero(code == kvm_exit)
            if len(rows):
                c, addresses = dense_codes(st[column].to_numpy()[rows])
                label[rows] = c + len(labels)
                labels.extend(np.asarray(name(addresses)).tolist())
        direction = st["direction"].cat.codes.to_numpy().astype(np.int64)
        service = st["service_ns"].to_numpy()
        g, (gcode, glabel, gdir) = group_codes([code.astype(np.int64), label, direction])
        for i, (c, lab, d) in enumerate(zip(gcode.tolist(), glabel.tolist(), gdir.tolist())):
            parts.add_samples(parts.service, (c, labels[lab], d), service[g == i])

    def _handling(self, parts: "PidParts", ev: pd.DataFrame, order: ThreadOrder) -> None:
        """Exit handling samples per (ISA index, basic exit code), as correlate gives them."""
        cor = correlate(ev, order)
        if not len(cor):
            return
        isa = cor["isa"].cat.codes.to_numpy().astype(np.int64)
        code = cor["code"].to_numpy().astype(np.int64)
        handling = cor["handling_ns"].to_numpy()
        g, (gisa, gcode) = group_codes([isa, code])
        for i, (a, c) in enumerate(zip(gisa.tolist(), gcode.tolist())):
            parts.add_samples(parts.handling, (a, c), handling[g == i])

    def _rate_tables(self, parts: "PidParts", ev: pd.DataFrame, has_exit: bool) -> None:
        r = self._rates
        kd = keyed(ev, self.names, self.device_map, r["vcpu_threads"])
        if r["has_exit"] and not has_exit:  # this piece's vcpu rows would count userspace exits
            kd = kd[(kd["dimension"] != "vcpu").to_numpy()]
        kd = kd.assign(key=kd["key"].astype(str))
        parts.counts.append(kd.groupby(["dimension", "key"], observed=True)["w"].sum().reset_index())
        if r["window_s"]:
            parts.windows.append(windows(kd, r["start_ns"], r["window_s"]))

    def _thread_history(self, pid: int, cols: dict[str, np.ndarray], order: ThreadOrder,
                        comp: np.ndarray) -> None:
        """Each thread's kvm_exit state, and its exits and accesses before its first kvm_exit."""
        k = cols["kind"]
        thread = np.zeros(len(k), dtype=np.int64) if order.thread is None else order.thread.astype(np.int64)
        n_thr = len(order.thread_tid)
        exits = np.bincount(thread[k == _EXIT], minlength=n_thr)
        stray_u = np.bincount(thread[(k == _UEXIT) & (cols["err"] >= 0)], minlength=n_thr)
        stray_a = np.bincount(thread[(k == _PIO) | ((k == _MMIO) & ~comp)], minlength=n_thr)
        for t, tid in enumerate(order.thread_tid.tolist()):
            state = self._threads.setdefault((pid, tid), [False, 0, 0])
            if exits[t]:
                state[0] = True
            elif not state[0]:
                state[1] += int(stray_u[t])
                state[2] += int(stray_a[t])

    # -- answers -------------------------------------------------------------------------------------

    def pids(self) -> list[int]:
        return sorted(self._parts)

    def _of(self, pid: int | None) -> list["PidParts"]:
        return [self._parts[p] for p in self.pids()] if pid is None else [self._parts[pid]] * (pid in self._parts)

    def events(self, pid: int | None = None) -> int:
        return sum(p.events for p in self._of(pid))

    def ts_range(self, pid: int | None = None) -> tuple[int, int] | None:
        parts = [p for p in self._of(pid) if p.events]
        if not parts:
            return None
        return min(p.ts_min for p in parts), max(p.ts_max for p in parts)

    def summary(self, duration_s: float, pid: int | None = None) -> Summary:
        parts = self._of(pid)
        names = self.names

        def rate(count):
            return count / duration_s if duration_s > 0 else float("nan")

        ue = concat([f for p in parts for f in p.userspace])
        rows = []
        if len(ue):
            per = ue.groupby("code", sort=True)["count"].sum()
            for code, n in zip(per.index.tolist(), per.tolist()):
                info = kvm_exit_info(code)
                rows.append({"reason": names.kvm_exit(code), "code": code, "member": info.member or "",
                             "fields": ",".join(info.fields), "count": n, "rate": rate(n)})
        cols = ["reason", "code", "member", "fields", "count", "rate"]
        ue = pd.DataFrame(rows, columns=cols).sort_values(["count", "code"], ascending=[False, True],
                                                          ignore_index=True)
        hw_cols = ["isa", "reason", "code", "flags", "count", "rate"]
        hw = concat([f for p in parts for f in p.exits])
        if len(hw):
            hw = hw.groupby(["isa", "reason", "code", "flags"], as_index=False, observed=True)["count"].sum()
            hw["rate"] = hw["count"] / duration_s if duration_s > 0 else float("nan")
            hw = hw[hw_cols].sort_values(["count", "code"], ascending=[False, True], ignore_index=True)
        else:
            hw = pd.DataFrame(columns=hw_cols)
        has_u = any(p.has_uexit for p in parts)
        return Summary(
            duration_s=duration_s,
            userspace_exits=ue,
            exits=hw,
            pio=io_merge([f for p in parts for f in p.pio], ["port", "direction", "size"]),
            mmio=io_merge([f for p in parts for f in p.mmio], ["gpa", "direction", "len"]),
            interrupted_runs=sum(p.interrupted for p in parts),
            failed_runs=sum(p.failed for p in parts),
            userspace_fields_known=any(p.fields_known for p in parts) if has_u else True,
            unpaired_userspace_io=sum(p.unpaired_io for p in parts),
        )

    def _pre_exit_strays(self, pid: int | None) -> tuple[int, int]:
        """Userspace exits and accesses before the first kvm_exit of threads that have one."""
        u = a = 0
        for (p, _tid), (had, su, sa) in self._threads.items():
            if had and (pid is None or p == pid):
                u += su
                a += sa
        return u, a

    def unpaired(self, pid: int | None = None) -> dict[str, int]:
        out = dict.fromkeys(UNPAIRED_KEYS, 0)
        for p in self._of(pid):
            for key, v in p.unpaired.items():
                out[key] += v
        u, a = self._pre_exit_strays(pid)
        out["userspace_exit_without_exit"] += u
        out["access_without_exit"] += a
        return out

    def vmm_service(self, by: tuple[str, ...], pid: int | None = None) -> pd.DataFrame:
        """latency_stats of the service frame by ("reason",) or ("reason", "device", "direction")."""
        groups = merge_samples([p.service for p in self._of(pid)])
        keys = list(groups)
        codes = sorted({c for c, _, _ in keys})
        labels = [self.names.kvm_exit(int(c)) for c in codes]
        reason_cats = list(dict.fromkeys(labels))  # as trace._name_codes: in code order, each name once
        reason_of = {c: reason_cats.index(x) for c, x in zip(codes, labels)}
        device_cats = sorted({lab for _, lab, _ in keys})
        device_of = {x: i for i, x in enumerate(device_cats)}
        if tuple(by) == ("reason",):
            key_of = {key: (reason_of[key[0]],) for key in keys}
        elif tuple(by) == ("reason", "device", "direction"):
            key_of = {key: (reason_of[key[0]], device_of[key[1]], key[2]) for key in keys}
        else:
            raise ValueError(f"vmm_service by {by} is not gathered batch by batch")
        out_keys, samples, unpaired_n = regroup(groups, key_of)
        frame = {"reason": pd.Categorical.from_codes([k[0] for k in out_keys], categories=pd.Index(reason_cats))}
        if len(by) > 1:
            frame["device"] = pd.Categorical.from_codes([k[1] for k in out_keys], categories=pd.Index(device_cats))
            frame["direction"] = pd.Categorical.from_codes([k[2] for k in out_keys], categories=list(DIRECTIONS))
        return latency_stats_of_samples(pd.DataFrame(frame), samples, unpaired_n)

    def exit_handling(self, pid: int | None = None) -> pd.DataFrame:
        """latency_stats of correlate's handling_ns by ("isa", "reason"), as analysis.latency.exit_handling."""
        groups = merge_samples([p.handling for p in self._of(pid)])
        keys = list(groups)
        label = {key: self.names.hw(Isa[ISAS[key[0]]], key[1]) for key in keys}
        cats = sorted(set(label.values()))
        key_of = {key: (key[0], cats.index(label[key])) for key in keys}
        out_keys, samples, unpaired_n = regroup(groups, key_of)
        frame = {"isa": pd.Categorical.from_codes([k[0] for k in out_keys], categories=list(ISAS)),
                 "reason": pd.Categorical.from_codes([k[1] for k in out_keys], categories=cats)}
        return latency_stats_of_samples(pd.DataFrame(frame), samples, unpaired_n)

    def exit_details(self, pid: int | None = None) -> dict[int, list[dict]]:
        """analysis.runfields.exit_details of the trace (or one pid's events)."""
        return details_of(merge_detail_groups([g for p in self._of(pid) for g in p.details]))

    def vcpu_counts(self, domains: list[dict], pid: int | None = None) -> list[dict]:
        """analysis.vcpus.vcpu_counts of the trace (or one pid's events) and ``domains``
        (a recording of single events: its PIO/MMIO counts are per thread)."""
        counts: dict = {}
        for p in self._of(pid):
            merge_thread_counts(counts, p.threads)
        return vcpu_rows(counts, domains)

    def has_rates(self, window_s: float | None) -> bool:
        return self._rates is not None and self._rates["window_s"] == window_s

    def rates(self, pid: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """rates.counts of the trace's keyed exits, and rates.windows (None without window_s)."""
        parts = self._of(pid)
        kd = concat([f for p in parts for f in p.counts])
        if not len(kd):
            kd = pd.DataFrame({"dimension": pd.Series(dtype=DIMENSION_DTYPE), "key": pd.Series(dtype=str),
                               "w": pd.Series(dtype="int64")})
        kd = kd.astype({"dimension": DIMENSION_DTYPE, "key": "category"})
        wins = None
        if self._rates["window_s"]:
            w = concat([f for p in parts for f in p.windows])
            if not len(w):
                w = pd.DataFrame({"window": pd.Series(dtype="int64"), "dimension": pd.Series(dtype=DIMENSION_DTYPE),
                                  "key": pd.Series(dtype=str), "count": pd.Series(dtype="int64")})
            w = w.astype({"dimension": DIMENSION_DTYPE, "key": "category"})
            wins = w.groupby(["window", "dimension", "key"], observed=True)["count"].sum()
            wins = wins.reset_index().astype({"count": "int64"})
        return counts(kd), wins
