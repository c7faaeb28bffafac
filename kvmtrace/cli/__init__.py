"""The ``kvmtrace`` command: one entry point, a subcommand per job.

:mod:`.parser` builds the command line from shared argument groups,
:mod:`.commands` holds each subcommand's handler, :mod:`.main` runs them.
"""

from kvmtrace.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
