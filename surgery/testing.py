"""Helpers for property tests of your own models: every cut point splits losslessly.

``cut_points(model)`` is a hypothesis strategy drawing module paths valid for
:func:`surgery.split`; ``assert_split_lossless`` checks ``tail(head(x)) ==
model(x)`` at one of them. This is the only module of `surgery` that needs
hypothesis, and only :func:`cut_points` imports it.

Example (a test of your own)::

    from hypothesis import given, settings
    import surgery.testing as st_surgery

    model = MyNet().eval()

    @settings(max_examples=25, deadline=None)
    @given(path=st_surgery.cut_points(model))
    def test_split_is_lossless(path):
        st_surgery.assert_split_lossless(model, path, torch.randn(2, 3, 64, 64))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._errors import ArgumentError
from .trace._cut import split
from .trace._meta import eval_mode
from .trace._points import split_points as _split_points

if TYPE_CHECKING:  # pragma: no cover
    from hypothesis.strategies import SearchStrategy

__all__ = ["assert_split_lossless", "cut_points", "split_points"]


def split_points(model: nn.Module, *, example_inputs: Any = None) -> list[str]:
    """Every module path valid for :func:`surgery.split` / :func:`surgery.cut`, in order.

    The same list as :func:`surgery.cut_points` (kept here beside the
    :func:`cut_points` strategy): the modules ``forward`` calls, in
    ``named_modules`` order (the root excluded), and the containers it
    iterates entry after entry. Does not need hypothesis. Where torch.fx
    cannot trace the model, torch.export runs on ``example_inputs`` (a
    tensor, a tuple or a dict of keyword inputs; see :func:`surgery.split`).

    Raises:
        TraceError: the model's forward cannot be traced.

    Example:
        >>> import torchvision
        >>> from surgery.testing import split_points
        >>> points = split_points(torchvision.models.resnet18(weights=None))
        >>> points[:5], points[-1], len(points)
        (['conv1', 'bn1', 'relu', 'maxpool', 'layer1'], 'fc', 67)
    """
    return _split_points(model, example_inputs=example_inputs)


def cut_points(model: nn.Module) -> SearchStrategy[str]:
    """A hypothesis strategy drawing module paths valid for :func:`surgery.split`.

    The model is traced once, when the strategy is built; the strategy draws
    from :func:`split_points` (shrinking towards the first module).

    Raises:
        ArgumentError: the model has no cut point (no submodule is called).
        TraceError: the model's forward cannot be traced.

    Example:
        >>> import torchvision
        >>> from hypothesis import find
        >>> from surgery.testing import cut_points
        >>> strategy = cut_points(torchvision.models.resnet18(weights=None))
        >>> find(strategy, lambda path: path.startswith("layer3"))
        'layer3'
    """
    from hypothesis import strategies as st

    points = _split_points(model)
    if not points:
        raise ArgumentError(
            f"{type(model).__name__} has no cut point: its forward calls no submodule"
        )
    return st.sampled_from(points)


def assert_split_lossless(
    model: nn.Module,
    path: str,
    *inputs: Any,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """Assert that ``tail(head(*inputs))`` equals ``model(*inputs)`` for ``split(model, path)``.

    The check runs in eval mode under ``torch.no_grad()`` (every submodule's
    mode is restored afterwards) on parts that share the model's modules, so
    it copies nothing and changes nothing. Inputs are cloned for each run, in
    case the model modifies its input in place. Values are compared with
    ``torch.testing.assert_close`` (nested outputs too); ``atol``/``rtol``
    default to its dtype-based tolerances (given one, the other defaults to
    float32's: ``atol=1e-5``, ``rtol=1.3e-6``).

    Raises:
        AssertionError: the outputs differ; the message names the path.
        PathError, TraceError: as for :func:`surgery.split`.

    Example:
        >>> import torch, torchvision
        >>> from surgery.testing import assert_split_lossless
        >>> m = torchvision.models.resnet18(weights=None)
        >>> assert_split_lossless(m, "layer2.0.bn2", torch.randn(1, 3, 64, 64))
    """
    if not inputs:
        raise ArgumentError("assert_split_lossless needs at least one input tensor")
    if (atol is None) != (rtol is None):  # torch wants both: complete with float32's defaults
        atol = 1e-5 if atol is None else atol
        rtol = 1.3e-6 if rtol is None else rtol

    def fresh() -> list[Any]:
        return [v.clone() if isinstance(v, torch.Tensor) else v for v in inputs]

    with eval_mode(model), torch.no_grad():
        head, tail = split(model, path, copy=False)
        expected = model(*fresh())
        actual = tail(head(*fresh()))
    try:
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)
    except AssertionError as e:
        raise AssertionError(
            f"split({type(model).__name__}, {path!r}) is not lossless: tail(head(x)) != "
            f"model(x)\n{e}"
        ) from None
