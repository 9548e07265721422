"""Freeze and unfreeze by path, with an explicit BatchNorm policy, and report it.

Setting ``requires_grad=False`` does not stop BatchNorm from updating its
running statistics in train mode, and a parent's ``.train()`` undoes a child's
``.eval()``. ``freeze`` therefore gives the BatchNorm layers of frozen parts a
policy that survives ``model.train()``:

* ``"eval"``: a forward pre-hook puts the layer in eval mode before every call,
  so its statistics never move (``unfreeze`` removes the hook);
* ``"train"``: statistics keep updating in train mode (only the affine
  parameters are frozen);
* ``"frozen"``: the layer is replaced by a frozen batch norm with the same
  values (``torchvision.ops.FrozenBatchNorm2d`` for 2-D, :class:`FrozenBatchNormNd`
  for 1-D/3-D, timm's ``FrozenBatchNormAct2d`` for its ``BatchNormAct2d``);
  ``unfreeze`` puts the original module object back, with the current values.

Parse -> plan -> apply: every pattern is resolved and every conversion is
prepared before the model changes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._errors import ArgumentError
from ..paths._resolve import check_model
from ._groups import select_targets, split_plan

__all__ = [
    "BN_POLICIES",
    "FrozenBatchNormNd",
    "TrainableReport",
    "TrainableRow",
    "bn_policy",
    "freeze",
    "freeze_to",
    "trainable",
    "unfreeze",
]

BN_POLICIES = ("eval", "train", "frozen")
_ORIGINAL = "_surgery_original"  # the BatchNorm a frozen twin replaced (not a submodule)


# ---------------------------------------------------------------------------
# BatchNorm machinery
# ---------------------------------------------------------------------------


def _keep_bn_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of ``bn="eval"``: the layer runs in eval mode, whatever ``.train()`` said."""
    module.training = False


class FrozenBatchNormNd(nn.Module):
    """Batch norm with fixed statistics and affine values, for inputs of any rank.

    ``torchvision.ops.FrozenBatchNorm2d`` handles 4-D inputs only; this is the
    same computation (same buffers, same state-dict keys) broadcast over
    ``(N, C, *)``, used for ``BatchNorm1d``, ``BatchNorm3d`` and ``SyncBatchNorm``.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        scale = self.weight.reshape(shape) * (self.running_var.reshape(shape) + self.eps).rsqrt()
        bias = self.bias.reshape(shape) - self.running_mean.reshape(shape) * scale
        return x * scale + bias

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def _is_timm_bn_act(module: nn.Module) -> bool:
    return any(c.__name__ in ("BatchNormAct2d", "SyncBatchNormAct") for c in type(module).__mro__)


def _is_bn(module: nn.Module) -> bool:
    """A BatchNorm whose policy freeze manages (plain, or a twin we made)."""
    return isinstance(module, _BatchNorm) or _ORIGINAL in module.__dict__


def _is_frozen_bn(module: nn.Module) -> bool:
    return any(c.__name__.startswith("FrozenBatchNorm") for c in type(module).__mro__)


def bn_policy(module: nn.Module) -> str | None:
    """The BatchNorm policy of one module: ``"eval"``, ``"train"``, ``"frozen"``, or None.

    ``"train"`` is also the state of an ordinary (trainable) BatchNorm.
    """
    if _is_frozen_bn(module):
        return "frozen"
    if isinstance(module, _BatchNorm):
        hooked = any(h is _keep_bn_eval for h in module._forward_pre_hooks.values())
        return "eval" if hooked else "train"
    return None


def _frozen_twin(name: str, bn: Any) -> nn.Module:
    """A frozen batch norm with ``bn``'s values (sharing storage); raises if impossible."""
    if bn.running_mean is None or bn.running_var is None:
        raise ArgumentError(
            f"cannot convert {name!r} ({type(bn).__name__}) to a frozen batch norm: it has no "
            f"running statistics (track_running_stats=False).\n  freeze it with bn='eval' or "
            f"bn='train' instead: surgery.freeze(model, {name!r}, bn='eval')"
        )
    if isinstance(bn.weight, nn.parameter.UninitializedParameter):
        raise ArgumentError(
            f"cannot convert {name!r}: {type(bn).__name__} is not initialized yet; run one "
            f"forward first, or use bn='eval'"
        )
    twin: Any
    if _is_timm_bn_act(bn):
        from timm.layers import freeze_batch_norm_2d

        twin = freeze_batch_norm_2d(bn)
    elif type(bn).forward is _BatchNorm.forward or isinstance(bn, nn.SyncBatchNorm):
        C = bn.num_features
        if isinstance(bn, nn.BatchNorm2d):
            from torchvision.ops import FrozenBatchNorm2d  # lazy: `import surgery` stays light

            twin = FrozenBatchNorm2d(C, eps=bn.eps)
        else:
            twin = FrozenBatchNormNd(C, eps=bn.eps)
        ref = bn.running_mean
        twin.to(device=ref.device, dtype=ref.dtype)
        twin.running_mean = bn.running_mean.detach()
        twin.running_var = bn.running_var.detach()
        if bn.weight is not None:
            twin.weight = bn.weight.detach()
        if bn.bias is not None:
            twin.bias = bn.bias.detach()
    else:
        raise ArgumentError(
            f"cannot convert {name!r} to a frozen batch norm: {type(bn).__name__} has its own "
            f"forward, which a frozen batch norm would drop.\n  use bn='eval' for it: "
            f"surgery.freeze(model, {name!r}, bn='eval')"
        )
    twin.training = bn.training
    twin.__dict__[_ORIGINAL] = bn
    return twin


