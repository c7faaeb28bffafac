"""A process pair that switches context as fast as it can: what sched_switch costs others.

kvmtrace's sched_switch probe runs at every context switch on the host, not
only the traced vCPU threads': each costs two hash lookups (prev's and
next's tid, both misses for an untraced process). The cost shows on a
process that does little but switch: two processes pinned to one CPU pass a
byte back and forth over two pipes, so every round trip is two context
switches (each side blocks in read() and the other runs). Timed alone and
while kvmtrace records, the difference per switch is the probes' cost to
every other process on the host.

The pair is a small C program (compiled once with ``cc``): Python's own
per-call overhead would hide a cost of tens of nanoseconds.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

_SOURCE = r"""
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	long n = atol(argv[1]);
	int cpu = atoi(argv[2]), a[2], b[2];
	char c = 0;
	cpu_set_t set;
	struct timespec t0, t1;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) || pipe(a) || pipe(b))
		return 1;
	pid_t child = fork();
	if (child == 0) {
		for (long i = 0; i < n; i++)
			if (read(a[0], &c, 1) != 1 || write(b[1], &c, 1) != 1)
				_exit(1);
		_exit(0);
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < n; i++)
		if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1)
			return 1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	waitpid(child, NULL, 0);
	printf("%.1f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n);
	return 0;
}
"""

_BINARY: Path | None = None


def unavailable() -> str | None:
    return None if shutil.which("cc") else "no C compiler (cc) to build the ping-pong pair"


def binary() -> Path:
    global _BINARY
    if _BINARY is None or not _BINARY.exists():
        d = Path(tempfile.mkdtemp(prefix="kvmtrace-pingpong-"))
        (d / "pingpong.c").write_text(_SOURCE)
        subprocess.run(["cc", "-O2", "-o", str(d / "pingpong"), str(d / "pingpong.c")], check=True)
        _BINARY = d / "pingpong"
    return _BINARY


def round_trip_ns(round_trips: int = 200_000, cpu: int = 0) -> float:
    """Mean ns per round trip (two context switches) of the pair pinned to ``cpu``."""
    out = subprocess.run([str(binary()), str(round_trips), str(cpu)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())
