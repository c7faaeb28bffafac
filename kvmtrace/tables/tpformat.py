"""Parse tracepoint ``format`` files from tracefs.

Every tracepoint publishes its record layout and its print format in
``<tracefs>/events/<system>/<name>/format``::

    name: kvm_exit
    ID: 103
    format:
        field:unsigned short common_type;  offset:0;  size:2;  signed:0;
        ...
        field:unsigned int exit_reason;  offset:8;  size:4;  signed:0;

    print fmt: "reason %s ...", (REC->isa == 1) ? __print_symbolic(...) : ...

This module turns that text into an :class:`EventFormat` and extracts the
``__print_symbolic`` / ``__print_flags`` tables from the print format, which
is how the kernel itself names exit reasons.  The recorder stores the raw text
of each format in the trace file (:attr:`EventFormat.text`) so that a trace can
be decoded later, on another machine, with the tables of the kernel that
produced it. It sits with the tables because that is what a format file is:
the kernel's own layout and name tables for one event (tables/exits reads
them), read by the probe loader and the decoders alike.

Only the standard library (and kvmtrace's errors) is used and importing the
module touches nothing outside it: tracefs is read only by :func:`read_format`
/ :func:`read_formats`. Its errors live in :mod:`kvmtrace.errors` and keep
their builtin bases: FormatParseError is a ValueError, TracepointNotFoundError
a FileNotFoundError, TracefsPermissionError a PermissionError.
"""

from __future__ import annotations

import ast
import dataclasses
import operator
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal

from kvmtrace.errors import FormatParseError, TracefsPermissionError, TracepointNotFoundError

__all__ = [
    "DEFAULT_TRACEFS",
    "EventFormat",
    "Field",
    "FormatParseError",
    "SymbolTable",
    "TracefsPermissionError",
    "TracepointNotFoundError",
    "eval_c_int",
    "flag_tables",
    "parse_format",
    "print_tables",
    "read_format",
    "read_formats",
    "symbolic_tables",
]

#: Where tracefs is mounted on current kernels (older ones: /sys/kernel/debug/tracing).
DEFAULT_TRACEFS = "/sys/kernel/tracing"

_U64_MASK = (1 << 64) - 1


# --------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Field:
    """One ``field:`` line of a format file.

    ``ctype`` is the declared C type without the field name.  For a fixed-size
    array such as ``char comm[16]`` the brackets move to :attr:`array_len`:
    ``ctype == "char"`` and ``array_len == 16``.  ``array_len`` is ``None`` for a
    scalar and ``0`` for an array whose length is not a literal (``[]`` or
    ``[sizeof(...)]``); :attr:`size` is always the field's size in bytes.
    Dynamic arrays keep their declaration as the type:
    ``ctype == "__data_loc char[]"`` (see :attr:`is_dynamic`).
    """

    name: str
    ctype: str
    offset: int
    size: int
    signed: bool
    array_len: int | None = None

    @property
    def is_array(self) -> bool:
        """True for a fixed-size array field (``char comm[16]``)."""
        return self.array_len is not None

    @property
    def is_dynamic(self) -> bool:
        """True for ``__data_loc`` / ``__rel_loc`` fields (offset/length word, data elsewhere)."""
        return self.ctype.startswith(("__data_loc", "__rel_loc"))


