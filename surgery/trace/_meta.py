"""Run models on the meta device without touching the caller's model.

``meta_copy`` builds a structural copy whose parameters and buffers live on
the meta device (no storage, no data copied; tied tensors stay tied).
``meta_inputs`` turns an ``input_size`` into meta tensors.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .._errors import ArgumentError

__all__ = ["eval_mode", "meta_copy", "meta_inputs", "normalize_input_size"]


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every parameter and buffer on the meta device.

    Costs no tensor memory: the memo of ``copy.deepcopy`` is pre-filled with meta
    twins, so storage is never copied. Shared parameters stay shared, and
    ``requires_grad`` is kept.
    """
    memo: dict[int, Any] = {}
    for p in model.parameters(recurse=True):
        if id(p) not in memo:
            memo[id(p)] = nn.Parameter(
                torch.empty_like(p, device="meta"), requires_grad=p.requires_grad
            )
    for b in model.buffers(recurse=True):
        if id(b) not in memo:
            memo[id(b)] = torch.empty_like(b, device="meta")
    # Hooks, caches and other tensor attributes (not registered) are copied as they are.
    return copy.deepcopy(model, memo)


def normalize_input_size(input_size: Any) -> list[tuple[int, ...]]:
    """``(1, 3, 224, 224)`` -> ``[(1, 3, 224, 224)]``; a list of tuples stays a list."""
    if isinstance(input_size, torch.Size):
        return [tuple(input_size)]
    if (
        isinstance(input_size, Sequence)
        and input_size
        and all(isinstance(v, int) and not isinstance(v, bool) for v in input_size)
    ):
        return [tuple(int(v) for v in input_size)]
    if (
        isinstance(input_size, Sequence)
        and input_size
        and all(
            isinstance(s, (Sequence, torch.Size))
            and s
            and all(isinstance(v, int) and not isinstance(v, bool) for v in s)
            for s in input_size
        )
    ):
        return [tuple(int(v) for v in s) for s in input_size]
    raise ArgumentError(
        f"input_size must be a tuple of ints such as (1, 3, 224, 224) or a list of such "
        f"tuples, got {input_size!r}"
    )


def meta_inputs(input_size: Any, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Meta tensors for ``input_size`` (one tuple, or a list of tuples for several inputs)."""
    return [torch.empty(s, dtype=dtype, device="meta") for s in normalize_input_size(input_size)]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore every submodule's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
