"""Layers run one way, over the whole package.

Every ``kvmtrace/**/*.py`` is parsed with ``ast`` and each of its imports, at
any depth (function-local ones too, and ``from x import y`` resolved to the
module ``x.y`` when that is a module), is checked against two tables: which
kvmtrace layers a layer may import (LAYERS), and where the heavy or
privileged third-party packages may be used (THIRD_PARTY). A subprocess then
checks what really loads: the analysis, report and CLI modules load no bcc
and no libvirt.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass

import pytest

from ..support import paths

PACKAGE = paths.ROOT / "kvmtrace"

# A layer is a subpackage (kvmtrace/kernel/...) or a top-level module
# (kvmtrace/trace.py); "kvmtrace" is the package's own __init__.py.  Each
# layer lists the kvmtrace modules it may import: a name allows that module
# and everything under it ("kernel.events" allows kvmtrace.kernel.events
# only, "kernel" the whole subpackage).  Read from the top down, no layer
# imports one listed after it, except the CLI, which wires them all.
LAYERS: dict[str, tuple[str, ...]] = {
    "errors": (),
    "tables": ("errors", "tables"),
    "kernel": ("errors", "tables", "kernel"),
    "tracefile": ("errors", "tables", "kernel"),
    "record": ("errors", "tables", "kernel", "tracefile", "record"),
    "live": ("errors", "tables", "kernel", "tracefile", "record", "live", "analysis"),
    "importer": ("errors", "tables", "kernel", "tracefile", "importer"),
    "analysis": ("errors", "tables", "kernel.events", "analysis"),
    "trace": ("errors", "tables", "kernel.events", "tracefile", "analysis", "trace"),
    "present": ("errors", "tables", "kernel.events", "tracefile", "analysis", "trace", "present"),
    "demo": ("errors", "record", "demo"),
    "cli": ("*",),
    "kvmtrace": ("trace",),
}
# Every layer may import the package itself (``from kvmtrace import
# __version__``): Python runs kvmtrace/__init__.py before any submodule
# anyway, and it imports nothing until ``kvmtrace.load`` is called.
EVERYONE_MAY_IMPORT = ("kvmtrace",)
# kvmtrace.kernel.probe is the live kernel (bcc, root): of the layers that
# may import kernel, only those that record may import it.
PROBE = "kernel.probe"
PROBE_USERS = ("record", "live", "cli")

# Third-party packages that need privileges or a display, and where they may
# be imported: module paths relative to kvmtrace/, a trailing "/" for a folder.
THIRD_PARTY: dict[str, tuple[str, ...]] = {
    "bcc": ("kernel/probe.py",),
    "libvirt": ("record/",),
    "libvirt_qemu": ("record/",),
    "matplotlib": ("present/",),
}
# The analyses are pure pandas: they render nothing and touch no kernel.
ANALYSIS_NEVER = ("bcc", "libvirt", "libvirt_qemu", "matplotlib", "rich")

# Imports that break the tables, each named with the fix it waits for. Empty:
# the last five were fixed (tpformat moved to tables; the demo goes through
# record.domain; trend's graph and compare's text moved to present). An entry
# here is a debt, not a permission: test_nothing_is_left_to_fix fails on it.
TO_FIX: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    path: str  # relative to kvmtrace/, e.g. "analysis/records.py"
    module: str  # the importing module, e.g. "kvmtrace.analysis.records"
    line: int
    name: str  # the imported module, e.g. "kvmtrace.kernel.events" or "bcc"

    def where(self) -> str:
        return f"kvmtrace/{self.path}:{self.line} ({self.module}) imports {self.name}"


def _module_name(rel: str) -> str:
    parts = ["kvmtrace", *rel[: -len(".py")].split("/")]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    base = paths.ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def package_imports() -> list[Import]:
    """Every import statement of every module of the package, resolved to a module name."""
    found = []
    for file in sorted(PACKAGE.rglob("*.py")):
        rel = file.relative_to(PACKAGE).as_posix()
        module = _module_name(rel)
        package = module if file.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                found += [Import(rel, module, node.lineno, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module
                for a in node.names:
                    sub = f"{source}.{a.name}"
                    found.append(Import(rel, module, node.lineno, sub if _is_module(sub) else source))
    return found


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kvmtrace"


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _under(path: str, places: tuple[str, ...]) -> bool:
    return any(path.startswith(p) if p.endswith("/") else path == p for p in places)


def broken_rule(imp: Import) -> tuple[str, str] | None:
    """(key, rule broken) for an import the tables forbid, None for one they allow."""
    top = imp.name.split(".")[0]
    if top != "kvmtrace":
        if imp.path.startswith("analysis/") and top in ANALYSIS_NEVER:
            return top, f"analysis imports none of {', '.join(ANALYSIS_NEVER)} (pure pandas, no root, no display)"
        if top in THIRD_PARTY and not _under(imp.path, THIRD_PARTY[top]):
            return top, f"{top} only in {', '.join('kvmtrace/' + p for p in THIRD_PARTY[top])}"
        return None
    layer = layer_of(imp.module)
    assert layer in LAYERS, f"kvmtrace/{imp.path}: layer {layer!r} is missing from LAYERS"
    target = imp.name.removeprefix("kvmtrace").removeprefix(".")
    allowed = LAYERS[layer]
    if not target or target in EVERYONE_MAY_IMPORT or "*" in allowed:
        return None
    if not any(_within(target, a) for a in allowed):
        return imp.name, f"layer {layer!r} may import only {', '.join(allowed) or 'nothing of kvmtrace'}"
    if _within(target, PROBE) and layer not in PROBE_USERS:
        return imp.name, f"{PROBE} (the live kernel) only from {', '.join(PROBE_USERS)}"
    return None


def violations() -> dict[tuple[str, str], list[str]]:
    """Broken rules by (module path, imported name): each 'where: rule' message."""
    out: dict[tuple[str, str], list[str]] = {}
    for imp in package_imports():
        broken = broken_rule(imp)
        if broken is not None:
            key, rule = broken
            out.setdefault((imp.path, key), []).append(f"{imp.where()}: {rule}")
    return out


def test_the_table_names_every_layer():
    layers = {layer_of(i.module) for i in package_imports()}
    assert layers <= set(LAYERS), f"layers missing from LAYERS: {sorted(layers - set(LAYERS))}"
    # the scan sees what it must: a plain, a from-, a relative and a function-local import
    names = {(i.path, i.name) for i in package_imports()}
    assert ("kernel/probe.py", "bcc") in names
    assert ("trace/core.py", "kvmtrace.analysis.summary") in names
    assert ("__init__.py", "kvmtrace.trace") in names


def test_imports_follow_the_layers():
    found = violations()
    new = [msg for key, msgs in sorted(found.items()) if key not in TO_FIX for msg in msgs]
    assert not new, "imports against the layer rules:\n" + "\n".join(new)
    fixed = sorted(f"kvmtrace/{path} no longer imports {name}" for path, name in TO_FIX
                   if (path, name) not in found)
    assert not fixed, "fixed, delete from TO_FIX:\n" + "\n".join(fixed)


def test_nothing_is_left_to_fix():
    assert TO_FIX == {}, "\n".join(f"kvmtrace/{p} imports {n}: {why}" for (p, n), why in TO_FIX.items())


def test_rules_are_broken_with_a_message_that_names_them():
    bad = Import("analysis/records.py", "kvmtrace.analysis.records", 7, "bcc")
    key, rule = broken_rule(bad)
    assert key == "bcc" and "analysis imports none of bcc" in rule
    up = Import("tracefile.py", "kvmtrace.tracefile", 3, "kvmtrace.trace")
    assert broken_rule(up) == ("kvmtrace.trace", "layer 'tracefile' may import only errors, tables, kernel")
    probe = Import("importer/convert.py", "kvmtrace.importer.convert", 9, "kvmtrace.kernel.probe")
    assert broken_rule(probe)[1] == "kernel.probe (the live kernel) only from record, live, cli"
    assert broken_rule(Import("present/report.py", "kvmtrace.present.report", 1, "kvmtrace")) is None
    assert broken_rule(Import("cli/main.py", "kvmtrace.cli.main", 1, "kvmtrace.record.session")) is None


def test_analysis_report_and_cli_load_no_bcc_or_libvirt():
    code = (
        "import sys\n"
        "import kvmtrace.trace, kvmtrace.present.report, kvmtrace.cli, kvmtrace.cli.main\n"
        "bad = [m for m in ('bcc', 'libvirt', 'libvirt_qemu', 'kvmtrace.kernel.probe') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
