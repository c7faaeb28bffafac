"""Shared fixtures. Tests marked `kernel` need root, KVM, tracefs, kernel
headers, bcc and libvirtd; ./setup.sh provides all of them, and CI runs them
for real. Where one is truly missing the test skips and names it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

URI = "qemu:///system"
ROOT = Path(__file__).resolve().parent.parent


def kernel_problems() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    if not Path("/dev/kvm").exists():
        problems.append("no /dev/kvm")
    if not Path("/sys/kernel/tracing/events/kvm").is_dir():
        problems.append("tracefs with kvm events not mounted")
    try:
        import bcc  # noqa: F401
    except ImportError:
        problems.append("bcc not importable")
    if shutil.which("nasm") is None:
        problems.append("nasm missing")
    r = subprocess.run(["virsh", "-c", URI, "version"], capture_output=True) if shutil.which("virsh") else None
    if r is None or r.returncode != 0:
        problems.append("libvirtd not reachable")
    return problems


@pytest.fixture(scope="session")
def kernel():
    problems = kernel_problems()
    if problems:
        pytest.skip("needs the real kernel set-up (./setup.sh): " + ", ".join(problems))


@pytest.fixture
def domain_name():
    """A unique domain name; whatever runs under it is destroyed afterwards."""
    name = f"kvmtrace-test-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["virsh", "-c", URI, "destroy", name], capture_output=True)
    subprocess.run(["virsh", "-c", URI, "undefine", name], capture_output=True)


def kvmtrace_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvmtrace.cli", *args]
