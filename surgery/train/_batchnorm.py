"""BatchNorm policies for frozen parts: ``"eval"``, ``"train"``, ``"frozen"``, planned on the engine.

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

:func:`plan_bn` records all of it on an edit :class:`~surgery.edit._engine.Planner`:
the twins are built, hooks prepared and modes computed before anything changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from .._boundary import check_choice
from .._errors import ArgumentError
from ..edit._engine import Planner
from ..edit._plan import Setting

__all__ = [
    "BN_POLICIES",
    "FrozenBatchNormNd",
    "bn_policy",
    "check_bn",
    "frozen_twin",
    "is_bn",
    "plan_bn",
    "set_requires_grad",
]

BN_POLICIES = ("eval", "train", "frozen")
ORIGINAL = "_surgery_original"  # the BatchNorm a frozen twin replaced (not a submodule)


def keep_bn_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of ``bn="eval"``: the layer runs in eval mode, whatever ``.train()`` said."""
    module.training = False


class FrozenBatchNormNd(nn.Module):
    """Batch norm with fixed statistics and affine values, for inputs of any rank.

    ``torchvision.ops.FrozenBatchNorm2d`` handles 4-D inputs only; this is the
    same computation (same buffers, same state-dict keys) broadcast over
    ``(N, C, *)``, used for ``BatchNorm1d``, ``BatchNorm3d`` and ``SyncBatchNorm``.

    Example:
        >>> import torch, surgery
        >>> m = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 1), torch.nn.BatchNorm1d(4))
        >>> _ = surgery.freeze(m, bn="frozen")
        >>> type(m[1]).__name__, m[1](torch.rand(3, 4, 5)).shape
        ('FrozenBatchNormNd', torch.Size([3, 4, 5]))
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


def is_timm_bn_act(module: nn.Module) -> bool:
    return any(c.__name__ in ("BatchNormAct2d", "SyncBatchNormAct") for c in type(module).__mro__)


def is_bn(module: nn.Module) -> bool:
    """A BatchNorm whose policy freeze manages (plain, or a twin we made)."""
    return isinstance(module, _BatchNorm) or ORIGINAL in module.__dict__


def is_frozen_bn(module: nn.Module) -> bool:
    return any(c.__name__.startswith("FrozenBatchNorm") for c in type(module).__mro__)


def bn_policy(module: nn.Module) -> str | None:
    """The BatchNorm policy of one module: ``"eval"``, ``"train"``, ``"frozen"``, or None.

    ``"train"`` is also the state of an ordinary (trainable) BatchNorm.
    """
    if is_frozen_bn(module):
        return "frozen"
    if isinstance(module, _BatchNorm):
        hooked = any(h is keep_bn_eval for h in module._forward_pre_hooks.values())
        return "eval" if hooked else "train"
    return None


def frozen_twin(name: str, bn: Any) -> nn.Module:
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
    if is_timm_bn_act(bn):
        from timm.layers import freeze_batch_norm_2d

        twin = freeze_batch_norm_2d(bn)
    elif type(bn).forward is _BatchNorm.forward or isinstance(bn, nn.SyncBatchNorm):
        C = bn.num_features
        if isinstance(bn, nn.BatchNorm2d):
            from torchvision.ops import (
                FrozenBatchNorm2d,  # at first use: import surgery stays light
            )

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
    twin.__dict__[ORIGINAL] = bn
    return twin


def check_bn(bn: Any) -> str:
    """Raise ArgumentError unless ``bn`` is one of :data:`BN_POLICIES`."""
    return check_choice(
        "bn",
        bn,
        {
            "eval": "statistics fixed",
            "train": "statistics keep updating",
            "frozen": "converted to a frozen batch norm",
        },
    )


def set_requires_grad(planner: Planner, name: str, p: nn.Parameter, value: bool) -> None:
    """Plan ``p.requires_grad = value`` (nothing if it already is); checked first."""
    if p.requires_grad == value:
        return
    if value and p.is_inference():
        raise ArgumentError(
            f"cannot make {name!r} trainable: it is an inference tensor (created under "
            f"torch.inference_mode()).\n  clone the model's tensors outside inference mode first"
        )
    planner.set(
        p, "attr", "requires_grad", value, setting=Setting(name, "requires_grad", not value, value)
    )


def _plan_restore(planner: Planner, twin: Any, bn: nn.Module) -> None:
    """Plan the original ``bn`` back with the twin's current values (see :func:`frozen_twin`)."""
    for key in ("weight", "bias"):
        p = bn._parameters.get(key)
        if isinstance(p, nn.Parameter):
            value = getattr(twin, key).detach()
            if torch._has_compatible_shallow_copy_type(p, value) and p.dtype == value.dtype:
                planner.set(p, "attr", "data", value)  # keeps the Parameter object (optimizers)
            else:
                planner.set(bn._parameters, "setitem", key, nn.Parameter(value, p.requires_grad))
    planner.set(bn._buffers, "setitem", "running_mean", twin.running_mean)
    planner.set(bn._buffers, "setitem", "running_var", twin.running_var)
    nbt = bn._buffers.get("num_batches_tracked")
    if isinstance(nbt, torch.Tensor):
        planner.set(bn._buffers, "setitem", "num_batches_tracked", nbt.to(twin.running_mean.device))
    planner.set(bn, "dict", "training", twin.training)
    planner.set(twin, "pop", ORIGINAL, None)


