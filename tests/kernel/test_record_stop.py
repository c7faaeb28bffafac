"""Every way a recording stops writes a complete file and leaves nothing attached."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from kvmtrace.demo.run import start_demo, stop_demo
from kvmtrace.demo.guest import Workload
from kvmtrace.trace import load

from ..support.cli import kvmtrace_cmd
from ..support.kernel import URI, kvmtrace_progs, wait_for_line


@pytest.fixture
def steady(kernel, domain_name):
    _conn, dom = start_demo(Workload(steady=True), URI, name=domain_name)
    yield domain_name, dom
    stop_demo(dom)


def _check_complete(path, reason):
    t = load(path)
    assert t.complete, t.data.note
    assert t.data.trailer["stop_reason"] == reason
    assert t.data.trailer["events_written"] == len(t.events) > 1000
    # Exact accounting: every event the kernel matched was written or counted lost.
    matched = sum(t.data.trailer["matched_by_kind"].values())
    assert matched == len(t.events) + t.lost_events
    assert kvmtrace_progs() == []
    return t


def test_duration(steady, tmp_path):
    name, _dom = steady
    out = tmp_path / "d.kvmtrace"
    r = subprocess.run(kvmtrace_cmd("record", "--domain", name, "--duration", "1.5", "-o", str(out)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "events" in r.stderr and "lost 0" in r.stderr  # progress lines
    t = _check_complete(out, "duration")
    assert 1.4 < t.duration_s < 3


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals(steady, tmp_path, sig):
    name, _dom = steady
    out = tmp_path / "s.kvmtrace"
    p = subprocess.Popen(kvmtrace_cmd("record", "--domain", name, "-o", str(out)), stderr=subprocess.PIPE)
    wait_for_line(p.stderr, "recording", 60)
    time.sleep(1.0)
    p.send_signal(sig)
    assert p.wait(timeout=30) == 0
    _check_complete(out, f"signal {sig.name}")


def test_domain_destroyed_mid_recording(steady, tmp_path):
    name, dom = steady
    out = tmp_path / "x.kvmtrace"
    p = subprocess.Popen(kvmtrace_cmd("record", "--domain", name, "-o", str(out)), stderr=subprocess.PIPE)
    wait_for_line(p.stderr, "recording", 60)
    time.sleep(1.0)
    dom.destroy()
    assert p.wait(timeout=30) == 0
    _check_complete(out, "domain stopped")


def test_demo_command(kernel, tmp_path):
    out = tmp_path / "demo.kvmtrace"
    r = subprocess.run(kvmtrace_cmd("demo", "--duration", "1", "-o", str(out)), capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for needle in ("0x0080", "0x0071", "0x0043", "0x0040", "0xfed00010", "0xfed00000", "0xfec00000"):
        assert needle in r.stdout
    assert str(out) in r.stderr
    assert kvmtrace_progs() == []
