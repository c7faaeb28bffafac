"""One module per tracer the overhead benchmark runs against the storm guest.

Each is a ``base.Tracer``: ``unavailable()`` says why it cannot run here,
``start(guest, workdir)`` returns once it is really attached, ``finish(guest)``
stops it and returns what it recorded and lost (an ``Outcome``), and
``cleanup()`` stops whatever still runs.
"""

from bench.harness.tracers.base import KINDS, Outcome, Tracer
from bench.harness.tracers.bpftrace import Bpftrace
from bench.harness.tracers.empty_bpf import EmptyBpf
from bench.harness.tracers.kvmtrace import Kvmtrace
from bench.harness.tracers.perf import Perf
from bench.harness.tracers.trace_cmd import TraceCmd

__all__ = ["KINDS", "Bpftrace", "EmptyBpf", "Kvmtrace", "Outcome", "Perf", "TraceCmd", "Tracer"]