def _restored(twin: Any) -> nn.Module:
    """The original BatchNorm of a twin, carrying the twin's current values."""
    bn: Any = twin.__dict__[_ORIGINAL]
    for key in ("weight", "bias"):
        p = getattr(bn, key, None)
        if isinstance(p, nn.Parameter):
            p.data = getattr(twin, key).detach()  # keeps the Parameter object (optimizers)
    bn.running_mean = twin.running_mean
    bn.running_var = twin.running_var
    nbt = getattr(bn, "num_batches_tracked", None)
    if isinstance(nbt, torch.Tensor):
        bn.num_batches_tracked = nbt.to(twin.running_mean.device)
    bn.training = twin.training
    return bn


# ---------------------------------------------------------------------------
# plan and apply
# ---------------------------------------------------------------------------


@dataclass
class _Plan:
    freeze: list[nn.Parameter] = field(default_factory=list)
    thaw: list[nn.Parameter] = field(default_factory=list)
    # (module, policy) with policy None meaning "ordinary, trainable BatchNorm"
    bn: list[tuple[str, nn.Module, str | None]] = field(default_factory=list)


def _check_bn(bn: Any) -> str:
    if bn not in BN_POLICIES:
        raise ArgumentError(
            f"bn must be one of 'eval' (statistics fixed), 'train' (statistics keep "
            f"updating) or 'frozen' (converted to a frozen batch norm), got {bn!r}"
        )
    return str(bn)


