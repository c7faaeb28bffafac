"""serve against a running guest: every histogram series with the same le set,
and an exposition promtool accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.request
from collections import defaultdict

from kvmtrace.demo.guest import Workload
from kvmtrace.demo.run import start_demo, stop_demo
from kvmtrace.live.serve import BUCKETS

from ..support.cli import kvmtrace_cmd
from ..support.kernel import URI, kvmtrace_progs, wait_for_line


def test_live_scrape_has_one_le_set_and_passes_promtool(kernel, domain_name):
    port = 19465
    _conn, dom = start_demo(Workload(steady=True), URI, name=domain_name)
    proc = subprocess.Popen(kvmtrace_cmd("serve", "--domain", domain_name, "--port", str(port)),
                            stderr=subprocess.PIPE)
    try:
        wait_for_line(proc.stderr, "serving metrics", 60)
        time.sleep(1.5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        stop_demo(dom)
    les = defaultdict(list)
    for name, labels, value in re.findall(r"^(kvmtrace_\w+_seconds_bucket)\{(.*)\} (\S+)$", text, re.M):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        les[(name, tuple(sorted((k, v) for k, v in pairs.items() if k != "le")))].append(pairs["le"])
    assert {k[1] for k in les} >= {(("domain", domain_name), ("reason", "IO")),
                                   (("domain", domain_name), ("reason", "MMIO"))}
    want = [*(float(b) for b in BUCKETS), float("inf")]
    for series, le in les.items():
        assert [float(x) for x in le] == want, series
    assert 'handled_by="vmm"' in text and "handler=" not in text
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    assert kvmtrace_progs() == []
