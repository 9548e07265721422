"""Take parts out of models and compose them into a new ``nn.Sequential``.

``take`` copies by default, so a hybrid never shares parameters with the
models it was built from. ``compose`` validates every part before it builds
anything and, given an ``input_size``, runs the result on the meta device
(a structural copy: the caller's modules never move) to check every junction.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._boundary import operation
from .._errors import ArgumentError, ShapeMismatchError, SurgeryError
from ..paths._grammar import Path
from ..paths._resolve import resolve
from ._cut import copy_objects, with_prefix
from ._meta import eval_mode, meta_copy, meta_inputs, normalize_input_size

__all__ = ["compose", "take"]

_PART_HELP = (
    "a part is an nn.Module or a (model, path) pair, e.g. "
    "block3=(resnet, 'layer3') or fc=nn.Linear(256, 10)"
)


def take(model: nn.Module, path: str | Path, *, copy: bool = True) -> nn.Module:
    """The module (or slice) at ``path``, as a deep copy by default.

    Args:
        model: the model to take from; it is not changed.
        path: a module path (``"layer3"``) or a slice of a Sequential
            (``"features[7:14]"``, a new container of the same class).
        copy: return a deep copy (default) that shares no parameter or buffer
            with ``model``; ``copy=False`` returns the module itself (a slice
            then holds the original members), sharing on purpose.

    Returns:
        The module; its train/eval mode and ``requires_grad`` flags are kept.

    Raises:
        PathSyntaxError, PathNotFoundError: the path is wrong.
        ArgumentError: ``model`` is not an ``nn.Module`` or ``copy`` is not a bool.

    Example:
        >>> import torchvision, surgery
        >>> resnet = torchvision.models.resnet18(weights=None)
        >>> layer3 = surgery.take(resnet, "layer3")
        >>> layer3[0].conv1.weight is resnet.layer3[0].conv1.weight
        False
        >>> len(surgery.take(resnet, "layer3[:1]"))  # a slice: a new Sequential
        1
        >>> surgery.take(resnet, "layer3", copy=False) is resnet.layer3
        True
    """
    with operation("take", model=model, path=path):
        _check_copy(copy)
        module = resolve(model, path).module
        return copy_objects({"m": module})["m"] if copy else module


def _check_copy(copy: object) -> None:
    if not isinstance(copy, bool):
        raise ArgumentError(f"copy must be True or False, got {copy!r}")


def _plan_part(name: str, part: object) -> tuple[nn.Module, nn.Module | None, str | None]:
    """Validate one part: ``(module, source model or None, path or None)``."""
    if not name or "." in name or name in _RESERVED:
        raise ArgumentError(
            f"part name {name!r} cannot name a child of nn.Sequential "
            f"(it must be non-empty, contain no '.', and not be an attribute such as 'forward')"
        )
    if isinstance(part, nn.Module):
        return part, None, None
    if isinstance(part, (tuple, list)) and len(part) == 2:
        model, path = part
        if not isinstance(model, nn.Module):
            raise ArgumentError(
                f"part {name!r}: the first item of the pair must be an nn.Module, got "
                f"{type(model).__name__}; {_PART_HELP}"
            )
        if not isinstance(path, (str, Path)):
            raise ArgumentError(
                f"part {name!r}: the second item of the pair must be a path string, got "
                f"{type(path).__name__}; {_PART_HELP}"
            )
        try:
            module = resolve(model, path).module
        except SurgeryError as e:
            raise with_prefix(e, f"part {name!r}: ") from None
        return module, model, str(path)
    raise ArgumentError(f"part {name!r} is a {type(part).__name__}; {_PART_HELP}")


_RESERVED = frozenset(dir(nn.Sequential()))


def compose(
    *,
    input_size: Any = None,
    copy: bool = True,
    **parts: nn.Module | tuple[nn.Module, str],
) -> nn.Sequential:
    """Compose parts into an ``nn.Sequential`` whose children are named as given.

    Each part is an ``nn.Module`` (used as it is) or a ``(model, path)`` pair,
    taken with :func:`take`: a copy by default, so hybrids never share
    parameters with their sources (nor with each other); ``copy=False`` shares
    on purpose. Every part is validated before anything is built.

    Args:
        input_size: optional input shape, e.g. ``(10, 1, 32, 32)``. The result
            is then run on the meta device (a copy without storage; your
            modules never move) and every junction is checked.
        copy: copy the ``(model, path)`` parts (default) or share them.
        **parts: ``name=module`` or ``name=(model, path)``, in order.

    Returns:
        A new ``nn.Sequential``.

    Raises:
        ArgumentError: no parts, a part of the wrong type, or a bad name.
        PathSyntaxError, PathNotFoundError: a pair names no module (the message
            starts with the part's name).
        ShapeMismatchError: with ``input_size``, two parts do not fit; the
            message names the junction (``"block2 -> block3"``), what the
            previous part produces and what the next expects.

    Example:
        >>> import torch, torchvision, surgery
        >>> from torch import nn
        >>> vgg = torchvision.models.vgg16_bn(weights=None)
        >>> resnet = torchvision.models.resnet18(weights=None)
        >>> net = surgery.compose(
        ...     conv1=nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU()),
        ...     block2=(vgg, "features[7:14]"),
        ...     block3=(resnet, "layer3"),
        ...     avgpool=(resnet, "avgpool"),
        ...     flatten=nn.Flatten(),
        ...     fc=nn.Linear(256, 10),
        ...     input_size=(10, 1, 32, 32),
        ... )
        >>> net(torch.randn(10, 1, 32, 32)).shape
        torch.Size([10, 10])
        >>> sum(p.numel() for p in net.parameters())
        2325002
        >>> surgery.compose(a=(vgg, "features[7:14]"), b=(vgg, "features[7:14]"),
        ...                 input_size=(1, 64, 32, 32))
        Traceback (most recent call last):
        ...
        surgery._errors.ShapeMismatchError: compose: parts do not fit at 'a -> b': ...
    """
    with operation("compose", model=None):
        _check_copy(copy)
        if not parts:
            raise ArgumentError(f"compose() needs at least one part; {_PART_HELP}")
        sizes = normalize_input_size(input_size) if input_size is not None else None
        planned = [(name, *_plan_part(name, part)) for name, part in parts.items()]
        # build: each (model, path) part is copied on its own, as take() does, so taking
        # the same block twice gives two independent blocks
        taken = {
            name: copy_objects({"m": module})["m"] if copy else module
            for name, module, source, _ in planned
            if source is not None
        }
        children = OrderedDict(
            (name, taken.get(name, module) if source is not None else module)
            for name, module, source, _ in planned
        )
        net = nn.Sequential(children)
        if sizes is not None:
            check_junctions(net, sizes)
        return net


# --------------------------------------------------------------------------- junctions


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of " + ", ".join(_describe(v) for v in value)
    if isinstance(value, dict):
        return "dict of " + ", ".join(f"{k!r}: {_describe(v)}" for k, v in value.items())
    return type(value).__name__


def _expects(module: nn.Module) -> str | None:
    """What a layer expects of its input, from its own attributes."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return f"{module.in_channels} input channels ({type(module).__name__} in_channels={module.in_channels})"
    if isinstance(module, nn.Linear):
        return f"last dimension {module.in_features} (Linear in_features={module.in_features})"
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return f"{module.num_features} channels ({type(module).__name__} num_features={module.num_features})"
    if isinstance(module, nn.LayerNorm):
        return f"trailing dimensions {tuple(module.normalized_shape)} (LayerNorm normalized_shape)"
    if isinstance(module, nn.GroupNorm):
        return f"{module.num_channels} channels (GroupNorm num_channels={module.num_channels})"
    if isinstance(module, nn.MultiheadAttention):
        return f"embedding dimension {module.embed_dim} (MultiheadAttention embed_dim)"
    return None


