"""New head layers: :class:`AdaptiveConcatPool2d` and :func:`create_head` (fastai's head)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._errors import ArgumentError

__all__ = ["AdaptiveConcatPool2d", "check_count", "create_head"]


def check_count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ArgumentError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class AdaptiveConcatPool2d(nn.Module):
    """Adaptive max pooling and average pooling, concatenated on channels (fastai's layer).

    ``(N, C, H, W) -> (N, 2*C, *output_size)``: the max-pooled channels first,
    then the average-pooled ones.

    Example:
        >>> import torch
        >>> from surgery import AdaptiveConcatPool2d
        >>> AdaptiveConcatPool2d()(torch.rand(2, 8, 7, 7)).shape
        torch.Size([2, 16, 1, 1])
    """

    def __init__(self, output_size: int | tuple[int, int] = 1) -> None:
        super().__init__()
        self.output_size = output_size
        self.ap = nn.AdaptiveAvgPool2d(output_size)
        self.mp = nn.AdaptiveMaxPool2d(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mp(x), self.ap(x)], 1)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def create_head(
    in_features: int,
    num_classes: int,
    *,
    hidden: Sequence[int] = (512,),
    dropout: float | Sequence[float] = 0.5,
    concat_pool: bool = True,
    bn: bool = True,
) -> nn.Sequential:
    """A new classifier head for a body that outputs ``(N, in_features, H, W)`` (fastai's ``create_head``).

    Layers, in order: ``AdaptiveConcatPool2d`` (``2 * in_features`` features;
    ``nn.AdaptiveAvgPool2d(1)`` when ``concat_pool=False``), ``nn.Flatten``,
    then for each width in ``[*hidden, num_classes]``: ``BatchNorm1d`` (when
    ``bn``), ``Dropout`` (when its p is not 0), ``Linear`` (without bias when
    ``bn``, as in fastai), and ``ReLU`` after every hidden layer. A single
    ``dropout`` gives ``dropout / 2`` to the hidden layers and ``dropout`` to
    the last one; a sequence gives one value per layer.

    Args:
        in_features: channels of the body's output.
        num_classes: outputs of the head.
        hidden: widths of the hidden layers (``()`` for a single Linear).
        dropout: one probability, or one per layer (``len(hidden) + 1``).
        concat_pool: concatenate max and average pooling.
        bn: use BatchNorm1d before each Linear.

    Returns:
        A new ``nn.Sequential``.

    Raises:
        ArgumentError: a width or a probability is out of range.

    Example:
        >>> import torch, surgery
        >>> head = surgery.create_head(512, 10)
        >>> [type(m).__name__ for m in head]  # doctest: +NORMALIZE_WHITESPACE
        ['AdaptiveConcatPool2d', 'Flatten', 'BatchNorm1d', 'Dropout', 'Linear', 'ReLU',
         'BatchNorm1d', 'Dropout', 'Linear']
        >>> head[3].p, head[7].p, head[4].in_features
        (0.25, 0.5, 1024)
        >>> head.eval()(torch.rand(2, 512, 7, 7)).shape
        torch.Size([2, 10])
    """
    check_count(in_features, "in_features", 1)
    check_count(num_classes, "num_classes", 1)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ArgumentError(f"hidden must be a sequence of widths such as (512,), got {hidden!r}")
    widths = [check_count(h, "each hidden width", 1) for h in hidden]
    for flag, name in ((concat_pool, "concat_pool"), (bn, "bn")):
        if not isinstance(flag, bool):
            raise ArgumentError(f"{name} must be True or False, got {flag!r}")
    n_layers = len(widths) + 1
    if isinstance(dropout, (int, float)) and not isinstance(dropout, bool):
        ps = [dropout / 2] * len(widths) + [float(dropout)]
    elif isinstance(dropout, Sequence) and len(dropout) == n_layers:
        ps = [float(p) for p in dropout]
    else:
        raise ArgumentError(
            f"dropout must be a probability or a sequence of {n_layers} (one per layer), "
            f"got {dropout!r}"
        )
    if not all(0.0 <= p < 1.0 for p in ps):
        raise ArgumentError(f"dropout probabilities must be in [0, 1), got {ps}")
    features = [in_features * (2 if concat_pool else 1), *widths, num_classes]
    layers: list[nn.Module] = [
        AdaptiveConcatPool2d() if concat_pool else nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ]
    for i, (n_in, n_out, p) in enumerate(zip(features[:-1], features[1:], ps)):
        if bn:
            norm = nn.BatchNorm1d(n_in)
            with torch.no_grad():  # fastai's BatchNorm init
                norm.bias.fill_(1e-3)
                norm.weight.fill_(1.0)
            layers.append(norm)
        if p != 0:
            layers.append(nn.Dropout(p))
        layers.append(nn.Linear(n_in, n_out, bias=not bn))
        if i < len(widths):
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)
