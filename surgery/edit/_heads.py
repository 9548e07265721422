"""Re-heading and input adaptation: ``replace_head``, ``adapt_input``, ``create_head``.

Finding the layer to change follows one policy, in this order:

1. ``path=`` given by the caller;
2. what the model declares: timm's ``pretrained_cfg["classifier"]`` (a tuple
   for distilled models: every head) with ``reset_classifier``, and
   ``pretrained_cfg["first_conv"]``;
3. discovery by tracing a meta copy with ``torch.fx`` (the caller's model is
   never traced, moved or run): the head is the Linear or convolution layer
   that produces each logits output (training mode, so auxiliary heads are
   outputs too); the first convolution is the first one ``forward`` calls;
4. for the first convolution only, ``named_modules`` order when tracing fails.

What was found is logged on the ``"surgery"`` logger at INFO level. Anything
ambiguous or missing is a :class:`~surgery.LayerNotFoundError` that lists the
candidates and shows the ``path=`` call.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .._errors import ArgumentError, LayerNotFoundError, PathError, SurgeryError
from ..paths._resolve import check_model, module_paths, resolve
from ..trace._meta import meta_copy
from ._hf import hf_label_sync, plan_hf_head

__all__ = ["AdaptiveConcatPool2d", "adapt_input", "create_head", "replace_head"]

_log = logging.getLogger("surgery")

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_HEAD_TYPES = (nn.Linear, nn.LazyLinear, *_CONV)
_SHAPE_OPS = frozenset({"size", "dim", "numel", "type", "to", "is_contiguous"})


# ----------------------------------------------------------------------------- helpers


def _check_count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ArgumentError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _paths_arg(path: object) -> list[str] | None:
    if path is None:
        return None
    if isinstance(path, str):
        return [path]
    if isinstance(path, Sequence) and path and all(isinstance(p, str) for p in path):
        return list(path)
    raise ArgumentError(f"path must be a module path or a list of paths, got {path!r}")


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Linear) and not isinstance(module, nn.LazyLinear):
        return f"Linear({module.in_features} -> {module.out_features})"
    if isinstance(module, _CONV):
        return (
            f"{type(module).__name__}({module.in_channels} -> {module.out_channels}, "
            f"kernel {tuple(module.kernel_size)})"
        )
    return type(module).__name__


def _out_count(module: nn.Module) -> int | None:
    if isinstance(module, nn.LazyLinear):
        return module.out_features
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, _CONV):
        return module.out_channels
    return None


def _where(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in (*module.parameters(), *module.buffers()):
        return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _has_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _declared(model: nn.Module, key: str) -> list[str]:
    """Paths the model declares in timm's ``pretrained_cfg`` (or ``default_cfg``)."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and cfg.get(key):
            value = cfg[key]
            names = [value] if isinstance(value, str) else list(value)
            return [n for n in names if isinstance(n, str)]
    return []


def _resolves(model: nn.Module, path: str) -> bool:
    try:
        target = resolve(model, path)
    except PathError:
        return False
    return target.parent is not None and not target.is_slice


def _set(model: nn.Module, obj: nn.Module, new: nn.Module) -> list[str]:
    """Put ``new`` at every path where ``obj`` lives (shared modules stay shared)."""
    paths = [p for p in module_paths(model).get(id(obj), []) if p]
    for p in paths:
        target = resolve(model, p)
        assert target.parent is not None and target.key is not None
        setattr(target.parent, target.key, new)
    return paths


def _trace_meta(model: nn.Module, *, training: bool) -> fx.Graph:
    """The fx graph of a meta copy of ``model`` in the given mode (the model is untouched)."""
    from ..trace._cut import trace  # local import: _cut is the bigger module

    clone = meta_copy(model)
    clone.train(training)
    return trace(clone).graph


def _linear_candidates(model: nn.Module, limit: int = 6) -> list[str]:
    found = [
        f"{name!r} {_describe(m)}"
        for name, m in model.named_modules()
        if name and isinstance(m, _HEAD_TYPES)
    ]
    return found[-limit:]


# ----------------------------------------------------------------------------- head discovery


@dataclass
class _Producer:
    """A node that computes an output from parameters: a module call or a functional op."""

    path: str
    module: nn.Module | None  # None: a functional op using parameters (not replaceable)
    what: str