def _fix(prev: str, nxt: str, produced: Any, layer: nn.Module | None) -> str:
    if not isinstance(produced, torch.Tensor) or produced.dim() < 2:
        return "  fix: insert an adapter between them, or check the order of the parts"
    if prev == "input":
        first = f"check input_size {tuple(produced.shape)}, or put an adapter first"
    else:
        first = "insert an adapter between them"
    if isinstance(layer, nn.modules.conv._ConvNd) and produced.dim() == layer.weight.dim():
        c = produced.shape[1]
        before = f"{prev}=..., " if prev != "input" else ""
        return (
            f"  fix: {first}, e.g. compose({before}adapt=nn.Conv{produced.dim() - 2}d({c}, "
            f"{layer.in_channels}, 1), {nxt}=...), or make {nxt!r} take {c} channels"
        )
    if isinstance(layer, nn.Linear):
        if produced.dim() > 2:
            flat = int(torch.Size(produced.shape[1:]).numel())
            return (
                f"  fix: flatten first (flatten=nn.Flatten() before {nxt!r}) and use "
                f"nn.Linear({flat}, ...), or pool with nn.AdaptiveAvgPool2d(1) + nn.Flatten() "
                f"and use nn.Linear({produced.shape[1]}, ...)"
            )
        return f"  fix: use nn.Linear({produced.shape[-1]}, {layer.out_features}) in {nxt!r}"
    return f"  fix: {first}, or check the order of the parts"


