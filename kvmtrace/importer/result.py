"""ImportResult: what an import read and wrote, and a message about it for a person.

Standard library only; importing this module has no side effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ImportResult"]


@dataclass
class ImportResult:
    """What :func:`import_text` read and wrote."""

    input: Path
    output: Path
    format: str
    isa: str  # "VMX", "SVM" or "unknown"
    lines: int
    events: int  # rows written
    events_by_probe: dict[str, int]  # {"kvm_exit": n, ...}
    skipped_by_event: dict[str, int]  # lines of events kvmtrace does not store
    unknown_lines: int  # lines nobody could read
    unknown_examples: list[int]  # their first line numbers
    undecodable_exits: dict[str, int]  # kvm_exit lines whose reason has no code, by printed name
    truncated_last_line: bool
    lost_events: int  # the sum of the source's "[LOST N EVENTS]" markers
    lost_marks_without_count: int  # "[LOST EVENTS]" markers (some lost, how many unknown)
    domains: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    exit_lines: int = 0  # kvm_exit lines read, stored or not
    process_ids: str = "tgid"  # or "thread ids only": the text names no process (trace-cmd)
    # The scheduler's lines: {"lines": {event: lines read}, "kept": {event: rows of vCPU threads},
    # "other_threads": {event: rows of other threads, left out}, "out_of_sequence": vCPU threads'
    # switches in after in or out after out} (a switch has two sides).
    sched: dict = field(default_factory=dict)
    run_edges: dict[str, int] = field(default_factory=dict)  # RUN rows by the line they came from
    folded: dict[str, int] = field(default_factory=dict)  # lines read that add no row of their own

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else float("inf")

    def message(self) -> str:
        """A few lines for a person: what was imported and what was left out, and why."""
        probes = ", ".join(f"{n:,} {p}" for p, n in self.events_by_probe.items()) or "none"
        out = [f"imported {self.events:,} events from {self.lines:,} lines of {self.format} text "
               f"({probes}); ISA {self.isa}; trace in {self.output}"]
        skipped = sum(self.skipped_by_event.values())
        if skipped:
            top = sorted(self.skipped_by_event.items(), key=lambda kv: (-kv[1], kv[0]))
            names = ", ".join(f"{k} {v:,}" for k, v in top[:6]) + (", ..." if len(top) > 6 else "")
            out.append(f"skipped: not kvmtrace events: {skipped:,} lines ({names})")
        lines = self.sched.get("lines") or {}
        if lines:
            kept = self.sched.get("kept") or {}
            other = self.sched.get("other_threads") or {}
            read = ", ".join(f"{n:,} {e}" for e, n in lines.items())
            out.append(f"scheduler: read {read} lines; kept {sum(kept.values()):,} events of vCPU threads ("
                       + (", ".join(f"{n:,} {e}" for e, n in kept.items()) or "none")
                       + f"), left out {sum(other.values()):,} of other threads"
                       + ("" if kept.get("sched_switch") else
                          ": no sched_switch of a vCPU thread, so no vCPU time"))
            if self.sched.get("out_of_sequence"):
                out.append(f"{self.sched['out_of_sequence']:,} switches of vCPU threads out of sequence (in after in, "
                           "or out after out): the text lacks switch lines (an excerpt, or lost events), and vCPU "
                           "time across such a gap is the state the last line left")
        if self.run_edges:
            out.append("KVM_RUN entered (RUN): " + ", ".join(
                f"{n:,} from {'sys_enter_ioctl KVM_RUN' if e == 'sys_enter_ioctl' else 'kvm_fpu load'}"
                for e, n in self.run_edges.items()))
        if self.folded:
            out.append("read, no event of their own: " + ", ".join(f"{n:,} {e}" for e, n in self.folded.items()))
        if self.undecodable_exits:
            names = ", ".join(f"{k!r} {v:,}" for k, v in sorted(self.undecodable_exits.items()))
            n = sum(self.undecodable_exits.values())
            out.append(f"left out {n:,} of {self.exit_lines:,} kvm_exit lines, whose reason has no known name or "
                       f"number: {names} "
                       "(give --isa vmx|svm if the names are of one vendor, or print the trace "
                       "with the kernel's own format, trace-cmd report -N)")
        if self.unknown_lines:
            where = ", ".join(map(str, self.unknown_examples))
            more = ", ..." if self.unknown_lines > len(self.unknown_examples) else ""
            out.append(f"unknown: {self.unknown_lines:,} lines could not be read (lines {where}{more})")
        if self.process_ids != "tgid" and len(self.domains) > 1:
            out.append(f"{len(self.domains)} tasks, each listed as its own domain: {self.format} text has no tgid "
                       "to join the threads of one VM")
        if self.truncated_last_line:
            out.append("the last line has no end (the file was cut short?): it was left out")
        if self.lost_events:
            out.append(f"the source reports {self.lost_events:,} lost events")
        if self.lost_marks_without_count:
            out.append(f"the source marks {self.lost_marks_without_count:,} places where events were lost "
                       "without saying how many")
        return "\n".join(out)
