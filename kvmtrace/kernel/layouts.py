"""How each probe attaches on this kernel: the plan the recorder builds at preflight.

A probe is a raw tracepoint where the raw arguments (the event's TP_PROTO)
carry what it reads: cheaper, and a raw program cannot hide the event from
perf. Elsewhere it is a regular tracepoint whose program returns non-zero,
which leaves the event to every other consumer (kvmtrace/kernel/bpf/
kvmtrace.bpf.c, KT_PASS). The layouts and the kernel changes behind each
rule are in kvmtrace/kernel/bpf/shims.bpf.h. Pure: it reads the format
texts and the release it is given, never the live system.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kvmtrace.kernel.events import SCHED_PROBES

__all__ = ["ProbePlan", "kernel_version", "plan_probes", "raw_events", "run_edge"]

#: The probes every recording attaches (where the kernel has the event); the
#: sched ones (vCPU time) are raw tracepoints always, and a recording made
#: with --no-vcpu-time leaves them out of the formats it plans from.
STEADY = ("kvm_exit", "kvm_entry", "kvm_pio", "kvm_mmio", "kvm_userspace_exit", "sched_process_exit",
          *SCHED_PROBES)
#: Syscall probes a launch holds while QEMU builds the VM, until its first KVM_RUN.
LAUNCH_ONLY = ("sys_enter_ioctl", "sys_exit_ioctl", "sys_enter_close")
#: kvm_mmio's val argument became a pointer in 4.15 (e39d200fa5bf); its format did not change.
MMIO_VAL_POINTER = (4, 15)
#: The RUN edge by kvm_fpu: once per KVM_RUN since 4.15 (f775b13eedee), told
#: apart from loads outside KVM_RUN with bpf_task_pt_regs() (5.15, dd6e10fbd9fb).
FPU_RUN_EDGE = (5, 15)


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a kernel release string ("6.18.44-amd64" -> (6, 18)); (0, 0) if unreadable."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m[1]), int(m[2])) if m else (0, 0)


def raw_events(fields: dict[str, set[str]], release: str) -> frozenset[str]:
    """The kvm events whose raw arguments carry what kvmtrace's probe reads.

    ``fields``: event name -> the field names of its format file (common_*
    left out). Events not in ``fields`` (absent on this kernel) are not raw.
    """
    version = kernel_version(release)
    raw = set()
    pio = fields.get("kvm_pio")
    if pio is not None and {"rw", "port", "size", "count", "val"} <= pio:
        raw.add("kvm_pio")  # the data pointer (args[4]) came with the val field
    mmio = fields.get("kvm_mmio")
    if mmio is not None and {"type", "len", "gpa", "val"} <= mmio and version >= MMIO_VAL_POINTER:
        raw.add("kvm_mmio")
    uexit = fields.get("kvm_userspace_exit")
    if uexit is not None and {"reason", "errno"} <= uexit:
        raw.add("kvm_userspace_exit")
    if fields.get("kvm_entry") == {"vcpu_id"}:
        raw.add("kvm_entry")  # the old (unsigned int vcpu_id) layout: nothing else to read
    return frozenset(raw)


def run_edge(fields: dict[str, set[str]], release: str) -> str:
    """Where RUN events (the VMM re-entering the guest) come from: "kvm_fpu"
    (a raw tracepoint fired once per KVM_RUN, no syscall hook) or, where that
    is not right, "sys_enter_ioctl" (a syscall tracepoint, filtered in the
    kernel, that stays attached while the guest runs)."""
    if "load" in fields.get("kvm_fpu", set()) and kernel_version(release) >= FPU_RUN_EDGE:
        return "kvm_fpu"
    return "sys_enter_ioctl"


@dataclass(frozen=True)
class ProbePlan:
    """The probes to build and how: ``probes`` in attach order, ``raw`` the
    raw ones, ``run_edge`` the RUN probe, ``launch`` whether the ioctl probes
    of a launch are built."""

    probes: tuple[str, ...]
    raw: frozenset[str]
    run_edge: str
    launch: bool

    @property
    def launch_only(self) -> tuple[str, ...]:
        """The probes detached at the traced VMM's first KVM_RUN (not the RUN edge)."""
        return tuple(p for p in self.probes if p in LAUNCH_ONLY and p != self.run_edge)

    def attachments(self) -> dict[str, str]:
        """probe -> "raw" or "tracepoint", for the trace file's header."""
        return {p: "raw" if p in self.raw or p == "kvm_fpu" or p in SCHED_PROBES else "tracepoint"
                for p in self.probes}


def plan_probes(fields: dict[str, set[str]], release: str, launch: bool = False) -> ProbePlan:
    """The plan for a kernel whose events have these format ``fields``."""
    edge = run_edge(fields, release)
    wanted = [*STEADY, edge]
    if launch:
        wanted += LAUNCH_ONLY
    order = [*STEADY, "kvm_fpu", *LAUNCH_ONLY]
    probes = tuple(p for p in order if p in wanted and p in fields)
    return ProbePlan(probes, raw_events(fields, release) & set(probes), edge, launch)
