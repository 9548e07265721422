"""Freeze and unfreeze by path, with an explicit BatchNorm policy (see :mod:`._batchnorm`).

Each operation is a planner on the edit engine: every pattern is resolved,
every ``requires_grad`` flip, BatchNorm hook, mode and frozen twin is prepared
on an :class:`~surgery.EditPlan`, and only the complete plan is committed.
``dry_run=True`` returns it and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from .._boundary import operation
from .._errors import ArgumentError
from ..edit._engine import Planner, check_aliases, run_plan
from ..edit._plan import EditPlan
from ..paths._resolve import check_model
from ._batchnorm import check_bn, is_bn, plan_bn, set_requires_grad
from ._groups import select_targets, split_plan

__all__ = ["freeze", "freeze_to", "unfreeze"]


def _plan(
    model: nn.Module,
    op: str,
    params: dict[str, bool],
    bn: Sequence[tuple[str, nn.Module, str | None]],
    aliases: str,
    dry_run: bool,
) -> nn.Module | EditPlan:
    """Plan ``requires_grad`` per parameter name and the BatchNorm policies, then commit."""
    planner = Planner(model, op)
    named = dict(model.named_parameters())
    for name, value in params.items():
        set_requires_grad(planner, name, named[name], value)
    plan_bn(planner, bn)
    plan = run_plan(planner.finish(aliases), dry_run=dry_run)
    return plan if dry_run else model


def _bn_under(modules: Iterable[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    out = []
    for name, m in modules:
        for sub_name, sub in m.named_modules(prefix=name):
            if is_bn(sub):
                out.append((sub_name, sub))
    return out


def _selections(
    model: nn.Module, patterns: tuple[Any, ...], types: Any = None
) -> tuple[list[str], list]:
    flat: list[Any] = []
    for p in patterns:  # freeze(m, ["layer1", "layer2"]) means freeze(m, "layer1", "layer2")
        flat.extend(p if isinstance(p, (list, tuple)) else [p])
    patterns = tuple(flat)
    if not patterns and types is None:
        return [n for n, _ in model.named_parameters()], [("", model)]
    if not patterns:
        patterns = ("**",)
    names: dict[str, None] = {}
    modules: list[tuple[str, nn.Module]] = []
    for pattern in patterns:  # resolve all before changing anything
        sel = select_targets(model, pattern, types)
        names.update(dict.fromkeys(sel.params))
        modules += sel.modules
    return list(names), modules


def freeze(
    model: nn.Module,
    *patterns: str,
    bn: str = "eval",
    types: Any = None,
    aliases: str = "warn",
    dry_run: bool = False,
) -> nn.Module | EditPlan:
    """Freeze the parameters under ``patterns``, in place; none means the whole model.

    A module path or glob freezes every parameter under the modules it names
    (a pattern that names no module may name parameters, e.g. ``"**.bias"``).
    Every pattern is resolved before anything changes. The BatchNorm layers
    under the named modules get the policy ``bn``:

    * ``"eval"`` (default): running statistics stay fixed even after
      ``model.train()`` and training steps (a forward pre-hook runs them in eval mode);
    * ``"train"``: statistics keep updating in train mode;
    * ``"frozen"``: replaced by a frozen batch norm with the same values
      (``torchvision.ops.FrozenBatchNorm2d`` for 2-D); :func:`unfreeze` puts
      the original module back.

    Give frozen weights to no optimizer (:func:`param_groups` leaves them out):
    AdamW's weight decay moves a weight even when its gradient is zero.

    Args:
        model: any ``nn.Module``.
        *patterns: paths, globs or ``re:`` patterns of the path grammar.
        bn: the BatchNorm policy for the frozen parts.
        types: keep only the modules of these types (a class, a tuple, a class name
            or a list of names; see :func:`surgery.find`); no pattern means ``"**"``.
        aliases: ``"warn"`` (default) or ``"error"`` when ``bn="frozen"`` replaces
            a BatchNorm reachable under several paths (it is replaced at all of them).
        dry_run: return the :class:`~surgery.EditPlan` and change nothing.

    Returns:
        ``model`` itself, changed in place (the plan with ``dry_run=True``).

    Raises:
        PathNotFoundError: a pattern names nothing (the model is untouched).
        ArgumentError: an unknown ``bn``, or a BatchNorm that cannot be converted
            with ``bn="frozen"`` (the message shows the fix).

    Example:
        >>> import torch, torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> _ = surgery.freeze(m, "conv1", "bn1", "layer1", "layer2")
        >>> m.layer1[0].conv1.weight.requires_grad, m.layer3[0].conv1.weight.requires_grad
        (False, True)
        >>> before = m.bn1.running_mean.clone()
        >>> _ = m.train()(torch.randn(2, 3, 64, 64))
        >>> torch.equal(m.bn1.running_mean, before)
        True
        >>> _ = surgery.freeze(m, "layer4", bn="frozen")
        >>> type(m.layer4[0].bn1).__name__
        'FrozenBatchNorm2d'
        >>> _ = surgery.freeze(m, "**", types="BatchNorm2d")  # every BatchNorm, by type
        >>> m.layer3[0].bn1.weight.requires_grad, m.layer3[0].conv1.weight.requires_grad
        (False, True)
        >>> plan = surgery.freeze(m, "fc", dry_run=True)
        >>> [(s.path, s.new) for s in plan.settings], m.fc.weight.requires_grad
        ([('fc.weight', False), ('fc.bias', False)], True)
    """
    with operation("freeze", model=model):
        check_model(model, "freeze")
        policy = check_bn(bn)
        shared = check_aliases(aliases)
        names, modules = _selections(model, patterns, types)
        bns = [(n, m, policy) for n, m in _bn_under(modules)]
        return _plan(model, "freeze", dict.fromkeys(names, False), bns, shared, dry_run)


def unfreeze(
    model: nn.Module,
    *patterns: str,
    types: Any = None,
    aliases: str = "warn",
    dry_run: bool = False,
) -> nn.Module | EditPlan:
    """Make the parameters under ``patterns`` trainable again, in place; none means all.

    Undoes :func:`freeze` for the named modules: parameters get
    ``requires_grad=True``, the ``"eval"`` hooks are removed, and batch norms
    that ``bn="frozen"`` converted become the original modules again (same
    objects, current values). Frozen batch norms that the model was built with
    stay as they are.

    Args:
        model: any ``nn.Module``.
        *patterns: paths, globs or ``re:`` patterns of the path grammar.
        types: keep only the modules of these types (see :func:`freeze`).
        aliases: ``"warn"`` (default) or ``"error"`` for a shared converted batch norm.
        dry_run: return the :class:`~surgery.EditPlan` and change nothing.

    Returns:
        ``model`` itself, changed in place (the plan with ``dry_run=True``).

    Raises:
        PathNotFoundError: a pattern names nothing (the model is untouched).

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> bn = m.layer1[0].bn1
        >>> _ = surgery.freeze(m, bn="frozen")
        >>> _ = surgery.unfreeze(m, "layer1")
        >>> m.layer1[0].bn1 is bn, bn.weight.requires_grad, m.conv1.weight.requires_grad
        (True, True, False)
    """
    with operation("unfreeze", model=model):
        check_model(model, "unfreeze")
        shared = check_aliases(aliases)
        names, modules = _selections(model, patterns, types)
        bns = [(n, m, None) for n, m in _bn_under(modules)]
        return _plan(model, "unfreeze", dict.fromkeys(names, True), bns, shared, dry_run)


def freeze_to(
    model: nn.Module,
    n: int,
    *,
    split_at: Any,
    bn: str = "eval",
    aliases: str = "warn",
    dry_run: bool = False,
) -> nn.Module | EditPlan:
    """Freeze the layer groups before ``n`` and unfreeze the rest, in place.

    The groups are those of :func:`layer_groups`; a negative ``n`` counts from
    the end, so ``freeze_to(m, -1, split_at=...)`` trains only the last group
    and ``n=0`` unfreezes everything. BatchNorm layers in frozen groups get the
    policy ``bn`` (see :func:`freeze`), the others become ordinary again.

    Args:
        model: any ``nn.Module``.
        n: the first trainable group, ``-len(groups) <= n < len(groups)``.
        split_at: module paths in model order, each starting a group.
        bn: the BatchNorm policy for the frozen groups.
        aliases: ``"warn"`` (default) or ``"error"`` for a shared BatchNorm replaced
            with ``bn="frozen"``.
        dry_run: return the :class:`~surgery.EditPlan` and change nothing.

    Returns:
        ``model`` itself, changed in place (the plan with ``dry_run=True``).

    Raises:
        ArgumentError: ``n`` out of range, fewer than two groups, a bad ``bn``
            or ``split_at`` (nothing is changed).
        PathNotFoundError: a ``split_at`` path names no module.

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> _ = surgery.freeze_to(m, -1, split_at=["layer3", "fc"])
        >>> m.layer4[1].conv2.weight.requires_grad, m.fc.weight.requires_grad
        (False, True)
        >>> _ = surgery.freeze_to(m, 1, split_at=["layer3", "fc"])
        >>> m.layer2[0].conv1.weight.requires_grad, m.layer3[0].conv1.weight.requires_grad
        (False, True)
    """
    with operation("freeze_to", model=model):
        check_model(model, "freeze_to")
        policy = check_bn(bn)
        shared = check_aliases(aliases)
        plan = split_plan(model, split_at)
        count = len(plan.groups)
        if isinstance(n, bool) or not isinstance(n, int):
            raise ArgumentError(f"n must be an int (a group index), got {type(n).__name__} {n!r}")
        if count < 2:
            raise ArgumentError(
                f"freeze_to needs at least two layer groups, but split_at={plan.split_at!r} gives "
                f"{count}: name where groups start, e.g. split_at=['layer3', 'fc'] "
                f"(see surgery.layer_groups), or use surgery.freeze/unfreeze for the whole model"
            )
        if not -count <= n < count:
            raise ArgumentError(
                f"n={n} is out of range for {count} layer groups: use 0..{count - 1} or "
                f"-{count}..-1 (n=0 unfreezes everything; to freeze every group use surgery.freeze)"
            )
        k = n % count
        wanted = {name: False for g in plan.groups[:k] for name in g}
        wanted.update({name: True for g in plan.groups[k:] for name in g})
        bns = [(nm, m) for nm, m in model.named_modules() if is_bn(m)]
        bn_plan = [(nm, m, policy if plan.module_group(m) < k else None) for nm, m in bns]
        return _plan(model, "freeze_to", wanted, bn_plan, shared, dry_run)
