"""top and serve for real: a Prometheus scrape with exact counts, top in a real terminal."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request

import pytest

from kvmtrace.demo.run import resume, start_demo, stop_demo, wait_stopped
from kvmtrace.demo.guest import Workload, expected

from ..support.cli import kvmtrace_cmd
from ..support.kernel import URI, kvmtrace_progs, wait_for_line

WORKLOAD = Workload(port_writes=23, rtc_reads=29, pit_writes=31, pit_reads=37,
                    hpet_writes=41, hpet_reads=43, ioapic_writes=47)


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_prometheus_scrape_gives_the_roms_counts(kernel, domain_name):
    port = 19464
    _conn, dom = start_demo(WORKLOAD, URI, name=domain_name, paused=True)
    proc = subprocess.Popen(kvmtrace_cmd("serve", "--domain", domain_name, "--port", str(port)),
                            stderr=subprocess.PIPE)
    try:
        wait_for_line(proc.stderr, "serving metrics", 60)
        resume(dom)
        assert wait_stopped(dom, 60)
        time.sleep(0.3)
        m = scrape(port)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        stop_demo(dom)
    truth = expected(WORKLOAD)
    d = domain_name
    assert m[f'kvmtrace_userspace_exits_total{{domain="{d}",reason="IO"}}'] == truth["userspace_exits"]["IO"]
    assert m[f'kvmtrace_userspace_exits_total{{domain="{d}",reason="MMIO"}}'] == truth["userspace_exits"]["MMIO"]
    assert m[f'kvmtrace_pio_total{{device="ioport80",direction="write",domain="{d}",handled_by="vmm",port="0x0080"}}'] == 23
    assert m[f'kvmtrace_pio_total{{device="kvm-pit",direction="read",domain="{d}",handled_by="kernel",port="0x0040"}}'] == 37
    assert m[f'kvmtrace_mmio_total{{device="hpet",direction="read",domain="{d}",handled_by="vmm",page="0xfed00000"}}'] == 43
    assert m[f'kvmtrace_mmio_total{{device="kvm-ioapic",direction="write",domain="{d}",handled_by="kernel",page="0xfec00000"}}'] == 47
    # Every userspace exit but the last (QEMU exits on it) is served and re-entered.
    served = m[f'kvmtrace_vmm_service_seconds_count{{domain="{d}",reason="IO"}}'] + \
        m[f'kvmtrace_vmm_service_seconds_count{{domain="{d}",reason="MMIO"}}']
    assert served == sum(truth["userspace_exits"].values()) - 1
    assert m["kvmtrace_lost_events_total"] == 0
    assert kvmtrace_progs() == []


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_top_in_a_real_terminal(kernel, domain_name):
    _conn, dom = start_demo(Workload(steady=True), URI, name=domain_name)
    session = f"kt-{domain_name[-8:]}"
    try:
        cmd = " ".join(kvmtrace_cmd("top", "--domain", domain_name))
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "50", cmd], check=True)
        screen = ""
        for _ in range(60):
            time.sleep(0.5)
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True).stdout
            if "ioport80" in screen and "kvm-ioapic" in screen:
                break
        assert "kvmtrace top" in screen and domain_name in screen
        for needle in ("ioport80", "rtc", "kvm-pit", "hpet", "kvm-ioapic", "IO", "MMIO", "vcpu 0"):
            assert needle in screen, screen
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        for _ in range(40):
            time.sleep(0.25)
            if subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0:
                break
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        stop_demo(dom)
    assert kvmtrace_progs() == []
