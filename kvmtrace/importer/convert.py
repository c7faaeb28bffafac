"""The import itself: the parse loop, the batches it spills, and the trace file written at the end.

:func:`import_text` reads the input once, line by line (:func:`_parse`): the
format's own task pattern first, the common ``kvm_exit`` and ``kvm_entry``
shapes inline, a handler of :mod:`.rows` for the rest.  Memory stays flat:
events go to a temporary file next to the output in batches of
:data:`BATCH_EVENTS`, and are copied into the trace at the end, when the
header (counts, domains, ISA) is known.

Importing this module has no side effects.
"""

from __future__ import annotations

import gc
import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kvmtrace import __version__
from kvmtrace.errors import OutputError, TraceFileError
from kvmtrace.importer.checks import check_isa, domains_of, no_events, process_ids, timestamp_resolution_ns
from kvmtrace.importer.result import ImportResult
from kvmtrace.importer.rows import (
    _ENTRY_K,
    _ENTRY_ROW,
    _EXIT_K,
    _EXIT_ROW,
    _IMMEDIATE,
    _OTHER_ROW,
    _SKIP,
    _h_entry,
    _h_exit,
)
from kvmtrace.importer.shapes import (
    _BARE,
    _ENTRY,
    _EXIT_6X,
    _EXIT_PLUGIN,
    _LOST,
    _PERF,
    _TRACE_CMD_HEADER,
    _TRACEFS,
    _U32,
    _ZEROS,
    _Reason,
)
from kvmtrace.importer.sched import HANDLERS as _HANDLERS
from kvmtrace.importer.sched import candidates, keep_vcpu_rows, kept_counts
from kvmtrace.importer.source import DETECT_LINES, FORMATS, _bounded, _open_text, detect_format
from kvmtrace.kernel.events import EVENT_DTYPE, NO_VCPU, TRACEPOINTS, EventKind
from kvmtrace.tables.exits import Isa, isa_from_names
from kvmtrace.tracefile import TraceWriter

__all__ = ["BATCH_EVENTS", "UNKNOWN_EXAMPLES", "default_output", "import_text"]

#: Events per batch written to the trace file.
BATCH_EVENTS = 65536
#: Unknown lines whose numbers are kept for the message.
UNKNOWN_EXAMPLES = 10

NO_CPU = 0xFFFF_FFFF  # cpu of an event whose line names none (bare lines)

_EVENT_OF_KIND = {kind: event for _system, event, kind in TRACEPOINTS}
_RUN = int(EventKind.RUN)  # named by the line it came from (State.run_by)
_FRAC_SCALE = {n: 10 ** (9 - n) for n in range(10)}


