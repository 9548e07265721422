"""Key selection and renaming rules for :func:`surgery.load_partial`.

Selection (``include=`` / ``exclude=``) works on the checkpoint's keys before
renaming, in the path grammar of :mod:`surgery.paths._grammar`. A pattern selects a key
when it matches the key itself *or one of its module prefixes*, so a module
path selects everything under it::

    include="backbone"            backbone.conv1.weight, backbone.layer1.0.bn1.running_mean, ...
    include="blocks[1:3]"         blocks.1.* and blocks.2.* (slices of numbered segments)
    include="layer*.*.bn?"        every tensor of those BatchNorms
    exclude="**.num_batches_tracked"
    include="re:.*\\.weight"      re.fullmatch on the key (or a prefix)

A key is selected when it matches some ``include`` pattern (all keys when
``include`` is None) and no ``exclude`` pattern.

Renaming (``rename=``) has three forms:

* a dict of prefix rules at dot boundaries: ``{"backbone.": "", "module.": ""}``.
  ``"a.b"`` and ``"a.b."`` mean the same; ``""`` as the old prefix adds a
  prefix to every key (``{"": "encoder."}``). Each key is renamed by the one
  rule with the longest matching prefix; keys no rule matches pass unchanged.
* a list of ``(regex, replacement)`` pairs, applied in order, each to the
  result of the previous one, with ``re.sub(..., count=1)`` semantics: the
  replacement is a string with back-references or a callable on the match.
* a callable ``key -> new key | None``; ``None`` drops the key.

A dict or list rule that renames no selected key is reported in
``LoadReport.unused_rules``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import ArgumentError, LoadError
from ..paths._grammar import Slice, compile_pattern, compile_regex, parse_path

__all__ = ["KeyFilter", "RenameRules", "RenameSpec"]

RenameSpec = Mapping[str, str] | Sequence[tuple[Any, Any]] | Callable[[str], str | None] | None


def _prefixes(key: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "a.b", "a.b.c"]``."""
    parts = key.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


