"""Bad input: one clear line on stderr naming the problem and the fix, a
non-zero exit, nothing attached and nothing lost, against libvirt and the
kernel (tests/unit/test_cli_errors.py has the checks that need neither)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from kvmtrace.demo.guest import Workload, build_rom
from kvmtrace.demo.machine import domain_xml
from kvmtrace.errors import ExitCode

from ..support.cli import kvmtrace_cmd, one_error_line, run
from ..support.kernel import URI, kvmtrace_progs


def test_missing_domain_lists_the_ones_that_exist(kernel, domain_name):
    subprocess.run(["virsh", "-c", URI, "define", "/dev/stdin"], check=True, capture_output=True,
                   input=domain_xml(name=domain_name, rom_path=str(build_rom(Workload()))).encode())
    r = run("record", "--domain", "no-such-domain-xyz")
    assert r.returncode == 3
    line = one_error_line(r)
    assert "no domain 'no-such-domain-xyz'" in line and f"{domain_name} (shut off)" in line


def test_domain_not_running(kernel, domain_name):
    subprocess.run(["virsh", "-c", URI, "define", "/dev/stdin"], check=True, capture_output=True,
                   input=domain_xml(name=domain_name, rom_path=str(build_rom(Workload()))).encode())
    r = run("record", "--domain", domain_name)
    assert r.returncode == 3
    line = one_error_line(r)
    assert "is not running" in line and f"virsh -c {URI} start {domain_name}" in line


def test_libvirtd_unreachable(kernel):
    r = run("record", "--domain", "x", "--connect", "qemu:///system?socket=/nonexistent/libvirt-sock")
    assert r.returncode == 3
    line = one_error_line(r)
    assert "cannot connect to libvirt" in line and "libvirtd -d" in line


def test_not_root(kernel, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all",
                        *kvmtrace_cmd("record", "--domain", "x")], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == ExitCode.PREFLIGHT == 7  # no longer 2, argparse's usage code
    line = one_error_line(r)
    assert "root" in line and "CAP_BPF" in line


def test_unwritable_output_fails_before_attaching(kernel, domain_name, tmp_path):
    from kvmtrace.demo.run import start_demo, stop_demo

    _conn, dom = start_demo(Workload(steady=True), URI, name=domain_name, paused=True)
    try:
        r = run("record", "--domain", domain_name, "-o", str(tmp_path / "missing-dir" / "t.kvmtrace"))
    finally:
        stop_demo(dom)
    assert r.returncode == 4
    line = one_error_line(r)
    assert "cannot write the trace file" in line and "-o" in line
    assert kvmtrace_progs() == []


def test_dry_run_attaches_and_detaches(kernel):
    r = run("record", "--dry-run")
    assert r.returncode == 0, r.stderr
    # How many depends on the kernel's plan (kernel/layouts.py): the count is the list's length,
    # and the list has the run loop's probes and the scheduler's (vCPU time).
    m = re.search(r"built and attached (\d+) probes \(([^)]*)\)", r.stderr)
    assert m, r.stderr
    listed = m.group(2).split(", ")
    assert int(m.group(1)) == len(listed)
    assert {"kvm_pio", "kvm_userspace_exit", "sched_switch", "sched_wakeup"} <= set(listed)
    # no syscall tracepoint: those are launch's, until the first KVM_RUN
    assert not [p for p in listed if p.startswith("sys_")], listed
    assert kvmtrace_progs() == []
