"""Fixtures of the kernel tier. Every test in this folder needs root, KVM,
tracefs, kernel headers, bcc and libvirtd: each is marked `kernel` here, so
`-m "not kernel"` leaves the folder out. ./setup.sh provides all of them and
CI runs them for real; where one is truly missing the `kernel` fixture skips
and names it."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from ..support.kernel import URI, kernel_problems

_HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m "not kernel" deselects
def pytest_collection_modifyitems(config, items):
    # A conftest hook sees every collected item, not only this folder's.
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.kernel)


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
