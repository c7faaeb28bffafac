"""What an import can and cannot know, said before the trace is written.

* :func:`check_isa`: an ``--isa`` the exit names contradict is refused (a
  UsageError, exit 2), never used to drop or misname the exits;
* :func:`timestamp_resolution_ns`: the text's timestamp resolution (trace-cmd
  and ftrace print microseconds), which the report states beside latencies;
* :func:`process_ids`: whether the text said which process each thread
  belongs to (a tgid): without it each task is its own "domain";
* :func:`domains_of`: the header's ``domains`` from the threads seen;
* :func:`no_events`: the error of a text with no kvm event, naming what it holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kvmtrace.errors import TraceFileError, UsageError
from kvmtrace.kernel.events import EVENT_DTYPE, NO_VCPU
from kvmtrace.tables.exits import Isa, isa_from_names

__all__ = ["check_isa", "domains_of", "no_events", "process_ids", "timestamp_resolution_ns"]


def check_isa(path: Path, reasons: dict, override: Isa | None) -> None:
    """Refuse ``override`` when the exit names vote for the other ISA.

    ``reasons``: the import's distinct reason texts (:class:`~.shapes._Reason`).
    Names both vendors use (a number, ``HLT`` read loosely) do not vote.
    """
    if override is None:
        return
    # Under --isa a name only the other vendor has is read as nothing (undecodable): it votes too.
    votes = [(r.vote if r.vote is not None else text, r.count) for text, r in reasons.items()
             if r.count and (r.vote is not None or not r.decodable)]
    weight = {Isa.VMX: 0, Isa.SVM: 0, Isa.UNKNOWN: 0}
    of = {n: isa_from_names([n]) for n, _ in votes}  # a name's vote, once per distinct name
    for n, c in votes:
        weight[of[n]] += c
    voted = Isa.VMX if weight[Isa.VMX] > weight[Isa.SVM] else Isa.SVM if weight[Isa.SVM] > weight[Isa.VMX] else Isa.UNKNOWN
    if voted in (Isa.UNKNOWN, override):
        return
    against = sorted(((n, c) for n, c in votes if of[n] == voted), key=lambda nc: (-nc[1], nc[0]))
    shown = ", ".join(f"{n} {c:,}" for n, c in against[:5]) + (", ..." if len(against) > 5 else "")
    given = override.name.lower()
    raise UsageError(
        f"--isa {given} contradicts the exit reasons in {path}, which are {voted.name} names "
        f"({shown}): read as {override.name} they would be dropped or misnamed",
        f"leave out --isa (the names say {voted.name}), or give --isa {voted.name.lower()}")


#: Resolutions tried, coarsest first: seconds, ms, µs, ns.
_RESOLUTIONS = (1_000_000_000, 1_000_000, 1_000, 1)


def timestamp_resolution_ns(spill, rows: int, batch: int) -> int:
    """The coarsest of 1 s, 1 ms, 1 µs, 1 ns that divides every timestamp of the spilled rows."""
    res = _RESOLUTIONS[0]
    spill.seek(0)
    done = 0
    while done < rows and res > 1:
        ts = np.fromfile(spill, dtype=EVENT_DTYPE, count=batch)["ts_ns"]
        if not len(ts):
            break
        done += len(ts)
        while res > 1 and (ts % res).any():
            res = _RESOLUTIONS[_RESOLUTIONS.index(res) + 1]
    spill.seek(0)
    return res


def process_ids(threads, detected: str) -> str:
    """"tgid" when the text said which process each thread is in (perf's pid/tid, ftrace's
    (TGID) column), else "thread ids only": then each task is a domain of its own."""
    if detected == "perf" or any(pid != tid for pid, tid, _vcpu in threads):
        return "tgid"
    return "thread ids only"


def domains_of(pid_order, comms: dict[int, str], threads) -> list[dict]:
    """The header's ``domains``: one per process in order of appearance, with its threads and vCPUs
    (``threads``: (pid, tid, vcpu) seen)."""
    per_pid: dict[int, dict] = {}
    for pid in pid_order:
        per_pid[pid] = {"name": comms.get(pid, ""), "pid": pid, "vcpus": set(), "tids": set(), "vcpu_threads": {}}
    for pid, tid, vcpu in threads:
        d = per_pid[pid]
        d["tids"].add(tid)
        if vcpu != NO_VCPU:
            d["vcpus"].add(vcpu)
            d["vcpu_threads"].setdefault(str(vcpu), tid)
    out = []
    for d in per_pid.values():
        d["vcpus"] = sorted(d["vcpus"])
        d["tids"] = sorted(d["tids"])
        d["vcpu_threads"] = dict(sorted(d["vcpu_threads"].items(), key=lambda kv: int(kv[0])))
        out.append(d)
    return out


def no_events(path: Path, detected: str, st, lines: int, undecodable: dict[str, int]) -> TraceFileError:
    """The error of an import that found no kvm event: what the text holds instead (``st``: the import's state)."""
    seen = sorted({**st.skipped, **st.sched_lines}.items(), key=lambda kv: -kv[1])[:5]
    parts = []
    if seen:
        parts.append("events seen: " + ", ".join(f"{k} {v:,}" for k, v in seen))
    if undecodable:
        parts.append("kvm_exit lines with reasons no name or number gives: "
                     + ", ".join(f"{k!r} {v:,}" for k, v in undecodable.items()))
    if st.unknown:
        parts.append(f"{st.unknown:,} unreadable lines (first: line {st.unknown_examples[0]})")
    detail = f" ({'; '.join(parts)})" if parts else ""
    return TraceFileError(
        f"{path} holds no kvm events kvmtrace can import: {lines:,} lines of {detected} text{detail}",
        "capture kvm:kvm_exit, kvm:kvm_entry, kvm:kvm_pio, kvm:kvm_mmio or kvm:kvm_userspace_exit "
        "(e.g. trace-cmd record -e kvm, then trace-cmd report > FILE)")
