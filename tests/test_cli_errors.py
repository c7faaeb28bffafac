"""Bad input: one clear line on stderr naming the problem and the fix, a
non-zero exit, nothing attached and nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kvmtrace.demo.guest import Workload, build_rom, domain_xml

from .conftest import URI, kvmtrace_cmd
from .kernelutil import kvmtrace_progs


def run(*args, **kw):
    return subprocess.run(kvmtrace_cmd(*args), capture_output=True, text=True, timeout=120, **kw)


def one_error_line(r) -> str:
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("kvmtrace: error: ")
    return lines[0]


def test_report_of_missing_file(tmp_path):
    r = run("report", str(tmp_path / "none.kvmtrace"))
    assert r.returncode != 0
    assert "does not exist" in one_error_line(r)


def test_report_of_foreign_file(tmp_path):
    p = tmp_path / "trace.txt"
    p.write_text("qemu-system-x86-1234 [001] d... 1.0: kvm_exit: reason IO_INSTRUCTION\n")
    r = run("report", str(p))
    assert r.returncode != 0
    assert "kvmtrace import" in one_error_line(r)


def test_record_needs_a_domain():
    r = run("record")
    assert r.returncode != 0
    assert "--domain" in one_error_line(r)


@pytest.mark.kernel
def test_missing_domain_lists_the_ones_that_exist(kernel, domain_name):
    subprocess.run(["virsh", "-c", URI, "define", "/dev/stdin"], check=True, capture_output=True,
                   input=domain_xml(name=domain_name, rom_path=str(build_rom(Workload()))).encode())
    r = run("record", "--domain", "no-such-domain-xyz")
    assert r.returncode == 3
    line = one_error_line(r)
    assert "no domain 'no-such-domain-xyz'" in line and f"{domain_name} (shut off)" in line


@pytest.mark.kernel
def test_domain_not_running(kernel, domain_name):
    subprocess.run(["virsh", "-c", URI, "define", "/dev/stdin"], check=True, capture_output=True,
                   input=domain_xml(name=domain_name, rom_path=str(build_rom(Workload()))).encode())
    r = run("record", "--domain", domain_name)
    assert r.returncode == 3
    line = one_error_line(r)
    assert "is not running" in line and f"virsh -c {URI} start {domain_name}" in line


@pytest.mark.kernel
def test_libvirtd_unreachable(kernel):
    r = run("record", "--domain", "x", "--connect", "qemu:///system?socket=/nonexistent/libvirt-sock")
    assert r.returncode == 3
    line = one_error_line(r)
    assert "cannot connect to libvirt" in line and "libvirtd -d" in line


@pytest.mark.kernel
def test_not_root(kernel, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all",
                        *kvmtrace_cmd("record", "--domain", "x")], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    line = one_error_line(r)
    assert "root" in line and "CAP_BPF" in line


@pytest.mark.kernel
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


@pytest.mark.kernel
def test_dry_run_attaches_and_detaches(kernel):
    r = run("record", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "built and attached 9 probes" in r.stderr
    assert kvmtrace_progs() == []
