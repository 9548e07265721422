"""Rendering for the command line: errors with their hints as options; counts and sizes.

A :class:`~surgery._errors.SurgeryError` carries the fixes its message suggests
as :class:`~surgery._errors.Hint` data; the message spells them in Python
(``rename={'backbone.': ''}``). :func:`render_error` respells each hint as the
option a shell user types (``--rename backbone.=``), where the subcommand has
that option; a hint with no CLI spelling keeps its Python form.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Collection

from .._errors import SurgeryError
from .._hints import Hint

__all__ = ["cli_hint", "count", "dtype_name", "render_error", "size_text"]


def count(n: int, noun: str) -> str:
    """``"1 tensor"``, ``"2 tensors"``.

    Example:
        >>> count(1, "tensor"), count(122, "tensor")
        ('1 tensor', '122 tensors')
    """
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def dtype_name(dtype: object) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def size_text(nbytes: int) -> str:
    """Bytes in decimal units: ``"46.8 MB"``.

    Example:
        >>> size_text(512), size_text(46_796_528)
        ('512 B', '46.8 MB')
    """
    value = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover


def cli_hint(hint: Hint) -> str | None:
    """The options that spell ``hint`` on the command line, or None where there are none.

    Example:
        >>> cli_hint(Hint("rename", {"backbone.": ""})), cli_hint(Hint("on_mismatch", "skip"))
        ('--rename backbone.=', '--on-mismatch skip')
        >>> cli_hint(Hint("strict", True)), cli_hint(Hint("exclude")), cli_hint(Hint("at", "layer4"))
        ('--strict', '--exclude', '--at layer4')
    """
    flag = "--" + hint.name.replace("_", "-")
    if not hint.has_value or hint.value is True:
        return flag
    value = hint.value
    if isinstance(value, dict):
        if all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return " ".join(f"{flag} {shlex.quote(f'{k}={v}')}" for k, v in value.items())
        return None
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, str) for v in value):
            return " ".join(f"{flag} {shlex.quote(v)}" for v in value)
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return f"{flag} {shlex.quote(str(value))}"
    return None


def render_error(exc: SurgeryError, options: Collection[str]) -> str:
    """``str(exc)`` with every hint the subcommand has an option for in CLI syntax.

    The Python operation prefix (``"load_partial(ResNet): "``) is dropped: the
    CLI names its subcommand itself.

    Example:
        >>> from surgery import LoadError
        >>> fix = Hint("on_mismatch", "skip")
        >>> render_error(LoadError(f"2 shape mismatches (pass {fix})", hints=[fix]), {"--on-mismatch"})
        '2 shape mismatches (pass --on-mismatch skip)'
    """
    text = str(exc)
    if exc.op and text.startswith(exc.op):
        head, sep, rest = text.partition(": ")
        if sep and head.startswith((exc.op + "(", exc.op)) and len(head) < 200:
            text = rest
    spelled = {}
    for hint in exc.hints:
        cli = cli_hint(hint)
        if cli is not None and cli.split()[0] in options:
            spelled[str(hint)] = cli
    if not spelled:
        return text
    # one pass, longest first: "rename=" must not match inside "rename={'a.': ''}"
    pattern = re.compile("|".join(map(re.escape, sorted(spelled, key=len, reverse=True))))
    return pattern.sub(lambda m: spelled[m.group(0)], text)
