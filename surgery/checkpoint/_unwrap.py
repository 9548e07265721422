"""Finding the state dict inside a training checkpoint (``{"model": sd, "epoch": 3}``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .._errors import ArgumentError, LoadError
from .._hints import Hint

__all__ = ["WRAPPER_KEYS", "unwrap_state_dict"]

#: Wrapper keys that commonly hold the state dict of a training checkpoint.
WRAPPER_KEYS = ("model", "state_dict", "module", "model_state_dict")


def _tensor_count(m: Mapping[Any, Any]) -> int:
    return sum(isinstance(v, torch.Tensor) for v in m.values())


def _holds_tensors(v: Any, depth: int = 0) -> bool:
    """A mapping with tensor values, directly or in a nested wrapper (2 levels)."""
    if not isinstance(v, Mapping) or depth > 2:
        return False
    if _tensor_count(v):
        return True
    return any(_holds_tensors(x, depth + 1) for x in v.values())


def unwrap_state_dict(
    obj: Any, *, key: str | None = None, description: str = "<mapping>"
) -> tuple[Mapping[str, Any], str | None]:
    """Find the state dict inside a loaded checkpoint object.

    A mapping with tensor values is the state dict itself. Otherwise the single
    entry that holds tensors (``"model"``, ``"state_dict"``, ...; nested
    wrappers are followed, e.g. ``"model.state_dict"``) is unwrapped; metadata
    next to it (epoch, optimizer, config) is ignored.

    Args:
        obj: what ``torch.load`` returned.
        key: the wrapper entry to use (dotted for nested ones); required when
            several entries hold tensors.
        description: the file, for messages.

    Returns:
        ``(state_dict, unwrapped_key_or_None)``.

    Raises:
        LoadError: not a mapping, no entry holds tensors, ``key`` names nothing,
            or several candidates and no ``key``.
    """
    if not isinstance(obj, Mapping):
        raise LoadError(
            f"{description} holds a {type(obj).__name__}, not a state dict (a mapping of "
            "names to tensors)"
        )
    if key is not None:
        if not isinstance(key, str):
            raise ArgumentError(f"key must be a str, got {type(key).__name__}")
        node: Any = obj
        if key in obj:
            node = obj[key]
        else:
            for part in key.split("."):
                if not isinstance(node, Mapping) or part not in node:
                    cands = _candidates(obj)
                    raise LoadError(
                        f"{description} has no entry {key!r}; entries that hold tensors: "
                        f"{', '.join(map(repr, cands)) or '(none)'}; top-level entries: "
                        f"{', '.join(map(repr, list(obj)[:20]))}"
                    )
                node = node[part]
        if not isinstance(node, Mapping):
            raise LoadError(f"{description}[{key!r}] is a {type(node).__name__}, not a state dict")
        return node, key
    if not obj or _tensor_count(obj):
        return obj, None
    cands = _candidates(obj)
    if len(cands) == 1:
        node = obj
        for part in _split_candidate(obj, cands[0]):
            node = node[part]
        return node, cands[0]
    if not cands:
        shown = ", ".join(f"{k!r} ({type(v).__name__})" for k, v in list(obj.items())[:20])
        raise LoadError(f"{description} holds no tensors: entries {shown}")
    pick = Hint("key", cands[0])
    raise LoadError(
        f"{description} wraps several state dicts: {', '.join(map(repr, cands))}; pick one "
        f"with {pick}",
        hints=(pick,),
    )


def _candidates(obj: Mapping[Any, Any], prefix: str = "", depth: int = 0) -> list[str]:
    out: list[str] = []
    for k, v in obj.items():
        if not isinstance(v, Mapping):
            continue
        name = f"{prefix}{k}"
        if _tensor_count(v):
            out.append(name)
        elif depth < 2:
            out.extend(_candidates(v, name + ".", depth + 1))
    return out


def _split_candidate(obj: Mapping[Any, Any], dotted: str) -> list[Any]:
    parts: list[Any] = []
    node: Any = obj
    rest = dotted
    while rest:
        if rest in node:
            parts.append(rest)
            break
        head, _, rest = rest.partition(".")
        parts.append(head)
        node = node[head]
    return parts
