"""Tracing with ``torch.fx``: the tracer, :class:`Traced` and :func:`trace_model`.

:func:`trace_model` is the single entry point of tracing in `surgery` (cut,
split, cut-point discovery, head discovery): it traces the model's own
``forward`` once on a structural copy (the caller's model is never touched),
recording the output of every module call. Modules from ``torch.nn``, modules
without children (``Dropout``, ``StochasticDepth``, ``DropPath``...: their
train/eval behaviour stays live) and timm's registered leaves are called as
opaque steps; a submodule whose ``forward`` cannot be traced is found from
the failure and becomes an opaque step too. timm's norm + activation layers
(``BatchNormAct2d``) are traced through, with a live batch-norm step.
Optional ``forward`` arguments are fixed to their defaults. Where torch.fx
cannot trace the forward (most Hugging Face ``transformers`` models),
``trace_model(..., engine="auto")`` falls back to the ``torch.export`` engine
(:mod:`surgery.trace._export`), whose graph is given as a :class:`Traced` too,
so cut, split and cut-point discovery serve both engines.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .._errors import TraceError
from ..paths._resolve import check_model
from ._export import ENGINE_FX, ExportTrace, trace_with_fallback
from ._meta import structural_copy

__all__ = [
    "Traced",
    "batch_norm_step",
    "concrete_defaults",
    "fetch",
    "leaves_of",
    "signature_of",
    "trace",
    "trace_model",
]

_MAX_RETRIES = 32
_FX_SUFFIX = re.compile(r".+_[0-9]+$")

# --------------------------------------------------------------------------- trace


def _default_leaf_types() -> tuple[type, ...]:
    """Leaf module classes that timm registers for fx (only when timm is loaded).

    torchvision's list (every class in ``torchvision.ops``) is not used: it would
    hide ``Conv2dNormActivation``/``MLP`` internals from cuts; untraceable ops
    modules become opaque steps on their own.
    """
    timm_fx = sys.modules.get("timm.layers._fx")
    if timm_fx is None:  # only when the user's model came from timm
        return ()
    try:
        found = timm_fx.get_notrace_modules()
    except Exception:  # pragma: no cover - private API moved
        return ()
    # timm's norm + activation layers (BatchNormAct2d...) are traced through: their
    # drop/act children are module calls (see _norm_act_forward)
    return tuple(t for t in found if isinstance(t, type) and t.__module__ != "timm.layers.norm_act")


def _torch_norm_class(cls: type) -> type | None:
    """The ``torch.nn`` batch-norm class a norm + activation layer derives from, if any."""
    if cls.__module__.startswith("torch.nn"):
        return None
    for base in cls.__mro__[1:]:
        if issubclass(base, nn.modules.batchnorm._BatchNorm) and base.__module__.startswith(
            "torch.nn"
        ):
            return base
    return None


def batch_norm_step(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The normalization of a norm + activation layer (timm's ``BatchNormAct2d``).

    Runs ``torch.nn``'s own batch-norm ``forward`` on ``module``, so the step
    follows the module's train/eval mode when the graph runs; the layer's
    ``drop`` and ``act`` children are separate module calls (cut points).
    """
    base = _torch_norm_class(type(module))
    assert base is not None  # only traced for such classes
    return base.forward(module, x)  # type: ignore[attr-defined,no-any-return]


def _norm_act_forward(tracer: fx.Tracer, m: nn.Module) -> Callable[..., Any] | None:
    """A traceable forward for a batch norm with ``drop``/``act`` children, or None."""
    if _torch_norm_class(type(m)) is None or "act" not in m._modules:
        return None

    def forward(x: Any) -> Any:
        y = tracer.create_proxy("call_function", batch_norm_step, (m, x), {})
        for child in ("drop", "act"):
            if m._modules.get(child) is not None:
                y = getattr(m, child)(y)
        return y

    return forward


def _autowrap_functions() -> tuple[Callable[..., Any], ...]:
    timm_fx = sys.modules.get("timm.layers._fx")
    if timm_fx is None:
        return ()
    try:
        return tuple(f for f in timm_fx.get_notrace_functions() if callable(f))
    except Exception:  # pragma: no cover
        return ()


def _autowrap_modules() -> tuple[Any, ...]:
    import torchvision

    return (math, torchvision.ops)


def _to_nodes(value: Any) -> Any:
    return fx.node.map_aggregate(value, lambda a: a.node if isinstance(a, fx.Proxy) else a)


