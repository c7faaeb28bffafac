"""Empty BPF programs on kvmtrace's tracepoints: the floor under any BPF tracer.

``bpf-empty`` puts one on every regular tracepoint kvmtrace ever attaches
(the floor of its design before raw tracepoints); ``raw-empty`` attaches them
as kvmtrace's plan for this kernel does (kvmtrace.kernel.layouts): raw
programs where kvmtrace's are raw, regular ones (returning 1) elsewhere, no
syscall hook: the floor of its probes now."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from bench.harness.bpf import OUR_PROGS, wait_bpf_attached
from bench.harness.guest import Guest
from bench.harness.processes import STARTED, Lines, cpu_seconds, stop_group
from bench.harness.tracers.base import Outcome, Tracer


#: Attaches a program that returns at once to each tracepoint kvmtrace
#: attaches, then waits for SIGINT: the cost of having BPF on them at all.
EMPTY_PROGRAMS = r"""
import signal, sys
from bcc import BPF
from kvmtrace.kernel.events import TRACEPOINTS
b = BPF(text="int e(void *ctx) { return 0; }")
for system, name, _kind in TRACEPOINTS:
    try:
        b.attach_tracepoint(tp=f"{system}:{name}".encode(), fn_name=b"e")
    except Exception:  # not on this kernel
        pass
print("attached", flush=True)
signal.sigwait([signal.SIGINT, signal.SIGTERM])
b.cleanup()
"""


#: The same, attached as kvmtrace's plan for this kernel attaches its probes.
RAW_EMPTY_PROGRAMS = r"""
import platform, signal, sys
from bcc import BPF
from kvmtrace.kernel.events import TRACEPOINTS
from kvmtrace.kernel.layouts import plan_probes
from kvmtrace.kernel.probe import available_tracepoints, format_fields
formats = available_tracepoints("/sys/kernel/tracing")
plan = plan_probes({k: format_fields(v) for k, v in formats.items()}, platform.release())
system = {name: sys_ for sys_, name, _kind in TRACEPOINTS}
b = BPF(text="int e(void *ctx) { return 1; }\nint r(struct bpf_raw_tracepoint_args *ctx) { return 0; }")
for name, how in plan.attachments().items():
    if how == "raw":
        b.attach_raw_tracepoint(tp=name.encode(), fn_name=b"r")
    else:
        b.attach_tracepoint(tp=f"{system[name]}:{name}".encode(), fn_name=b"e")
print("attached", flush=True)
signal.sigwait([signal.SIGINT, signal.SIGTERM])
b.cleanup()
"""


class EmptyBpf(Tracer):
    """The floor under any BPF tracer of these events: an empty program on
    each of kvmtrace's tracepoints. It records nothing."""

    def __init__(self, raw: bool = False):
        self.proc = None
        self.raw = raw
        self.name = "raw-empty" if raw else "bpf-empty"

    def start(self, guest: Guest, workdir: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", RAW_EMPTY_PROGRAMS if self.raw else EMPTY_PROGRAMS],
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        STARTED.add(self.proc.pid)
        self.out, self.err = Lines(self.proc.stdout), Lines(self.proc.stderr)
        if self.out.wait_for("attached", 120) is None:
            raise RuntimeError(f"empty programs did not attach: {self.err.text(1)[-1500:]}")
        want = {"kvm_pio", "kvm_userspace_exit"} | ({"kvm_fpu"} if self.raw else {"sys_enter_ioctl"})
        self.progs = wait_bpf_attached(self.proc, want, 30)
        OUR_PROGS.update(self.progs.values())

    def finish(self, guest: Guest) -> Outcome:
        out = Outcome()
        usage = stop_group(self.proc, signals=(signal.SIGINT, signal.SIGKILL), wait=30)
        out.tracer_cpu_s, out.tracer_rc = cpu_seconds(usage), self.proc.returncode
        return out
