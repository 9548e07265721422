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
    └── StaleCacheError               a feature cache was computed with other body weights

Warnings:

    SurgeryWarning (UserWarning)      base of the toolkit's warnings
    └── SharedModuleWarning           an edited module is reachable under another path too

Every operation validates all of its inputs before it changes anything, so on
any of these errors the model is exactly as it was before the call.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "CheckpointError",
    "LayerNotFoundError",
    "LoadError",
    "PathError",
    "PathNotFoundError",
    "PathSyntaxError",
    "ShapeMismatchError",
    "SharedModuleWarning",
    "StaleCacheError",
    "SurgeryError",
    "SurgeryWarning",
    "TraceError",
    "VerificationError",
]


class SurgeryError(Exception):
    """Base class of every error `surgery` raises on purpose."""


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
            f"invalid path {text!r}: {reason} at position {position}\n    {text!r}\n{caret}"
        )


class PathNotFoundError(PathError, LookupError):
    """The path or pattern names no module of the model.

    Attributes:
        path: the path (or pattern) text that failed.
    """

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(message)

    def __str__(self) -> str:  # LookupError/KeyError would quote the message
        return str(self.args[0]) if self.args else ""


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


class StaleCacheError(SurgeryError):
    """A feature cache was built with body weights that have changed since."""


class SurgeryWarning(UserWarning):
    """Base class of the warnings `surgery` emits."""


class SharedModuleWarning(SurgeryWarning):
    """An edited module is reachable under more than one path."""
