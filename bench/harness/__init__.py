"""What the benchmarks (and the kernel tests) need to run real guests under real tracers.

- ``processes``: a child's output lines read in a thread, its process group
  stopped and reaped, CPU times;
- ``bpf``: which BPF programs a process has attached (``bpftool perf show``),
  waiting until they are, their recursion misses, the programs still loaded;
- ``tracefs``: tracefs saved and put back around trace-cmd;
- ``guest``: the storm guest (N port writes, then the end), its ground truth,
  its life from paused creation to destruction, its vCPU threads' CPU time;
- ``tracers``: one module per tracer the overhead benchmark compares;
- ``drain``: kvmtrace's drain speed, ring buffer to trace file.

Importing any of them touches neither the kernel nor libvirt.
"""

from __future__ import annotations

import sys
import time


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