def check_junctions(net: nn.Sequential, sizes: Sequence[tuple[int, ...]]) -> list[Any]:
    """Run a meta copy of ``net`` child by child; raise ShapeMismatchError at a bad junction.

    Returns the meta output of each child (for reports).
    """
    dtype = next((p.dtype for p in net.parameters() if p.dtype.is_floating_point), torch.float32)
    twin = meta_copy(net)
    inputs = meta_inputs(list(sizes), dtype=dtype)
    value: Any = inputs[0] if len(inputs) == 1 else tuple(inputs)
    outputs: list[Any] = []
    prev = "input"
    with eval_mode(twin), torch.no_grad():
        for name, child in twin.named_children():
            stack: list[tuple[str, nn.Module, Any]] = []
            handles = []
            for sub_name, sub in child.named_modules():
                handles.append(
                    sub.register_forward_pre_hook(functools.partial(_enter, stack, sub_name))
                )
                handles.append(sub.register_forward_hook(functools.partial(_leave, stack)))
            try:
                value = child(value) if len(inputs) == 1 or outputs else child(*value)
            except Exception as e:
                where, layer, args = stack[-1] if stack else ("", child, (value,))
                raise _mismatch(prev, name, value, where, layer, args, e) from None
            finally:
                for h in handles:
                    h.remove()
            outputs.append(value)
            prev = name
    return outputs


def _enter(stack: list[tuple[str, nn.Module, Any]], name: str, mod: nn.Module, args: Any) -> None:
    stack.append((name, mod, args))


def _leave(stack: list[tuple[str, nn.Module, Any]], mod: nn.Module, args: Any, out: Any) -> None:
    stack.pop()


def _mismatch(
    prev: str, nxt: str, produced: Any, where: str, layer: nn.Module, args: Any, e: Exception
) -> ShapeMismatchError:
    what = f"{prev!r} produces" if prev != "input" else "the input is"
    expects = _expects(layer)
    inner = f"its layer {where!r}" if where else "it"
    received = _describe(args[0]) if isinstance(args, tuple) and args else _describe(args)
    if expects:
        need = f"{nxt!r} expects {expects} ({inner} received {received})"
    else:
        need = f"{nxt!r} cannot take it: {inner} ({type(layer).__name__}) failed with {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return ShapeMismatchError(
        f"compose: parts do not fit at '{prev} -> {nxt}': {what} {_describe(produced)}, "
        f"but {need}\n{_fix(prev, nxt, produced, layer if expects else None)}"
    )
