"""The vCPU states as slices on each vCPU's track (analysis.vcpu_time).

Each stretch of one state (guest, halted, vmm, vmm_waiting, preempted) is a
slice named after it, category ``vcpu_state``, on its vCPU thread's track:
a state changes at every KVM_RUN edge, so its slices nest with the
userspace-exit slices drawn there (a preemption that spans an edge is one
slice, and moves to an overlap lane if it crosses another slice). Where
kvm_exit/kvm_entry fired (VMX/SVM), guest stretches split at each of them
and a guest slice's args say its ``part``: ``in_guest`` or ``exit_handling``.
"""

from __future__ import annotations

import numpy as np

from kvmtrace.analysis.vcpu_time import has_vcpu_time
from kvmtrace.present.perfetto.sources import _Names, _Source


def _vcpu_states(trace, q: _Names) -> _Source | None:
    """One slice per stretch of a state, or None for a recording without the sched probes."""
    if not has_vcpu_time(trace.header, trace.events):
        return None
    seg = trace.vcpu_timeline().frame(merge=True)
    names = [q(str(s)) for s in seg["state"].cat.categories]
    code = seg["state"].cat.codes.to_numpy()
    start = seg["start_ns"].to_numpy(np.int64)
    dur = seg["end_ns"].to_numpy(np.int64) - start
    guest = seg["state"].cat.categories.get_loc("guest")
    part = np.full(len(seg), "", dtype=object)
    if "in_guest" in seg.columns:
        flag = seg["in_guest"]
        is_guest = (code == guest) & flag.notna().to_numpy()  # NA: a thread without kvm_exit/kvm_entry
        part[is_guest] = np.where(flag.fillna(False).to_numpy(bool)[is_guest], ',"part":"in_guest"',
                                  ',"part":"exit_handling"')

    def body(rows: np.ndarray) -> list[str]:
        return [f'"name":{names[code[i]]},"cat":"vcpu_state","args":{{"state":{names[code[i]]}{part[i]}}}'
                for i in rows.tolist()]

    return _Source("vcpu_states", start, dur, seg["pid"].to_numpy(np.int64), seg["tid"].to_numpy(np.int64), body)
