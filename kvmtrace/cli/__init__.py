"""The ``kvmtrace`` command: one entry point, a subcommand per job."""

from kvmtrace.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
