"""deploy/: the Prometheus rules pass promtool's checks and their unit tests,
the Grafana dashboard's queries parse, every metric and label the rules and
the dashboard use is one `kvmtrace serve` exports (read from its collector),
and the systemd unit is one systemd accepts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest
import yaml

from kvmtrace.errors import ExitCode
from kvmtrace.live.serve import KvmtraceCollector

from ..support.paths import ROOT
from .test_serve_metrics import FRAME, scrape

DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
RULES = sorted(PROMETHEUS.glob("*.rules.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
DASHBOARD = DEPLOY / "grafana" / "kvmtrace.json"
UNIT = DEPLOY / "systemd" / "kvmtrace-serve@.service"

#: Metrics rules use before serve exports them: name -> the one rules file
#: allowed to, and the labels they bring.
FUTURE: dict[str, tuple[str, set[str]]] = {}  # kvmtrace_vcpu_seconds_total is exported since issue 12
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None,
                                    reason="promtool is missing: ./setup.sh installs it (Debian's prometheus)")


# ------------------------------------------------------------ PromQL, lightly

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
             "bool", "inf", "nan"}
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (not functions, keywords, labels)."""
    e = _strip_strings(expr)
    e = _MATCHERS.sub("", e)
    e = _LABEL_LIST.sub("", e)
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges and subqueries
    e = re.sub(r"\boffset\s+\w+", "", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", e):
        if m.group().lower() in _KEYWORDS or e[m.end():].lstrip().startswith("("):
            continue
        names.add(m.group())
    return names


def label_names(expr: str) -> set[str]:
    """The label names an expression matches on or groups by."""
    e = _strip_strings(expr)
    out = set()
    for m in _LABEL_LIST.finditer(e):
        out |= {x.strip() for x in m.group(2).split(",") if x.strip()}
    for m in _MATCHERS.finditer(e):
        out |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", m.group(1)))
    return out


def test_the_promql_reader():
    expr = ('sum by (domain, le) (rate(kvmtrace_x_bucket{handled_by="vmm", reason=~"IO|MMIO"}[5m] offset 1d))'
            ' / ignoring (state) group_left sum without (vcpu) (a:recorded:rate5m) > 1.5e-3 and on() vector(1)')
    assert metric_names(expr) == {"kvmtrace_x_bucket", "a:recorded:rate5m"}
    assert label_names(expr) == {"domain", "le", "handled_by", "reason", "state", "vcpu"}
    assert metric_names("histogram_quantile(0.99, rate(y[1h]))") == {"y"}


# ------------------------------------------------------------ what serve exports

@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Metric name (as Prometheus stores it) -> its label names, from a collector run."""
    samples = scrape(FRAME)
    out = {name: set().union(*(labels.keys() for labels, _ in ss)) for name, ss in samples.items()}
    # families the collector yields with no sample here still count, by type
    live = SimpleNamespace(all_domains=False, guests=[], cumulative=lambda: FRAME,
                           session=SimpleNamespace(probes=SimpleNamespace(
                               counters=lambda: SimpleNamespace(lost_total=0))))
    for fam in KvmtraceCollector(live).collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}[fam.type]
        for s in suffixes:
            assert fam.name + s in out, f"{fam.name}{s} has no sample in the collector run"
    return out


def _rules() -> list[tuple[str, dict]]:
    return [(path.name, rule) for path in RULES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def _dashboard_queries() -> list[str]:
    """Every PromQL of the dashboard (panels, rows' panels, template variables),
    with Grafana's variables replaced by what they stand for."""
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for top in dash["panels"] for p in [top, *top.get("panels", [])]]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
            assert m, q
            exprs.append(f"count by ({m.group(2)}) ({m.group(1)})")
    assert len(exprs) >= 10
    return [re.sub(r"\$\{?\w+\}?", ".*", re.sub(r"\$__\w+", "5m", e)) for e in exprs]


# ------------------------------------------------------------ promtool

@needs_promtool
def test_promtool_check_rules():
    r = subprocess.run([PROMTOOL, "check", "rules", *map(str, RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SUCCESS") == len(RULES) >= 2


@needs_promtool
def test_promtool_test_rules():
    r = subprocess.run([PROMTOOL, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True,
                       cwd=PROMETHEUS)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SUCCESS") == len(RULE_TESTS) >= 2


@needs_promtool
def test_dashboard_queries_parse(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(_dashboard_queries())]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    r = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_a_test_that_fires_it_and_one_that_does_not():
    alerts = {rule["alert"] for _, rule in _rules() if "alert" in rule}
    fired, quiet = set(), set()
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert len(alerts) >= 6
    assert alerts <= fired, f"never fired in a test: {sorted(alerts - fired)}"
    assert alerts <= quiet, f"never shown quiet in a test: {sorted(alerts - quiet)}"


# ------------------------------------------------------------ names

def test_rules_use_only_exported_metrics(exported):
    recorded = {rule["record"] for _, rule in _rules() if "record" in rule}
    for file, rule in _rules():
        for name in metric_names(rule["expr"]) - recorded:
            if name in FUTURE:
                assert file == FUTURE[name][0], f"{file} uses the future metric {name}"
                continue
            assert name in exported, f"{file}: {rule.get('record') or rule.get('alert')} uses {name}, " \
                                     f"which serve does not export"


def test_future_metrics_are_not_exported_yet(exported):
    # When serve exports one, move its rules' check from FUTURE to the exporter's list.
    assert not set(FUTURE) & set(exported)


def test_dashboard_uses_only_exported_metrics(exported):
    # Raw metrics only: the dashboard works without the recording rules loaded.
    used = set()
    for expr in _dashboard_queries():
        used |= metric_names(expr)
    assert used, "no metric found in the dashboard"
    assert used <= set(exported), f"not exported by serve: {sorted(used - set(exported))}"
    assert {"kvmtrace_userspace_exits_total", "kvmtrace_pio_total", "kvmtrace_mmio_total",
            "kvmtrace_vmm_service_seconds_bucket"} <= used


def test_labels_used_are_exported(exported):
    known = set().union(*exported.values()) | TARGET_LABELS
    future = set().union(*(labels for _, labels in FUTURE.values()))
    for file, rule in _rules():
        extra = future if file in {f for f, _ in FUTURE.values()} else set()
        assert label_names(rule["expr"]) <= known | extra, (file, rule.get("record") or rule.get("alert"))
    for expr in _dashboard_queries():
        assert label_names(expr) <= known, expr
    assert "handler" not in known and "handled_by" in known


def test_recorded_names_follow_the_convention():
    for file, rule in _rules():
        if "record" in rule:
            assert re.fullmatch(r"[a-z_]+:kvmtrace_[a-z0-9_]+:[a-z0-9_]+", rule["record"]), (file, rule["record"])


# ------------------------------------------------------------ systemd

def _unit() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            keys.setdefault(k.strip(), []).append(v.strip())
    return keys


def test_unit_runs_serve_per_domain_with_only_the_tracing_capabilities():
    u = _unit()
    exec_start = u["ExecStart"][0].split()
    assert exec_start[1:4] == ["serve", "--domain", "%I"] and "--port" in exec_start
    caps = set(u["CapabilityBoundingSet"][0].split())
    assert {"CAP_BPF", "CAP_PERFMON"} <= caps and "CAP_SYS_ADMIN" not in caps
    assert u["NoNewPrivileges"] == ["yes"] and u["ProtectSystem"] == ["strict"]
    # a usage error or a host that cannot record is not retried
    assert set(map(int, u["RestartPreventExitStatus"][0].split())) == {ExitCode.USAGE, ExitCode.PREFLIGHT}
    assert "bpf" in u["SystemCallFilter"][0].split() and "perf_event_open" in u["SystemCallFilter"][0].split()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing")
def test_systemd_accepts_the_unit(tmp_path):
    # A root of our own: the kvmtrace the unit runs, and the units it orders itself after.
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    binary = tmp_path / "usr/local/bin/kvmtrace"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    for target in ("sysinit.target", "basic.target", "shutdown.target", "multi-user.target", "network.target"):
        (units / target).write_text("[Unit]\nDescription=stub\n")
    (units / "libvirtd.service").write_text("[Unit]\nDescription=stub\n[Service]\nExecStart=/bin/true\n")
    shutil.copy(UNIT, units / UNIT.name)
    r = subprocess.run(["systemd-analyze", "verify", f"--root={tmp_path}", "kvmtrace-serve@web1.service"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
