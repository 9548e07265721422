"""Probing a meta copy: does the model run, and which layers read its input directly.

Both questions are answered by running ``forward`` on a meta copy (no tensor
memory, the caller's model is never run, moved or hooked) with a meta input
built from what the model declares (timm's ``pretrained_cfg["input_size"]``,
a Hugging Face config's ``image_size`` and ``num_channels``)
or from its first layer (224 per spatial dimension of a convolution).

:func:`input_consumers` follows the input tensors through the ops that keep
every channel independent (shape queries, ``cat`` along the batch, dtype
casts, arithmetic with scalars) under a ``TorchFunctionMode``: the first
real use of each derived tensor is either a convolution module (a consumer
``adapt_input`` can adapt) or something else (a reshape, a per-channel
normalisation...), reported with the module whose ``forward`` did it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..trace._meta import meta_copy
from ._discover import CONV, declared_paths, resolves

__all__ = ["Consumers", "input_consumers", "meta_runs", "probe_inputs"]

_META = frozenset(
    {
        "shape",
        "device",
        "dtype",
        "ndim",
        "is_cuda",
        "is_meta",
        "layout",
        "requires_grad",
        "size",
        "dim",
        "numel",
        "len",
        "stride",
        "is_contiguous",
        "is_floating_point",
        "is_complex",
        "element_size",
    }
)
_PASS = frozenset({"contiguous", "float", "half", "double", "bfloat16", "to", "clone", "detach"})
#: spatial operations applied to each channel alike (a fold of the channels commutes with
#: them): padding of the spatial dimensions, resizing, pooling
_PER_CHANNEL = frozenset(
    {
        "pad",
        "interpolate",
        "avg_pool1d",
        "avg_pool2d",
        "avg_pool3d",
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
        "adaptive_avg_pool3d",
        "adaptive_max_pool1d",
        "adaptive_max_pool2d",
        "adaptive_max_pool3d",
    }
)
_POINTWISE = frozenset(
    {
        "dropout",
        "dropout1d",
        "dropout2d",
        "dropout3d",
        "alpha_dropout",
        "feature_alpha_dropout",
        "add",
        "sub",
        "mul",
        "div",
        "true_divide",
        "neg",
        "clamp",
        "clip",
        "radd",
        "rsub",
        "rmul",
        "truediv",
        "rtruediv",
    }
)


def _func_name(func: Any) -> str:
    name = getattr(func, "__name__", str(func))
    if name == "__get__":  # a property such as Tensor.shape
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    name = str(name)
    return name[2:-2] if name.startswith("__") and name.endswith("__") else name


def _base(conv: nn.Module) -> type[nn.Module]:
    return next(c for c in CONV if isinstance(conv, c))


def _input_channels(model: nn.Module) -> tuple[type[nn.Module] | None, int]:
    for p in declared_paths(model, "first_conv"):
        if resolves(model, p):
            conv = model.get_submodule(p)
            if isinstance(conv, CONV):
                return _base(conv), conv.in_channels
    for m in model.modules():
        if isinstance(m, CONV):
            return _base(m), m.in_channels
        if isinstance(m, nn.Linear) and not isinstance(m, nn.LazyLinear):
            return nn.Linear, m.in_features
    return None, 0


#: spatial sizes tried when the model declares none: the usual one, then a larger one
#: (torchvision's MViT takes 16 x 224 x 224 clips, not the 16 x 112 x 112 of R3D)
_SPATIAL: dict[type[nn.Module], list[tuple[int, ...]]] = {
    nn.Conv1d: [(1024,), (16000,)],
    nn.Conv2d: [(224, 224), (299, 299)],
    nn.Conv3d: [(16, 112, 112), (16, 224, 224)],
}


def probe_inputs(model: nn.Module, attempt: int = 0) -> list[torch.Tensor] | None:
    """Meta inputs for ``model``: one per required positional argument of ``forward``.

    None when no input shape can be derived (no convolution or Linear layer), or
    when ``attempt`` (0, 1, ...) runs past the spatial sizes to try for a model
    that declares none (a declared size is the only attempt).
    """
    kind, channels = _input_channels(model)
    if kind is None:
        return None
    shape: tuple[int, ...]
    cfg = getattr(model, "pretrained_cfg", None)
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    declared = model.__dict__.get("in_chans", model.__dict__.get("in_channels"))
    hf = getattr(model, "config", None)  # a Hugging Face vision config
    image, hf_channels = getattr(hf, "image_size", None), getattr(hf, "num_channels", None)
    if isinstance(image, int) and not isinstance(image, bool) and isinstance(hf_channels, int):
        image = (image, image)
    if (
        size is None
        and isinstance(image, (tuple, list))
        and len(image) == 2
        and all(isinstance(s, int) for s in image)
        and isinstance(hf_channels, int)
    ):
        size, declared = (hf_channels, *image), hf_channels
    if isinstance(declared, int) and not isinstance(declared, bool) and declared > 0:
        channels = declared
    if kind is nn.Linear:
        if attempt:
            return None
        shape = (1, channels)
    elif (
        isinstance(size, (tuple, list)) and len(size) >= 2 and all(isinstance(s, int) for s in size)
    ):
        if attempt:
            return None
        shape = (1, size[0] if declared is None else channels, *size[1:])
    else:
        sizes = _SPATIAL.get(kind, _SPATIAL[nn.Conv2d])
        if attempt >= len(sizes):
            return None
        shape = (1, channels, *sizes[attempt])
    try:
        params = inspect.signature(model.forward).parameters.values()
        required = [
            p
            for p in params
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        required = []
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return [torch.zeros(shape, device="meta", dtype=dtype) for _ in range(max(1, len(required)))]


def meta_runs(clone: nn.Module, inputs: list[torch.Tensor]) -> str | None:
    """Run ``clone`` (a meta copy, in eval mode) on ``inputs``: None, or why it failed."""
    try:
        with torch.no_grad():
            clone(*inputs)
    except Exception as e:  # the model's own code: any failure means "does not run"
        first = str(e).splitlines()[0] if str(e) else ""
        return f"{type(e).__name__}: {first}"
    return None


@dataclass
class Consumers:
    """What reads the model's input: convolutions (by path) and other uses (described)."""

    convs: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    failed: str | None = None  # the probe did not run (why)