@dataclasses.dataclass(frozen=True)
class EventFormat:
    """A parsed tracepoint format.

    ``fields`` holds the event's own fields in record order; the ``common_*``
    header fields every event shares are in ``common_fields``.  ``text`` is the
    raw format file (empty if the object was built by hand); it is excluded from
    equality so two parses of equivalent text compare equal.
    """

    system: str
    name: str
    id: int | None
    fields: tuple[Field, ...]
    common_fields: tuple[Field, ...]
    print_fmt: str
    text: str = dataclasses.field(default="", repr=False, compare=False)

    @property
    def full_name(self) -> str:
        """``"system/name"`` (just ``name`` when the system is unknown)."""
        return f"{self.system}/{self.name}" if self.system else self.name

    @property
    def field_names(self) -> tuple[str, ...]:
        """Names of the event's own fields, in record order."""
        return tuple(f.name for f in self.fields)

    def has(self, name: str) -> bool:
        """True if the event (or its common header) has a field called ``name``."""
        return any(f.name == name for f in self._all_fields())

    def field(self, name: str) -> Field:
        """The field called ``name`` (own or ``common_*``).

        Raises :class:`KeyError` naming the event and the fields it does have,
        e.g. when a trace from an older kernel lacks ``vcpu_id``.
        """
        for f in self._all_fields():
            if f.name == name:
                return f
        raise KeyError(
            f"tracepoint {self.full_name} has no field {name!r} "
            f"(fields: {', '.join(self.field_names) or 'none'})"
        )

    def symbolic_tables(self) -> list[SymbolTable]:
        """The ``__print_symbolic`` tables of :attr:`print_fmt`, in order."""
        return symbolic_tables(self.print_fmt)

    def flag_tables(self) -> list[SymbolTable]:
        """The ``__print_flags`` tables of :attr:`print_fmt`, in order."""
        return flag_tables(self.print_fmt)

    def _all_fields(self) -> Iterator[Field]:
        yield from self.common_fields
        yield from self.fields


@dataclasses.dataclass(frozen=True)
class SymbolTable:
    """One ``__print_symbolic`` or ``__print_flags`` table from a print format.

    ``expr`` is the C expression the table applies to, whitespace-normalised
    (e.g. ``"REC->exit_reason & 0xffff"``); ``values`` maps each value to its
    name, first entry winning as in the kernel's ``trace_print_symbols_seq``.
    ``delimiter`` is the separator of a ``__print_flags`` table.  Entries whose
    value is not an integer constant expression (an enum the kernel did not
    resolve, say) are kept verbatim in ``unparsed`` instead of failing.
    """

    expr: str
    values: Mapping[int, str] = dataclasses.field(hash=False)
    kind: Literal["symbolic", "flags"] = "symbolic"
    delimiter: str | None = None
    unparsed: tuple[str, ...] = ()

    def name(self, value: int, default: str | None = None) -> str | None:
        """The name of ``value`` (``-1`` and ``2**64 - 1`` are the same value), else ``default``."""
        for candidate in _value_aliases(value):
            if candidate in self.values:
                return self.values[candidate]
        return default

    def render(self, value: int) -> str:
        """Format ``value`` as the kernel's trace output would.

        A symbolic table gives the name or ``0x<hex>``; a flags table gives the
        names of the set bits joined by the delimiter, then any leftover bits
        in hex.
        """
        if self.kind == "symbolic":
            found = self.name(value)
            return found if found is not None else f"0x{value & _U64_MASK:x}"
        rest = value & _U64_MASK
        parts: list[str] = []
        for mask, flag in self.values.items():
            m = mask & _U64_MASK
            if m and rest & m == m:
                parts.append(flag)
                rest &= ~m
        if rest:
            parts.append(f"0x{rest:x}")
        return (self.delimiter or "|").join(parts)


def _value_aliases(value: int) -> tuple[int, ...]:
    """``value`` and its other 64-bit two's-complement spelling."""
    u = value & _U64_MASK
    s = u - (1 << 64) if u >> 63 else u
    return (value, u, s)


# --------------------------------------------------------------------------
# Format files
# --------------------------------------------------------------------------

_ARRAY_RE = re.compile(r"\[\s*([^\]]*?)\s*\]\s*$")
_NAME_RE = re.compile(r"([A-Za-z_]\w*)\s*$")
_UNSIGNED_TYPES = re.compile(r"\b(unsigned|u8|u16|u32|u64|__u8|__u16|__u32|__u64|bool|_Bool|size_t|pid_t)\b|\*")


