"""Input adaptation: ``adapt_input`` makes a model take another number of input channels."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from .._boundary import operation
from .._errors import ArgumentError, LayerNotFoundError
from ..paths._resolve import check_model, resolve
from ._discover import CONV, declared_paths, describe, first_conv
from ._engine import Planner, check_aliases, run_plan
from ._head_layers import check_count
from ._hf import config_settings, is_pretrained
from ._plan import EditPlan, Setting
from ._probe import input_consumers

__all__ = ["adapt_input"]

_log = logging.getLogger("surgery")


def _adapted_weight(w: torch.Tensor, groups: int, in_channels: int) -> torch.Tensor:
    """Derive the weight of a conv with ``in_channels`` inputs from ``w`` (see adapt_input)."""
    out_ch, per_group = w.shape[0], w.shape[1]
    original = per_group * groups
    if groups > 1:  # only in_channels == 1 gets here: a grouped conv seeing one grey image
        return w.sum(dim=1, keepdim=True)
    if w.device.type == "meta":
        return torch.empty((out_ch, in_channels, *w.shape[2:]), dtype=w.dtype, device="meta")
    wf = w.detach().float()
    if in_channels <= original:  # fold: input channel i goes to i mod in_channels
        new = torch.zeros((out_ch, in_channels, *w.shape[2:]), dtype=wf.dtype, device=w.device)
        new.index_add_(1, torch.arange(original, device=w.device) % in_channels, wf)
    else:  # repeat cyclically, rescale so that activations keep their scale
        idx = torch.arange(in_channels, device=w.device) % original
        new = wf.index_select(1, idx) * (original / in_channels)
    return new.to(w.dtype)


def _adapted_conv(conv: nn.Module, in_channels: int, path: str) -> nn.Module:
    assert isinstance(conv, CONV)
    if conv.groups > 1 and in_channels != 1:
        raise ArgumentError(
            f"cannot adapt {path!r} ({describe(conv)}, groups={conv.groups}) to "
            f"{in_channels} input channels: a grouped first convolution can only be adapted to "
            f"1 channel (every group then sees the grey image).\n  adapt a conv with groups=1: "
            f"surgery.adapt_input(model, {in_channels}, path='...')"
        )
    with torch.no_grad():
        weight = _adapted_weight(conv.weight, conv.groups, in_channels)
    memo = {id(conv.weight): None}  # not copied: replaced below
    new = copy.deepcopy(conv, memo)
    new.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    new.in_channels = in_channels
    new.groups = 1
    if _own_forward(conv) and not conv.weight.is_meta:
        _standardized_weight(conv, new, in_channels)
        _check_equivalent(conv, new, in_channels, path)
    return new


def _own_forward(conv: nn.Module) -> bool:
    """The conv's class computes its own forward (timm's StdConv2d, Conv2dSame...)."""
    base = next(c for c in type(conv).__mro__ if c in CONV)
    return type(conv).forward is not base.forward


def _standardized_weight(conv: Any, new: Any, in_channels: int) -> None:
    """Weight-standardized convolutions with a gain (timm's ScaledStdConv2d, NF-Nets).

    Their forward uses ``standardize(W) * gain * scale``; folding ``W`` would change
    the standardization. The folded *effective* kernel ``K'`` has zero mean per
    output channel, so ``W' = K'`` with ``gain' = sqrt(var(K') + eps) / scale`` gives
    exactly ``K'``.
    """
    gain, scale, eps = (getattr(conv, a, None) for a in ("gain", "scale", "eps"))
    if not (
        isinstance(gain, nn.Parameter)
        and isinstance(scale, float)
        and isinstance(eps, float)
        and gain.numel() == conv.out_channels
    ):
        return
    out = int(conv.out_channels)
    with torch.no_grad():
        w = conv.weight.float()
        flat = w.reshape(out, -1)
        mean = flat.mean(1, keepdim=True)
        var = flat.var(1, unbiased=False, keepdim=True)
        k = (flat - mean) / torch.sqrt(var + eps) * (gain.float().reshape(out, 1) * scale)
        k = k.reshape_as(w)
        folded = _adapted_weight(k, 1, in_channels)
        fvar = folded.reshape(out, -1).var(1, unbiased=False)
        new_gain = torch.sqrt(fvar + eps) / scale
    new.weight = nn.Parameter(
        folded.to(conv.weight.dtype),
        requires_grad=conv.weight.requires_grad,
    )
    new.gain = nn.Parameter(
        new_gain.reshape(gain.shape).to(gain.dtype), requires_grad=gain.requires_grad
    )


def _bare(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` (its own tensors) without its forward hooks."""
    bare = copy.copy(module)
    for name, value in module.__dict__.items():
        if name.startswith("_forward") and "hooks" in name:  # new, empty: never the caller's
            bare.__dict__[name] = type(value)()
    return bare


