"""Running the kvmtrace command line as a user would, in a subprocess."""

from __future__ import annotations

import subprocess
import sys


def kvmtrace_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvmtrace.cli", *args]


def run(*args, **kw):
    return subprocess.run(kvmtrace_cmd(*args), capture_output=True, text=True, timeout=120, **kw)


def one_error_line(r) -> str:
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("kvmtrace: error: ")
    return lines[0]
