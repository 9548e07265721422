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
