"""timm's own re-heading, learned on a meta copy and planned on the real model.

A timm model knows its heads better than any discovery: ``reset_classifier``
replaces the classifier, resizes or drops distillation heads (repvit's
``head.head_dist``), removes auxiliary heads (volo's ``aux_head`` becomes
None for ``num_classes=0``) and sets attributes (``num_classes``,
``model_args``). :func:`plan_timm_reset` runs it on a meta copy of the model
(no tensor memory, the caller's model is never touched), compares the copy
with the model, and plans the same changes on the real model with freshly
built modules: each new module's tensors are created on the old head's device
and initialized by its own ``reset_parameters``. Anything it cannot rebuild
that way makes it return False, and the caller replaces the declared heads
directly.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from .._boundary import building
from ..paths._resolve import join_path
from ._discover import has_tensors, where
from ._engine import Planner
from ._plan import Setting

__all__ = ["plan_timm_reset"]

_log = logging.getLogger("surgery")
_MISSING: Any = object()
_SIMPLE = (type(None), bool, int, float, str)


class _CannotRebuild(Exception):
    """A module built by ``reset_classifier`` that cannot be rebuilt on the real device."""


def _simple(value: Any) -> bool:
    if isinstance(value, _SIMPLE):
        return True
    if isinstance(value, (tuple, list)):
        return all(_simple(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _simple(v) for k, v in value.items())
    return False


def _meta_twins(model: nn.Module) -> dict[int, Any]:
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo.setdefault(id(p), nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad))
    for b in model.buffers():
        memo.setdefault(id(b), torch.empty_like(b, device="meta"))
    return memo


def _pairs(model: nn.Module, clone: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """(path, original, copy) for every module, each object once."""
    out, seen = [], set()
    stack = [("", model, clone)]
    while stack:
        path, o, c = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        out.append((path, o, c))
        for key, child in o._modules.items():
            twin = c._modules.get(key)
            if child is not None and twin is not None:
                stack.append((join_path(path, key), child, twin))
    return out


def _reachable(root: nn.Module) -> set[int]:
    return {id(m) for m in root.modules()}


def _rebuild(
    new: nn.Module, originals: dict[int, nn.Module], device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """``new`` (built by timm on the copy) with its copied parts mapped back and real tensors."""
    stack, reused = [new], False
    while stack:
        m = stack.pop()
        for key, child in list(m._modules.items()):
            if child is None:
                continue
            if id(child) in originals:  # timm reused a module of the model: use the real one
                m._modules[key] = originals[id(child)]
                reused = True
            else:
                stack.append(child)
        own = [*m._parameters.values(), *m._buffers.values()]
        if any(t is not None and t.is_meta for t in own) and device.type != "meta":
            reset = getattr(type(m), "reset_parameters", None)
            if not callable(reset):
                raise _CannotRebuild(
                    f"{type(m).__name__} has tensors but no reset_parameters to initialize them"
                )
            for k, p in m._parameters.items():
                if p is not None:
                    m._parameters[k] = nn.Parameter(
                        torch.empty_like(p, device=device), p.requires_grad
                    )
            for k, b in m._buffers.items():
                if b is not None:
                    m._buffers[k] = torch.empty_like(b, device=device)
            m.reset_parameters()  # type: ignore[operator]
    if not reused and has_tensors(new) and where(new) != (device, dtype):
        new.to(device=device, dtype=dtype)  # built by an older reset without device=/dtype=
    return new


def plan_timm_reset(
    model: nn.Module, num_classes: int, planner: Planner, declared: list[str]
) -> bool:
    """Plan on ``planner`` what ``model.reset_classifier(num_classes)`` does; False if it can't.

    Raises:
        ArgumentError: a new head cannot be allocated (e.g. ``num_classes=10**12``);
            the message names the head.
    """
    try:
        clone = copy.deepcopy(model, _meta_twins(model))
        pairs = _pairs(model, clone)
        clone.reset_classifier(num_classes)  # type: ignore[operator]
    except Exception as e:
        _log.warning(
            "replace_head(%s): its reset_classifier(%d) failed (%s: %s); replacing the declared "
            "heads %s directly",
            type(model).__name__,
            num_classes,
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
            ", ".join(map(repr, declared)),
        )
        return False
    originals = {id(c): o for _, o, c in pairs}
    alive = _reachable(clone)
    fallback = where(model)
    changes: list[tuple[str, nn.Module, str, Any, Any]] = []
    settings: list[tuple[nn.Module, str, str, Any, Any]] = []
    for path, o, c in pairs:
        if id(c) not in alive:
            continue  # a part the reset removed: what changed inside it does not matter
        for key in dict.fromkeys([*o._modules, *c._modules]):
            old = o._modules.get(key, _MISSING)
            new = c._modules.get(key, _MISSING)
            if new is not _MISSING and new is not None:
                new = originals.get(id(new), new)
            if new is old or (old is None and new is _MISSING):
                continue
            changes.append((join_path(path, key), o, key, old, new))
        for p in set(o._parameters) | set(o._buffers):
            twin = c._parameters.get(p, c._buffers.get(p, _MISSING))
            mine = o._parameters.get(p, o._buffers.get(p))
            if (
                twin is _MISSING
                or (mine is None) != (twin is None)
                or (mine is not None and twin is not None and twin.shape != mine.shape)
            ):
                _log.warning(
                    "replace_head(%s): its reset_classifier changes the tensor %r, which "
                    "surgery does not rebuild; replacing the declared heads directly",
                    type(model).__name__,
                    join_path(path, p),
                )
                return False
        names = {n for n in (*o.__dict__, *c.__dict__) if not n.startswith("_")}
        for name in sorted(names - {"training"}):
            a, b = o.__dict__.get(name, _MISSING), c.__dict__.get(name, _MISSING)
            if a is _MISSING or b is _MISSING or not (_simple(a) and _simple(b)) or a == b:
                continue
            settings.append((o, path, name, a, b))
    built: list[tuple[str, nn.Module, str, Any, Any]] = []
    for path, parent, key, old, new in changes:
        if isinstance(new, nn.Module) and not any(new is o for _, o, _c in pairs):
            ref = old if isinstance(old, nn.Module) and has_tensors(old) else model
            device, dtype = where(ref) if has_tensors(ref) else fallback
            try:
                with building(
                    f"build the new head {path!r} for num_classes={num_classes}", path=path
                ):
                    new = _rebuild(new, originals, device, dtype)
            except _CannotRebuild as e:
                _log.warning(
                    "replace_head(%s): cannot rebuild %r from its reset_classifier (%s); "
                    "replacing the declared heads directly",
                    type(model).__name__,
                    path,
                    e,
                )
                return False
        built.append((path, parent, key, old, None if new is _MISSING else new))
    done: set[int] = set()
    for path, parent, key, old, new in built:
        if isinstance(old, nn.Module):
            if id(old) not in done:
                done.add(id(old))
                planner.replace(old, new, path=path)
        else:
            planner.put(parent, key, new, path=path)
    for o, path, name, a, b in settings:
        planner.set(
            o, "dict", name, copy.deepcopy(b), setting=Setting(path, name, a, copy.deepcopy(b))
        )
    return True
