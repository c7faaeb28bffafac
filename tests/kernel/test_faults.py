"""Nothing lost, nobody exposed: faults while recording, isolation between
guests, privileges, hostile names and guest-data privacy, all for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kvmtrace.demo.run import resume, start_demo, stop_demo

from kvmtrace.demo.guest import Workload, expected
from kvmtrace.errors import ExitCode
from kvmtrace.trace import load

from ..support.cli import kvmtrace_cmd
from ..support.kernel import URI, kvmtrace_progs, wait_for_line

A = Workload(port_writes=23, rtc_reads=29, pit_writes=31, pit_reads=37, hpet_writes=41, hpet_reads=43,
             ioapic_writes=47)
B = Workload(port_writes=101, rtc_reads=103, pit_writes=107, pit_reads=109, hpet_writes=113, hpet_reads=127,
             ioapic_writes=131)


def rows(rep: dict) -> dict:
    return {
        "pio": {(r["port"], r["direction"], r["size"], r["userspace"]): r["count"] for r in rep["pio"]},
        "mmio": {(r["gpa"], r["direction"], r["len"], r["userspace"]): r["count"] for r in rep["mmio"]},
        "userspace_exits": {r["reason"]: r["count"] for r in rep["userspace_exits"]},
    }


def report_json(path, *extra) -> dict:
    return json.loads(subprocess.run(kvmtrace_cmd("report", "--format", "json", str(path), *extra),
                                     capture_output=True, check=True).stdout)


@pytest.fixture
def steady(kernel, domain_name):
    _conn, dom = start_demo(Workload(steady=True), URI, name=domain_name)
    yield domain_name, dom
    stop_demo(dom)


def test_sigkill_leaves_a_readable_file_lacking_at_most_the_last_second(steady, tmp_path):
    name, _dom = steady
    out = tmp_path / "k.kvmtrace"
    p = subprocess.Popen(kvmtrace_cmd("record", "--domain", name, "-o", str(out)), stderr=subprocess.PIPE)
    wait_for_line(p.stderr, "recording", 60)
    time.sleep(2.5)
    killed_at = time.monotonic_ns()  # CLOCK_MONOTONIC, the probes' clock
    p.kill()
    p.wait(timeout=30)
    t = load(out)
    assert not t.complete and t.data.trailer is None
    assert len(t.events) > 10_000
    last = int(t.events["ts_ns"].max())
    assert killed_at - last < 1_000_000_000, f"the file ends {(killed_at - last) / 1e9:.2f} s before the kill"
    rep = report_json(out)
    assert rep["complete"] is False and rep["pio"]
    for _ in range(20):  # the kernel detaches a dead process's programs when its fds close
        if not kvmtrace_progs():
            break
        time.sleep(0.1)
    assert kvmtrace_progs() == []


def test_full_disk_stops_with_a_clear_error_and_keeps_what_fit(steady, tmp_path):
    name, _dom = steady
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        out = mnt / "full.kvmtrace"
        r = subprocess.run(kvmtrace_cmd("record", "--domain", name, "-o", str(out), "--duration", "60"),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 4, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert "the disk is full" in last and "kept and readable" in last and "-o" in last
        t = load(out)
        assert not t.complete and len(t.events) > 1000
        assert kvmtrace_progs() == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _finite_pair(tmp_path):
    names = [f"kvmtrace-test-iso-{uuid.uuid4().hex[:6]}-{x}" for x in "ab"]
    doms = [start_demo(w, URI, name=n, paused=True)[1] for w, n in zip((A, B), names)]
    return names, doms


def test_two_recorders_see_only_their_own_guest(kernel, tmp_path):
    names, doms = _finite_pair(tmp_path)
    outs = [tmp_path / f"{x}.kvmtrace" for x in "ab"]
    procs = []
    try:
        for n, o in zip(names, outs):
            p = subprocess.Popen(kvmtrace_cmd("record", "--domain", n, "-o", str(o)), stderr=subprocess.PIPE)
            wait_for_line(p.stderr, "recording", 60)
            procs.append(p)
        for d in doms:
            resume(d)
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for d in doms:
            stop_demo(d)
    for o, w in zip(outs, (A, B)):
        t = load(o)
        assert set(t.events["pid"].unique()) == {t.domains[0]["pid"]}  # zero events of the other guest
        assert rows(report_json(o)) == expected(w)


def test_record_all_keeps_domains_apart(kernel, tmp_path):
    names, doms = _finite_pair(tmp_path)
    out = tmp_path / "all.kvmtrace"
    try:
        p = subprocess.Popen(kvmtrace_cmd("record", "--all", "-o", str(out)), stderr=subprocess.PIPE)
        wait_for_line(p.stderr, "recording", 60)
        for d in doms:
            resume(d)
        assert p.wait(timeout=120) == 0
    finally:
        for d in doms:
            stop_demo(d)
    rep = report_json(out)
    assert set(names) <= set(rep["domains"])
    for n, w in zip(names, (A, B)):
        assert rows(report_json(out, "--domain", n)) == expected(w)


def test_guest_data_is_not_stored_unless_asked(kernel, tmp_path):
    outs = {}
    for values in (False, True):
        name = f"kvmtrace-test-priv-{uuid.uuid4().hex[:8]}"
        conn, dom = start_demo(A, URI, name=name, paused=True)
        out = tmp_path / f"v{int(values)}.kvmtrace"
        try:
            args = ["record", "--domain", name, "-o", str(out)] + (["--values"] if values else [])
            p = subprocess.Popen(kvmtrace_cmd(*args), stderr=subprocess.PIPE)
            wait_for_line(p.stderr, "recording", 60)
            resume(dom)
            assert p.wait(timeout=120) == 0
        finally:
            stop_demo(dom)
        outs[values] = out
        assert oct(os.stat(out).st_mode & 0o777) == "0o600"
    plain, with_values = load(outs[False]), load(outs[True])
    assert (plain.events["value"] == 0).all() and not plain.values_captured
    assert "not captured" in subprocess.run(kvmtrace_cmd("report", str(outs[False])), capture_output=True,
                                            text=True).stdout
    # HPET's capabilities register reads non-zero: with --values the answers are there.
    hpet = with_values.df_mmio()
    assert with_values.values_captured and (hpet.loc[hpet["direction"] == "read", "value"] != 0).all()
    assert "captured (--values)" in subprocess.run(kvmtrace_cmd("report", str(outs[True])), capture_output=True,
                                                   text=True).stdout


def _as_nobody(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), HOME=str(cwd))
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all",
                           *kvmtrace_cmd(*args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_without_root_kernel_commands_refuse_and_analysis_works(kernel, tmp_path, steady):
    name, _dom = steady
    src = tmp_path / "src.kvmtrace"
    subprocess.run(kvmtrace_cmd("record", "--domain", name, "--duration", "1", "-o", str(src)),
                   check=True, capture_output=True)
    work = tmp_path / "nobody"
    work.mkdir()
    shutil.copy(src, work / "t.kvmtrace")
    shutil.copy(src, work / "u.kvmtrace")
    for p in (work, work / "t.kvmtrace", work / "u.kvmtrace"):
        os.chmod(p, 0o777 if p.is_dir() else 0o644)
    for cmd in (["record", "--domain", name], ["top", "--domain", name, "--batch"],
                ["serve", "--domain", name], ["demo"], ["record", "--dry-run"]):
        r = _as_nobody(*cmd, cwd=work)
        assert r.returncode == ExitCode.PREFLIGHT, (cmd, r.stderr)
        assert "CAP_BPF" in r.stderr and "CAP_PERFMON" in r.stderr and "Traceback" not in r.stderr
    for cmd in (["report", "t.kvmtrace"], ["report", "--format", "json", "t.kvmtrace"],
                ["compare", "t.kvmtrace", "t.kvmtrace"], ["trend", "t.kvmtrace", "u.kvmtrace", "-o", "g.png"]):
        r = _as_nobody(*cmd, cwd=work)
        assert r.returncode == 0, (cmd, r.stderr)
    assert (work / "g.png").stat().st_size > 1000


# A domain name cannot hold '/'; everything else a shell would act on is here.
HOSTILE = ["a b 'c' \"d\"", "x;touch kvmtrace-pwned;$(touch kvmtrace-pwned)`id`|&*?", "dömäin-ü", "..",
           "-dash-first"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_domain_names_and_paths(kernel, tmp_path, name):
    markers = [Path("kvmtrace-pwned"), tmp_path / "kvmtrace-pwned"]
    _conn, dom = start_demo(A, URI, name=name, paused=True)
    out_dir = tmp_path / "dir with spaces, 'quotes' and\nnewline"
    out_dir.mkdir()
    out = out_dir / "t $(x).kvmtrace"
    try:
        p = subprocess.Popen(kvmtrace_cmd("record", f"--domain={name}", f"--output={out}"), stderr=subprocess.PIPE)
        wait_for_line(p.stderr, "recording", 60)
        resume(dom)
        assert p.wait(timeout=120) == 0
    finally:
        stop_demo(dom)
    assert rows(report_json(out)) == expected(A)
    assert load(out).domains[0]["name"] == name
    assert not any(m.exists() for m in markers)
    # the default output name is made safe for a file system
    from kvmtrace.record.session import default_output
    assert "/" not in default_output(name) and "\n" not in default_output(name)
