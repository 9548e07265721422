"""The error boundary: context added once at each public function, and user callables.

Inner code raises short :class:`~surgery.SurgeryError` messages. The public
function wraps its body in :func:`operation`, which adds the operation and the
model class in front of the message, once, and fills the error's ``op``,
``path``, ``key`` and ``file`` fields. A caller's own callable (a factory, a
rename function, a dataset) runs through :func:`user_call`, so that whatever it
raises reaches the caller as a ``SurgeryError`` naming the path or key, with the
original exception as ``__cause__``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from ._errors import ArgumentError, SurgeryError

__all__ = ["building", "check_choice", "operation", "user_call"]

_T = TypeVar("_T")


@contextlib.contextmanager
def operation(op: str, *, model: object = None, **fields: Any) -> Iterator[None]:
    """Add the operation's context to every :class:`SurgeryError` raised inside, once.

    The message gets ``"{op}({ModelClass}): "`` in front (``"{op}: "`` without a
    model) unless an inner boundary already added one, and the fields ``op``,
    ``path``, ``key`` and ``file`` are filled where the inner code left them
    None. Exceptions of other types pass through untouched: mapping foreign
    errors is the inner code's job (see :func:`user_call`).

    Example:
        >>> from surgery import PathNotFoundError
        >>> try:
        ...     with operation("get", path="fc2"):
        ...         raise PathNotFoundError("no module 'fc2'")
        ... except SurgeryError as e:
        ...     print(e, "|", e.op, e.path)
        get: no module 'fc2' | get fc2
    """
    try:
        yield
    except SurgeryError as e:
        if getattr(e, "op", None) is None:
            head = f"{op}({type(model).__name__}): " if model is not None else f"{op}: "
            message = str(e)
            if not message.startswith(op):
                e.args = (head + message, *e.args[1:]) if e.args else (head,)
            e.op = op
        for name, value in fields.items():
            if value is not None and getattr(e, name, None) is None:
                setattr(e, name, str(value))
        raise


def user_call(
    fn: Callable[..., _T],
    *args: Any,
    what: str,
    error: type[SurgeryError] = SurgeryError,
    **fields: Any,
) -> _T:
    """Call a user-supplied callable; wrap any exception it raises in ``error``.

    ``what`` names the call in the message (``"the factory for 'layer1.0.bn1'"``);
    ``fields`` (``path=``, ``key=``) are set on the error, and the original
    exception is its ``__cause__``. A :class:`SurgeryError` passes through.

    Example:
        >>> from surgery import SurgeryError
        >>> try:
        ...     user_call(int, "x", what="the factory for 'fc'", path="fc")
        ... except SurgeryError as e:
        ...     print(e.path, type(e.__cause__).__name__)
        fc ValueError
    """
    try:
        return fn(*args)
    except SurgeryError:
        raise
    except Exception as e:
        detail = str(e) or type(e).__name__
        raise error(f"{what} raised {type(e).__name__}: {detail}", **fields) from e


def check_choice(name: str, value: object, choices: Mapping[str, str] | Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``; else raise :class:`ArgumentError`.

    ``choices`` is a sequence of the valid strings, or a mapping of each to what it
    does, which the message then explains.

    Example:
        >>> check_choice("bn", "eval", {"eval": "statistics fixed", "train": "updating"})
        'eval'
        >>> try:
        ...     check_choice("on_mismatch", "ignore", ("error", "skip"))
        ... except ArgumentError as e:
        ...     print(e)
        on_mismatch must be one of 'error' or 'skip', got 'ignore'
    """
    if isinstance(value, str) and value in choices:
        return value
    what = choices if isinstance(choices, Mapping) else dict.fromkeys(choices, "")
    shown = [f"{k!r} ({v})" if v else repr(k) for k, v in what.items()]
    listing = ", ".join(shown[:-1]) + " or " + shown[-1] if len(shown) > 1 else shown[0]
    raise ArgumentError(f"{name} must be one of {listing}, got {value!r}")


@contextlib.contextmanager
def building(
    what: str, *, error: type[SurgeryError] = ArgumentError, hint: str = "", **fields: Any
) -> Iterator[None]:
    """Map an allocation or placement failure inside the block to ``error``.

    Building new modules (a head for ``10**12`` classes, a factory's module moved
    to the old one's device) raises ``RuntimeError``/``MemoryError`` from torch's
    allocator; before anything is installed, that is bad input, reported as
    ``"cannot {what}: ..."`` with the original as ``__cause__``.

    Example:
        >>> import torch
        >>> try:
        ...     with building("build the new head 'fc'", path="fc"):
        ...         torch.empty(-1)
        ... except SurgeryError as e:
        ...     print(type(e).__name__, e.path, type(e.__cause__).__name__)
        ArgumentError fc RuntimeError
    """
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise error(f"cannot {what}: {type(e).__name__}: {detail}{hint}", **fields) from e