class _SliceMatcher:
    """Matches keys under a path with slice segments (``layer[1:3]``, ``blocks[-2:]``).

    Slices apply to numbered segments; negative bounds count from the largest
    index present among the keys at that position.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.segments = parse_path(text).segments
        self._lengths: dict[tuple[str, ...], int] = {}

    def prepare(self, keys: Iterable[str]) -> None:
        n = len(self.segments)
        for key in keys:
            parts = key.split(".")
            for i in range(min(n, len(parts))):
                if isinstance(self.segments[i], (Slice, int)) and parts[i].isdigit():
                    pre = tuple(parts[:i])
                    self._lengths[pre] = max(self._lengths.get(pre, 0), int(parts[i]) + 1)

    def __call__(self, key: str) -> bool:
        parts = key.split(".")
        if len(parts) < len(self.segments):
            return False
        for i, seg in enumerate(self.segments):
            part = parts[i]
            if isinstance(seg, str):
                if part != seg:
                    return False
                continue
            if not part.isdigit():
                return False
            length = self._lengths.get(tuple(parts[:i]), 0)
            if isinstance(seg, int):
                if (seg if seg >= 0 else length + seg) != int(part):
                    return False
            elif int(part) not in range(length)[seg.to_slice()]:
                return False
        return True


@dataclass
class KeyFilter:
    """``include`` / ``exclude`` compiled once; ``selects(key)`` applies both."""

    include: list[Any] = field(default_factory=list)
    exclude: list[Any] = field(default_factory=list)
    include_all: bool = True

    @classmethod
    def build(cls, include: Any, exclude: Any, keys: Sequence[str]) -> KeyFilter:
        """Compile the patterns (negative indices resolved against ``keys``).

        Raises:
            PathSyntaxError: a pattern does not parse.
            ArgumentError: a pattern is not a str.
        """
        inc = cls._compile(include, "include", keys)
        exc = cls._compile(exclude, "exclude", keys)
        return cls(inc, exc, include is None)

    @staticmethod
    def _compile(spec: Any, what: str, keys: Sequence[str]) -> list[Any]:
        if spec is None:
            return []
        items = [spec] if isinstance(spec, str) else spec
        if not isinstance(items, (list, tuple, set, frozenset)):
            raise ArgumentError(
                f"{what} must be a pattern (str) or a list of patterns, got {type(spec).__name__}"
            )
        out: list[Any] = []
        for text in items:
            if not isinstance(text, str):
                raise ArgumentError(f"{what} patterns must be str, got {text!r}")
            pat = compile_pattern(text)
            if (
                pat.kind == "path"
                and pat.path is not None
                and (
                    pat.path.has_slice
                    or any(isinstance(s, int) and s < 0 for s in pat.path.segments)
                )
            ):
                sm = _SliceMatcher(text)
                sm.prepare(keys)
                out.append((text, sm))
            else:
                out.append((text, pat.matcher))
        return out

    @staticmethod
    def _any(patterns: list[Any], key: str) -> bool:
        prefixes = _prefixes(key)
        return any(match(p) for _, match in patterns for p in prefixes)

    def selects(self, key: str) -> bool:
        """True when ``key`` is included and not excluded."""
        if not self.include_all and not self._any(self.include, key):
            return False
        return not (self.exclude and self._any(self.exclude, key))

    def unmatched(self, keys: Sequence[str]) -> list[str]:
        """Include patterns that select none of ``keys`` (for error hints)."""
        return [t for t, m in self.include if not any(self._any([(t, m)], k) for k in keys)]


@dataclass
class RenameRules:
    """A compiled ``rename=`` spec. ``apply(key)`` returns the new key or None (dropped)."""

    kind: str  # "none", "prefix", "regex", "callable"
    prefix: list[tuple[str, str, str]] = field(default_factory=list)  # (label, old, new)
    order: list[str] = field(default_factory=list)  # labels in the order given
    regex: list[tuple[str, Any, Any]] = field(default_factory=list)  # (label, re or RE2, repl)
    func: Callable[[str], str | None] | None = None
    used: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, rename: Any) -> RenameRules:
        """Validate and compile ``rename``.

        Raises:
            ArgumentError: the spec has the wrong shape or a regex does not compile.
        """
        if rename is None:
            return cls("none")
        if isinstance(rename, Mapping):
            rules = []
            for old, new in rename.items():
                if not isinstance(old, str) or not isinstance(new, str):
                    raise ArgumentError(
                        f"rename dict maps str prefixes to str prefixes, got {old!r}: {new!r}"
                    )
                rules.append((old, old.strip("."), new.strip(".")))
            order = [r[0] for r in rules]
            rules.sort(key=lambda r: -len(r[1]))  # longest prefix wins (stable for ties)
            return cls("prefix", prefix=rules, order=order)
        if callable(rename):
            return cls("callable", func=rename)
        if isinstance(rename, (list, tuple)):
            out = []
            for item in rename:
                if not (isinstance(item, (list, tuple)) and len(item) == 2):
                    raise ArgumentError(
                        "rename list items must be (regex, replacement) pairs, got "
                        f"{item!r}; e.g. rename=[(r'^module\\.', '')]"
                    )
                pat, repl = item
                if not isinstance(repl, str) and not callable(repl):
                    raise ArgumentError(
                        f"rename replacement for {pat!r} must be a str or a callable on the "
                        f"match, got {type(repl).__name__}"
                    )
                if isinstance(pat, re.Pattern):
                    rx = pat
                elif isinstance(pat, str):
                    try:
                        re.compile(pat)
                    except re.error as exc:
                        raise ArgumentError(
                            f"rename regex {pat!r} does not compile: {exc}"
                        ) from None
                    rx = compile_regex(pat, what=f"rename regex {pat!r}")
                else:
                    raise ArgumentError(f"rename regex must be a str, got {type(pat).__name__}")
                out.append((rx.pattern, rx, repl))
            return cls("regex", regex=out)
        raise ArgumentError(
            "rename must be a dict of prefixes ({'backbone.': ''}), a list of (regex, "
            f"replacement) pairs, or a callable key -> new key | None; got {type(rename).__name__}"
        )

    def apply(self, key: str) -> str | None:
        """The new name of ``key`` (None: dropped).

        Raises:
            LoadError: a rule produced an invalid key, or the callable failed.
        """
        if self.kind == "none":
            return key
        if self.kind == "prefix":
            for label, old, new in self.prefix:
                if old == "":
                    self.used.add(label)
                    return _join(new, key)
                if key == old or key.startswith(old + "."):
                    self.used.add(label)
                    rest = key[len(old) + 1 :]
                    out = _join(new, rest)
                    if not out:
                        raise LoadError(
                            f"rename rule {label!r}: {new!r} turns key {key!r} into an empty key"
                        )
                    return out
            return key
        if self.kind == "regex":
            out = key
            for label, rx, repl in self.regex:
                try:
                    new, n = rx.subn(repl, out, count=1)
                except Exception as exc:
                    raise LoadError(
                        f"rename rule {label!r} failed on key {out!r}: {type(exc).__name__}: {exc}"
                    ) from exc
                if n:
                    self.used.add(label)
                    if not isinstance(new, str):
                        raise LoadError(f"rename rule {label!r} returned {new!r} for {out!r}")
                    out = new
            if not out:
                raise LoadError(f"rename rules turn key {key!r} into an empty key")
            return out
        assert self.func is not None
        try:
            result = self.func(key)
        except Exception as exc:
            raise LoadError(
                f"the rename callable raised on key {key!r}: {type(exc).__name__}: {exc}"
            ) from exc
        if result is None:
            return None
        if not isinstance(result, str) or not result:
            raise LoadError(
                f"the rename callable must return a non-empty str or None, got {result!r} for "
                f"key {key!r}"
            )
        return result

    def labels(self) -> list[str]:
        if self.kind == "prefix":
            return list(self.order)
        if self.kind == "regex":
            return [label for label, _, _ in self.regex]
        return []

    def unused(self) -> list[str]:
        """Rules (their old prefix or regex text) that renamed no key, in given order."""
        return [label for label in self.labels() if label not in self.used]


def _join(prefix: str, rest: str) -> str:
    if prefix and rest:
        return f"{prefix}.{rest}"
    return prefix or rest
