"""``summary``: torchinfo's table, run on a copy of the model.

On the meta device by default (no memory, no compute, the caller's model never
moves); with ``device=`` on a copy that shares the parameters. Parameter totals
count each tensor once (:func:`count_parameters`), as :func:`surgery.verify`
and :func:`surgery.tree` do.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._boundary import operation
from .._errors import ArgumentError, SurgeryError
from ..paths._resolve import check_model
from ._export import example_data, token_input_hint
from ._meta import eval_mode, meta_copy, normalize_input_size, structural_copy

if TYPE_CHECKING:  # torchinfo is imported at first use: `import surgery` stays light
    from torchinfo import ModelStatistics

__all__ = ["count_parameters", "summary"]


def _to_meta(data: Any) -> Any:
    if isinstance(data, torch.Tensor):
        return torch.empty_like(data, device="meta")
    if isinstance(data, dict):
        return {k: _to_meta(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(_to_meta(v) for v in data) if not hasattr(data, "_fields") else data
    return data


def _devices(model: nn.Module) -> set[torch.device]:
    return {t.device for t in (*model.parameters(), *model.buffers())}


def _run_torchinfo(model: nn.Module, input_size: Any, kwargs: dict[str, Any]) -> ModelStatistics:
    """torchinfo on ``model`` (a copy), with parameter totals counting each tensor once."""
    from torchinfo import (
        summary as _torchinfo_summary,  # at first use: `import surgery` stays light
    )

    try:
        with eval_mode(model):  # torchinfo resets every module to the root's mode; we restore each
            stats = _torchinfo_summary(model, input_size, **kwargs)
    except Exception as e:
        cause = e.__cause__ or e
        raise SurgeryError(
            f"torchinfo could not run {type(model).__name__} with input_size={input_size!r} "
            f"on {kwargs.get('device')}: {type(cause).__name__}: {cause}"
            + token_input_hint(model, input_size, cause)
        ) from e
    if not any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        # torchinfo adds up each layer's parameters, so a shared one counts at every use;
        # report unique parameters (as verify and tree do)
        stats.total_params, stats.trainable_params = count_parameters(model)
    return stats


def summary(
    model: nn.Module, input_size: Any = None, *, example_inputs: Any = None, **torchinfo_kwargs: Any
) -> ModelStatistics:
    """torchinfo's summary of ``model``, computed on a meta copy by default.

    The caller's model is never moved, run or changed (its train/eval modes
    included). Every keyword goes to ``torchinfo.summary`` (``depth``,
    ``col_names``, ``dtypes``, ``input_data``...); ``verbose`` defaults to 0
    (nothing printed: print the result). ``device="cpu"`` (or ``"cuda"``)
    asks for a real run: on a copy that shares the parameters when the model
    already lives there (hooks, caches and buffers are the copy's), otherwise
    on a deep copy.

    Args:
        model: any ``nn.Module``.
        input_size: the input shape with the batch dimension, such as
            ``(1, 3, 224, 224)``, or a list of shapes for several inputs.
        example_inputs: instead of ``input_size``: a tensor, a tuple, or a dict
            of keyword inputs, given to torchinfo as ``input_data`` (keys are
            checked against ``forward``'s parameters).
        **torchinfo_kwargs: passed to ``torchinfo.summary``.

    Returns:
        torchinfo's ``ModelStatistics``. ``total_params`` and
        ``trainable_params`` (and the totals printed by ``str()``) count
        **unique** parameters: a parameter shared by several layers counts
        once, as in :func:`verify` and :func:`tree` (torchinfo itself counts it
        at every layer that uses it); the per-layer rows keep torchinfo's counts.

    Raises:
        SurgeryError: the forward fails (the message says why).

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> stats = surgery.summary(m, (1, 3, 224, 224))
        >>> stats.total_params, stats.summary_list[-1].output_size
        (11689512, [1, 1000])
        >>> m.conv1.weight.device.type
        'cpu'
    """
    with operation("summary", model=model):
        check_model(model, "summary")
        if input_size is not None:
            normalize_input_size(input_size)  # checked here: torchinfo's errors are raw
        kwargs = dict(torchinfo_kwargs)
        if example_inputs is not None:
            kwargs["input_data"] = example_data(model, example_inputs)
        kwargs.setdefault("verbose", 0)
        device = kwargs.pop("device", None)
        try:
            target = torch.device(device) if device is not None else torch.device("meta")
        except (RuntimeError, TypeError) as exc:
            raise ArgumentError(f"device {device!r} is not a torch device: {exc}") from None
        if target.type == "meta":
            if kwargs.get("input_data") is not None:
                kwargs["input_data"] = _to_meta(kwargs["input_data"])
            return _run_torchinfo(meta_copy(model), input_size, {**kwargs, "device": target})
        devices = _devices(model)
        if any(d.type == "meta" for d in devices):
            raise ArgumentError(
                f"{type(model).__name__} lives on the meta device (no data): it cannot run on "
                f"{target}; drop device= to summarize it on the meta device"
            )
        if devices and devices != {target}:
            run = copy.deepcopy(model)  # the caller's model never moves
        else:  # fresh modules (hooks, caches, modes are the copy's), buffers cloned (BN statistics)
            run = structural_copy(model, lambda t, param: t if param else t.clone())
        return _run_torchinfo(run, input_size, {**kwargs, "device": target})


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = trainable = 0
    for p in model.parameters():  # each tensor once: shared and tied parameters count once
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise ArgumentError(
                f"{type(model).__name__} has uninitialized (lazy) parameters: run one forward "
                f"with real data first, then verify"
            )
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return total, trainable
