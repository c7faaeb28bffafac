"""The report's forms say the same thing, whole (issue 15 item 8): text wraps at
the terminal's width, not at all into a file, and between phrases, never
inside one; CSV rates use the exact duration, as JSON does; Markdown escapes
what a domain name may hold."""

from __future__ import annotations

import csv
import re
import io
import json

import pytest

from kvmtrace.present.formats import render_csv, render_markdown
from kvmtrace.present.report import report_dict
from kvmtrace.trace import load

from ..support.cli import run
from ..support.paths import SAMPLES

TRACE = SAMPLES / "demo-finite.kvmtrace"


def test_text_into_a_file_has_no_wrap_limit(tmp_path):
    out = tmp_path / "r.txt"
    assert run("report", str(TRACE), "-o", str(out)).returncode == 0
    lines = out.read_text().splitlines()
    host = next(line for line in lines if line.startswith("domain "))
    assert "Linux" in host and "KVM ISA" in host and host.endswith(")")  # one line: nothing folded
    assert run("report", str(TRACE), "--width", "120").stdout != out.read_text() or max(map(len, lines)) <= 120


def test_text_into_a_pipe_wraps_at_80_between_phrases():
    text = run("report", str(TRACE)).stdout
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    trace = load(TRACE)
    host = trace.header["host"]
    isa_phrase = f"KVM ISA {host['isa']} ("
    held = [line for line in lines if isa_phrase in line]
    assert len(held) == 1 and held[0].rstrip().endswith(")"), "the ISA phrase was split"


def test_text_wraps_at_the_given_width():
    wide = run("report", str(TRACE), "--width", "200").stdout.splitlines()
    narrow = run("report", str(TRACE), "--width", "60").stdout.splitlines()
    assert max(map(len, narrow)) <= 60 < max(map(len, wide))


def test_csv_rates_use_the_exact_duration_like_json():
    trace = load(TRACE)
    d = report_dict(trace)
    exact = trace.summary.duration_s
    assert exact != d["duration_s"]  # the JSON's duration_s is rounded to 6 decimals
    json_rates = {("userspace_exits", r["reason"]): r["rate"] for r in d["userspace_exits"]}
    rows = list(csv.DictReader(io.StringIO(render_csv(trace))))
    checked = 0
    for r in rows:
        if r["rate_per_s"]:
            assert float(r["rate_per_s"]) == pytest.approx(int(r["count"]) / exact, rel=0, abs=1e-6)
            if (r["section"], r["reason"]) in json_rates:
                assert float(r["rate_per_s"]) == pytest.approx(json_rates[(r["section"], r["reason"])], abs=1e-6)
            checked += 1
    assert checked > 3


@pytest.mark.parametrize("name", ["evil\n# heading\n<script>alert(1)</script>", "a|b`c*d_e_[x](http://y)"])
def test_markdown_escapes_domain_names(name):
    trace = load(TRACE)
    trace.header["domains"] = [{**trace.domains[0], "name": name}]
    trace.header["label"] = name
    md = render_markdown(trace)
    assert "<script>" not in md and "\n# heading" not in md
    assert "&lt;script&gt;" in md or "|" in name
    for line in md.splitlines():
        if line.startswith("- domain"):
            assert "\\|" in line or "|" not in name
            assert not re.search(r"(?<!\\)\]\(", line), line  # no link: the bracket is escaped


def test_json_and_text_rates_agree():
    trace = load(TRACE)
    d = json.loads(run("report", str(TRACE), "--format", "json").stdout)
    exact = trace.summary.duration_s
    for r in d["userspace_exits"]:
        assert r["rate"] == pytest.approx(r["count"] / exact)
