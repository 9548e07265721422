"""Tensors that hold the same values under another shape, and a source that reshapes them.

Two implementations of one layer often store its weight in different shapes:

* **singleton dimensions**: a layer scale as ``(C, 1, 1)`` or ``(C,)``; a
  classifier as ``nn.Linear`` ``(out, in)`` or as a 1x1 ``nn.Conv2d``
  ``(out, in, 1, 1)``. The values and their order are the same: squeezing both
  shapes gives the same shape.
* **a fully connected layer as a convolution**: torchvision's VGG flattens the
  ``(512, 7, 7)`` features into ``nn.Linear(25088, 4096)``; timm's VGG applies
  ``nn.Conv2d(512, 4096, 7)`` to them. The matrix ``(out, c*kh*kw)`` is the kernel
  ``(out, c, kh, kw)`` flattened in PyTorch's (channel-first) order, which is
  what ``torch.flatten`` feeds the matrix. A port that flattens channels last
  (``(h, w, c)``, as Keras does) computes something else under the same shapes:
  prove a reshaped transfer with :func:`surgery.check_transfer`.

:func:`reshape_kind` says which of the two (if any) relates two shapes;
:class:`ReshapedSource` presents checkpoint tensors in the model's shapes, so
that the load plan and commit treat them like any other tensor.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import torch

from ._source import TensorInfo, TensorSource

__all__ = ["ReshapedSource", "reshape_kind", "squeezed"]


@functools.lru_cache(maxsize=8192)  # shapes repeat: matching 10,000 tensors asks 40,000 times
def squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without its size-1 dimensions (``(96, 1, 1)`` -> ``(96,)``)."""
    return tuple(d for d in shape if d != 1) if 1 in shape else shape


def reshape_kind(a: tuple[int, ...], b: tuple[int, ...]) -> str | None:
    """How a tensor of shape ``a`` holds the values of one of shape ``b``, or None.

    ``"squeeze"``: the shapes differ only in size-1 dimensions. ``"flatten"``: one
    is a matrix ``(out, n)`` and the other a convolution kernel ``(out, c, k...)``
    with ``c * prod(k) == n``. Equal shapes give None (nothing to reshape).

    Example:
        >>> reshape_kind((96, 1, 1), (96,)), reshape_kind((4096, 25088), (4096, 512, 7, 7))
        ('squeeze', 'flatten')
        >>> reshape_kind((10, 512), (512, 10)) is None   # a transpose is no reshape
        True
    """
    if a == b:
        return None
    if squeezed(a) == squeezed(b):
        return "squeeze"
    matrix, kernel = (a, b) if len(a) == 2 else (b, a)
    if (
        len(matrix) == 2
        and len(kernel) >= 3
        and matrix[0] == kernel[0]
        and math.prod(matrix) == math.prod(kernel)
        and math.prod(matrix) > 0
    ):
        return "flatten"
    return None


class ReshapedSource(TensorSource):
    """``source`` with some of its tensors presented in other shapes (same values, same order).

    ``shapes`` maps checkpoint keys to the shape to present; every other key is
    passed through. Reads reshape the source's (private) tensor; ``read_into``
    reads straight into a contiguous target's memory.
    """

    def __init__(self, source: TensorSource, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.inner = source
        self.shapes = dict(shapes)
        self.description = source.description
        self.unwrapped = source.unwrapped

    @property
    def bytes_read(self) -> int:  # type: ignore[override]
        return self.inner.bytes_read

    def keys(self) -> list[str]:
        return self.inner.keys()

    def __contains__(self, key: object) -> bool:
        return key in self.inner

    def info(self, key: str) -> TensorInfo:
        info = self.inner.info(key)
        shape = self.shapes.get(key)
        return info if shape is None else TensorInfo(tuple(shape), info.dtype)

    def read(self, key: str) -> torch.Tensor:
        value = self.inner.read(key)
        shape = self.shapes.get(key)
        return value if shape is None else value.reshape(shape)

    def read_into(self, key: str, out: torch.Tensor) -> None:
        shape = self.shapes.get(key)
        if shape is None:
            self.inner.read_into(key, out)
        elif out.is_contiguous():
            self.inner.read_into(key, out.view(self.inner.info(key).shape))
        else:
            out.copy_(self.read(key))

    def close(self) -> None:
        self.inner.close()