class _Tracer(fx.Tracer):
    """An fx tracer that records every module call's output and the innermost failure."""

    def __init__(self, leaves: frozenset[str], leaf_types: tuple[type, ...]) -> None:
        super().__init__(
            autowrap_modules=_autowrap_modules(), autowrap_functions=_autowrap_functions()
        )
        self.leaves = leaves
        self.leaf_types = leaf_types
        self.calls: dict[str, list[Any]] = {}
        self.failed: str | None = None
        self.failure: BaseException | None = None
        self.names: dict[str, fx.Node] = {}  # torchvision-style node names
        self._counts: dict[str, int] = {}

    def create_proxy(
        self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **options: Any
    ) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **options)
        node = proxy.node
        # the naming of torchvision's NodePathTracer: scope path + op name, with a
        # counter per name within its scope ("layer1.0.relu", then "layer1.0.relu_1")
        scope = next(reversed(self.module_stack.values()))[0] if self.module_stack else ""
        name = scope
        if node.op != "call_module":
            name = f"{scope}.{node.name}" if scope else node.name
        if _FX_SUFFIX.match(name):
            name = name.rsplit("_", 1)[0]
        count = self._counts.get(name)
        self._counts[name] = 0 if count is None else count + 1
        self.names[name if count is None else f"{name}_{count + 1}"] = node
        return proxy

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaves or isinstance(m, self.leaf_types):
            return True
        if isinstance(m, nn.Sequential):
            return False
        if not m._modules:  # childless: keeps Dropout-like train/eval behaviour live
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        path = self.path_of_module(m)
        if len(args) == 1 and not kwargs and not self.is_leaf_module(m, path):
            forward = _norm_act_forward(self, m) or forward
        try:
            out = super().call_module(m, forward, args, kwargs)
        except Exception as e:
            if self.failed is None:
                self.failed, self.failure = path, e
            raise
        self.calls.setdefault(path, []).append(_to_nodes(out))
        return out


@dataclass
class Traced:
    """A traced model: its graph and where each module call's output lives.

    Attributes:
        graph: the ``torch.fx.Graph`` of the whole forward.
        calls: module path -> the output of each call, in call order, as the
            module returned it with ``fx.Node`` in place of tensors.
        leaves: paths called as opaque steps (``call_module`` nodes).
        opaque: paths made opaque because their ``forward`` could not be traced,
            with the reason.
        attrs: constants ``torch.fx`` stowed on the root (``_tensor_constant0``...).
        names: torchvision-style node names (``"layer1.0.relu_1"``, ``"flatten"``),
            as ``get_graph_node_names`` gives them, -> node.
        engine: the engine that traced it: ``"torch.fx"`` or ``"torch.export"``
            (then ``model`` is the exported ``GraphModule``, whose ``get_attr``
            targets are the model's own paths, and ``leaves`` is empty).
    """

    model: nn.Module
    graph: fx.Graph
    calls: dict[str, list[Any]]
    leaves: set[str]
    opaque: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    names: dict[str, fx.Node] = field(default_factory=dict)
    engine: str = ENGINE_FX

    def index(self) -> dict[fx.Node, int]:
        order = self.__dict__.get("_order")
        if order is None:
            order = self.__dict__["_order"] = {n: i for i, n in enumerate(self.graph.nodes)}
        return order  # type: ignore[no-any-return]


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


_BASE_DEFAULTS = (type(None), bool, int, float, str)


def concrete_defaults(model: nn.Module) -> dict[str, Any]:
    """The optional arguments of ``model.forward`` that tracing fixes to their defaults.

    Every parameter after the first whose default is ``None`` or a plain
    ``bool``/``int``/``float``/``str`` (``mask=None``, ``return_loss=False``):
    ``model(x)`` runs with those values, so the traced graph does too, instead
    of treating ``mask`` as a given tensor.
    """
    sig = signature_of(type(model).forward)
    if sig is None:
        return {}
    params = [p for p in sig.parameters.values() if p.name != "self"]
    fixed: dict[str, Any] = {}
    for p in params[1:]:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        if p.default is not p.empty and type(p.default) in _BASE_DEFAULTS:
            fixed[p.name] = p.default
    return fixed


def _drop_fixed_placeholders(graph: fx.Graph, fixed: dict[str, Any]) -> None:
    """Remove the placeholders (and fx's checks on them) of arguments fixed to defaults."""
    if not fixed:
        return
    for n in list(graph.nodes):
        if n.op != "placeholder":
            continue
        base = str(n.target).rsplit("_", 1)[0]
        if base not in fixed or n.target == base:
            continue
        for user in list(n.users):
            if user.op == "call_function" and not user.users and user.target in _CHECKS:
                graph.erase_node(user)
        if not n.users:
            graph.erase_node(n)


_CHECKS: tuple[Any, ...] = (torch._assert, getattr(fx._symbolic_trace, "_assert_is_none", None))


