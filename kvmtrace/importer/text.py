"""The importer's names as they were before it became a package.

``kvmtrace.importer.text`` was the whole importer; it is now
:mod:`kvmtrace.importer` and its modules.  New code imports from
:mod:`kvmtrace.importer`; this module stays until no caller uses it.
"""

from kvmtrace.importer.convert import BATCH_EVENTS, default_output, import_text
from kvmtrace.importer.result import ImportResult
from kvmtrace.importer.source import FORMATS, detect_format

__all__ = ["FORMATS", "BATCH_EVENTS", "ImportResult", "default_output", "detect_format", "import_text"]