def _producers(node: fx.Node, root: nn.Module) -> list[_Producer]:
    """Walk back from ``node`` through parameter-free steps to the layers with parameters."""
    found: dict[str, _Producer] = {}
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_module":
            mod = root.get_submodule(str(n.target))
            if any(True for _ in mod.parameters()):
                found.setdefault(str(n.target), _Producer(str(n.target), mod, _describe(mod)))
                continue
        elif (
            n.op in ("placeholder", "get_attr", "output")
            or (n.op == "call_method" and n.target in _SHAPE_OPS)
            or (n.op == "call_function" and getattr(n.target, "__name__", "") == "getattr")
        ):
            continue  # inputs, constants, x.size()/x.shape: metadata, not data
        if n.op in ("call_function", "call_method"):
            params = [
                a
                for a in n.all_input_nodes
                if a.op == "get_attr" and isinstance(_attr(root, str(a.target)), nn.Parameter)
            ]
            if params:
                name = getattr(n.target, "__name__", str(n.target))
                found.setdefault(
                    n.name,
                    _Producer(n.name, None, f"{name}(...) using parameter {params[0].target!r}"),
                )
                continue
        stack.extend(reversed(n.all_input_nodes))
    return list(found.values())


def _attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _output_leaves(value: Any) -> list[fx.Node]:
    out: list[fx.Node] = []

    def visit(v: Any) -> None:
        if isinstance(v, fx.Node):
            out.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)

    visit(value)
    return out


_PATH_HINT = "pass the head explicitly: surgery.replace_head(model, {n}, path={path!r})"


def _traced_heads(model: nn.Module, num_classes: int) -> list[str]:
    errors: list[str] = []
    graph: fx.Graph | None = None
    for training in (True, False):
        try:
            graph = _trace_meta(model, training=training)
            break
        except SurgeryError as e:
            errors.append(str(e).splitlines()[0])
    cands = _linear_candidates(model)
    hint = _PATH_HINT.format(n=num_classes, path=cands[-1].split("'")[1] if cands else "fc")
    listing = "\n".join(f"    {c}" for c in cands) or "    (no Linear or convolution layer)"
    if graph is None:
        raise LayerNotFoundError(
            f"cannot find the classifier of {type(model).__name__}: tracing failed "
            f"({errors[-1]}).\n  Linear/convolution layers (last {len(cands)}):\n{listing}\n  {hint}"
        )
    root = graph.owning_module
    assert root is not None
    output = next(n for n in graph.nodes if n.op == "output")
    heads: dict[str, _Producer] = {}
    others: list[_Producer] = []
    for leaf in _output_leaves(output.args[0]):
        prods = _producers(leaf, root)
        if prods and all(p.module is not None and isinstance(p.module, _HEAD_TYPES) for p in prods):
            for p in prods:
                heads.setdefault(p.path, p)
        else:
            others += prods
    if not heads:
        seen = ", ".join(f"{p.path!r} ({p.what})" for p in others) or "no layer with parameters"
        raise LayerNotFoundError(
            f"cannot find the classifier of {type(model).__name__}: the output is produced by "
            f"{seen}, not by a Linear or convolution layer.\n"
            f"  Linear/convolution layers (last {len(cands)}):\n{listing}\n  {hint}"
        )
    counts = {p.path: _out_count(p.module) for p in heads.values() if p.module is not None}
    if len(set(counts.values())) > 1:
        listing = "\n".join(f"    {p!r} {heads[p].what}" for p in counts)
        raise LayerNotFoundError(
            f"ambiguous classifier in {type(model).__name__}: the output comes from layers with "
            f"different numbers of outputs:\n{listing}\n  "
            + _PATH_HINT.format(n=num_classes, path=next(iter(counts)))
            + " (a list of paths replaces several)"
        )
    return list(heads)


# ----------------------------------------------------------------------------- replace_head


