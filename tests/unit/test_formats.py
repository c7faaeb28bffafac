"""Markdown, CSV and standalone HTML reports on small trace files written by tests/test_plots.py's builder."""

from __future__ import annotations

import html
import io
import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from kvmtrace.present import formats
from kvmtrace.present.formats import CSV_COLUMNS, html_plots, render, render_csv, render_html, render_markdown, report_sections
from kvmtrace.present.report import render_text, report_dict
from kvmtrace.trace import load

from .test_plots import PER_ROUND, ROUNDS, USERSPACE_PER_ROUND, write_counts_trace, write_trace


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("formats")
    return {
        "demo": load(write_trace(d / "demo.kvmtrace")),
        "intel": load(write_trace(d / "intel.kvmtrace", hw=True)),
        # a launch: the VMM creates the VM, then 20 s pass before the guest runs for 2 s
        "launch": load(write_trace(d / "launch.kvmtrace", vcpus=1, launched=True, idle_ns=20_000_000_000)),
        "counts": load(write_counts_trace(d / "counts.kvmtrace")),
    }


@pytest.fixture(scope="module")
def pages(traces):
    return {name: render_html(t) for name, t in traces.items()}


# ---------------------------------------------------------------- Markdown

def md_tables(text: str) -> list[list[list[str]]]:
    """Every GitHub table in ``text``: a list of rows of cells (header first, separator included)."""
    tables, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif block:
            tables.append(block)
            block = []
    return tables


@pytest.mark.parametrize("name", ["demo", "intel", "launch", "counts"])
def test_markdown_tables_parse(traces, name):
    t = traces[name]
    md = render_markdown(t)
    tables = md_tables(md)
    sections = [s for s in report_sections(t) if s.rows]
    assert len(tables) == len(sections)
    for table, sec in zip(tables, sections):
        header, sep, *rows = table
        assert header == sec.columns
        assert all(re.fullmatch(r":?-{3,}:?", c) for c in sep) and len(sep) == len(header)
        assert all(len(r) == len(header) for r in rows)
        assert len(rows) == len(sec.rows)
    for sec in report_sections(t):
        assert f"\n## {sec.title}\n" in md
    assert md.startswith(f"# kvmtrace report: {t.label}\n")  # escaped text, no code span (issue 15)


def test_markdown_has_the_text_reports_sections_and_numbers(traces):
    t = traces["launch"]
    md, text = render_markdown(t), render_text(t, width=200)
    for sec in report_sections(t):
        assert sec.title.split(" (")[0].split(",")[0] in text
    tables = {sec.key: table for sec, table in zip([s for s in report_sections(t) if s.rows], md_tables(md))}
    assert set(tables) == {"userspace_exits", "exits", "lifecycle", "memory_slots", "vmm_service", "pio", "mmio"} - {
        "exits"}
    ue = {r[0]: r for r in tables["userspace_exits"][2:]}
    assert ue["IO"][2] == "io" and ue["IO"][4] == f"{USERSPACE_PER_ROUND['IO'] * ROUNDS:,}"
    pio = {r[0]: r for r in tables["pio"][2:]}
    assert pio["0x0080"][1:5] == ["ioport80", "write", "1", "vmm"]
    assert pio["0x0043"][4] == "kernel"
    assert "Hardware exits (kvm_exit)" in md and "None: kvm:kvm_exit did not fire on this host." in md
    assert [r[1] for r in tables["lifecycle"][2:5]] == ["virDomainCreateXML called", "KVM_CREATE_VM",
                                                        "KVM_CREATE_VCPU"]


def test_markdown_escapes_pipes():
    sec = formats.Section("x", "X", ["a|b"], [False], [["1|2"]])
    assert formats._md_table(sec)[0] == "| a\\|b |"
    assert md_tables("\n".join(formats._md_table(sec)))[0][2] == ["1\\|2"]


# --------------------------------------------------------------------- CSV