class _State:
    """Counts and the current batch of one import."""

    def __init__(self, isa_override: Isa | None, spill):
        self.isa_override = isa_override
        self.spill = spill
        self.exits: list[tuple] = []
        self.entries: list[tuple] = []
        self.others: list[tuple] = []
        self.n = 0  # events in the current batch
        self.rows_total = 0  # events spilled so far
        self.reasons: dict[str, _Reason] = {}
        self.pending: list[tuple[int, _Reason]] = []  # (event index, reason) the trace's ISA decides
        self.skipped: dict[str, int] = {}
        self.unknown = 0
        self.unknown_examples: list[int] = []
        self.truncated = False
        self.lost = 0
        self.comms: dict[int, str] = {}  # pid -> first task name
        self.threads: dict[tuple[int, int, int], None] = {}  # (pid, tid, vcpu) seen, in order
        self.pid_order: dict[int, None] = {}
        self.kinds = np.zeros(256, dtype=np.int64)
        self.ts_min: int | None = None
        self.ts_max: int | None = None
        self.cpus: int | None = None
        self.lost_marks_without_count = 0  # "[LOST EVENTS]": events lost, how many unknown
        self.raw_clock = False  # whole-number timestamps: a counter, not seconds
        # The KVM_RUN edge (.sched): threads with sys_enter_ioctl lines, those inside a KVM_RUN
        # ioctl, RUN rows per source line, lines read that add no row of their own.
        self.ioctl_tids: set[int] = set()
        self.in_ioctl_run: set[int] = set()
        self.run_by: dict[str, int] = {}
        self.folded: dict[str, int] = {}
        # The scheduler's lines read, and their rows per (tid, kind, op): (count, first ts, last ts).
        self.sched_lines: dict[str, int] = {}
        self.sched_cands: dict[tuple[int, int, int], tuple[int, int, int]] = {}
        self.sched_last_op: dict[int, int] = {}  # tid -> its last switch's op
        self.sched_breaks: dict[int, int] = {}  # tid -> switches out of sequence

    def undecodable(self) -> dict[str, int]:
        return {t: r.count for t, r in sorted(self.reasons.items()) if not r.decodable}

    def flush(self) -> None:
        if not self.n:
            return
        out = np.zeros(self.n, dtype=EVENT_DTYPE)
        out["vcpu"] = NO_VCPU  # events whose tracepoint has no vCPU id
        for rows, dtype, kind in ((self.exits, _EXIT_ROW, _EXIT_K), (self.entries, _ENTRY_ROW, _ENTRY_K),
                                  (self.others, _OTHER_ROW, None)):
            if not rows:
                continue
            a = np.array(rows, dtype=dtype)
            seq = a["seq"]
            for name in dtype.names[1:]:
                out[name][seq] = a[name]
            if kind is not None:
                out["kind"][seq] = kind
        self.rows_total += self.n
        self.n = 0
        # Emptied in place: the parse loop holds their append methods.
        self.exits.clear()
        self.entries.clear()
        self.others.clear()
        # Sched rows are spilled in order but kept only for vCPU threads, known at the end:
        # the counts, time span and threads below are of the other rows.
        full, out = out, out[candidates(out, self.sched_cands, self.sched_last_op, self.sched_breaks)]
        self._tally(out)
        try:
            full.tofile(self.spill)
        except OSError as e:
            raise OutputError(f"writing the temporary event file failed: {e.strerror}",
                              "free space next to the output file or choose another -o") from e

    def _tally(self, out: np.ndarray) -> None:
        if not len(out):
            return
        self.kinds += np.bincount(out["kind"], minlength=256)
        ts = out["ts_ns"]
        lo, hi = int(ts.min()), int(ts.max())
        self.ts_min = lo if self.ts_min is None else min(self.ts_min, lo)
        self.ts_max = hi if self.ts_max is None else max(self.ts_max, hi)
        # Processes in order of appearance, and each one's threads and vCPUs
        # (hash-based uniques: a batch has few distinct values).
        for p in pd.unique(out["pid"]).tolist():
            self.pid_order.setdefault(p, None)
        codes, threads = pd.factorize((out["pid"].astype(np.uint64) << np.uint64(32)) | out["tid"], sort=False)
        pairs = pd.unique((codes.astype(np.uint64) << np.uint64(32)) | out["vcpu"])
        for t, v in zip(threads[(pairs >> np.uint64(32)).astype(np.int64)].tolist(),
                        (pairs & np.uint64(_U32)).tolist()):
            self.threads.setdefault((t >> 32, t & _U32, v), None)

    def unknown_line(self, lineno: int, line: str) -> None:
        if line[-1:] != "\n":
            self.truncated = True
            return
        self.unknown += 1
        if len(self.unknown_examples) < UNKNOWN_EXAMPLES:
            self.unknown_examples.append(lineno)


