"""Hints: the fixes an error message suggests, as data, spelled per interface.

A :class:`Hint` is an argument and the value to pass (``Hint("on_mismatch",
"skip")``). Errors carry theirs in :attr:`surgery.SurgeryError.hints`; the
message spells each in Python (``on_mismatch='skip'``), and the command line
respells the same hints as its options (``--on-mismatch skip``, see
:mod:`surgery.cli._render`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Hint"]


class _NoValue:
    def __repr__(self) -> str:
        return "<no value>"


_NO_VALUE: Any = _NoValue()


@dataclass(frozen=True)
class Hint:
    """A fix an error message suggests: an argument and the value to pass.

    ``str(hint)`` is the Python spelling, used in the message; other interfaces
    (the command line) render the same hint in their own syntax. Without a
    value the hint names the argument only (``rename=``: "adjust it").

    Example:
        >>> str(Hint("rename", {"backbone.": ""})), str(Hint("on_mismatch", "skip"))
        ("rename={'backbone.': ''}", "on_mismatch='skip'")
        >>> str(Hint("rename"))
        'rename='
    """

    name: str
    value: Any = _NO_VALUE

    @property
    def has_value(self) -> bool:
        return self.value is not _NO_VALUE

    def __str__(self) -> str:
        return f"{self.name}={self.value!r}" if self.has_value else f"{self.name}="
