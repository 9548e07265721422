"""The path grammar: parse and format module paths, compile patterns.

This module knows nothing about models; :mod:`surgery.paths._resolve` resolves paths
against an ``nn.Module``.

Paths::

    ""                    the root
    layer3.0.conv1        dotted names (ModuleDict keys too)
    features.6            a non-negative integer segment (canonical form)
    features[6]           the same, bracketed
    features[-1]          a negative index (always printed bracketed)
    features[7:14]        a slice of a Sequential/ModuleList (printed bracketed)
    blocks[:-1], x[::2]   any Python slice with integer bounds

Patterns (``find``, ``freeze``, ``load_partial(include=...)``)::

    layer*.*.bn?          ``*`` and ``?`` match inside one segment
    **.downsample         ``**`` matches any number of whole segments
    **                    every module (root excluded)
    re:layer[12]\\..*     ``re.fullmatch`` on the dotted name
    layer3                a plain path is a pattern that matches itself
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .._errors import PathError, PathSyntaxError

__all__ = ["Path", "Pattern", "Segment", "Slice", "compile_pattern", "compile_regex", "parse_path"]


class Slice(NamedTuple):
    """A hashable slice segment (Python 3.10/3.11 slices are not hashable)."""

    start: int | None
    stop: int | None
    step: int | None

    def to_slice(self) -> slice:
        return slice(self.start, self.stop, self.step)

    def __str__(self) -> str:
        def fmt(v: int | None) -> str:
            return "" if v is None else str(v)

        text = f"{fmt(self.start)}:{fmt(self.stop)}"
        if self.step is not None:
            text += f":{self.step}"
        return text


Segment = str | int | Slice

_NAME_FORBIDDEN = set(".[]*?") | {" ", "\t", "\n", "\r", "\x0b", "\x0c"}
_INT_RE = re.compile(r"-?[0-9]+")


def _segment_key(seg: Segment) -> tuple:
    if isinstance(seg, str):
        return (0, seg)
    if isinstance(seg, int):
        return (1, seg)

    def bound(v: int | None) -> tuple[int, int]:
        return (0, 0) if v is None else (1, v)

    return (2, bound(seg.start), bound(seg.stop), bound(seg.step))


@functools.total_ordering
@dataclass(frozen=True)
class Path:
    """An immutable, hashable, ordered module path.

    Build one with :func:`parse_path`. ``str(path)`` is canonical and
    round-trips through :func:`parse_path`.

    Example:
        >>> from surgery import parse_path
        >>> p = parse_path("features[6]")
        >>> str(p), p.segments
        ('features.6', ('features', 6))
        >>> str(parse_path("blocks[:-1]"))
        'blocks[:-1]'
        >>> parse_path("layer3.0") < parse_path("layer4")
        True
    """

    segments: tuple[Segment, ...] = ()

    def __str__(self) -> str:
        out = ""
        for seg in self.segments:
            if isinstance(seg, Slice) or (isinstance(seg, int) and seg < 0):
                out += f"[{seg}]"
            else:
                out += ("." if out else "") + str(seg)
        return out

    def __repr__(self) -> str:
        return f"Path({str(self)!r})"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Path):
            return NotImplemented
        return tuple(map(_segment_key, self.segments)) < tuple(map(_segment_key, other.segments))

    def __len__(self) -> int:
        return len(self.segments)

    @property
    def is_root(self) -> bool:
        """True for the empty path (the model itself)."""
        return not self.segments

    @property
    def parent(self) -> Path:
        """The path without its last segment (the root's parent is the root)."""
        return Path(self.segments[:-1])

    @property
    def last(self) -> Segment | None:
        """The last segment, or None for the root."""
        return self.segments[-1] if self.segments else None

    def child(self, segment: Segment) -> Path:
        """This path extended by one segment."""
        return Path((*self.segments, segment))

    @property
    def has_slice(self) -> bool:
        """True when any segment is a slice."""
        return any(isinstance(s, Slice) for s in self.segments)


def _parse_int(text: str, base: int, what: str, src: str) -> int:
    if not _INT_RE.fullmatch(text):
        raise PathSyntaxError(src, base, f"expected an integer {what}, found {text!r}")
    return int(text)


def _parse_bracket(src: str, start: int) -> tuple[Segment, int]:
    """Parse ``[...]`` starting at ``src[start] == '['``; return (segment, index after ']')."""
    end = src.find("]", start + 1)
    if end < 0:
        raise PathSyntaxError(src, start, "unclosed '['")
    inner = src[start + 1 : end]
    if "[" in inner:
        raise PathSyntaxError(src, start + 1 + inner.index("["), "nested '['")
    if not inner.strip():
        raise PathSyntaxError(src, start + 1, "empty brackets: expected an index or a slice")
    if ":" not in inner:
        return _parse_int(inner.strip(), start + 1, "index", src), end + 1
    parts = inner.split(":")
    if len(parts) > 3:
        pos = start + 1 + len(parts[0]) + len(parts[1]) + len(parts[2]) + 2
        raise PathSyntaxError(src, pos, "a slice has at most two ':'")
    values: list[int | None] = []
    offset = start + 1
    for part in parts:
        stripped = part.strip()
        values.append(None if not stripped else _parse_int(stripped, offset, "slice bound", src))
        offset += len(part) + 1
    while len(values) < 3:
        values.append(None)
    if values[2] == 0:
        raise PathSyntaxError(src, end - 1, "slice step cannot be zero")
    return Slice(values[0], values[1], values[2]), end + 1


def _wildcard_reason(ch: str) -> str:
    if ch in "*?":
        return f"wildcard {ch!r} is only allowed in patterns (surgery.find, freeze, include=)"
    return ""


def _parse_name(src: str, start: int) -> tuple[Segment, int]:
    i = start
    while i < len(src) and src[i] not in _NAME_FORBIDDEN:
        i += 1
    if i == start:
        if start >= len(src):
            raise PathSyntaxError(src, start, "expected a name after '.'")
        ch = src[start]
        reason = _wildcard_reason(ch)
        if reason:
            pass
        elif ch == ".":
            reason = "empty segment ('..' or a leading '.')"
        elif ch == "]":
            reason = "unmatched ']'"
        else:
            reason = f"unexpected character {ch!r}"
        raise PathSyntaxError(src, start, reason)
    name = src[start:i]
    if _INT_RE.fullmatch(name):
        return int(name), i
    return name, i


@functools.lru_cache(maxsize=4096)
def _parse_cached(text: str) -> Path:
    segments: list[Segment] = []
    i = 0
    n = len(text)
    if n == 0:
        return Path(())
    while i < n:
        ch = text[i]
        if ch == "[":
            seg, i = _parse_bracket(text, i)
        elif ch == ".":
            if not segments:
                raise PathSyntaxError(text, i, "a path cannot start with '.'")
            if i + 1 >= n:
                raise PathSyntaxError(text, i, "a path cannot end with '.'")
            seg, i = _parse_name(text, i + 1)
        elif segments:
            reason = _wildcard_reason(ch) or f"expected '.' or '[' before {ch!r}"
            raise PathSyntaxError(text, i, reason)
        else:
            seg, i = _parse_name(text, i)
        segments.append(seg)
    return Path(tuple(segments))


def parse_path(text: str | Path) -> Path:
    """Parse a module path such as ``"features[7:14]"`` or ``"layer3.0.conv1"``.

    Args:
        text: the path text; ``""`` is the root. A :class:`Path` is returned as is.

    Returns:
        The immutable :class:`Path`.

    Raises:
        PathSyntaxError: the text does not parse; the message has a caret under
            the offending character.

    Example:
        >>> import surgery
        >>> str(surgery.parse_path("features[6]"))
        'features.6'
        >>> str(surgery.parse_path("features[7:14]"))
        'features[7:14]'
        >>> try:
        ...     surgery.parse_path("layer3..0")
        ... except surgery.PathSyntaxError as err:
        ...     print(err)
        invalid path 'layer3..0': empty segment ('..' or a leading '.') at position 7
            'layer3..0'
                    ^
    """
    if isinstance(text, Path):
        return text
    if not isinstance(text, str):
        raise PathSyntaxError(repr(text), 0, f"a path must be a str, not {type(text).__name__}")
    return _parse_cached(text)


# ---------------------------------------------------------------------------
# patterns
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    """A compiled pattern: ``matches(name)`` tells whether a dotted name matches.

    ``kind`` is ``"path"`` (a plain path, matched exactly), ``"glob"`` or ``"regex"``.
    """

    text: str
    kind: str
    regex: Any  # re.Pattern, or an RE2 regex for "re:" patterns (same fullmatch/pattern)
    path: Path | None = None

    def matches(self, name: str) -> bool:
        return self.regex.fullmatch(name) is not None

    @property
    def matcher(self) -> Callable[[str], Any]:
        """The bound ``fullmatch`` of the compiled regex (fast path for loops)."""
        return self.regex.fullmatch


_BRACKET_INDEX = re.compile(r"\[(\d+)\]")


def _glob_segment(seg: str) -> str:
    out = []
    for ch in seg:
        if ch == "*":
            out.append("[^.]*")
        elif ch == "?":
            out.append("[^.]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def _compile_glob(text: str) -> str:
    norm = _BRACKET_INDEX.sub(r".\1", text)
    if norm.startswith("."):
        norm = norm[1:]
    for bad in "[]":
        if bad in norm:
            pos = text.index(bad)
            raise PathSyntaxError(
                text, pos, "slices and negative indices are not allowed in glob patterns"
            )
    segments = norm.split(".")
    pieces: list[str] = []
    need_dot = False
    offset = 0
    for i, seg in enumerate(segments):
        if not seg:
            raise PathSyntaxError(text, min(offset, len(text) - 1), "empty segment in pattern")
        if "**" in seg and seg != "**":
            raise PathSyntaxError(
                text, offset + seg.index("**"), "'**' must be a whole segment (e.g. '**.bn1')"
            )
        for ch in seg:
            if ch in _NAME_FORBIDDEN - set("*?."):
                raise PathSyntaxError(text, offset + seg.index(ch), f"unexpected {ch!r}")
        dot = r"\." if need_dot else ""
        if seg == "**":
            if i == len(segments) - 1:
                pieces.append(dot + r"[^.]+(?:\.[^.]+)*")
            else:
                pieces.append(dot + r"(?:[^.]+\.)*")
                need_dot = False
                offset += len(seg) + 1
                continue
        else:
            pieces.append(dot + _glob_segment(seg))
        need_dot = True
        offset += len(seg) + 1
    return "".join(pieces)


@functools.lru_cache(maxsize=1024)
def compile_regex(source: str, *, what: str) -> Any:
    r"""Compile a regex for untrusted names with RE2: matching takes linear time, never hangs.

    Checkpoint keys and module names are untrusted input, and a backtracking
    engine can take exponential time on a crafted key (``(a|aa)+`` against
    ``"aaaa...x"``). RE2 supports Python's syntax except backreferences and
    lookaround; a regex that uses them is refused.

    Args:
        source: the regex (Python syntax; already known to compile with :mod:`re`).
        what: how to name it in messages (``"pattern 're:...'"``).

    Returns:
        A compiled RE2 regex (``fullmatch``, ``match``, ``search``, ``sub``, ``pattern``).

    Raises:
        PathError: RE2 cannot take the regex (the message says why and what to use).

    Example:
        >>> compile_regex(r"layer(\d+)\.conv", what="pattern").fullmatch("layer3.conv") is not None
        True
    """
    import re2

    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(source, options=options)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise PathError(
            f"{what} cannot be matched in linear time ({detail}): regexes run with RE2, "
            "which has no backreferences (\\1) or lookaround ((?=...), (?!...), (?<=...)); "
            "rewrite it without them, or use a glob ('*' within a segment, '**' across)",
            path=source,
        ) from None


def compile_pattern(text: str) -> Pattern:
    """Compile a pattern for :func:`surgery.find` and friends.

    Raises:
        PathSyntaxError: the pattern (or the regex after ``re:``) does not parse.

    Example:
        >>> from surgery.paths._grammar import compile_pattern
        >>> compile_pattern("layer*.*.bn?").matches("layer1.0.bn1")
        True
        >>> compile_pattern("**.downsample").matches("layer2.0.downsample")
        True
    """
    if not isinstance(text, str):
        raise PathSyntaxError(repr(text), 0, f"a pattern must be a str, not {type(text).__name__}")
    if text.startswith("re:"):
        try:
            re.compile(text[3:])
        except re.error as exc:
            pos = 3 + (exc.pos or 0)
            raise PathSyntaxError(
                text, min(pos, max(len(text) - 1, 0)), f"bad regex: {exc.msg}"
            ) from None
        return Pattern(text, "regex", compile_regex(text[3:], what=f"pattern {text!r}"))
    if "*" in text or "?" in text:
        return Pattern(text, "glob", re.compile(_compile_glob(text)))
    path = parse_path(text)
    return Pattern(text, "path", re.compile(re.escape(str(path))), path)