def _parse(f, fmt: str, st: _State, auto: bool) -> int:
    """Read every line of ``f`` into ``st``; returns the number of lines.

    The loop is the hot path: one match for the task part, one for the
    event's own text, a few ints; kvm_exit and kvm_entry, nearly every line of
    a kvm trace, are read inline.
    """
    handlers = _HANDLERS
    skipped = st.skipped
    comms = st.comms
    reasons = st.reasons
    exits_append = st.exits.append
    entries_append = st.entries.append
    exit_6x = _EXIT_6X.fullmatch
    exit_plugin = _EXIT_PLUGIN.fullmatch
    zeros = _ZEROS
    entry_match = _ENTRY.fullmatch
    perf = fmt == "perf"
    primary = _PERF.match if perf else _TRACEFS.match if fmt in ("trace-cmd", "ftrace") else None
    scale = _FRAC_SCALE
    ints = _Ints()
    batch = BATCH_EVENTS
    n = st.n  # events in the batch; st.n is kept in step around calls that use it
    lineno = 0
    for lineno, line in enumerate(f, 1):
        m = primary(line) if primary is not None else None
        if m is not None:
            comm, id1, id2, cpu, sec, frac, event = m.groups()
            h = handlers.get(event)
            if h is None:
                if line[-1:] != "\n":
                    st.truncated = True
                    continue
                skipped[event] = skipped.get(event, 0) + 1
                continue
            if perf:  # PID[/TID]
                pid = ints[id1]
                tid = ints[id2] if id2 else pid
            else:  # COMM-TID [(TGID)]
                tid = ints[id1]
                pid = ints[id2] if id2 and id2[0] != "-" else tid
            cpu = ints[cpu] if cpu else NO_CPU
            # Exact nanoseconds from the decimal text, no float on the way.
            if frac:
                ts = int(sec + frac[:9]) * scale[len(frac) if len(frac) < 9 else 9]
            else:
                ts = int(sec)  # a clock that counts (trace_clock counter, x86-tsc): raw
                st.raw_clock = True
            pos = m.end()
        else:
            task = _slow_line(line, lineno, fmt, st, auto)
            if task is None:
                continue
            comm, pid, tid, cpu, ts, event, pos = task
            h = handlers[event]
        if line[-1:] != "\n":
            st.truncated = True  # a last line without its end may be cut anywhere: not trusted
            continue
        if pid not in comms:
            comms[pid] = comm.strip()
        # The common shapes inline; the handler (same result) for the rest.
        if h is _h_exit:
            mm = exit_6x(line, pos)
            if mm is not None:
                vcpu, text, rip, info1, info2, ii, ec = mm.groups()
                vcpu = ints[vcpu]
            else:
                mm = exit_plugin(line, pos)
                if mm is not None:
                    text, rip, info1, info2 = mm.groups()
                    vcpu, ii, ec = NO_VCPU, "0", "0"
            if mm is not None:
                r = reasons.get(text)
                if r is not None and r.final:
                    r.count += 1
                    exits_append((n, ts, tid, pid, cpu, vcpu, r.code, r.isa, int(rip, 16),
                                  0 if info1 in zeros else int(info1, 16), 0 if info2 in zeros else int(info2, 16),
                                  0 if ii in zeros else int(ii, 16), 0 if ec in zeros else int(ec, 16)))
                    n += 1
                    if n >= batch:
                        st.n = n
                        st.flush()
                        n = 0
                    continue
        elif h is _h_entry:
            mm = entry_match(line, pos)
            if mm is not None:
                vcpu, rip, ii, ec, imm = mm.groups()
                entries_append((n, ts, tid, pid, cpu, ints[vcpu], int(rip, 16) if rip else 0,
                                0 if not ii or ii in zeros else int(ii, 16), 0 if not ec or ec in zeros else int(ec, 16),
                                _IMMEDIATE if imm else 0))
                n += 1
                if n >= batch:
                    st.n = n
                    st.flush()
                    n = 0
                continue
        st.n = n
        done = h(line, pos, ts, tid, pid, cpu, st)
        n = st.n
        if done is True:
            if n >= batch:
                st.flush()
                n = 0
        elif done is None:
            st.unknown_line(lineno, line)
        elif done is _SKIP:
            skipped[event] = skipped.get(event, 0) + 1
    st.n = n
    return lineno


