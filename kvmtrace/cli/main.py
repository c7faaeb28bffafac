"""The `kvmtrace` command: parse (:mod:`.parser`), run the subcommand (:mod:`.commands`), exit.

Every failure kvmtrace foresees is a KvmtraceError: one line on stderr and
its exit code (the table is :class:`kvmtrace.errors.ExitCode`, listed by
``kvmtrace --help``). argparse reports bad usage itself, with code 2.
"""

from __future__ import annotations

import sys

from kvmtrace.cli.parser import build_parser
from kvmtrace.errors import ExitCode, KvmtraceError

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run ``kvmtrace ARGV...``; the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = ["kvmtrace", *argv]
    try:
        return int(args.run(args))
    except KvmtraceError as e:
        print(f"kvmtrace: error: {e}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        print("kvmtrace: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        return int(ExitCode.BROKEN_PIPE)


if __name__ == "__main__":
    sys.exit(main())
