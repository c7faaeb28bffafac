"""Build small event frames by hand, shaped as kvmtrace.trace.Trace.events."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kvmtrace.kernel.events import EVENT_DTYPE, NO_VCPU, EventFlag, EventKind


class Ev:
    """Append events in time order; .frame() gives the DataFrame."""

    def __init__(self):
        self.rows: list[dict] = []
        self.t = 1_000

    def add(self, kind: EventKind, tid: int = 100, pid: int = 100, dt: int = 1000, **fields) -> "Ev":
        self.t += dt
        self.rows.append({"ts_ns": self.t, "tid": tid, "pid": pid, "kind": int(kind), "vcpu": NO_VCPU, **fields})
        return self

    # Shorthands for the kernel's tracepoints.
    def pio(self, port, write, size=1, **kw):
        return self.add(EventKind.PIO, op=1 if write else 0, port=port, size=size, count=1, **kw)

    def mmio(self, gpa, op, length=4, **kw):
        return self.add(EventKind.MMIO, op=op, gpa=gpa, size=length, **kw)

    def uexit_io(self, port, write, size=1, **kw):
        return self.add(EventKind.USERSPACE_EXIT, reason=2, op=1 if write else 0, port=port, size=size, count=1,
                        flags=int(EventFlag.RUN_FIELDS), **kw)

    def uexit_mmio(self, gpa, write, length=4, **kw):
        return self.add(EventKind.USERSPACE_EXIT, reason=6, gpa=gpa, size=length, op=2 if write else 0,
                        flags=int(EventFlag.RUN_FIELDS), **kw)

    def uexit(self, reason, err=0, **kw):
        return self.add(EventKind.USERSPACE_EXIT, reason=reason, err=err, **kw)

    def run(self, **kw):
        return self.add(EventKind.RUN, **kw)

    def exit(self, reason, isa=1, vcpu=0, **kw):
        return self.add(EventKind.EXIT, reason=reason, isa=isa, vcpu=vcpu, **kw)

    def entry(self, vcpu=0, **kw):
        return self.add(EventKind.ENTRY, vcpu=vcpu, **kw)

    def switch_out(self, prev_state=1, preempt=False, **kw):
        """sched_switch taking the thread off its CPU (prev_state 0: still runnable)."""
        return self.add(EventKind.SCHED_SWITCH, op=0, reason=prev_state,
                        flags=int(EventFlag.PREEMPT) if preempt else 0, **kw)

    def switch_in(self, **kw):
        return self.add(EventKind.SCHED_SWITCH, op=1, **kw)

    def wakeup(self, **kw):
        return self.add(EventKind.WAKEUP, **kw)

    def frame(self) -> pd.DataFrame:
        a = np.zeros(len(self.rows), EVENT_DTYPE)
        for i, row in enumerate(self.rows):
            for k, v in row.items():
                a[i][k] = v
        df = pd.DataFrame({n: a[n] for n in EVENT_DTYPE.names if not n.startswith("pad")})
        df.index.name = "event"
        return df
