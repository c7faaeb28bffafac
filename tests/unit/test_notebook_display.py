"""Notebooks show what the reports show (issue 15 item 9): ports and addresses
in hex and durations in µs through present.display.styled, without changing
any dtype; notebook 02 uses the Trace API (trace.compare, kvmtrace.trend),
not analysis internals."""

from __future__ import annotations

import ast

import nbformat
import pandas as pd

import kvmtrace
from kvmtrace.present.display import formatters_for, styled

from ..support.paths import NOTEBOOKS, SAMPLES


def test_styled_frames_show_hex_and_microseconds_and_keep_their_dtypes():
    t = kvmtrace.load(SAMPLES / "demo-finite.kvmtrace")
    runs = t.df_userspace_exits()
    before = runs.dtypes.copy()
    page = styled(runs).to_html()
    assert (runs.dtypes == before).all()
    io = runs[runs["port"] == 0x80].iloc[0]
    assert "<td>0x0080</td>" in page and f"<td>{int(io['port'])}</td>" not in page
    assert f"{io['service_ns'] / 1e3:,.1f} µs" in page
    mm = runs[runs["gpa"] != 0].iloc[0]
    assert f"<td>{int(mm['gpa']):#x}</td>" in page and f"<td>{int(mm['gpa'])}</td>" not in page
    lat = t.df_latency("vmm_service", by=("device", "direction"))
    page = styled(lat).to_html()
    p50 = lat["p50"].iloc[0]
    assert f"{p50 / 1e3:,.1f} µs" in page
    assert lat["p50"].dtype == "float64"
    # index levels too: a groupby over ports
    by_port = t.df_pio().groupby(["port", "direction"], observed=True).size()
    assert "0x0080" in styled(by_port).to_html()
    assert "-" == formatters_for(pd.DataFrame({"service_ns": [-1]}))["service_ns"](-1)


def _code(path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def _imports(src: str) -> set[str]:
    src = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith("%"))
    out = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_notebook_02_uses_the_trace_api():
    src = _code(NOTEBOOKS / "02-regression-across-runs.ipynb")
    assert not any(m.startswith("kvmtrace.analysis") for m in _imports(src)), _imports(src)
    assert ".compare(" in src and "kvmtrace.trend(" in src


def test_notebook_01_shows_frames_as_the_reports_do():
    src = _code(NOTEBOOKS / "01-explore-a-trace.ipynb")
    assert "kvmtrace.present.display" in _imports(src)
    assert "styled(trace.df_latency(" in src and "styled(runs[" in src


def test_trace_compare_and_trend_match_the_analysis():
    runs = [kvmtrace.load(SAMPLES / "series" / f"run{i}.kvmtrace") for i in (1, 2, 6)]
    diff = runs[0].compare(runs[2])
    assert diff.attrs["regression"] is True
    assert runs[0].compare(runs[1]).attrs["regression"] is False
    frame = kvmtrace.trend(runs, baseline=2)
    assert set(frame["run"].astype(str)) == {"run1", "run2", "run6"}