class _Ints(dict):
    """Decimal text -> int, remembered: task ids and CPUs repeat on every line."""

    def __missing__(self, text: str) -> int:
        value = self[text] = int(text)
        return value


def _slow_line(line: str, lineno: int, fmt: str, st: _State, auto: bool):
    """A line the format's own pattern does not take: headers, markers, other shapes.

    Returns (comm, pid, tid, cpu, ts, event, pos) for a line of an event
    kvmtrace reads, None otherwise (counted here).
    """
    s = line.strip()
    if not s or s.startswith("#"):
        return None  # ftrace's header, "##### CPU 2 buffer started ####"
    lost = _LOST.search(s)
    if lost is not None and (s.startswith("CPU") or s.startswith("[")):
        count = lost.group(1) or lost.group(2)
        if count is None:
            st.lost_marks_without_count += 1
        else:
            st.lost += int(count)
        return None
    if _TRACE_CMD_HEADER.fullmatch(s):
        if s.startswith("cpus="):
            st.cpus = int(s[5:])
        return None
    if auto:
        for rx, perf in ((_TRACEFS, False), (_PERF, True)):
            m = rx.match(line)
            if m is None:
                continue
            comm, id1, id2, cpu, sec, frac, event = m.groups()
            if event not in _HANDLERS:
                if line[-1:] != "\n":
                    st.truncated = True
                else:
                    st.skipped[event] = st.skipped.get(event, 0) + 1
                return None
            if perf:
                pid = int(id1)
                tid = int(id2) if id2 else pid
            else:
                tid = int(id1)
                pid = int(id2) if id2 and id2[0] != "-" else tid
            return comm, pid, tid, int(cpu) if cpu else NO_CPU, _ns(st, sec, frac), event, m.end()
    if auto or fmt == "bare":
        # Lenient: an event kvmtrace reads with no task in front of it.
        m = _BARE.match(line)
        if m is not None and m.group(3) in _HANDLERS:
            sec, frac, event = m.groups()
            return "", 0, 0, NO_CPU, _ns(st, sec, frac) if sec else 0, event, m.end()
    st.unknown_line(lineno, line)
    return None


def _ns(st: _State, sec: str, frac: str | None) -> int:
    """Exact nanoseconds from a decimal timestamp's text (no float); a whole number is a raw count."""
    if not frac:
        st.raw_clock = True
        return int(sec)
    return int(sec + frac[:9]) * _FRAC_SCALE[min(len(frac), 9)]


def _trace_isa(st: _State, override: Isa | None) -> Isa:
    if override is not None:
        return override
    return isa_from_names(n for r in st.reasons.values() if r.vote is not None for n in (r.vote,) * r.count)


def default_output(path: str | os.PathLike) -> Path:
    """Where ``kvmtrace import FILE`` writes without ``-o``: FILE's name with ``.kvmtrace``."""
    p = Path(path)
    name = p.name
    for ext in (".gz", ".xz", ".bz2"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    stem = name[: -len(".txt")] if name.endswith(".txt") else name
    return p.with_name(stem + ".kvmtrace")


def _check_output(path: Path, output: Path) -> None:
    try:
        if output.exists() and os.path.samefile(path, output):
            raise OutputError(f"the output {output} is the input file", "choose another path with -o")
    except OSError:
        pass
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write the trace file {output}: no directory {parent}",
                          "create the directory or choose another path with -o")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the trace file {output}: {parent} is not writable",
                          "choose a writable path with -o")