@pytest.mark.parametrize("name", ["demo", "intel", "launch", "counts"])
def test_csv_parses_and_totals_equal_the_summary(traces, name):
    t = traces[name]
    df = pd.read_csv(io.StringIO(render_csv(t)), dtype={"port": str, "gpa": str, "slot_flags": str})
    assert list(df.columns) == CSV_COLUMNS
    s = t.summary
    by = df.groupby("section")["count"].sum()
    assert by.get("userspace_exits", 0) == s.userspace_exits["count"].sum()
    assert by.get("pio", 0) == s.pio["count"].sum()
    assert by.get("mmio", 0) == s.mmio["count"].sum()
    assert by.get("exits", 0) == (s.exits["count"].sum() if len(s.exits) else 0)
    ue = df[df["section"] == "userspace_exits"]
    assert (ue["rate_per_s"] - ue["count"] / t.duration_s).abs().max() < 1e-6  # the exact duration, as JSON
    if t.header.get("mode") != "counts":
        runs = t.df_userspace_exits()
        lat = df[df["section"] == "vmm_service"]
        assert lat["count"].sum() == (runs["service_ns"] >= 0).sum()
        assert lat["unpaired"].sum() == (runs["service_ns"] < 0).sum()
        assert lat["p50_us"].notna().all()


def test_csv_rows_carry_devices_hex_and_handlers(traces):
    t = traces["intel"]
    df = pd.read_csv(io.StringIO(render_csv(t)), dtype={"port": str, "gpa": str})
    pio = df[df["section"] == "pio"]
    assert set(pio["port"]) == {"0x0080", "0x0043", "0x0040", "0x0071"}
    per_dev = df[df["section"].isin(["pio", "mmio"])].groupby(["device", "handled_by"])["count"].sum()
    for dev, (kernel, vmm) in PER_ROUND.items():
        assert per_dev.get((dev, "kernel"), 0) == kernel * ROUNDS * 2
        assert per_dev.get((dev, "vmm"), 0) == vmm * ROUNDS * 2
    assert set(df.loc[df["section"] == "mmio", "gpa"]) == {"0xfed00000", "0xfed00010", "0xfec00000"}
    hw = df[df["section"] == "exits"]
    assert dict(zip(hw["reason"], hw["code"])) == {"IO_INSTRUCTION": 30, "EPT_MISCONFIG": 49, "HLT": 12}
    assert set(hw["isa"]) == {"VMX"}
    assert set(df.loc[df["section"] == "exit_handling", "reason"]) == {"IO_INSTRUCTION", "EPT_MISCONFIG", "HLT"}
    ue = df[df["section"] == "userspace_exits"].set_index("reason")
    assert ue.loc["IO", "fields"] == "direction size port count data_offset"


def test_csv_launch_sections(traces):
    t = traces["launch"]
    df = pd.read_csv(io.StringIO(render_csv(t)), dtype={"gpa": str, "slot_flags": str})
    slots = df[df["section"] == "memory_slots"]
    assert slots["bytes"].sum() == t.df_memslots()["size"].sum() == 0xC0000 + 0xF00000
    assert list(slots["gpa"]) == ["0x0", "0x100000"]
    life = df[df["section"] == "lifecycle"]
    assert life["step"].iloc[0] == "virDomainCreateXML called" and "KVM_CREATE_VM" in set(life["step"])
    assert life["count"].isna().all()


# -------------------------------------------------------------------- HTML