def _parents(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    out: dict[int, list[tuple[nn.Module, str]]] = {}
    for m in model.modules():
        for key, child in m._modules.items():
            if child is not None:
                out.setdefault(id(child), []).append((m, key))
    return out


def _apply(model: nn.Module, plan: _Plan) -> None:
    """Prepare and validate the BatchNorm conversions of ``plan``, then apply all of it."""
    parents = _parents(model)
    swaps: list[tuple[nn.Module, nn.Module]] = []  # (old, new) at every path of old
    finals: list[tuple[nn.Module, str | None, bool, list[tuple[nn.Module, str]]]] = []
    seen: set[int] = set()
    for name, m, policy in plan.bn:  # plan: nothing changes in this loop
        if id(m) in seen:
            continue
        seen.add(id(m))
        converted = _ORIGINAL in m.__dict__
        if policy == "frozen":
            if converted or _is_frozen_bn(m):
                continue
            if id(m) not in parents:
                raise ArgumentError(
                    f"cannot convert the root module ({type(m).__name__}) to a frozen batch "
                    f"norm in place; use bn='eval', or wrap it in a container first"
                )
            swaps.append((m, _frozen_twin(name, m)))
        elif converted:
            original = m.__dict__[_ORIGINAL]
            swaps.append((m, original))
            finals.append((original, policy, True, parents.get(id(m), [])))
        else:
            finals.append((m, policy, False, parents.get(id(m), [])))
    # apply
    for old, new in swaps:
        if new is old.__dict__.get(_ORIGINAL):
            _restored(old)
            del old.__dict__[_ORIGINAL]
        for parent, key in parents.get(id(old), []):
            parent._modules[key] = new
    for p in plan.freeze:
        p.requires_grad_(False)
    for p in plan.thaw:
        p.requires_grad_(True)
    for m, policy, restored, holders in finals:
        if restored:
            for p in m.parameters():
                p.requires_grad_(policy is None)
        hooks = [k for k, h in m._forward_pre_hooks.items() if h is _keep_bn_eval]
        for k in hooks:
            del m._forward_pre_hooks[k]
        if policy == "eval":
            m.register_forward_pre_hook(_keep_bn_eval)
            m.training = False
        elif hooks and holders:  # the hook forced eval: follow the parent's mode again
            m.training = holders[0][0].training


def _bn_under(modules: Iterable[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    out = []
    for name, m in modules:
        for sub_name, sub in m.named_modules(prefix=name):
            if _is_bn(sub):
                out.append((sub_name, sub))
    return out


def _selections(model: nn.Module, patterns: tuple[Any, ...]) -> tuple[list[str], list]:
    flat: list[Any] = []
    for p in patterns:  # freeze(m, ["layer1", "layer2"]) means freeze(m, "layer1", "layer2")
        flat.extend(p if isinstance(p, (list, tuple)) else [p])
    patterns = tuple(flat)
    if not patterns:
        return [n for n, _ in model.named_parameters()], [("", model)]
    names: dict[str, None] = {}
    modules: list[tuple[str, nn.Module]] = []
    for pattern in patterns:  # resolve all before changing anything
        sel = select_targets(model, pattern)
        names.update(dict.fromkeys(sel.params))
        modules += sel.modules
    return list(names), modules


def freeze(model: nn.Module, *patterns: str, bn: str = "eval") -> nn.Module:
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

    Returns:
        ``model`` itself (changed in place).

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
    """
    check_model(model, "freeze")
    policy = _check_bn(bn)
    names, modules = _selections(model, patterns)
    params = dict(model.named_parameters())
    plan = _Plan(freeze=[params[n] for n in names])
    plan.bn = [(n, m, policy) for n, m in _bn_under(modules)]
    _apply(model, plan)
    return model


def unfreeze(model: nn.Module, *patterns: str) -> nn.Module:
    """Make the parameters under ``patterns`` trainable again, in place; none means all.

    Undoes :func:`freeze` for the named modules: parameters get
    ``requires_grad=True``, the ``"eval"`` hooks are removed, and batch norms
    that ``bn="frozen"`` converted become the original modules again (same
    objects, current values). Frozen batch norms that the model was built with
    stay as they are.

    Returns:
        ``model`` itself (changed in place).

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
    check_model(model, "unfreeze")
    names, modules = _selections(model, patterns)
    params = dict(model.named_parameters())
    plan = _Plan(thaw=[params[n] for n in names])
    plan.bn = [(n, m, None) for n, m in _bn_under(modules)]
    _apply(model, plan)
    return model


def freeze_to(model: nn.Module, n: int, *, split_at: Any, bn: str = "eval") -> nn.Module:
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

    Returns:
        ``model`` itself (changed in place).

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
    check_model(model, "freeze_to")
    policy = _check_bn(bn)
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
    params = dict(model.named_parameters())
    frozen = [params[name] for g in plan.groups[:k] for name in g]
    thawed = [params[name] for g in plan.groups[k:] for name in g]
    bns = [(nm, m) for nm, m in model.named_modules() if _is_bn(m)]
    bn_plan = [(nm, m, policy if plan.module_group(m) < k else None) for nm, m in bns]
    _apply(model, _Plan(frozen, thawed, bn_plan))
    return model


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainableRow:
    """One top-level module: parameter counts (elements) and its BatchNorm layers by policy.

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> row = surgery.trainable(surgery.freeze(m, "layer1"))["layer1"]
        >>> row.trainable, row.frozen, row.state, row.bn
        (0, 147968, 'frozen', {'eval': 4})
    """

    name: str
    type: str
    trainable: int
    frozen: int
    bn: dict[str, int] = field(default_factory=dict)

    @property
    def state(self) -> str:
        if self.trainable and self.frozen:
            return "partly frozen"
        if self.frozen:
            return "frozen"
        return "trainable" if self.trainable else "-"


@dataclass
class TrainableReport:
    """The result of :func:`trainable`: ``rows`` as data, ``str()`` as a table.

    ``report[name]`` is the row of a top-level module; ``to_dict()`` and
    ``to_json()`` give the same data for tools.

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> report = surgery.trainable(surgery.freeze(m))
        >>> report.trainable, report.frozen
        (0, 11689512)
        >>> report.to_dict()["rows"][1]
        {'name': 'bn1', 'type': 'BatchNorm2d', 'trainable': 0, 'frozen': 128, 'bn': {'eval': 1}, 'state': 'frozen'}
    """

    model_type: str
    rows: list[TrainableRow] = field(default_factory=list)

    @property
    def trainable(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def frozen(self) -> int:
        return sum(r.frozen for r in self.rows)

    def __getitem__(self, name: str) -> TrainableRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise ArgumentError(
            f"no row {name!r} in this report; rows: {', '.join(r.name for r in self.rows)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "trainable": self.trainable,
            "frozen": self.frozen,
            "rows": [{**asdict(r), "state": r.state} for r in self.rows],
        }

    def to_json(self, **kwargs: Any) -> str:
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), sort_keys=True, **kwargs)

    def __str__(self) -> str:
        total = self.trainable + self.frozen
        head = (
            f"{self.model_type}: {total:,} parameters, {self.trainable:,} trainable, "
            f"{self.frozen:,} frozen"
        )
        table = [("module", "type", "trainable", "frozen", "state", "batch norm")]
        for r in self.rows:
            bn = ", ".join(f"{c} {p}" for p, c in sorted(r.bn.items())) or "-"
            table.append(
                (r.name or "(root)", r.type, f"{r.trainable:,}", f"{r.frozen:,}", r.state, bn)
            )
        widths = [max(len(row[i]) for row in table) for i in range(6)]
        right = {2, 3}
        lines = [head]
        for row in table:
            cells = [
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths))
            ]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"TrainableReport({self.model_type}, trainable={self.trainable:,}, "
            f"frozen={self.frozen:,}, rows={len(self.rows)})"
        )