def import_text(path: str | os.PathLike, output: str | os.PathLike, *, fmt: str | None = None,
                isa: str | Isa | None = None) -> ImportResult:
    """Import the text trace ``path`` into the kvmtrace trace file ``output``.

    ``fmt`` is one of :data:`FORMATS` or None to detect it (:func:`detect_format`);
    ``isa`` (``"vmx"``, ``"svm"`` or an :class:`~kvmtrace.tables.exits.Isa`) overrides the ISA
    the exit-reason names vote for.  Raises TraceFileError when the input is
    binary, empty or holds no kvm event, OutputError when ``output`` cannot be
    written, ValueError for a bad ``fmt``/``isa``.  Lines that cannot be read
    are counted in the result, never fatal.
    """
    t0 = time.perf_counter()
    path, output = Path(path), Path(output)
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    override = None
    if isa is not None:
        override = Isa.coerce(isa)
        if override == Isa.UNKNOWN:
            raise ValueError(f"unknown ISA {isa!r}; vmx or svm")
    with _open_text(path) as f:  # checks the file (binary, empty) even when fmt is given
        head = list(itertools.islice(_bounded(f), DETECT_LINES if fmt is None else 1))
    if fmt is None:
        try:
            detected = detect_format(head)
        except TraceFileError as e:
            raise TraceFileError(f"{path} holds no kvm events: {e.problem}", e.fix) from None
    else:
        detected = fmt
    _check_output(path, output)
    try:
        spill = tempfile.TemporaryFile(dir=output.parent if str(output.parent) else ".", prefix=".kvmtrace-import-")
    except OSError as e:
        raise OutputError(f"cannot write next to {output}: {e.strerror}", "choose a writable path with -o") from e
    with spill:
        st = _State(override, spill)
        # Millions of small tuples of ints: the cycle collector would walk them
        # again and again for nothing (about 6 % of the time).
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            with _open_text(path) as f:
                lines = _parse(_bounded(f), detected, st, auto=fmt is None)
        finally:
            if gc_was_on:
                gc.enable()
        st.flush()
        return _write(path, output, detected, st, lines, override, spill, t0)


