"""Layers run one way: analysis and reports never import bcc or libvirt."""

import subprocess
import sys

from ..support import paths


def test_analysis_and_report_import_no_kernel_modules():
    code = (
        "import sys\n"
        "import kvmtrace.analysis.summary, kvmtrace.present.report, kvmtrace.trace, kvmtrace.cli.main\n"
        "bad = [m for m in ('bcc', 'libvirt', 'libvirt_qemu', 'kvmtrace.kernel.probe') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_only_probe_module_imports_bcc():
    pkg = paths.ROOT / "kvmtrace"
    users = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*.py")
                   if "from bcc" in p.read_text() or "import bcc" in p.read_text())
    assert users == ["kernel/probe.py"]
