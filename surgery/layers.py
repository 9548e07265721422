"""Ready-made factories for :func:`surgery.swap` that keep weights where the math allows.

``frozen_batchnorm`` and ``sync_batchnorm`` are factories themselves;
``group_norm(num_groups)`` and ``activation(cls, **kwargs)`` build one.

Example:
    >>> import torch, torchvision, surgery
    >>> m = torchvision.models.resnet18(weights=None)
    >>> _ = surgery.swap(m, "**", surgery.layers.frozen_batchnorm, types="BatchNorm2d")
    >>> type(m.bn1).__name__
    'FrozenBatchNorm2d'
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._errors import ArgumentError
from .train._batchnorm import frozen_twin

__all__ = ["activation", "frozen_batchnorm", "group_norm", "sync_batchnorm"]


def _check_bn(module: nn.Module, what: str) -> Any:
    if not isinstance(module, _BatchNorm):
        raise ArgumentError(
            f"{what} converts BatchNorm layers, got {type(module).__name__}; select them with "
            f"types='BatchNorm2d' (or types=nn.modules.batchnorm._BatchNorm)"
        )
    return module


def frozen_batchnorm(module: nn.Module, path: str = "") -> nn.Module:
    """A frozen batch norm with ``module``'s values: the conversion of ``freeze(bn="frozen")``.

    ``torchvision.ops.FrozenBatchNorm2d`` for 2-D, :class:`surgery.FrozenBatchNormNd`
    otherwise, timm's ``FrozenBatchNormAct2d`` for ``BatchNormAct2d``;
    :func:`surgery.unfreeze` puts the original back.

    Example:
        >>> import torch, surgery
        >>> surgery.layers.frozen_batchnorm(torch.nn.BatchNorm1d(4))
        FrozenBatchNormNd(4, eps=1e-05)
    """
    return frozen_twin(path or type(module).__name__, _check_bn(module, "frozen_batchnorm"))


def sync_batchnorm(module: nn.Module, path: str = "") -> nn.Module:
    """``nn.SyncBatchNorm`` with ``module``'s parameters and statistics (torch's own conversion).

    Example:
        >>> import torch, surgery
        >>> surgery.layers.sync_batchnorm(torch.nn.BatchNorm2d(4))
        SyncBatchNorm(4, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    """
    _check_bn(module, "sync_batchnorm")
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def group_norm(num_groups: int, *, eps: float | None = None) -> Callable[[nn.Module], nn.Module]:
    """A factory: BatchNorm -> ``nn.GroupNorm(num_groups, C)``, affine weights carried over.

    The running statistics are not carried over (GroupNorm has none). ``eps``
    defaults to the BatchNorm's.

    Example:
        >>> import torch, surgery
        >>> bn = torch.nn.BatchNorm2d(64)
        >>> gn = surgery.layers.group_norm(32)(bn)
        >>> gn, torch.equal(gn.weight, bn.weight)
        (GroupNorm(32, 64, eps=1e-05, affine=True, bias=True), True)
    """
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ArgumentError(f"num_groups must be an int >= 1, got {num_groups!r}")

    def to_group_norm(module: nn.Module) -> nn.Module:
        bn = _check_bn(module, "group_norm")
        channels = bn.num_features
        if channels % num_groups:
            raise ArgumentError(
                f"group_norm({num_groups}): {channels} channels are not divisible into "
                f"{num_groups} groups; pick a divisor of {channels}"
            )
        ref = bn.weight if bn.weight is not None else bn.running_mean
        kwargs: dict[str, Any] = {}
        if ref is not None:
            kwargs = {"device": ref.device, "dtype": ref.dtype}
        new = nn.GroupNorm(
            num_groups, channels, eps=bn.eps if eps is None else eps, affine=bn.affine, **kwargs
        )
        if bn.affine:
            with torch.no_grad():
                new.weight.copy_(bn.weight)
                new.bias.copy_(bn.bias)
            new.weight.requires_grad_(bn.weight.requires_grad)
            new.bias.requires_grad_(bn.bias.requires_grad)
        return new

    return to_group_norm


def activation(cls: type[nn.Module], **kwargs: Any) -> Callable[[nn.Module], nn.Module]:
    """A factory: any module -> ``cls(**kwargs)``, keeping ``inplace`` where ``cls`` takes it.

    Example:
        >>> import torch, surgery
        >>> surgery.layers.activation(torch.nn.SiLU)(torch.nn.ReLU(inplace=True))
        SiLU(inplace=True)
        >>> surgery.layers.activation(torch.nn.GELU, approximate="tanh")(torch.nn.ReLU(inplace=True))
        GELU(approximate='tanh')
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ArgumentError(f"activation needs an nn.Module class such as nn.SiLU, got {cls!r}")
    try:
        takes_inplace = "inplace" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        takes_inplace = False

    def to_activation(module: nn.Module) -> nn.Module:
        args = dict(kwargs)
        if (
            takes_inplace
            and "inplace" not in args
            and isinstance(getattr(module, "inplace", None), bool)
        ):
            args["inplace"] = module.inplace
        return cls(**args)

    return to_activation