def trainable(model: nn.Module) -> TrainableReport:
    """What is trainable, per top-level module: parameter counts and BatchNorm policy.

    Counts are numbers of elements; a shared parameter is counted once, in the
    first module where it appears. The BatchNorm column counts the batch norms
    under each module by policy: ``eval`` (statistics fixed by :func:`freeze`),
    ``train`` (statistics update in train mode: ordinary, or frozen with
    ``bn="train"``) and ``frozen`` (a frozen batch norm module).

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> _ = surgery.freeze_to(m, -1, split_at=["layer3", "fc"])
        >>> report = surgery.trainable(m)
        >>> report["layer1"].frozen, report["layer1"].bn, report["fc"].trainable
        (147968, {'eval': 4}, 513000)
        >>> print(report)
        ResNet: 11,689,512 parameters, 513,000 trainable, 11,176,512 frozen
        module   type               trainable     frozen  state      batch norm
        conv1    Conv2d                     0      9,408  frozen     -
        bn1      BatchNorm2d                0        128  frozen     1 eval
        relu     ReLU                       0          0  -          -
        maxpool  MaxPool2d                  0          0  -          -
        layer1   Sequential                 0    147,968  frozen     4 eval
        layer2   Sequential                 0    525,568  frozen     5 eval
        layer3   Sequential                 0  2,099,712  frozen     5 eval
        layer4   Sequential                 0  8,393,728  frozen     5 eval
        avgpool  AdaptiveAvgPool2d          0          0  -          -
        fc       Linear               513,000          0  trainable  -
    """
    check_model(model, "trainable")
    seen: set[int] = set()

    def row(
        name: str, module: nn.Module, params: Iterable[nn.Parameter], mods: Iterable[nn.Module]
    ) -> TrainableRow:
        t = f = 0
        for p in params:
            if id(p) in seen:
                continue
            seen.add(id(p))
            if p.requires_grad:
                t += p.numel()
            else:
                f += p.numel()
        counts: dict[str, int] = {}
        for m in mods:
            pol = bn_policy(m)
            if pol is not None:
                counts[pol] = counts.get(pol, 0) + 1
        return TrainableRow(name, type(module).__name__, t, f, counts)

    rows = []
    own = list(model.parameters(recurse=False))
    if own or not model._modules:
        rows.append(row("", model, own, [model] if not model._modules else []))
    for name, child in model.named_children():
        rows.append(row(name, child, child.parameters(), child.modules()))
    return TrainableReport(type(model).__name__, rows)
