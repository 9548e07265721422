"""``verify``: expectations on output shape and parameter counts, checked fast.

``verify`` computes on the meta device, never on the caller's model:

* parameter counts come straight from ``model.parameters()`` (each tensor
  once, so shared and tied parameters count once);
* the output shape comes from one forward of a meta copy in eval mode in
  which **repeated blocks are run once** (:mod:`surgery.trace._shapes`);
* the returned ``ModelStatistics`` carries those totals at once; its per-layer
  table (``summary_list``, mult-adds, sizes, ``str()``) is computed by
  torchinfo on the meta copy the first time it is asked for.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._boundary import operation
from .._errors import ArgumentError, VerificationError
from ..paths._resolve import check_model
from ._export import (
    example_output_shape,
    example_shapes,
    normalize_example_inputs,
    token_input_hint,
)
from ._meta import normalize_input_size
from ._shapes import MetaClone, fast_output_shape, plain_output_shape
from ._summary import count_parameters, summary

if TYPE_CHECKING:
    from torchinfo import ModelStatistics

__all__ = ["summary", "verified_statistics_type", "verify"]

_LAZY = frozenset(
    {"summary_list", "formatting", "total_mult_adds", "total_output_bytes", "total_param_bytes"}
)

# ----------------------------------------------------------------------------- statistics


@functools.cache
def verified_statistics_type() -> type[Any]:
    """:class:`VerifiedStatistics`, defined at first use (it subclasses torchinfo's class,
    and torchinfo is imported at first use so that ``import surgery`` stays light)."""
    from torchinfo import ModelStatistics

    class VerifiedStatistics(ModelStatistics):
        """torchinfo's ``ModelStatistics`` for :func:`verify`: totals now, the table on demand.

        ``total_params``, ``trainable_params``, ``input_size``, ``total_input`` and
        ``output_size`` are set by ``verify`` (shared parameters counted once).
        ``summary_list``, ``formatting``, ``total_mult_adds``, ``total_output_bytes``
        and ``total_param_bytes`` (and so ``str()``) are computed by
        :func:`summary` (torchinfo on a meta copy of the model, as it is then) the
        first time one of them is read; the totals stay verify's.
        """

        def __init__(
            self,
            model: nn.Module,
            input_size: list[tuple[int, ...]],
            dtypes: list[torch.dtype],
            total_params: int,
            trainable_params: int,
            output_size: Any,
        ) -> None:  # no super().__init__: it needs the table, which is computed lazily
            self._model = model
            self._dtypes = dtypes
            self.input_size = input_size
            self.total_input = sum(
                torch.Size(s).numel() * torch.empty((), dtype=d).element_size()
                for s, d in zip(input_size, dtypes)
            )
            self.total_params = total_params
            self.trainable_params = trainable_params
            self.output_size = output_size

        def __getattr__(self, name: str) -> Any:
            if name in _LAZY:
                stats = summary(self._model, list(self.input_size), dtypes=self._dtypes)
                for key in _LAZY:
                    self.__dict__[key] = getattr(stats, key)
                return self.__dict__[name]
            raise AttributeError(name)

    return VerifiedStatistics


def __getattr__(name: str) -> Any:  # `from ._verify import VerifiedStatistics` still works
    if name == "VerifiedStatistics":
        return verified_statistics_type()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- verify


def _check_count(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ArgumentError(f"{name} must be an int >= 0 or None, got {value!r}")
    return value


def _normalize_shape(value: Any) -> Any:
    if isinstance(value, torch.Size):
        return tuple(value)
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
        return tuple(_normalize_shape(v) for v in value)
    if isinstance(value, dict):
        return {k: _normalize_shape(v) for k, v in value.items()}
    raise ArgumentError(
        f"output_shape must be a shape such as (1, 1000) (or a tuple/dict of shapes for "
        f"several outputs), got {value!r}"
    )


def _fmt(value: Any) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return repr(value)


def verify(
    model: nn.Module,
    input_size: Any = None,
    *,
    example_inputs: Any = None,
    output_shape: Any = None,
    total_params: int | None = None,
    trainable_params: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
) -> ModelStatistics:
    """Check the output shape and parameter counts of ``model``; raise listing every failure.

    The forward runs on a meta copy in eval mode (the caller's model is never
    moved, run or changed), with repeated blocks computed once (see the module
    docstring). Shared or tied parameters count once.

    Args:
        model: any ``nn.Module``.
        input_size: the input shape with the batch dimension, or a list of shapes.
        example_inputs: instead of ``input_size``: a tensor, a tuple, or a dict
            of keyword inputs (``{"input_ids": ids}``); where the meta forward
            fails (most transformers models), ``torch.export`` gives the output
            shape (a dict for a ``ModelOutput``: ``{"logits": (2, 3)}``).
        output_shape: the expected output shape (a tuple/dict of shapes for
            models with several outputs); ``None`` skips the check.
        total_params: the expected number of parameters; ``None`` skips it.
        trainable_params: the expected number with ``requires_grad``; ``None`` skips it.
        dtypes: input dtypes, one per input (default float32).

    Returns:
        torchinfo's ``ModelStatistics`` (a :class:`VerifiedStatistics`): the
        totals and ``output_size`` at once, the per-layer table on demand.

    Raises:
        VerificationError: one or more expectations do not hold (or the forward
            fails); the message lists each, expected vs actual.
        ArgumentError: an expectation or ``input_size`` is malformed.

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> stats = surgery.verify(m, (1, 3, 224, 224), output_shape=(1, 1000),
        ...                        total_params=11_689_512)
        >>> stats.total_params, stats.output_size
        (11689512, (1, 1000))
        >>> surgery.verify(m, (1, 3, 224, 224), output_shape=(1, 10), trainable_params=0)
        Traceback (most recent call last):
        ...
        surgery._errors.VerificationError: verify(ResNet, input_size=(1, 3, 224, 224)): 2 failed expectations
          output_shape: expected (1, 10), got (1, 1000)
          trainable_params: expected 0, got 11,689,512 (difference +11,689,512)
    """
    with operation("verify", model=model):
        check_model(model, "verify")
        example = None
        if example_inputs is not None:
            example = normalize_example_inputs(model, example_inputs)
        elif input_size is None:
            raise ArgumentError("verify needs input_size= or example_inputs=")
        if example is None:
            sizes = normalize_input_size(input_size)
        else:
            sizes = example_shapes(example)[0]
        expected_shape = _normalize_shape(output_shape) if output_shape is not None else None
        want_total = _check_count(total_params, "total_params")
        want_trainable = _check_count(trainable_params, "trainable_params")
        types = list(dtypes) if dtypes is not None else [torch.float32] * len(sizes)
        if example is not None and dtypes is None:
            types = example_shapes(example)[1]
        if len(types) != len(sizes) or not all(isinstance(d, torch.dtype) for d in types):
            raise ArgumentError(f"dtypes must hold one torch.dtype per input, got {dtypes!r}")

        total, trainable = count_parameters(model)
        clone = MetaClone(model)
        inputs = [torch.empty(s, dtype=d, device="meta") for s, d in zip(sizes, types)]
        failures: list[str] = []
        shape: Any = None
        if example is not None:  # meta forward on the example, then torch.export
            shape, failed = example_output_shape(model, example)
            failures += failed
        else:
            try:
                shape = fast_output_shape(clone, inputs)
            except Exception:
                try:  # the shortcuts never decide a failure: the plain meta forward does
                    shape = plain_output_shape(model, inputs)
                except Exception as e:
                    failures.append(
                        f"forward: fails on the meta device: {type(e).__name__}: {e}"
                        + token_input_hint(model, input_size, e)
                    )
        if expected_shape is not None and not failures and shape != expected_shape:
            failures.append(f"output_shape: expected {_fmt(expected_shape)}, got {_fmt(shape)}")
        for name, want, got in (
            ("total_params", want_total, total),
            ("trainable_params", want_trainable, trainable),
        ):
            if want is not None and want != got:
                failures.append(
                    f"{name}: expected {want:,}, got {got:,} (difference {got - want:+,})"
                )
        if failures:
            shown = sizes[0] if len(sizes) == 1 else sizes
            where = f"input_size={shown}" if example is None else f"example_inputs={shown}"
            noun = "failed expectation" if len(failures) == 1 else "failed expectations"
            raise VerificationError(
                f"verify({type(model).__name__}, {where}): {len(failures)} {noun}\n"
                + "\n".join(f"  {f}" for f in failures)
            )
        return verified_statistics_type()(model, sizes, types, total, trainable, shape)