def _plan_policy(
    planner: Planner,
    name: str,
    m: nn.Module,
    policy: str | None,
    holder: nn.Module | None,
    *,
    restored: bool,
) -> None:
    """Plan the final state of an ordinary BatchNorm ``m``: hooks, mode, requires_grad."""
    old = "frozen" if restored else bn_policy(m)
    if restored:
        for pname, p in m.named_parameters(prefix=name):
            set_requires_grad(planner, pname, p, policy is None)
    hooks = [k for k, h in m._forward_pre_hooks.items() if h is keep_bn_eval]
    if policy == "eval":
        for k in hooks[1:]:
            planner.set(m._forward_pre_hooks, "delitem", k, None)
        if not hooks:
            handle = RemovableHandle(m._forward_pre_hooks)  # only takes an id
            planner.set(m._forward_pre_hooks, "setitem", handle.id, keep_bn_eval)
        if m.training:
            planner.set(m, "dict", "training", False)
    else:
        for k in hooks:
            planner.set(m._forward_pre_hooks, "delitem", k, None)
        if hooks and holder is not None and m.training != holder.training:
            planner.set(m, "dict", "training", holder.training)  # follow the parent's mode again
    new = "eval" if policy == "eval" else "train"
    if old != new:
        planner.describe(Setting(name, "bn_policy", old, new))


def plan_bn(planner: Planner, entries: Sequence[tuple[str, nn.Module, str | None]]) -> None:
    """Plan each BatchNorm's policy (None: an ordinary, trainable BatchNorm again)."""
    seen: set[int] = set()
    for name, m, policy in entries:
        if id(m) in seen:
            continue
        seen.add(id(m))
        locations = planner.locations(m)
        holder = locations[0].parent if locations else None
        converted = ORIGINAL in m.__dict__
        if policy == "frozen":
            if converted or is_frozen_bn(m):
                continue
            if m is planner.model:
                raise ArgumentError(
                    f"cannot convert the root module ({type(m).__name__}) to a frozen batch "
                    f"norm in place; use bn='eval', or wrap it in a container first"
                )
            planner.replace(m, frozen_twin(name, m), path=name)
            planner.describe(Setting(name, "bn_policy", bn_policy(m), "frozen"))
        elif converted:
            original = m.__dict__[ORIGINAL]
            _plan_restore(planner, m, original)
            planner.replace(m, original, path=name)
            _plan_policy(planner, name, original, policy, holder, restored=True)
        else:
            _plan_policy(planner, name, m, policy, holder, restored=False)