def _new_head(old: nn.Module, num_classes: int, path: str) -> nn.Module:
    if num_classes == 0:
        return nn.Identity()
    device, dtype = _where(old)
    new: nn.Module
    if isinstance(old, nn.LazyLinear):
        new = nn.LazyLinear(num_classes, bias=old.bias is not None, device=device, dtype=dtype)
    elif isinstance(old, nn.Linear):
        new = nn.Linear(
            old.in_features, num_classes, bias=old.bias is not None, device=device, dtype=dtype
        )
    elif isinstance(old, _CONV):
        if num_classes % old.groups:
            raise ArgumentError(
                f"the head {path!r} is a grouped convolution (groups={old.groups}): "
                f"num_classes={num_classes} must be a multiple of {old.groups}"
            )
        cls: Any = next(c for c in _CONV if isinstance(old, c))
        new = cls(
            old.in_channels,
            num_classes,
            old.kernel_size,
            old.stride,
            old.padding,
            old.dilation,
            old.groups,
            old.bias is not None,
            old.padding_mode,
            device=device,
            dtype=dtype,
        )
    elif isinstance(old, nn.Identity):
        raise ArgumentError(
            f"cannot re-head {path!r}: it is an Identity (the head was removed), so the number "
            f"of input features is unknown.\n  put a head there yourself: "
            f"surgery.replace(model, {path!r}, nn.Linear(in_features, {num_classes}))"
        )
    else:
        raise ArgumentError(
            f"cannot re-head {path!r}: it is a {type(old).__name__}; path= must name a Linear or "
            f"convolution layer (or a container whose last such layer is the head)"
        )
    new.train(old.training)
    return new


def _explicit_heads(model: nn.Module, paths: list[str]) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for p in paths:
        target = resolve(model, p)
        if target.parent is None or target.is_slice:
            raise ArgumentError(f"path={p!r} must name one layer, not the root or a slice")
        mod = target.module
        if not isinstance(mod, _HEAD_TYPES) and any(True for _ in mod.children()):
            inner = [(n, m) for n, m in mod.named_modules() if n and isinstance(m, _HEAD_TYPES)]
            if inner:  # a container: its last Linear/conv layer
                name, mod = inner[-1]
                out.append((f"{target.name}.{name}", mod))
                continue
        out.append((target.name, mod))
    return out


def replace_head(
    model: nn.Module,
    num_classes: int,
    *,
    path: str | Sequence[str] | None = None,
    tie: bool | None = None,
) -> nn.Module:
    """Replace the classifier of ``model`` by a fresh one with ``num_classes`` outputs, in place.

    The head is found in this order: ``path=`` (one path or a list; a container
    means its last Linear/convolution layer); what a timm model declares
    (``pretrained_cfg["classifier"]``, every entry, and its own
    ``reset_classifier``; if that fails, it is rolled back and the declared heads
    are replaced directly); otherwise the Linear or convolution layer(s) that
    produce the logits, found by tracing a meta copy in training mode, so
    auxiliary heads (inception_v3 ``AuxLogits.fc``, googlenet ``aux1.fc2`` and
    ``aux2.fc2``) and parallel heads (distilled transformers) are all replaced.
    What was found is logged on the ``"surgery"`` logger.

    A new Linear keeps ``in_features``, a new convolution (squeezenet's 1x1 head)
    keeps kernel, stride, padding and groups; both keep bias presence, device and
    dtype (meta stays meta) and the train/eval mode of the old head. A root
    attribute ``num_classes`` is updated.

    ``num_classes=0`` puts ``nn.Identity`` in place of each head, so the model
    returns what the head received: the pooled features for most models
    ``(N, in_features)``. For squeezenet (``Dropout -> Conv2d -> ReLU ->
    AdaptiveAvgPool2d`` then ``flatten``) it returns
    ``flatten(avgpool(relu(features(x))))``, i.e. the average-pooled final
    features, ``(N, 512)``.

    A Hugging Face ``transformers.PreTrainedModel`` uses the heads it declares
    (nothing is traced): its LM head is ``get_output_embeddings()`` (a tied head
    stays tied and is resized with the model's own ``resize_token_embeddings``;
    ``tie=False`` gives a new, untied head and the input embedding keeps its
    size; a ``SurgeryWarning`` says what happened to the tie); its
    classification head is the one Linear layer outside the base model with
    ``config.num_labels`` outputs, and ``config.num_labels``, ``id2label`` and
    ``label2id`` follow the new count (see docs/huggingface.md).

    Args:
        model: the model to change, in place.
        num_classes: outputs of the new head; 0 removes the head.
        path: the head's path (or a list of paths), when discovery is not wanted.
        tie: for a transformers LM head only: None keeps the tie as it is,
            False unties the head from the input embedding, True ties it.

    Returns:
        ``model`` itself.

    Raises:
        ArgumentError: ``num_classes`` is not an int >= 0, or ``path`` names a
            layer that is not a Linear or convolution.
        PathNotFoundError: ``path`` names no module.
        LayerNotFoundError: no head, or an ambiguous one, was found; the message
            lists the candidates and shows the ``path=`` call.

    On any error the model is unchanged.

    Example:
        >>> import torchvision, surgery
        >>> m = surgery.replace_head(torchvision.models.resnet18(weights=None), 10)
        >>> m.fc
        Linear(in_features=512, out_features=10, bias=True)
        >>> import torch
        >>> with torch.device("meta"):
        ...     m = torchvision.models.inception_v3(weights=None, init_weights=False)
        >>> _ = surgery.replace_head(m, 5)
        >>> m.fc.out_features, m.AuxLogits.fc.out_features, m.fc.weight.device.type
        (5, 5, 'meta')
    """
    check_model(model, "replace_head")
    _check_count(num_classes, "num_classes", 0)
    paths = _paths_arg(path)
    hf = plan_hf_head(model, num_classes, path=paths, tie=tie, new_head=_new_head)  # hook (F)
    if hf is not None:  # hook (F): a transformers model's declared head
        return hf.apply(model)  # hook (F)
    how = "path="
    if paths is None:
        declared = [p for p in _declared(model, "classifier") if _resolves(model, p)]
        resets = callable(getattr(model, "reset_classifier", None))
        if declared and resets and _reset_declared(model, num_classes, declared):
            return model
        if declared:
            paths, how = declared, "pretrained_cfg['classifier']"
        else:
            paths, how = _traced_heads(model, num_classes), "tracing"
    heads = _explicit_heads(model, paths)
    # plan: every new module is built (and checked) before anything changes
    plan = [(name, old, _new_head(old, num_classes, name)) for name, old in heads]
    labels = hf_label_sync(model, [old for _, old, _ in plan], num_classes)  # hook (F)
    for _name, old, new in plan:
        _set(model, old, new)
    labels.apply(model)  # hook (F): config.num_labels/id2label/label2id
    current = getattr(model, "num_classes", None)
    if isinstance(current, int) and not isinstance(current, bool):
        model.num_classes = num_classes  # type: ignore[assignment]
    _log.info(
        "replace_head(%s): %s found by %s -> %d classes",
        type(model).__name__,
        ", ".join(f"{n!r} ({_describe(o)})" for n, o, _ in plan),
        how,
        num_classes,
    )
    return model


