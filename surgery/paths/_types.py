"""Selection by type: the ``types=`` argument of ``find``, ``freeze``, ``unfreeze`` and ``swap``.

``types`` is a class, a tuple of classes, a class name, or a list of names (for
the CLI and configs). A name matches ``__name__`` anywhere in a module's MRO,
so ``"BatchNorm2d"`` also selects timm's ``BatchNormAct2d``. A name that no
class in the model has is a :class:`~surgery.PathNotFoundError` listing the
types present; anything else is an :class:`~surgery.ArgumentError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from .._errors import ArgumentError, PathNotFoundError

__all__ = ["describe_types", "type_matcher"]

_KINDS = "a class, a tuple of classes, a class name or a list of class names"


def type_matcher(
    model: nn.Module, types: Any, modules: Iterable[nn.Module] | None = None
) -> Callable[[nn.Module], bool] | None:
    """A predicate for ``types`` (None: no filter), checked against ``model`` first.

    ``modules`` are the model's modules when the caller has them already
    (default: ``model.modules()``); they are only walked for class names.

    Raises:
        ArgumentError: ``types`` is of a wrong kind (an int, a module instance, empty).
        PathNotFoundError: a class name matches no class of any module in ``model``.

    Example:
        >>> import torchvision
        >>> m = torchvision.models.resnet18(weights=None)
        >>> is_bn = type_matcher(m, "BatchNorm2d")
        >>> sum(is_bn(x) for x in m.modules())
        20
    """
    if types is None:
        return None
    items = list(types) if isinstance(types, (tuple, list)) else [types]
    if not items:
        raise ArgumentError(f"types must be {_KINDS}, got an empty {type(types).__name__}")
    classes: list[type] = []
    names: set[str] = set()
    for t in items:
        if isinstance(t, type):
            classes.append(t)
        elif isinstance(t, str) and t:
            names.add(t)
        else:
            hint = (
                f" (a module instance: pass its class, types=nn.{type(t).__name__})"
                if isinstance(t, nn.Module)
                else ""
            )
            raise ArgumentError(f"types must be {_KINDS}, got {type(t).__name__} {t!r}{hint}")
    if names:
        classes_present = {type(m) for m in (model.modules() if modules is None else modules)}
        present = {c.__name__ for cls in classes_present for c in cls.__mro__}
        unknown = sorted(names - present)
        if unknown:
            kinds = sorted({cls.__name__ for cls in classes_present})
            close = difflib.get_close_matches(unknown[0], sorted(present), n=1)
            raise PathNotFoundError(
                f"types={unknown[0]!r}: no module of {type(model).__name__} is a {unknown[0]}"
                + (f"; did you mean {close[0]!r}?" if close else "")
                + f"\n  module types present: {', '.join(kinds[:30])}"
                + (", ..." if len(kinds) > 30 else "")
            )
    cls_tuple = tuple(classes)
    if not names:
        return lambda module: isinstance(module, cls_tuple)
    by_class: dict[type, bool] = {}  # the MRO is scanned once per class, not per module

    def match(module: nn.Module) -> bool:
        if isinstance(module, cls_tuple):
            return True
        cls = type(module)
        hit = by_class.get(cls)
        if hit is None:
            hit = by_class[cls] = any(c.__name__ in names for c in cls.__mro__)
        return hit

    return match


def describe_types(types: Any) -> str:
    """``types`` as the user would write it, for messages."""
    items = list(types) if isinstance(types, (tuple, list)) else [types]
    return ", ".join(t.__name__ if isinstance(t, type) else str(t) for t in items)
