"""Where the tests find the checkout, their data and the traces beside it,
computed once here so that no test depends on its own depth in tests/."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent  # the checkout: kvmtrace/, sample-traces/, notebooks/
DATA = TESTS / "data"  # small inputs written or captured for the unit tests
EXPECTED = TESTS / "golden" / "expected"  # committed outputs the golden tests compare with
SAMPLES = ROOT / "sample-traces"
NOTEBOOKS = ROOT / "notebooks"
# Recordings of real Intel hosts, kept beside the checkout (../shared/real-traces),
# not in it; the tests that read them skip when they are absent.
REAL_TRACES = ROOT.parent / "shared" / "real-traces"
