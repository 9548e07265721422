"""The fast meta forward behind :func:`surgery.verify`: repeated blocks run once.

:class:`MetaClone` is a structural copy of a model on the meta device, in eval
mode, in which modules that are structurally identical (same class, same
parameter and buffer shapes and dtypes, same hyperparameters, recursively) and
receive an input of the same shape and dtype reuse the output shape of the
first one instead of running (their ``forward`` is patched on the copy only).
:func:`plain_output_shape` is the reference path (an ordinary meta copy).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._meta import copy_attribute, eval_mode, meta_copy

__all__ = ["MetaClone", "Repeat", "fast_output_shape", "plain_output_shape"]

_SIMPLE = (int, float, str, bool, type(None), torch.dtype)


_SKIP = object()
_MODULE_KEYS = frozenset(nn.Module().__dict__)  # nn.Module's own bookkeeping attributes


def _simple(value: Any) -> Any:
    if isinstance(value, _SIMPLE):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, _SIMPLE) for v in value):
        return tuple(value)
    return _SKIP


class MetaClone:
    """A structural copy of a model on the meta device, in eval mode, that skips repeats.

    Signatures first: every module of the original gets a structural id;
    equal ids mean same class, same parameter/buffer names, shapes and dtypes,
    same simple attributes (the hyperparameters: ``stride``, ``in_features``...),
    recursively, so equal inputs give equal output shapes. A module with hooks
    is unique.

    Then the copy, faster than ``copy.deepcopy``: each module object is copied
    once (shared modules stay shared) with its own parameter, buffer, submodule
    and hook dicts; parameters and buffers get meta twins (tied tensors stay
    tied); other attributes are copied (:func:`copy_attribute`: the forward
    may write caches into them). :func:`verify` re-checks any failure with a
    plain :func:`surgery.trace._meta.meta_copy`. A module identical to one already copied
    becomes a :class:`Repeat`: it answers from the shape cache and is only
    copied if its input has a shape not seen before.
    """

    def __init__(self, model: nn.Module) -> None:
        self.twins: dict[int, Any] = {}
        self.memo: dict[int, Any] = {}  # copy.deepcopy's memo: original id -> copy
        self.done: dict[int, nn.Module] = {}
        self.sig: dict[int, int] = {}
        self.interned: dict[tuple[Any, ...], int] = {}
        self.cache: dict[tuple[Any, ...], tuple[torch.Size, torch.dtype]] = {}
        self._sign(model)
        counts: dict[int, int] = {}
        for sid in self.sig.values():
            counts[sid] = counts.get(sid, 0) + 1
        self.repeated = {sid for sid, n in counts.items() if n > 1}
        self.copied: set[int] = set()
        self.root_id = id(model)
        for p in model.parameters():
            self._twin(p, True)
        for b in model.buffers():
            self._twin(b, False)
        self.root = self.copy(model)

    def _sign(self, m: nn.Module) -> int:
        found = self.sig.get(id(m))
        if found is not None:
            return found
        attrs = []
        for k, v in m.__dict__.items():
            if k not in _MODULE_KEYS and k != "forward":
                value = _simple(v)
                if value is not _SKIP:
                    attrs.append((k, value))
        hooked = m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__
        key = (
            type(m),
            id(m) if hooked else None,
            tuple((k, None if p is None else (p.shape, p.dtype)) for k, p in m._parameters.items()),
            tuple((k, None if b is None else (b.shape, b.dtype)) for k, b in m._buffers.items()),
            tuple(attrs),
            tuple((k, None if c is None else self._sign(c)) for k, c in m._modules.items()),
        )
        sid = self.sig[id(m)] = self.interned.setdefault(key, len(self.interned))
        return sid

    def _twin(self, t: Any, param: bool) -> Any:
        if t is None:
            return None
        found = self.twins.get(id(t))
        if found is None:
            found = torch.empty_like(t, device="meta")
            if param:
                found = nn.Parameter(found, requires_grad=t.requires_grad)
            self.twins[id(t)] = self.memo[id(t)] = found
        return found

    def copy(self, m: nn.Module, *, whole: bool = False) -> nn.Module:
        """The meta copy of ``m`` (a :class:`Repeat` for a repeat, unless ``whole``)."""
        found = self.done.get(id(m))
        if found is not None and not (whole and isinstance(found, Repeat)):
            return found
        sid = self.sig[id(m)]
        if not whole and sid in self.copied and id(m) != self.root_id:
            rep = Repeat(self, m, sid)
            self.done[id(m)] = rep
            return rep
        self.copied.add(sid)
        new = object.__new__(type(m))
        self.done[id(m)] = new
        d = dict(m.__dict__)
        memo = self.memo
        memo[id(m)] = new
        for k, v in d.items():
            if k in _MODULE_KEYS:
                if isinstance(v, (dict, set)):
                    d[k] = v.copy()  # hook dicts, _non_persistent_buffers_set
            else:  # caches and other attributes: the forward may write into them
                d[k] = copy_attribute(v, memo)
        twin = self._twin
        d["_parameters"] = {k: twin(p, True) for k, p in m._parameters.items()}
        d["_buffers"] = {k: twin(b, False) for k, b in m._buffers.items()}
        d["_modules"] = {
            k: (self.copy(c) if c is not None else None) for k, c in m._modules.items()
        }
        d["training"] = False
        object.__setattr__(new, "__dict__", d)
        # shape shortcuts, on the copy only: norms keep shapes, repeats fill the cache
        if isinstance(new, _norm_types()) and not new._forward_hooks and not new._forward_pre_hooks:
            d["forward"] = _norm_forward(new, new.forward)
        elif sid in self.repeated and id(m) != self.root_id:
            d["forward"] = _cached_forward(new.forward, sid, self.cache)
        return new


class Repeat(nn.Module):
    """Stands for a module identical to one already copied: answers from the shape cache."""

    def __init__(self, clone: MetaClone, original: nn.Module, sid: int) -> None:
        super().__init__()
        self.__dict__["_clone"] = clone
        self.__dict__["_original"] = original
        self.__dict__["_sid"] = sid
        self.__dict__["_real"] = None

    def _materialize(self) -> nn.Module:
        real = self.__dict__["_real"]
        if real is None:
            real = self.__dict__["_clone"].copy(self.__dict__["_original"], whole=True)
            self.__dict__["_real"] = real
        return real

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            x = args[0]
            hit = self.__dict__["_clone"].cache.get((self.__dict__["_sid"], x.shape, x.dtype))
            if hit is not None:
                return torch.empty(hit[0], dtype=hit[1], device="meta")
        return self._materialize()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # the parent reads an attribute: be the real one
        return getattr(self._materialize(), name)


_NORMS: tuple[type, ...] = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _norm_types() -> tuple[type, ...]:
    """The normalization classes, torchvision's FrozenBatchNorm2d (detection backbones,
    surgery.freeze) included once torchvision has been imported: before that, no model
    can hold one, and importing it here would cost seconds at ``import surgery``."""
    ops = sys.modules.get("torchvision.ops")
    frozen = getattr(ops, "FrozenBatchNorm2d", None)
    return (*_NORMS, frozen) if isinstance(frozen, type) else _NORMS


def _norm_forward(m: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
    """The shape of a normalization layer in eval mode, without the slow meta decomposition.

    Normalization keeps the input shape; the shape checks that a real run
    makes (channels, normalized trailing dims) are made here too, and a
    mismatch runs the real meta kernel, which raises the real error.
    """

    def run(*args: Any, **kwargs: Any) -> Any:
        if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
            return forward(*args, **kwargs)
        x = args[0]
        if isinstance(m, nn.LayerNorm):
            n = len(m.normalized_shape)
            ok = x.dim() >= n and tuple(x.shape[x.dim() - n :]) == tuple(m.normalized_shape)
        else:
            check = getattr(m, "_check_input_dim", None)
            if check is not None:
                check(x)
            channels: Any
            if isinstance(m, nn.GroupNorm):
                channels = m.num_channels
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                channels = m.num_features
            else:
                channels = m.weight.shape[0]  # type: ignore[union-attr,index,unused-ignore]
            ok = x.dim() >= 2 and x.shape[1] == channels
        if not ok:
            return forward(x)
        return torch.empty_like(x)

    return run


def _cached_forward(
    forward: Callable[..., Any],
    sid: int,
    cache: dict[tuple[Any, ...], tuple[torch.Size, torch.dtype]],
) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
            return forward(*args, **kwargs)
        x = args[0]
        key = (sid, x.shape, x.dtype)
        hit = cache.get(key)
        if hit is not None:
            return torch.empty(hit[0], dtype=hit[1], device="meta")
        out = forward(x)
        if isinstance(out, torch.Tensor):
            cache[key] = (out.shape, out.dtype)
        return out

    return run


def _shape_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, dict):
        return {k: _shape_of(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_shape_of(v) for v in value)
    return value


def fast_output_shape(clone: MetaClone, inputs: list[torch.Tensor]) -> Any:
    """The output shape of the meta copy, with its shape shortcuts."""
    with torch.no_grad():
        return _shape_of(clone.root(*inputs))


def plain_output_shape(model: nn.Module, inputs: list[torch.Tensor]) -> Any:
    """The output shape from an ordinary meta copy and forward (the reference path)."""
    plain = meta_copy(model)
    with eval_mode(plain), torch.no_grad():
        return _shape_of(plain(*inputs))