def _check_equivalent(conv: Any, new: Any, in_channels: int, path: str) -> None:
    """Prove a conv with its own forward adapted: ``new(x) == conv(x cycled to C channels)``.

    Only where the fold is exact (``in_channels <= C`` or a multiple of ``C``).
    """
    c = int(conv.in_channels)
    if in_channels > c and in_channels % c:
        return
    k = conv.kernel_size
    g = torch.Generator().manual_seed(0)
    w = conv.weight
    x = torch.randn((2, in_channels, *(2 * d + 3 for d in k)), generator=g, dtype=torch.float64).to(
        w.device, w.dtype
    )
    idx = torch.arange(c, device=w.device) % in_channels
    old_conv, new_conv = _bare(conv), _bare(new)  # the caller's hooks never run here
    try:
        with torch.no_grad():
            if in_channels <= c:  # the original on x cycled to c channels
                got, want = new_conv(x), old_conv(x.index_select(1, idx))
            else:  # x repeated to in_channels: compare with the original on x
                got = new_conv(x[:, :c].repeat(1, in_channels // c, *([1] * len(k))))
                want = old_conv(x[:, :c])
    except Exception as e:
        got, want, why = None, None, f"{type(e).__name__}: {e}"
    else:
        diff = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
        scale = max(1.0, want.double().abs().max().item()) if want.numel() else 1.0
        tol = (1e-4 if w.dtype in (torch.float32, torch.float64) else 1e-2) * scale
        if diff <= tol:
            return
        why = f"its output differs by up to {diff:.3g} from the original's on the cycled input"
    raise LayerNotFoundError(
        f"cannot adapt {path!r} ({type(conv).__name__}) to {in_channels} input channel(s): "
        f"it computes its own forward from its weight (a weight standardization, for "
        f"example), so folding the weight's channels does not give the same outputs: "
        f"{why}. Replace the layer yourself (surgery.replace(model, {path!r}, ...)) "
        f"with one that takes {in_channels} channel(s)"
    )


_UNPROVEN = (
    "cannot adapt {model}: {why}, so adapting its first convolution alone would not give a "
    "model that takes {n}-channel input.\n  {listing}\n  adapt the layer(s) yourself if you "
    "know they are the only ones that read the image: surgery.adapt_input(model, {n}, "
    "path={path!r})"
)


_CHANNEL_ATTRS = ("in_chans", "in_channels", "num_channels")


def _declared_channels(
    planner: Planner, model: nn.Module, path: str, conv: nn.Module, in_channels: int
) -> None:
    """Plan the channel counts that the conv's enclosing modules keep (and check).

    Hugging Face's ``ViTPatchEmbeddings.num_channels`` refuses any other input
    channel count; an attribute of an enclosing module (the root excepted, done by
    the caller) that equals the conv's old ``in_channels`` follows it.
    """
    old = int(conv.in_channels)  # type: ignore[union-attr,arg-type]
    parts = path.split(".")
    for depth in range(1, len(parts)):
        owner = resolve(model, ".".join(parts[:depth])).module
        for attr in _CHANNEL_ATTRS:
            value = owner.__dict__.get(attr)
            if isinstance(value, int) and not isinstance(value, bool) and value == old:
                where = ".".join(parts[:depth])
                planner.set(
                    owner,
                    "dict",
                    attr,
                    in_channels,
                    setting=Setting(where, attr, value, in_channels),
                )


def _input_convs(model: nn.Module, in_channels: int = 1) -> tuple[list[str], str]:
    """The convolutions that read the input, proved by following it on a meta copy."""
    if not any(isinstance(m, CONV) for m in model.modules()):
        return first_conv(model)  # raises: no convolution at all
    found = input_consumers(model)
    name = type(model).__name__
    convs = "convolutions reading the input: " + (", ".join(map(repr, found.convs)) or "none")
    hint = found.convs[0] if found.convs else first_conv(model)[0][0]
    if found.failed is not None:
        raise LayerNotFoundError(
            _UNPROVEN.format(
                model=name,
                why=f"its input's consumers cannot be traced: {found.failed}",
                n=in_channels,
                listing=convs,
                path=hint,
            )
        )
    if found.others or not found.convs:
        others = ", ".join(found.others) or "nothing"
        raise LayerNotFoundError(
            _UNPROVEN.format(
                model=name,
                why=f"its input is also read by {others} (not a convolution; it expects the "
                "original channels)",
                n=in_channels,
                listing=convs,
                path=hint,
            )
        )
    declared = [p for p in declared_paths(model, "first_conv") if p in found.convs]
    if declared and len(declared) == len(found.convs):
        return found.convs, "pretrained_cfg['first_conv'] (the input's only consumers, traced)"
    return found.convs, "tracing the input's consumers on a meta copy"


def adapt_input(
    model: nn.Module,
    in_channels: int,
    *,
    path: str | None = None,
    aliases: str = "warn",
    dry_run: bool = False,
) -> nn.Module | EditPlan:
    """Make ``model`` take ``in_channels`` input channels, in place, keeping its pretrained weights.

    The convolutions to adapt are ``path=``, else every convolution that reads
    the model's input directly, found by following the input through
    ``forward`` on a meta copy (shape queries, a batch ``cat`` and arithmetic
    with scalars pass; RAFT's ``feature_encoder`` and ``context_encoder`` are
    both adapted). If anything else reads the input (a per-channel
    normalisation, a reshape that assumes the channel count), or the probe
    cannot run, it refuses naming those consumers and the ``path=`` call;
    timm's ``pretrained_cfg["first_conv"]`` is reported when it is that
    consumer. What was found is logged on the ``"surgery"`` logger. Each one
    is replaced by a copy with ``in_channels`` inputs and the same stride,
    padding, dilation, bias, padding mode, device and dtype.
    From the original weight ``W`` with ``C`` input channels, the new weight is:

    * ``in_channels <= C``: fold, ``W'[:, j] = sum(W[:, i] for i = j mod in_channels)``.
      Exact: the adapted model on ``x`` equals the original on ``x`` repeated
      cyclically to ``C`` channels. ``in_channels=1`` sums over the channels: a
      grey image gives the same output as the original on that image repeated
      to 3 channels.
    * ``in_channels > C``: repeat cyclically and rescale by ``C / in_channels``
      (timm's ``adapt_input_conv`` rule), ``W'[:, j] = W[:, j mod C] * C / in_channels``.
      Exact when ``in_channels`` is a multiple of ``C``: the adapted model on
      ``x`` repeated to ``in_channels`` equals the original on ``x``; otherwise
      activations keep their scale.

    A grouped first convolution (``groups > 1``) can only be adapted to 1
    channel (it becomes ``groups=1`` with the summed weight, exact as above).

    Args:
        model: the model to change, in place.
        in_channels: the new number of input channels (>= 1).
        path: the convolution to adapt, when discovery is not wanted.
        aliases: ``"warn"`` (default) or ``"error"`` for a convolution shared by
            several paths (it is adapted at all of them).
        dry_run: return the :class:`~surgery.EditPlan` and change nothing.

    Returns:
        ``model`` itself (the plan with ``dry_run=True``).

    Raises:
        ArgumentError: ``in_channels`` is not an int >= 1, ``path`` is not a
            convolution, or a grouped convolution cannot be adapted.
        PathNotFoundError: ``path`` names no module.
        LayerNotFoundError: the model has no convolution, or its input is read
            by something other than convolutions (or cannot be followed); the
            message names the consumers and the ``path=`` call.

    On any error the model is unchanged.

    Example:
        >>> import torch, torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None).eval()
        >>> x = torch.rand(1, 1, 64, 64)
        >>> before = m(x.repeat(1, 3, 1, 1))
        >>> m = surgery.adapt_input(m, 1)
        >>> m.conv1
        Conv2d(1, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False)
        >>> torch.allclose(m(x), before, atol=1e-5)
        True
        >>> surgery.adapt_input(m, 4, dry_run=True).edits[0].path
        'conv1'
    """
    with operation("adapt_input", model=model, path=path):
        check_model(model, "adapt_input")
        check_count(in_channels, "in_channels", 1)
        policy = check_aliases(aliases)
        if path is not None:
            if not isinstance(path, str):
                raise ArgumentError(f"path must be a module path (str), got {path!r}")
            target = resolve(model, path)
            if not isinstance(target.module, CONV) or target.parent is None:
                raise ArgumentError(
                    f"path={path!r} is a {type(target.module).__name__}, not a Conv1d/Conv2d/Conv3d"
                )
            paths, how = [target.name], "path="
        else:
            paths, how = _input_convs(model, in_channels)
        planner = Planner(model, "adapt_input")
        seen: set[int] = set()
        old_channels: set[int] = set()
        for p in paths:
            conv = resolve(model, p).module
            if conv.in_channels == in_channels or id(conv) in seen:  # type: ignore[union-attr]
                continue
            seen.add(id(conv))
            old_channels.add(int(conv.in_channels))  # type: ignore[union-attr,arg-type]
            planner.replace(conv, _adapted_conv(conv, in_channels, p), path=p)
            _declared_channels(planner, model, p, conv, in_channels)
        cfg = getattr(model, "config", None)
        declared = getattr(cfg, "num_channels", None)
        if is_pretrained(model) and isinstance(declared, int) and declared in old_channels:
            config_settings(planner, model, {"num_channels": in_channels})  # HF config
        for attr in ("in_chans", "in_channels"):
            value = model.__dict__.get(attr)
            if (
                isinstance(value, int)
                and not isinstance(value, bool)
                and seen
                and value != in_channels
            ):
                planner.set(
                    model, "dict", attr, in_channels, setting=Setting("", attr, value, in_channels)
                )
        plan = run_plan(planner.finish(policy), dry_run=dry_run)
        _log.info(
            "adapt_input(%s): %s found by %s -> %d input channels",
            type(model).__name__,
            ", ".join(map(repr, paths)),
            how,
            in_channels,
        )
        return plan if dry_run else model