def _reset_declared(model: nn.Module, num_classes: int, declared: list[str]) -> bool:
    """Let a timm model re-head itself, then match the old heads' device and dtype.

    Returns False (the model restored as it was) when ``reset_classifier`` fails:
    the declared heads are then replaced like any other.
    """
    old = {p: resolve(model, p).module for p in declared}
    # an Identity head (a headless model) has no tensors: the model's own device and dtype
    where = {p: _where(m if _has_tensors(m) else model) for p, m in old.items()}
    saved = [
        (m, dict(m.__dict__), dict(m._modules), dict(m._parameters), dict(m._buffers))
        for m in model.modules()
    ]
    try:
        model.reset_classifier(num_classes)  # type: ignore[operator]
        for p in declared:
            new = resolve(model, p).module
            if _has_tensors(new) and _where(new) != where[p]:
                device, dtype = where[p]
                new.to(device=device, dtype=dtype)
    except Exception as e:
        for m, d, mods, params, bufs in saved:  # restore every module as it was
            m.__dict__.clear()
            m.__dict__.update(d)
            m._modules, m._parameters, m._buffers = mods, params, bufs  # type: ignore[assignment]
        _log.warning(
            "replace_head(%s): its reset_classifier(%d) failed (%s: %s); replacing the declared "
            "heads %s directly",
            type(model).__name__,
            num_classes,
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
            ", ".join(map(repr, declared)),
        )
        return False
    _log.info(
        "replace_head(%s): %s declared by pretrained_cfg['classifier'], re-headed by its "
        "reset_classifier -> %d classes",
        type(model).__name__,
        ", ".join(map(repr, declared)),
        num_classes,
    )
    return True


# ----------------------------------------------------------------------------- adapt_input


