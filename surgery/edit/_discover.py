"""Finding the layer to change: what the model declares, else discovery by tracing a meta copy.

The policy, in this order:

1. ``path=`` given by the caller (handled by the operation);
2. what the model declares: timm's ``pretrained_cfg["classifier"]`` (a tuple
   for distilled models: every head) and ``pretrained_cfg["first_conv"]``;
3. discovery by tracing a meta copy with ``torch.fx`` (the caller's model is
   never traced, moved or run): the head is the Linear or convolution layer
   that produces each logits output (training mode, so auxiliary heads are
   outputs too); the first convolution is the first one ``forward`` calls;
4. for the first convolution only, ``named_modules`` order when tracing fails.

Anything ambiguous or missing is a :class:`~surgery.LayerNotFoundError` that
lists the candidates and shows the ``path=`` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .._errors import LayerNotFoundError, PathError, SurgeryError
from ..paths._resolve import resolve
from ..trace._fx import trace
from ..trace._meta import meta_copy

__all__ = [
    "CONV",
    "HEAD_TYPES",
    "declared_paths",
    "describe",
    "first_conv",
    "has_tensors",
    "out_count",
    "resolves",
    "traced_heads",
    "where",
]

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
HEAD_TYPES = (nn.Linear, nn.LazyLinear, *CONV)
_SHAPE_OPS = frozenset({"size", "dim", "numel", "type", "to", "is_contiguous"})


def describe(module: nn.Module) -> str:
    if isinstance(module, nn.Linear) and not isinstance(module, nn.LazyLinear):
        return f"Linear({module.in_features} -> {module.out_features})"
    if isinstance(module, CONV):
        return (
            f"{type(module).__name__}({module.in_channels} -> {module.out_channels}, "
            f"kernel {tuple(module.kernel_size)})"
        )
    return type(module).__name__


def out_count(module: nn.Module) -> int | None:
    if isinstance(module, nn.LazyLinear):
        return module.out_features
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, CONV):
        return module.out_channels
    return None


def where(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in (*module.parameters(), *module.buffers()):
        return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def has_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def declared_paths(model: nn.Module, key: str) -> list[str]:
    """Paths the model declares in timm's ``pretrained_cfg`` (or ``default_cfg``)."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and cfg.get(key):
            value = cfg[key]
            names = [value] if isinstance(value, str) else list(value)
            return [n for n in names if isinstance(n, str)]
    return []


def resolves(model: nn.Module, path: str) -> bool:
    try:
        target = resolve(model, path)
    except PathError:
        return False
    return target.parent is not None and not target.is_slice


def _trace_meta(model: nn.Module, *, training: bool) -> fx.Graph:
    """The fx graph of a meta copy of ``model`` in the given mode (the model is untouched)."""
    clone = meta_copy(model)
    clone.train(training)
    return trace(clone).graph


def _linear_candidates(model: nn.Module, limit: int = 6) -> list[str]:
    found = [
        f"{name!r} {describe(m)}"
        for name, m in model.named_modules()
        if name and isinstance(m, HEAD_TYPES)
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
                found.setdefault(str(n.target), _Producer(str(n.target), mod, describe(mod)))
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


def traced_heads(model: nn.Module, num_classes: int) -> list[str]:
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
        if prods and all(p.module is not None and isinstance(p.module, HEAD_TYPES) for p in prods):
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
    counts = {p.path: out_count(p.module) for p in heads.values() if p.module is not None}
    if len(set(counts.values())) > 1:
        listing = "\n".join(f"    {p!r} {heads[p].what}" for p in counts)
        raise LayerNotFoundError(
            f"ambiguous classifier in {type(model).__name__}: the output comes from layers with "
            f"different numbers of outputs:\n{listing}\n  "
            + _PATH_HINT.format(n=num_classes, path=next(iter(counts)))
            + " (a list of paths replaces several)"
        )
    return list(heads)


def first_conv(model: nn.Module) -> tuple[list[str], str]:
    declared = [p for p in declared_paths(model, "first_conv") if resolves(model, p)]
    declared = [p for p in declared if isinstance(resolve(model, p).module, CONV)]
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
                if isinstance(m, CONV):
                    found = f"{n.target}.{name}" if name else str(n.target)
                    return [found], "tracing (first convolution forward calls)"
    except SurgeryError as e:
        reason = f" (tracing failed: {str(e).splitlines()[0]})"
    for name, m in model.named_modules():
        if name and isinstance(m, CONV):
            return [name], "named_modules order" + reason
    kinds = sorted({type(m).__name__ for m in model.modules()})
    raise LayerNotFoundError(
        f"{type(model).__name__} has no Conv1d/Conv2d/Conv3d to adapt (module types: "
        f"{', '.join(kinds[:12])}{', ...' if len(kinds) > 12 else ''}).\n"
        f"  pass the layer explicitly: surgery.adapt_input(model, in_channels, path='...')"
    )