class _Follow(TorchFunctionMode):
    def __init__(self, tainted: list[torch.Tensor], stack: list[str], found: Consumers) -> None:
        super().__init__()
        self.tainted = {id(t): t for t in tainted}  # values kept alive: ids stay unique
        self.stack = stack
        self.found = found
        self.convs: dict[str, CONV] = {}  # type: ignore[valid-type]

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        leaves, _ = tree_flatten((args, kwargs))
        hit = [t for t in leaves if isinstance(t, torch.Tensor) and id(t) in self.tainted]
        if not hit:
            return out
        name = _func_name(func)
        where = self.stack[-1] if self.stack else ""
        if name in _META:
            return out
        if where in self.convs:  # the convolution module reads the input itself
            if where not in self.found.convs:
                self.found.convs.append(where)
            return out
        if self._passes(name, args, kwargs, leaves, hit):
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.tainted[id(t)] = t
            return out
        inside = f"{where!r}" if where else "the model's own forward"
        what = f"{name}(...) in {inside}"
        if what not in self.found.others:
            self.found.others.append(what)
        return out

    @staticmethod
    def _passes(name: str, args: Any, kwargs: Any, leaves: list[Any], hit: list[Any]) -> bool:
        if name in _PASS:
            return True
        if name == "cat":
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            return dim == 0
        if name in _PER_CHANNEL:  # the same operation on every channel, channels kept
            x = hit[0]
            if name == "pad":
                pad = args[1] if len(args) > 1 else kwargs.get("pad", ())
                return isinstance(pad, (tuple, list)) and len(pad) <= 2 * (x.dim() - 2)
            return all(t is x or not isinstance(t, torch.Tensor) for t in leaves)
        if name in _POINTWISE:  # channel-independent: every other operand is a scalar
            return all(
                not isinstance(t, torch.Tensor) or any(t is h for h in hit) or t.numel() == 1
                for t in leaves
            )
        return False


def input_consumers(model: nn.Module) -> Consumers:
    """The convolutions that read ``model``'s input, and every other direct use of it.

    Where the forward fails on the first input size, larger ones are tried (see
    :data:`_SPATIAL`); the first failure is reported when none runs.
    """
    inputs = probe_inputs(model)
    if inputs is None:
        return Consumers(failed="no convolution or Linear layer to derive an input shape from")
    first = _follow(model, inputs)
    attempt = 1
    while first.failed is not None:
        more = probe_inputs(model, attempt)
        if more is None:
            break
        found = _follow(model, more)
        if found.failed is None:
            return found
        attempt += 1
    return first


def _follow(model: nn.Module, inputs: list[torch.Tensor]) -> Consumers:
    """Follow ``inputs`` through ``forward`` on a meta copy of ``model``."""
    found = Consumers()
    clone = meta_copy(model).eval()
    stack: list[str] = []
    mode = _Follow(inputs, stack, found)
    for name, m in clone.named_modules():
        if isinstance(m, CONV) and name:
            mode.convs[name] = m

    def pre(name: str) -> Any:
        return lambda _m, _a: stack.append(name)

    def post(_m: nn.Module, _a: Any, _o: Any) -> None:
        stack.pop()

    for name, m in clone.named_modules():
        if name:
            m.register_forward_pre_hook(pre(name))
            m.register_forward_hook(post)
    shape = tuple(inputs[0].shape)
    with mode:
        failed = meta_runs(clone, inputs)
    if failed is not None:
        found.failed = f"forward on a meta input of shape {shape} failed ({failed})"
    return found