def _first_conv(model: nn.Module) -> tuple[list[str], str]:
    declared = [p for p in _declared(model, "first_conv") if _resolves(model, p)]
    declared = [p for p in declared if isinstance(resolve(model, p).module, _CONV)]
    if declared:
        return declared, "pretrained_cfg['first_conv']"
    reason = ""
    try:
        graph = _trace_meta(model, training=False)
        root = graph.owning_module
        assert root is not None
        for n in graph.nodes:
            if n.op != "call_module":
                continue
            called = root.get_submodule(str(n.target))
            # a leaf block (Conv2dNormActivation...) is called whole: its first conv inside
            for name, m in called.named_modules():
                if isinstance(m, _CONV):
                    found = f"{n.target}.{name}" if name else str(n.target)
                    return [found], "tracing (first convolution forward calls)"
    except SurgeryError as e:
        reason = f" (tracing failed: {str(e).splitlines()[0]})"
    for name, m in model.named_modules():
        if name and isinstance(m, _CONV):
            return [name], "named_modules order" + reason
    kinds = sorted({type(m).__name__ for m in model.modules()})
    raise LayerNotFoundError(
        f"{type(model).__name__} has no Conv1d/Conv2d/Conv3d to adapt (module types: "
        f"{', '.join(kinds[:12])}{', ...' if len(kinds) > 12 else ''}).\n"
        f"  pass the layer explicitly: surgery.adapt_input(model, in_channels, path='...')"
    )


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
    assert isinstance(conv, _CONV)
    if conv.groups > 1 and in_channels != 1:
        raise ArgumentError(
            f"cannot adapt {path!r} ({_describe(conv)}, groups={conv.groups}) to "
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
    return new


def adapt_input(model: nn.Module, in_channels: int, *, path: str | None = None) -> nn.Module:
    """Make ``model`` take ``in_channels`` input channels, in place, keeping its pretrained weights.

    The first convolution (``path=``, else timm's ``pretrained_cfg["first_conv"]``,
    else the first Conv1d/2d/3d that ``forward`` calls, found by tracing a meta
    copy, else the first one in ``named_modules`` order; logged on the
    ``"surgery"`` logger) is replaced by a copy with ``in_channels`` inputs and
    the same stride, padding, dilation, bias, padding mode, device and dtype.
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

    Returns:
        ``model`` itself.

    Raises:
        ArgumentError: ``in_channels`` is not an int >= 1, ``path`` is not a
            convolution, or a grouped convolution cannot be adapted.
        PathNotFoundError: ``path`` names no module.
        LayerNotFoundError: the model has no convolution.

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
    """
    check_model(model, "adapt_input")
    _check_count(in_channels, "in_channels", 1)
    if path is not None:
        if not isinstance(path, str):
            raise ArgumentError(f"path must be a module path (str), got {path!r}")
        target = resolve(model, path)
        if not isinstance(target.module, _CONV) or target.parent is None:
            raise ArgumentError(
                f"path={path!r} is a {type(target.module).__name__}, not a Conv1d/Conv2d/Conv3d"
            )
        paths, how = [target.name], "path="
    else:
        paths, how = _first_conv(model)
    plan = []
    for p in paths:
        conv = resolve(model, p).module
        if conv.in_channels == in_channels:  # type: ignore[union-attr]
            continue
        plan.append((p, conv, _adapted_conv(conv, in_channels, p)))
    for _p, conv, new in plan:
        _set(model, conv, new)
    for attr in ("in_chans", "in_channels"):
        value = getattr(model, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and plan:
            setattr(model, attr, in_channels)
    _log.info(
        "adapt_input(%s): %s found by %s -> %d input channels",
        type(model).__name__,
        ", ".join(map(repr, paths)),
        how,
        in_channels,
    )
    return model


# ----------------------------------------------------------------------------- create_head


class AdaptiveConcatPool2d(nn.Module):
    """Adaptive max pooling and average pooling, concatenated on channels (fastai's layer).

    ``(N, C, H, W) -> (N, 2*C, *output_size)``: the max-pooled channels first,
    then the average-pooled ones.

    Example:
        >>> import torch
        >>> from surgery.edit._heads import AdaptiveConcatPool2d
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
    _check_count(in_features, "in_features", 1)
    _check_count(num_classes, "num_classes", 1)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ArgumentError(f"hidden must be a sequence of widths such as (512,), got {hidden!r}")
    widths = [_check_count(h, "each hidden width", 1) for h in hidden]
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