def parse_format(text: str, system: str = "") -> EventFormat:
    """Parse the text of a tracepoint ``format`` file.

    ``system`` is not part of the file and is recorded as given.  Unknown lines
    are ignored; a missing ``ID:`` gives ``id=None``, a missing ``print fmt:``
    an empty :attr:`EventFormat.print_fmt`, and a ``field:`` line without
    ``signed:`` (very old kernels) has its signedness inferred from the type.

    Raises :class:`FormatParseError` if there is no ``name:`` line or a
    ``field:`` line cannot be understood.
    """
    name: str | None = None
    event_id: int | None = None
    print_fmt = ""
    fields: list[Field] = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line.startswith("name:"):
            name = line[len("name:"):].strip()
        elif line.startswith("ID:"):
            try:
                event_id = int(line[len("ID:"):].strip())
            except ValueError as exc:
                raise FormatParseError(f"bad ID line {raw_line!r}") from exc
        elif line.startswith("field:"):
            fields.append(_parse_field_line(line))
        elif line.startswith("print fmt:"):
            print_fmt = line[len("print fmt:"):].strip()
    if not name:
        raise FormatParseError("not a tracepoint format: no 'name:' line")
    common = tuple(f for f in fields if f.name.startswith("common_"))
    own = tuple(f for f in fields if not f.name.startswith("common_"))
    return EventFormat(
        system=system, name=name, id=event_id, fields=own, common_fields=common,
        print_fmt=print_fmt, text=text,
    )


def _parse_field_line(line: str) -> Field:
    """Parse ``field:<decl>;\\toffset:N;\\tsize:N;\\tsigned:N;``."""
    parts = [p.strip() for p in line[len("field:"):].split(";")]
    decl, attrs = parts[0], {}
    for part in parts[1:]:
        key, sep, value = part.partition(":")
        if sep:
            attrs[key.strip()] = value.strip()
    try:
        offset = int(attrs["offset"])
        size = int(attrs["size"])
    except (KeyError, ValueError) as exc:
        raise FormatParseError(f"field line without offset/size: {line!r}") from exc

    array_len: int | None = None
    m = _ARRAY_RE.search(decl)
    # "char comm[16]" is an array field; "__data_loc char[] name" keeps its brackets.
    if m and _NAME_RE.search(decl[: m.start()]):
        length = m.group(1)
        array_len = int(length, 0) if re.fullmatch(r"0[xX][0-9a-fA-F]+|\d+", length) else 0
        decl = decl[: m.start()]
    nm = _NAME_RE.search(decl)
    if not nm:
        raise FormatParseError(f"cannot find the field name in {line!r}")
    fname = nm.group(1)
    ctype = " ".join(decl[: nm.start()].split())
    if "signed" in attrs:
        signed = attrs["signed"] not in ("0", "")
    else:
        signed = not _UNSIGNED_TYPES.search(ctype)
    return Field(name=fname, ctype=ctype, offset=offset, size=size, signed=signed, array_len=array_len)


def _format_path(tracefs: str | os.PathLike[str], system: str, name: str) -> Path:
    return Path(tracefs) / "events" / system / name / "format"


def read_format(system: str, name: str, tracefs: str | os.PathLike[str] = DEFAULT_TRACEFS) -> EventFormat:
    """Read and parse ``<tracefs>/events/<system>/<name>/format``.

    The returned object keeps the raw text in :attr:`EventFormat.text`.
    Raises :class:`TracepointNotFoundError` or :class:`TracefsPermissionError`
    with a message saying what to do.
    """
    path = _format_path(tracefs, system, name)
    try:
        text = path.read_text()
    except PermissionError as exc:
        raise TracefsPermissionError(
            f"cannot read {path}: permission denied",
            "run as root (tracefs is readable by root only on most systems)",
        ) from exc
    except FileNotFoundError as exc:
        if not (Path(tracefs) / "events").is_dir():
            hint = (
                f"tracefs is not mounted at {tracefs}: mount it with "
                f"'mount -t tracefs nodev {tracefs}'"
            )
        elif system == "kvm":
            hint = (
                "the kvm module is not loaded: 'modprobe kvm_intel' or "
                "'modprobe kvm_amd'"
            )
        else:
            hint = f"this kernel has no {system}/{name} tracepoint"
        raise TracepointNotFoundError(f"tracepoint {system}/{name} not found ({path})", hint) from exc
    return parse_format(text, system=system)


