"""The exception tree of `surgery`.

Every error the toolkit raises on purpose is a :class:`SurgeryError`. Inner
code raises short messages; the public function adds the context (path, model
class, operation) once, at the boundary::

    SurgeryError                      base of everything below
    ├── ArgumentError (ValueError)    an argument has the wrong type or value
    ├── PathError                     anything about a module path or pattern
    │   ├── PathSyntaxError           the text does not parse; a caret marks the bad character
    │   └── PathNotFoundError         (LookupError) the path or pattern names no module;
    │                                 the message shows the longest resolved prefix, the
    │                                 children there and the closest match
    ├── TraceError                    torch.fx cannot trace the model (cut/split/head discovery)
    ├── LayerNotFoundError            no (or more than one) classifier / first conv was found;
    │                                 the message lists the candidates, pass ``path=``
    ├── ShapeMismatchError            two composed parts do not fit at a junction
    ├── VerificationError             ``verify`` found expectations that do not hold
    ├── LoadError                     ``load_partial`` refused a checkpoint or a mapping
    │   └── CheckpointError           the file is unreadable, corrupt, unsafe or missing
    ├── SaveError                     ``save_state_dict`` could not write; nothing new is left
    └── StaleCacheError               a feature cache was computed with other body weights

Warnings:

    SurgeryWarning (UserWarning)      base of the toolkit's warnings
    └── SharedModuleWarning           an edited module is reachable under another path too

Every operation validates all of its inputs before it changes anything, so on
any of these errors the model is exactly as it was before the call.

Every error carries four keyword fields, ``None`` where they don't apply:
``op`` (the public operation, e.g. ``"load_partial"``), ``path`` (the module
path), ``key`` (the checkpoint key) and ``file`` (the checkpoint file). Inner
code raises short messages; :func:`operation` adds the operation and model
context once, at the public function, and :func:`user_call` wraps a failure
inside a caller's callable (a factory, a rename function) with the original
exception as ``__cause__``; both live in :mod:`surgery._boundary`.

A fifth field, ``hints``, holds the fixes a message suggests as data: each
:class:`Hint` is an argument name and value (``Hint("on_mismatch", "skip")``).
The message shows them in Python syntax (``on_mismatch='skip'``); the command
line renders the same hints in its own syntax (``--on-mismatch skip``).
"""

from __future__ import annotations

from typing import Any

from ._hints import Hint

__all__ = [
    "ArgumentError",
    "CheckpointError",
    "LayerNotFoundError",
    "LoadError",
    "PathError",
    "PathNotFoundError",
    "PathSyntaxError",
    "SaveError",
    "ShapeMismatchError",
    "SharedModuleWarning",
    "StaleCacheError",
    "SurgeryError",
    "SurgeryWarning",
    "TraceError",
    "VerificationError",
]

_FIELDS = ("op", "path", "key", "file")


class SurgeryError(Exception):
    """Base class of every error `surgery` raises on purpose.

    Attributes:
        op: the public operation that raised (``"replace_head"``), or None.
        path: the module path involved, or None.
        key: the checkpoint key involved, or None.
        file: the checkpoint file involved, or None.
        hints: the fixes the message suggests, as :class:`Hint` data (the
            message shows each in Python syntax; the CLI renders them as options).

    Example:
        >>> e = SurgeryError("no module 'fc2'", op="get", path="fc2")
        >>> e.op, e.path, e.key, e.file
        ('get', 'fc2', None, None)
    """

    op: str | None = None
    path: str | None = None
    key: str | None = None
    file: str | None = None
    hints: tuple[Hint, ...] = ()

    def __init__(
        self,
        *args: Any,
        op: str | None = None,
        path: str | None = None,
        key: str | None = None,
        file: str | None = None,
        hints: Any = (),
    ) -> None:
        super().__init__(*args)
        for name, value in zip(_FIELDS, (op, path, key, file)):
            if value is not None:
                setattr(self, name, value)
        if hints:
            self.hints = tuple(hints)

    def __str__(self) -> str:  # LookupError/KeyError subclasses would quote the message
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ArgumentError(SurgeryError, ValueError):
    """An argument has the wrong type or value (e.g. ``bn="sometimes"``)."""


class PathError(SurgeryError):
    """Base class of errors about module paths and patterns."""


class PathSyntaxError(PathError, ValueError):
    """The path or pattern text does not parse.

    Attributes:
        text: the whole text that was given.
        position: the index of the offending character.
        reason: what is wrong there.
    """

    def __init__(self, text: str, position: int, reason: str) -> None:
        self.text = text
        self.position = position
        self.reason = reason
        caret = " " * (position + 5) + "^"
        super().__init__(
            f"invalid path {text!r}: {reason} at position {position}\n    {text!r}\n{caret}",
            path=text,
        )


class PathNotFoundError(PathError, LookupError):
    """The path or pattern names no module of the model.

    Attributes:
        path: the path (or pattern) text that failed.
    """

    def __init__(self, message: str = "", path: str | None = None, **fields: Any) -> None:
        super().__init__(message, path=path or None, **fields)


class TraceError(SurgeryError):
    """``torch.fx`` could not trace the model's forward."""


class LayerNotFoundError(SurgeryError):
    """A layer the operation looks for automatically (head, first conv) was not found
    or is ambiguous; the message lists the candidates."""


class ShapeMismatchError(SurgeryError):
    """Composed parts do not fit: names the junction and both shapes."""


class VerificationError(SurgeryError):
    """``verify`` found expectations that do not hold: lists each, expected vs actual."""


class LoadError(SurgeryError):
    """``load_partial`` refused the source: names the keys, shapes or dtypes involved."""


class CheckpointError(LoadError):
    """The checkpoint file is missing, unreadable, corrupt or unsafe; names the file."""


class SaveError(SurgeryError):
    """A checkpoint could not be written; names the file. Nothing new is left behind and
    an existing checkpoint at that path is unchanged."""


class StaleCacheError(SurgeryError):
    """A feature cache was built with body weights that have changed since."""


class SurgeryWarning(UserWarning):
    """Base class of the warnings `surgery` emits."""


class SharedModuleWarning(SurgeryWarning):
    """An edited module is reachable under more than one path."""