class _Refs(HTMLParser):
    """Tags and every attribute that could reach outside the page."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[tuple[str, str, str]] = []
        self.depth: dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.depth[tag] = self.depth.get(tag, 0) + 1
        for k, v in attrs:
            if k in ("href", "src", "xlink:href", "srcset", "action", "poster", "data") and v is not None:
                self.refs.append((tag, k, v))

    def handle_endtag(self, tag):
        self.depth[tag] = self.depth.get(tag, 0) - 1


def figures(page: str) -> dict[str, str]:
    """Each <figure> of the page by its id, with its content."""
    return {m.group(1): m.group(0) for m in re.finditer(r'<figure[^>]*id="plot-([\w-]+)".*?</figure>', page, re.S)}


@pytest.mark.parametrize("name", ["demo", "intel", "launch", "counts"])
def test_html_is_self_contained(pages, name):
    page = pages[name]
    assert "http://" not in page and "https://" not in page
    assert "//" not in re.sub(r"<svg.*?</svg>", "", page, flags=re.S).replace("<!DOCTYPE", "")
    p = _Refs()
    p.feed(page)
    p.close()
    assert not {"script", "link", "iframe", "img", "object", "embed"} & set(p.tags)
    assert all(v.startswith("#") or v.startswith("data:image/png;base64,") for _, _, v in p.refs), p.refs[:5]
    assert all(n == 0 for t, n in p.depth.items() if t in ("section", "figure", "table", "svg", "html", "body"))
    assert re.findall(r"url\(([^)#][^)]*)\)", page) == []  # only url(#id) references inside the SVGs
    assert page.count("<style") == 1 + page.count("<svg")  # the page's own, and one per figure's SVG


@pytest.mark.parametrize("name,missing", [
    ("demo", {"rates-exit": "kvm:kvm_exit", "latency-exit-handling": "kvm:kvm_exit"}),
    ("intel", {}),
    ("launch", {"rates-exit": "kvm:kvm_exit", "latency-exit-handling": "kvm:kvm_exit"}),
    ("counts", {k: "record --mode events" for k in ("rates-device", "rates-userspace-exit", "rates-exit",
                                                    "vcpu-heatmap", "latency-vmm-service",
                                                    "latency-exit-handling")}),
])
def test_html_has_every_plot_or_says_why_not(traces, pages, name, missing):
    page = pages[name]
    figs = figures(page)
    keys = [p.key for group in html_plots(traces[name]).values() for p in group]
    assert sorted(figs) == sorted(keys) and len(keys) == 7
    for key, chunk in figs.items():
        if key in missing:
            assert "<svg" not in chunk and "Not drawn for this trace" in chunk
            assert missing[key] in html.unescape(chunk)
        else:
            assert "<svg" in chunk or "data:image/png;base64," in chunk, key
            assert "<figcaption>" in chunk
    assert page.count("<svg") == 7 - len(missing)


@pytest.mark.parametrize("name", ["demo", "intel", "launch", "counts"])
def test_html_has_every_section_title_and_table(traces, pages, name):
    t, page = traces[name], pages[name]
    secs = report_sections(t)
    for sec in secs:
        assert html.escape(sec.title) in page
    assert page.count("<table>") == sum(1 for s in secs if s.rows)
    for h in ("Exit mix", "Exits over time", "Latency"):
        assert f">{h}</h2>" in page
    d = report_dict(t)
    for r in d["pio"]:
        assert f"<td>{r['port']:#06x}</td><td>{r['device']}</td>" in page
    assert f"<title>kvmtrace report: {t.label}</title>" in page


def test_html_zooms_in_on_a_launch_traces_activity(traces, pages):
    figs = figures(pages["launch"])
    assert "Zoomed in on 19.8-22.0 s, where every exit of this 22 s recording happened." in figs["rates-device"]
    assert "Zoomed in" not in pages["demo"]
    assert "Launch timeline" in pages["launch"] and "KVM memory slots" in pages["launch"]


def test_html_window_can_be_chosen(traces):
    page = render_html(traces["demo"], freq="500ms")
    assert "in 500 ms windows." in page


def test_render_dispatches_by_format(traces):
    t = traces["counts"]
    assert render(t, "markdown") == render_markdown(t)
    assert render(t, "csv") == render_csv(t)
    assert render(t, "text") == render_text(t)
    with pytest.raises(ValueError, match="unknown report format 'pdf'"):
        render(t, "pdf")