def read_formats(
    system: str,
    names: Iterable[str],
    tracefs: str | os.PathLike[str] = DEFAULT_TRACEFS,
    *,
    missing_ok: bool = False,
) -> dict[str, EventFormat]:
    """Read several formats of one system: ``{name: EventFormat}`` in the order given.

    Each value carries its raw text in :attr:`EventFormat.text`, which is what
    a trace file should store.  With ``missing_ok`` an absent tracepoint is left
    out instead of raising :class:`TracepointNotFoundError` (useful for events
    that only newer kernels have).
    """
    out: dict[str, EventFormat] = {}
    for name in names:
        try:
            out[name] = read_format(system, name, tracefs)
        except TracepointNotFoundError:
            if not missing_ok:
                raise
    return out


# --------------------------------------------------------------------------
# Print-format tables
# --------------------------------------------------------------------------

_HELPER_RE = re.compile(r"\b__print_(symbolic|flags)(?:_u64)?\s*\(")


def symbolic_tables(print_fmt: str) -> list[SymbolTable]:
    """Every ``__print_symbolic(EXPR, { v, "name" }, ...)`` table in ``print_fmt``, in order.

    Values may be any integer constant expression the kernel left in the text
    (``0x040 + 13``, ``-1``, ``1UL << 3``); names may be adjacent string
    literals (``"KVM_EXIT_" "IO"`` gives ``"KVM_EXIT_IO"``).
    """
    return [t for t in print_tables(print_fmt) if t.kind == "symbolic"]


def flag_tables(print_fmt: str) -> list[SymbolTable]:
    """Every ``__print_flags(EXPR, "delim", { mask, "name" }, ...)`` table in ``print_fmt``, in order."""
    return [t for t in print_tables(print_fmt) if t.kind == "flags"]


def print_tables(print_fmt: str) -> list[SymbolTable]:
    """All ``__print_symbolic`` and ``__print_flags`` tables (and their ``_u64`` forms), in order."""
    tables: list[SymbolTable] = []
    pos = 0
    while True:
        m = _find_helper(print_fmt, pos)
        if m is None:
            return tables
        close = _matching_paren(print_fmt, m.end() - 1)
        if close < 0:  # unbalanced: truncated or mangled print fmt
            return tables
        kind: Literal["symbolic", "flags"] = "flags" if m.group(1) == "flags" else "symbolic"
        tables.append(_parse_helper_args(kind, print_fmt[m.end():close]))
        pos = m.end()  # nested helpers are found too


def _find_helper(text: str, pos: int) -> re.Match[str] | None:
    """The next ``__print_*(`` at or after ``pos`` that is not inside a string literal."""
    for m in _HELPER_RE.finditer(text, pos):
        if not _inside_string(text, m.start()):
            return m
    return None


def _inside_string(text: str, index: int) -> bool:
    in_str, i = False, 0
    while i < index:
        c = text[i]
        if in_str and c == "\\":
            i += 2
            continue
        if c == '"':
            in_str = not in_str
        i += 1
    return in_str


def _matching_paren(text: str, open_index: int) -> int:
    """Index of the bracket closing the one at ``open_index``, skipping string/char literals; -1 if none."""
    depth = 0
    i = open_index
    while i < len(text):
        c = text[i]
        if c in "\"'":
            i = _skip_literal(text, i)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _skip_literal(text: str, i: int) -> int:
    """Index just past the string or char literal starting at ``text[i]``."""
    quote = text[i]
    i += 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    return i


def _split_top_level(text: str) -> list[str]:
    """Split at commas not nested in brackets or literals; parts are stripped."""
    parts: list[str] = []
    depth, start, i = 0, 0, 0
    while i < len(text):
        c = text[i]
        if c in "\"'":
            i = _skip_literal(text, i)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
        i += 1
    tail = text[start:].strip()
    if tail or parts:
        parts.append(tail)
    return parts