def _write(path: Path, output: Path, detected: str, st: _State, lines: int, override: Isa | None,
           spill, t0: float) -> ImportResult:
    check_isa(path, st.reasons, override)
    trace_isa = _trace_isa(st, override)
    # Exits whose ISA the whole trace decides: numbers, and names two vendors share.
    fixes: list[tuple[int, int, int]] = []  # (row, isa, code); isa -1: cannot be decoded, dropped
    undecodable = st.undecodable()
    for row, r in st.pending:
        by = dict(r.by_isa)
        if by:
            if trace_isa in by:
                fixes.append((row, int(trace_isa), by[trace_isa]))
            else:
                fixes.append((row, -1, 0))
                undecodable[r.vote] = undecodable.get(r.vote, 0) + 1
        else:
            fixes.append((row, int(trace_isa), r.code))
    dropped = sum(1 for _, i, _ in fixes if i < 0)
    # The vCPU threads (those with run-loop rows): the sched rows of no other thread are kept.
    vcpu_pid: dict[int, int] = {}
    for pid, tid, _vcpu in st.threads:
        vcpu_pid.setdefault(tid, pid)
    sched_kept, sched_other, sched_lo, sched_hi = kept_counts(st.sched_cands, vcpu_pid)
    events = (st.rows_total - sum(c for c, _lo, _hi in st.sched_cands.values()) + sum(sched_kept.values())
              - dropped)
    # Per event name: RUN rows by the line they came from, sched rows kept.
    kinds = {_EVENT_OF_KIND[k]: int(st.kinds[k]) for k in _EVENT_OF_KIND if st.kinds[k] and k != _RUN}
    kinds.update({k: v for k, v in st.run_by.items() if v})
    kinds.update(sched_kept)
    if dropped:
        kinds["kvm_exit"] -= dropped
        kinds = {k: v for k, v in kinds.items() if v}
    if sched_lo is not None:
        st.ts_min = sched_lo if st.ts_min is None else min(st.ts_min, sched_lo)
        st.ts_max = sched_hi if st.ts_max is None else max(st.ts_max, sched_hi)
    if events == 0:
        raise no_events(path, detected, st, lines, undecodable)
    domains = domains_of(st.pid_order, st.comms, st.threads)
    isa_name = trace_isa.name if trace_isa != Isa.UNKNOWN else "unknown"
    info = {
        "path": str(path),
        "format": detected,
        "lines": lines,
        "events": events,
        "events_by_probe": kinds,
        "skipped_by_event": dict(sorted(st.skipped.items())),
        "unknown_lines": st.unknown,
        "unknown_examples": st.unknown_examples,
        "undecodable_exits": dict(sorted(undecodable.items())),
        "truncated_last_line": st.truncated,
        "lost_marks_without_count": st.lost_marks_without_count,
        "isa_from": "--isa" if override is not None else "exit-reason names",
        "exit_lines": kinds.get("kvm_exit", 0) + sum(undecodable.values()),
        "process_ids": process_ids(st.threads, detected),
        # The scheduler's lines read, the rows kept (vCPU threads') and those of other threads left out.
        "sched": {"lines": dict(st.sched_lines), "kept": sched_kept, "other_threads": sched_other,
                  "out_of_sequence": sum(n for t, n in st.sched_breaks.items() if t in vcpu_pid)},
        "run_edges": dict(sorted(st.run_by.items())),  # RUN rows by the line they came from
        "folded": dict(sorted(st.folded.items())),  # lines read that add no row of their own
    }
    if not st.raw_clock:
        info["timestamp_resolution_ns"] = timestamp_resolution_ns(spill, st.rows_total, BATCH_EVENTS)
    host = {"isa": isa_name}
    if st.cpus is not None:
        host["cpus"] = st.cpus
    header = {
        "kvmtrace_version": __version__,
        "source": "import",
        "import": info,
        "host": host,
        "tracepoint_formats": {},
        "probes": list(kinds),
        "domains": domains,
        # The data of port and MMIO accesses, where the text has such lines.
        "values_captured": bool(kinds.get("kvm_pio") or kinds.get("kvm_mmio")),
        "clock": ("the source's trace clock, raw counts (not nanoseconds)" if st.raw_clock
                  else "the source's trace clock"),
    }
    writer = TraceWriter(output, header)
    try:
        spill.seek(0)
        fi = 0
        start = 0
        while start < st.rows_total:
            batch = np.fromfile(spill, dtype=EVENT_DTYPE, count=BATCH_EVENTS)
            if len(batch) == 0:
                break
            end = start + len(batch)
            keep = None
            while fi < len(fixes) and fixes[fi][0] < end:
                row, i, code = fixes[fi]
                if i < 0:
                    if keep is None:
                        keep = np.ones(len(batch), dtype=bool)
                    keep[row - start] = False
                else:
                    batch["isa"][row - start] = i
                    batch["reason"][row - start] = code
                fi += 1
            if keep is not None:
                batch = batch[keep]
            batch = keep_vcpu_rows(batch, vcpu_pid)
            if len(batch):
                writer.write(batch, {"source": "import"})
            start = end
        writer.close({
            "start_time_ns": st.ts_min or 0,
            "end_time_ns": st.ts_max or 0,
            "stop_reason": "import",
            "lost_events": st.lost,
            "lost_by_kind": {},
            "matched_by_kind": {},
        })
    except BaseException:
        # Half a trace is worse than none: the input is still there to import again.
        writer.abandon()
        output.unlink(missing_ok=True)
        raise
    return ImportResult(
        input=path, output=output, format=detected, isa=isa_name, lines=lines, events=events,
        events_by_probe=kinds, skipped_by_event=info["skipped_by_event"], unknown_lines=st.unknown,
        unknown_examples=list(st.unknown_examples), undecodable_exits=info["undecodable_exits"],
        truncated_last_line=st.truncated, lost_events=st.lost,
        lost_marks_without_count=st.lost_marks_without_count, domains=domains,
        exit_lines=info["exit_lines"], process_ids=info["process_ids"], sched=info["sched"],
        run_edges=info["run_edges"], folded=info["folded"],
        seconds=time.perf_counter() - t0,
    )
