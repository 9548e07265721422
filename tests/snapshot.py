"""Bit-for-bit snapshots of a model, for "a failed operation changes nothing" tests.

One helper for every failure-path test: ``snapshot(model)`` records tensor
values, dtypes, ``requires_grad``, train/eval modes, module identity (at every
path, shared modules included), every hook dict (keys and hook objects) and
the modules' other ``__dict__`` attributes (identity, plus the contents of
plain containers and the values of tensors, so an in-place change to a cache
shows). ``assert_unchanged(model, before)`` names what differs.
``values=False`` skips tensor values (for big models on real devices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_TENSOR_DICTS = ("_parameters", "_buffers", "_modules")
_SIMPLE = (type(None), bool, int, float, complex, str, bytes)


@dataclass
class Snapshot:
    modules: list[tuple[str, int, bool]]  # name, id, training
    params: list[tuple[str, int, Any, torch.dtype, bool]]
    buffers: list[tuple[str, int, Any, torch.dtype]]
    hooks: list[tuple[str, str, tuple[tuple[Any, int], ...]]]  # module, hook dict, (key, id(hook))
    attributes: list[tuple[str, str, Any]]  # module, attribute, fingerprint
    values: bool = True


def _value(t: torch.Tensor, values: bool) -> Any:
    if not values or t.device.type == "meta":
        return (tuple(t.shape), t.device.type)
    return t.detach().clone()


def _fingerprint(v: Any, values: bool, seen: dict[int, Any] | None = None, depth: int = 0) -> Any:
    """Identity plus contents, recursively (containers and plain objects' ``__dict__``):
    enough to see a replaced or mutated attribute, however deep a cache keeps it."""
    seen = {} if seen is None else seen
    if isinstance(v, (*_SIMPLE, torch.dtype, torch.device)):
        return (type(v).__name__, v)
    if isinstance(v, torch.Tensor):
        return ("tensor", id(v), type(v).__name__, v.dtype, v.requires_grad, _value(v, values))
    if isinstance(v, nn.Module):
        return ("module", id(v))  # its own __dict__ is recorded under its own path
    if id(v) in seen or depth > 20:
        return ("seen", id(v))
    seen[id(v)] = v
    if isinstance(v, dict):
        return (
            "dict",
            id(v),
            [(k, _fingerprint(x, values, seen, depth + 1)) for k, x in v.items()],
        )
    if isinstance(v, (list, tuple, set, frozenset)):
        items = sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v
        return (type(v).__name__, id(v), [_fingerprint(x, values, seen, depth + 1) for x in items])
    attrs = getattr(v, "__dict__", None)
    if isinstance(attrs, dict) and not isinstance(v, type) and not callable(v):
        return ("object", type(v).__qualname__, id(v), _fingerprint(attrs, values, seen, depth + 1))
    return (type(v).__name__, id(v))


def snapshot(model: nn.Module, values: bool = True) -> Snapshot:
    named = list(model.named_modules(remove_duplicate=False))
    hooks = []
    attributes = []
    for name, m in named:
        for attr, value in sorted(m.__dict__.items()):
            if attr in _TENSOR_DICTS:
                continue
            if ("_hooks" in attr) and isinstance(value, dict):
                hooks.append((name, attr, tuple((k, id(h)) for k, h in value.items())))
                continue
            attributes.append((name, attr, _fingerprint(value, values)))
    return Snapshot(
        modules=[(n, id(m), m.training) for n, m in named],
        params=[
            (n, id(p), _value(p, values), p.dtype, p.requires_grad)
            for n, p in model.named_parameters(remove_duplicate=False)
        ],
        buffers=[
            (n, id(b), _value(b, values), b.dtype)
            for n, b in model.named_buffers(remove_duplicate=False)
        ],
        hooks=hooks,
        attributes=attributes,
        values=values,
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


def assert_unchanged(model: nn.Module, before: Snapshot) -> None:
    after = snapshot(model, values=before.values)
    assert after.modules == before.modules, "module tree, identity or train/eval modes changed"
    assert [p[:2] + p[3:] for p in after.params] == [p[:2] + p[3:] for p in before.params], (
        "parameter names, identity, dtype or requires_grad changed"
    )
    for (name, _, a, _, _), (_, _, b, _, _) in zip(after.params, before.params):
        assert _same(a, b), f"parameter {name} changed"
    assert [b[:2] + b[3:] for b in after.buffers] == [b[:2] + b[3:] for b in before.buffers]
    for (name, _, a, _), (_, _, b, _) in zip(after.buffers, before.buffers):
        assert _same(a, b), f"buffer {name} changed"
    assert after.hooks == before.hooks, "hooks changed: " + str(
        [h for h in after.hooks if h not in before.hooks]
        or [h for h in before.hooks if h not in after.hooks]
    )
    assert len(after.attributes) == len(before.attributes), (
        "module attributes added or removed: "
        + str(sorted({a[:2] for a in after.attributes} ^ {b[:2] for b in before.attributes}))
    )
    for a, b in zip(after.attributes, before.attributes):
        assert a[:2] == b[:2] and _same(a[2], b[2]), f"attribute {a[1]!r} of {a[0]!r} changed"