def _parse_helper_args(kind: Literal["symbolic", "flags"], args_text: str) -> SymbolTable:
    args = _split_top_level(args_text)
    expr = " ".join(args[0].split()) if args else ""
    entries = args[1:]
    delimiter: str | None = None
    if kind == "flags" and entries and not entries[0].startswith("{"):
        delimiter = _string_literal(entries[0])
        entries = entries[1:]
    values: dict[int, str] = {}
    unparsed: list[str] = []
    for entry in entries:
        parsed = _parse_entry(entry)
        if parsed is None:
            if entry:
                unparsed.append(" ".join(entry.split()))
            continue
        values.setdefault(*parsed)
    return SymbolTable(expr=expr, values=values, kind=kind, delimiter=delimiter, unparsed=tuple(unparsed))


def _parse_entry(entry: str) -> tuple[int, str] | None:
    """``{ value-expr, "name" "parts" }`` -> ``(value, "nameparts")``, or None."""
    entry = entry.strip()
    if not (entry.startswith("{") and entry.endswith("}")):
        return None
    inner = _split_top_level(entry[1:-1])
    if len(inner) != 2:
        return None
    value = eval_c_int(inner[0])
    name = _string_literal(inner[1])
    if value is None or name is None:
        return None
    return value, name


_STRING_RE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
_SIMPLE_ESCAPES = {
    "n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
    "\\": "\\", '"': '"', "'": "'",
}


def _string_literal(text: str) -> str | None:
    """The value of one or more adjacent C string literals, or None if ``text`` is anything else."""
    pieces: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        m = _STRING_RE.match(text, pos)
        if not m:
            return None
        pieces.append(_unescape(m.group(1)))
        pos = m.end()
    return "".join(pieces) if pieces else None


def _unescape(body: str) -> str:
    def repl(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc[0] in "xX":
            return chr(int(esc[1:], 16))
        if esc[0] in "01234567":
            return chr(int(esc, 8))
        return _SIMPLE_ESCAPES.get(esc, esc)

    return re.sub(r"\\([xX][0-9a-fA-F]+|[0-7]{1,3}|.)", repl, body)


# Integer constant expressions -------------------------------------------------

_C_NUMBER_RE = re.compile(r"\b(0[xX][0-9a-fA-F]+|0[bB][01]+|\d+)([uU]?[lL]{0,2}[uU]?)\b")
_C_CAST_RE = re.compile(
    r"\(\s*(?:(?:unsigned|signed|long|int|short|char|const|u8|u16|u32|u64|s8|s16|s32|s64|"
    r"__u8|__u16|__u32|__u64|__s8|__s16|__s32|__s64|size_t)\s*)+\)"
)
_BINOPS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.BitXor: operator.xor,
    ast.LShift: operator.lshift, ast.RShift: operator.rshift,
}
_ALLOWED_UNARY = (ast.USub, ast.UAdd, ast.Invert)


def eval_c_int(text: str) -> int | None:
    """Evaluate a C integer constant expression (``0x040 + 13``, ``-1``, ``(1UL << 3)``).

    Supports decimal, hex, octal and binary literals with ``U``/``L`` suffixes,
    integer casts, parentheses, unary ``- + ~`` and binary ``+ - * | & ^ << >>``.
    Returns None for anything else (an identifier, a division...).
    """
    src = _C_CAST_RE.sub(" ", text)

    def number(m: re.Match[str]) -> str:
        lit = m.group(1)
        if lit[:2] in ("0x", "0X", "0b", "0B"):
            return str(int(lit, 0))
        if len(lit) > 1 and lit.startswith("0"):
            return str(int(lit, 8)) if re.fullmatch(r"[0-7]+", lit) else lit
        return lit

    src = _C_NUMBER_RE.sub(number, src).strip()
    if not src:
        return None
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError:
        return None
    return _eval_node(tree.body)


def _eval_node(node: ast.expr) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, _ALLOWED_UNARY):
        v = _eval_node(node.operand)
        if v is None:
            return None
        return -v if isinstance(node.op, ast.USub) else (~v if isinstance(node.op, ast.Invert) else v)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _eval_node(node.left), _eval_node(node.right)
        if a is None or b is None:
            return None
        if isinstance(node.op, (ast.LShift, ast.RShift)) and not 0 <= b < 128:
            return None
        return _BINOPS[type(node.op)](a, b)
    return None
