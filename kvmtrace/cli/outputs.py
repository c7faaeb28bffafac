"""Output files of the `kvmtrace` command: checked before any work, written in one step.

A path that cannot be written is one :class:`~kvmtrace.errors.OutputError`
line (exit 4) naming the path and why, never an ``OSError`` traceback, and it
is found before a report is computed or a graph drawn.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from kvmtrace.errors import OutputError

__all__ = ["check_output", "emit", "output_error"]


def output_error(path: str | os.PathLike, e: OSError, what: str = "the output") -> OutputError:
    """An OSError met writing ``path`` as one line naming the path, the reason and the fix."""
    p = Path(path)
    if isinstance(e, FileNotFoundError) or e.errno == errno.ENOENT:
        return OutputError(f"cannot write {what} {p}: the directory {p.parent} does not exist",
                           "create it first, or give -o a path in an existing directory")
    if isinstance(e, IsADirectoryError) or e.errno == errno.EISDIR:
        return OutputError(f"cannot write {what} {p}: it is a directory", "give a file name inside it")
    if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write {what} {p}: permission denied",
                           "choose a path you may write, e.g. in your home or /tmp")
    return OutputError(f"cannot write {what} {p}: {e.strerror or e}", "free space or choose another path")


def check_output(path: str | os.PathLike | None, what: str = "the output") -> None:
    """Refuse, before any work, a ``path`` that cannot be written: its directory
    missing, the path a directory, or no permission to create or replace it."""
    if not path:
        return
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    try:
        exists = True
        if stat.S_ISDIR(os.stat(p).st_mode):
            raise output_error(p, IsADirectoryError(errno.EISDIR, "Is a directory"), what)
    except FileNotFoundError:
        exists = False
    except OSError as e:  # a directory on the way may not be searched
        raise output_error(p, e, what) from e
    if not exists:
        try:
            parent_is_dir = stat.S_ISDIR(os.stat(parent).st_mode)
        except FileNotFoundError:
            parent_is_dir = False
        except OSError as e:
            raise output_error(p, e, what) from e
        if not parent_is_dir:
            raise output_error(p, FileNotFoundError(errno.ENOENT, "No such file or directory"), what)
    if not os.access(p if exists else parent, os.W_OK if exists else os.W_OK | os.X_OK):
        raise output_error(p, PermissionError(errno.EACCES, "Permission denied"), what)


def emit(text: str, output: str | os.PathLike | None, what: str = "the report") -> None:
    """``text`` to ``output``, or to stdout when it is None."""
    if not output:
        sys.stdout.write(text)
        return
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise output_error(output, e, what) from e