def trace_model(model: nn.Module, *, example_inputs: Any = None, engine: str = "fx") -> Traced:
    """Trace a structural copy of ``model``; untraceable submodules become opaque steps.

    The single entry point of tracing in `surgery`. ``engine="fx"`` (the
    default) traces with ``torch.fx`` only; ``"auto"`` falls back to
    ``torch.export`` (non-strict, on ``example_inputs`` or a
    ``PreTrainedModel``'s ``dummy_inputs``) where torch.fx fails, and
    ``"export"`` uses torch.export only (:func:`surgery.trace._export.trace_with_fallback`).
    ``example_inputs`` is validated whichever engine runs. The caller's model is never
    touched: the trace runs on :func:`structural_copy` (fresh module objects
    sharing the tensors), so whatever forward writes into the model while it
    is traced (timm's ``attention_bias_cache``, fx's stowed constants) lands
    in the copy. Optional arguments are fixed to their defaults
    (:func:`concrete_defaults`). ``Traced.model`` is the caller's model: the
    graph's targets are paths into it.

    Raises:
        ArgumentError: a bad ``engine`` or ``example_inputs``.
        TraceError: the failure is in the model's own ``forward`` (outside every
            submodule), or retrying did not converge; with ``engine="auto"``
            the message names both engines' failures.
    """
    check_model(model, "tracing")
    found = trace_with_fallback(model, example_inputs, _trace_fx, engine)
    if isinstance(found, ExportTrace):
        return Traced(
            found.model, found.graph, found.calls, set(), attrs=found.attrs, engine=found.engine
        )
    return found  # type: ignore[no-any-return]


def _trace_fx(model: nn.Module) -> Traced:
    """The torch.fx engine of :func:`trace_model`."""
    leaf_types = _default_leaf_types()
    fixed = concrete_defaults(model)
    opaque: dict[str, str] = {}
    for _ in range(_MAX_RETRIES):
        tracer = _Tracer(frozenset(opaque), leaf_types)
        work = structural_copy(model)
        before = set(work.__dict__)
        try:
            graph = tracer.trace(work, concrete_args=fixed or None)
        except Exception as e:
            path = tracer.failed
            reason = _reason(tracer.failure if tracer.failure is not None else e)
            if not path or path in opaque:
                err = TraceError(
                    f"torch.fx cannot trace {type(model).__name__}.forward ({reason}); the "
                    f"problem is in the model's own forward, outside every submodule"
                )
                err.in_forward = True  # type: ignore[attr-defined]
                raise err from None
            opaque[path] = reason
            continue
        stowed = {k: work.__dict__[k] for k in set(work.__dict__) - before}
        _drop_fixed_placeholders(graph, fixed)
        alive = set(graph.nodes)
        names = {k: n for k, n in tracer.names.items() if n in alive}
        leaves = {n.target for n in graph.nodes if n.op == "call_module"}
        return Traced(model, graph, tracer.calls, leaves, opaque, stowed, names)  # type: ignore[arg-type]
    raise TraceError(  # pragma: no cover - pathological
        f"torch.fx cannot trace {type(model).__name__}: more than {_MAX_RETRIES} submodules "
        f"fail to trace ({', '.join(opaque)})"
    )


def trace(model: nn.Module) -> fx.GraphModule:
    """Trace ``model``'s forward into a ``GraphModule`` that shares its modules.

    An internal helper for other parts of `surgery` (head discovery): no copy is
    made, and the model is not changed. ``torch.nn`` modules and modules without
    children are ``call_module`` nodes whose ``target`` is the module path;
    every node carries torch.fx's ``meta["nn_module_stack"]`` (the module paths
    being executed when it was created, outermost first).
    ``gm.meta["surgery_calls"]`` maps each module path to the output of each of
    its calls (``fx.Node`` in place of tensors); ``gm.meta["surgery_opaque"]``
    maps submodules that could not be traced (called as opaque steps) to the
    reason; ``gm.meta["surgery_names"]`` maps torchvision-style node names
    (``"layer1.0.relu_1"``) to nodes.

    Raises:
        TraceError: the model's own forward is not traceable.

    Example:
        >>> import torchvision
        >>> from surgery.trace._fx import trace
        >>> gm = trace(torchvision.models.resnet18(weights=None))
        >>> [n.target for n in gm.graph.nodes if n.op == "call_module"][-2:]
        ['avgpool', 'fc']
        >>> gm.meta["surgery_calls"]["fc"][0].name
        'fc'
    """
    t = trace_model(model)
    roots: dict[str, Any] = {}
    for n in t.graph.nodes:
        if n.op in ("call_module", "get_attr"):
            roots[n.target] = fetch(t, n.target)
    gm = fx.GraphModule(roots, t.graph, class_name=type(model).__name__)
    gm.training = model.training
    gm.meta["surgery_calls"] = t.calls
    gm.meta["surgery_opaque"] = dict(t.opaque)
    gm.meta["surgery_names"] = dict(t.names)
    return gm


def fetch(t: Traced, target: str) -> Any:
    """The object a ``call_module``/``get_attr`` target names: a stowed constant or a
    module, parameter or buffer of the caller's model."""
    if target in t.attrs:
        return t.attrs[target]
    return functools.reduce(getattr, target.split("."), t.model)


def leaves_of(structure: Any) -> list[fx.Node]:
    """The ``fx.Node`` objects inside a (nested) output structure, in order."""
    found: list[fx.Node] = []

    def add(n: fx.Node) -> fx.Node:
        found.append(n)
        return n

    fx.node.map_arg(structure, add)
    return found


@functools.lru_cache(maxsize=256)
def signature_of(fn: Callable[..., Any]) -> inspect.Signature | None:
    """``inspect.signature(fn)``, cached; None for callables without one."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None
