"""Bit-for-bit snapshots of a model, for "a failed operation changes nothing" tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Snapshot:
    modules: list[tuple[str, int, bool]]  # name, id, training
    params: list[tuple[str, int, torch.Tensor, torch.dtype, bool]]
    buffers: list[tuple[str, int, Any, torch.dtype]]


def snapshot(model: nn.Module) -> Snapshot:
    return Snapshot(
        modules=[(n, id(m), m.training) for n, m in model.named_modules(remove_duplicate=False)],
        params=[
            (
                n,
                id(p),
                p.detach().clone() if p.device.type != "meta" else p.shape,
                p.dtype,
                p.requires_grad,
            )
            for n, p in model.named_parameters(remove_duplicate=False)
        ],
        buffers=[
            (n, id(b), b.detach().clone() if b.device.type != "meta" else b.shape, b.dtype)
            for n, b in model.named_buffers(remove_duplicate=False)
        ],
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b


def assert_unchanged(model: nn.Module, before: Snapshot) -> None:
    after = snapshot(model)
    assert after.modules == before.modules, "module tree, identity or train/eval modes changed"
    assert [p[:2] + p[3:] for p in after.params] == [p[:2] + p[3:] for p in before.params], (
        "parameter names, identity, dtype or requires_grad changed"
    )
    for (name, _, a, _, _), (_, _, b, _, _) in zip(after.params, before.params):
        assert _same(a, b), f"parameter {name} changed"
    assert [b[:2] + b[3:] for b in after.buffers] == [b[:2] + b[3:] for b in before.buffers]
    for (name, _, a, _), (_, _, b, _) in zip(after.buffers, before.buffers):
        assert _same(a, b), f"buffer {name} changed"


# --------------------------------------------------------------------------- deep state
# Every module's whole ``__dict__`` (parameters, buffers, hooks, caches, any
# attribute), for "analysis has no side effects" tests: tracing and shape
# inference must leave every object exactly as it was.


def _deep(value: Any, seen: dict[int, Any], depth: int = 0) -> Any:
    if isinstance(value, (int, float, str, bool, type(None), bytes, torch.dtype, torch.device)):
        return value
    if isinstance(value, torch.Tensor):
        meta = value.device.type == "meta"
        data = None if meta else value.detach().clone()
        return (
            "tensor",
            id(value),
            type(value).__name__,
            value.dtype,
            tuple(value.shape),
            value.device.type,
            value.requires_grad,
            data,
        )
    if isinstance(value, nn.Module):
        return ("module", id(value))  # compared by identity: its own dict is compared separately
    if id(value) in seen or depth > 20:
        return ("seen", id(value))
    seen[id(value)] = value
    if isinstance(value, dict):
        return (
            "dict",
            type(value).__name__,
            [(_deep(k, seen, depth + 1), _deep(v, seen, depth + 1)) for k, v in value.items()],
        )
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return (type(value).__name__, [_deep(v, seen, depth + 1) for v in items])
    if callable(value) and not hasattr(value, "__dict__"):
        return ("callable", id(value))
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict) and not isinstance(value, type):
        return ("object", type(value).__qualname__, id(value), _deep(attrs, seen, depth + 1))
    return ("other", type(value).__qualname__, id(value))


def deep_snapshot(model: nn.Module) -> list[tuple[str, int, Any]]:
    """Every module (duplicates too) with a deep, comparable copy of its ``__dict__``."""
    return [
        (name, id(m), _deep(m.__dict__, {}))
        for name, m in model.named_modules(remove_duplicate=False)
    ]


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and torch.equal(a, b)
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    return bool(a == b)


def _first_difference(a: Any, b: Any, where: str) -> str:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        if a and a[0] == "dict" and len(a) == 3:
            ka, kb = [k for k, _ in a[2]], [k for k, _ in b[2]]
            if not _equal(ka, kb):
                return f"{where}: keys {ka!r} -> {kb!r}"
            for (k, va), (_, vb) in zip(a[2], b[2]):
                if not _equal(va, vb):
                    return _first_difference(va, vb, f"{where}[{k!r}]")
        for i, (x, y) in enumerate(zip(a, b)):
            if not _equal(x, y):
                return _first_difference(x, y, f"{where}.{i}")
    return f"{where}: {a!r:.300} -> {b!r:.300}"


def assert_deep_unchanged(model: nn.Module, before: list[tuple[str, int, Any]]) -> None:
    """Assert that no module's ``__dict__`` (any attribute, cache, hook, buffer, mode) changed."""
    after = deep_snapshot(model)
    assert [(n, i) for n, i, _ in after] == [(n, i) for n, i, _ in before], (
        "module tree or identity changed"
    )
    for (name, _, a), (_, _, b) in zip(after, before):
        if not _equal(a, b):
            raise AssertionError(f"module {name!r} changed: {_first_difference(b, a, '__dict__')}")
