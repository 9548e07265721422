"""Run models on the meta device without touching the caller's model.

``meta_copy`` builds a copy whose parameters and buffers live on the meta
device (no storage, no data copied; tied tensors stay tied).
``structural_copy`` builds fresh module objects that share the parameter and
buffer tensors but nothing else mutable (their own dicts, hooks, caches and
attributes): what tracing and shape inference run on, so that whatever a
model's forward writes into itself (timm's ``attention_bias_cache``, torch.fx
constants) lands in the copy. ``meta_inputs`` turns an ``input_size`` into
meta tensors.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .._errors import ArgumentError

__all__ = [
    "copy_attribute",
    "eval_mode",
    "meta_copy",
    "meta_inputs",
    "normalize_input_size",
    "structural_copy",
]


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


def structural_copy(
    model: nn.Module, tensor: Callable[[torch.Tensor, bool], torch.Tensor] | None = None
) -> nn.Module:
    """Fresh module objects for ``model`` and every submodule, sharing nothing mutable.

    Each module object is copied once (a module reachable under two paths stays
    one object), with its own ``_parameters``, ``_buffers``, ``_modules`` and
    hook dicts. Parameters and buffers are ``tensor(t, is_parameter)`` (default:
    the same tensor objects, so no memory is used; tied tensors stay tied).
    Every other attribute (caches, lists, config objects) is deep-copied, with
    references to modules of ``model`` pointing at their copies; an attribute
    that cannot be deep-copied is shallow-copied when it is a dict, list or set
    and shared otherwise.

    Example:
        >>> import torchvision
        >>> m = torchvision.models.resnet18(weights=None)
        >>> c = structural_copy(m)
        >>> c.layer1 is m.layer1, c.layer1[0].conv1.weight is m.layer1[0].conv1.weight
        (False, True)
    """
    memo: dict[int, Any] = {}
    pairs: list[tuple[nn.Module, nn.Module]] = []
    for m in model.modules():  # each object once
        new = object.__new__(type(m))
        memo[id(m)] = new
        pairs.append((m, new))
    for m in model.modules():
        for name, t in (*m._parameters.items(), *m._buffers.items()):
            if t is not None and id(t) not in memo:
                param = name in m._parameters and m._parameters[name] is t
                memo[id(t)] = tensor(t, param) if tensor is not None else t
    memo[id(memo)] = [m for m, _ in pairs]  # keep-alive list, as copy.deepcopy does
    for m, new in pairs:
        d: dict[str, Any] = {}
        for k, v in m.__dict__.items():
            if k == "_modules":
                d[k] = {n: (memo[id(c)] if c is not None else None) for n, c in v.items()}
            elif k in ("_parameters", "_buffers"):
                d[k] = {n: (memo[id(t)] if t is not None else None) for n, t in v.items()}
            elif k in _MODULE_KEYS:  # hook dicts, _non_persistent_buffers_set: fresh containers
                d[k] = v.copy() if isinstance(v, (dict, set)) else v
            else:
                d[k] = copy_attribute(v, memo)
        object.__setattr__(new, "__dict__", d)
    return memo[id(model)]  # type: ignore[no-any-return]


_MODULE_KEYS = frozenset(nn.Module().__dict__)  # nn.Module's own bookkeeping attributes
_ATOMS = (int, float, str, bool, type(None), torch.dtype, torch.device)


def copy_attribute(value: Any, memo: dict[int, Any]) -> Any:
    """A copy of a module's non-module attribute, ``copy.deepcopy`` with ``memo``.

    ``memo`` maps ids of the model's modules and tensors to what stands for
    them in the copy. What cannot be deep-copied keeps a fresh container (dict,
    list, set) or, failing that, is shared.
    """
    if isinstance(value, _ATOMS):
        return value
    if isinstance(value, tuple) and all(isinstance(v, _ATOMS) for v in value):
        return value
    try:
        return copy.deepcopy(value, memo)
    except Exception:  # an attribute that cannot be copied: copy its container only
        if isinstance(value, (dict, list, set)):
            return copy.copy(value)
        return value


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def normalize_input_size(input_size: Any) -> list[tuple[int, ...]]:
    """``(1, 3, 224, 224)`` -> ``[(1, 3, 224, 224)]``; a list of tuples stays a list.

    Raises:
        ArgumentError: not a shape (or list of shapes) of positive ints; the
            message names the bad dimension.
    """
    sizes: list[tuple[int, ...]] | None = None
    if isinstance(input_size, torch.Size):
        sizes = [tuple(input_size)]
    elif isinstance(input_size, Sequence) and input_size and all(map(_is_int, input_size)):
        sizes = [tuple(int(v) for v in input_size)]
    elif (
        isinstance(input_size, Sequence)
        and input_size
        and all(
            isinstance(s, (Sequence, torch.Size)) and s and all(map(_is_int, s)) for s in input_size
        )
    ):
        sizes = [tuple(int(v) for v in s) for s in input_size]
    if sizes is None:
        raise ArgumentError(
            f"input_size must be a tuple of ints such as (1, 3, 224, 224) or a list of such "
            f"tuples, got {input_size!r}"
        )
    for shape in sizes:
        for dim, v in enumerate(shape):
            if v < 1:
                raise ArgumentError(
                    f"input_size {shape!r} has size {v} at dimension {dim}: every size must be "
                    f"a positive int, e.g. (1, 3, 224, 224) for one 224x224 RGB image"
                )
    return sizes


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
