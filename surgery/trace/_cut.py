"""Cut and split any traceable model at a module path, with ``torch.fx``.

The engine has three steps, as everywhere in `surgery`:

1. **trace** the model's own ``forward`` once (:func:`trace`), recording the
   output of every module call. Modules from ``torch.nn``, modules without
   children (``Dropout``, ``StochasticDepth``, ``DropPath``...: their
   train/eval behaviour stays live) and torchvision's/timm's registered leaves
   are called as opaque steps; a submodule whose ``forward`` cannot be traced
   is found from the failure and becomes an opaque step too, so only the code
   that surrounds the cut must be traceable;
2. **plan**: the cut node is the output of the module's first call; the head
   is everything that value needs, the tail everything else the output needs,
   and the values the tail needs from the head (skip connections, the input)
   are carried across;
3. **build** plain ``torch.fx.GraphModule`` objects holding copies (or, with
   ``copy=False``, the originals) of only the modules they call.

The caller's model is never modified: not its modes, not its attributes
(``torch.fx`` stows constants on the traced root; they are moved out again).
"""

from __future__ import annotations

import copy as _copy
import functools
import inspect
import math
import operator
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .._errors import ArgumentError, PathError, PathNotFoundError, SurgeryError, TraceError
from ..paths._grammar import parse_path
from ..paths._resolve import check_model, resolve
from ._export import trace_with_fallback  # hook (F)

__all__ = [
    "Traced",
    "copy_objects",
    "cut",
    "split",
    "split_points",
    "trace",
    "trace_model",
    "with_prefix",
]

_MAX_RETRIES = 32
_FX_SUFFIX = re.compile(r".+_[0-9]+$")

_TRY = (
    "  try: surgery.take(model, {path!r}) for the module itself (without the forward code "
    "around it),\n"
    "       surgery.compose(...) of the parts you need, or a traceable forward "
    "(torch.fx cannot branch on tensor values)"
)


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
        return tuple(t for t in timm_fx.get_notrace_modules() if isinstance(t, type))
    except Exception:  # pragma: no cover - private API moved
        return ()


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
    """

    model: nn.Module
    graph: fx.Graph
    calls: dict[str, list[Any]]
    leaves: set[str]
    opaque: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    names: dict[str, fx.Node] = field(default_factory=dict)
    engine: str = "torch.fx"  # hook (F): or "torch.export" (surgery/trace/_export.py)

    def index(self) -> dict[fx.Node, int]:
        return {n: i for i, n in enumerate(self.graph.nodes)}


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def trace_model(model: nn.Module) -> Traced:
    """Trace ``model`` with :class:`_Tracer`; untraceable submodules become opaque steps.

    Raises:
        TraceError: the failure is in the model's own ``forward`` (outside every
            submodule), or retrying did not converge.
    """
    check_model(model, "tracing")
    leaf_types = _default_leaf_types()
    opaque: dict[str, str] = {}
    for _ in range(_MAX_RETRIES):
        tracer = _Tracer(frozenset(opaque), leaf_types)
        before = set(model.__dict__)
        try:
            graph = tracer.trace(model)
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
        finally:
            stowed = {k: model.__dict__.pop(k) for k in set(model.__dict__) - before}
        leaves = {n.target for n in graph.nodes if n.op == "call_module"}
        return Traced(model, graph, tracer.calls, leaves, opaque, stowed, tracer.names)  # type: ignore[arg-type]
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
        >>> from surgery.trace._cut import trace
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
            roots[n.target] = _fetch(t, n.target)
    gm = fx.GraphModule(roots, t.graph, class_name=type(model).__name__)
    gm.training = model.training
    gm.meta["surgery_calls"] = t.calls
    gm.meta["surgery_opaque"] = dict(t.opaque)
    gm.meta["surgery_names"] = dict(t.names)
    return gm


def _fetch(t: Traced, target: str) -> Any:
    if target in t.attrs:
        return t.attrs[target]
    return functools.reduce(getattr, target.split("."), t.model)


def split_points(
    model: nn.Module, traced: Traced | None = None, example_inputs: Any = None
) -> list[str]:
    """Module paths (``named_modules`` order, root excluded) valid for ``split``/``cut``.

    These are the modules that ``forward`` calls (directly or inside traced
    code). Left out: modules never called (e.g. a ``ModuleList``, which is
    iterated rather than called, or an auxiliary head that only runs in train
    mode) and modules inside an opaque step (e.g. ``MultiheadAttention.out_proj``).
    """
    t = traced if traced is not None else _trace(model, example_inputs, "auto")  # hook (F)
    return [name for name, _ in model.named_modules() if name and name in t.calls]


# --------------------------------------------------------------------------- plan


def _leaves_of(structure: Any) -> list[fx.Node]:
    found: list[fx.Node] = []

    def add(n: fx.Node) -> fx.Node:
        found.append(n)
        return n

    fx.node.map_arg(structure, add)
    return found


def _cut_structure(t: Traced, model: nn.Module, path: str) -> tuple[str, Any]:
    """The canonical path and the output structure of its first call.

    A path that names no module may be a torchvision node name (``"flatten"``,
    ``"layer1.0.relu_1"``, ``"layer1.0.add"``): the cut is then after that node.
    """
    try:
        target = resolve(model, path)
    except PathNotFoundError:
        node = t.names.get(str(path))
        if node is None or node.op == "placeholder":
            raise
        return str(path), node
    name = target.name
    if target.is_slice:
        members = target.member_names()
        if not members:
            raise ArgumentError(f"the slice {path!r} is empty: there is nothing to cut after")
        name = members[-1]
    if name == "":
        return "", _leaves_of_output(t)
    outs = t.calls.get(name)
    if outs:
        structure = outs[0]
        if not _leaves_of(structure):
            raise ArgumentError(
                f"{name!r} ({type(target.module).__name__}) returns no tensor computed from "
                f"the input, so there is nothing to cut after"
            )
        return name, structure
    if isinstance(model, fx.GraphModule):
        # a GraphModule (e.g. a previous cut) calls leaves directly, never their
        # containers: a container's output is its last leaf call, as in torchvision
        inner = [
            n
            for n in t.graph.nodes
            if n.op == "call_module" and str(n.target).startswith(name + ".")
        ]
        if inner:
            return name, inner[-1]
    # explain why this module has no output of its own
    for opaque, reason in t.opaque.items():
        if name.startswith(opaque + "."):
            raise TraceError(
                f"cannot cut inside {opaque!r}: torch.fx cannot trace its forward ({reason}), "
                f"so it runs as one opaque step.\n  cut at {opaque!r} or outside it instead"
            )
    for leaf in sorted(t.leaves, key=len):
        if name.startswith(leaf + "."):
            mod = model.get_submodule(leaf)
            raise PathError(
                f"cannot cut at {name!r}: it runs inside {leaf!r} ({type(mod).__name__}), "
                f"whose forward is one step, not a sequence of module calls.\n"
                f"  cut at {leaf!r} instead"
            )
    mod = model.get_submodule(name)
    hint = ""
    kids = [k for k, v in mod._modules.items() if v is not None]
    if kids and isinstance(mod, (nn.ModuleList, nn.ModuleDict)):
        hint = f"\n  a {type(mod).__name__} is iterated, not called: cut after one of its entries, e.g. {name + '.' + kids[-1]!r}"
    mode = "train" if model.training else "eval"
    raise PathError(
        f"cannot cut at {name!r} ({type(mod).__name__}): {type(model).__name__}.forward never "
        f"calls it (in {mode} mode){hint}\n"
        f"  list valid cut points with surgery.testing.split_points(model)"
    )


def _leaves_of_output(t: Traced) -> Any:
    out = next(n for n in reversed(t.graph.nodes) if n.op == "output")
    return out.args[0]


_INPLACE_FUNCS = {
    operator.setitem,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.ifloordiv,
    operator.imod,
    operator.ipow,
    operator.iand,
    operator.ior,
    operator.ixor,
    operator.ilshift,
    operator.irshift,
    operator.imatmul,
}


@functools.lru_cache(maxsize=256)
def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _inplace_kwarg(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if kwargs.get("inplace") is True:
        return True
    try:
        sig = _signature(fn)
    except TypeError:  # unhashable callable
        return False
    if sig is None or "inplace" not in sig.parameters:
        return False
    try:
        return sig.bind(*args, **kwargs).arguments.get("inplace") is True
    except TypeError:
        return False


def _mutated(node: fx.Node, model: nn.Module, t: Traced) -> fx.Node | None:
    """The node whose value ``node`` modifies in place, if any (a conservative guess)."""
    first = node.args[0] if node.args else None
    if not isinstance(first, fx.Node):
        return None
    if node.op == "call_method":
        name = str(node.target)
        if name.endswith("_") and not name.startswith("_"):
            return first
    elif node.op == "call_function":
        fn = node.target
        if fn in _INPLACE_FUNCS:
            return first
        name = getattr(fn, "__name__", "")
        if name.endswith("_") and not name.startswith("_"):
            return first
        if _inplace_kwarg(fn, node.args, dict(node.kwargs)):
            return first
    elif node.op == "call_module":
        mod = _fetch(t, str(node.target))
        if getattr(mod, "inplace", False) is True:
            return first
    return None


def _collect(
    roots: Iterable[fx.Node], stop: set[fx.Node], mutators: list[tuple[fx.Node, fx.Node]]
) -> tuple[set[fx.Node], set[fx.Node]]:
    """Nodes needed for ``roots`` without entering ``stop``; and the ``stop`` nodes reached.

    A node that modifies a needed value in place is needed too.
    """
    inside: set[fx.Node] = set()
    boundary: set[fx.Node] = set()

    def visit(nodes: Iterable[fx.Node]) -> None:
        stack = list(nodes)
        while stack:
            n = stack.pop()
            if n in stop:
                boundary.add(n)
            elif n not in inside:
                inside.add(n)
                stack.extend(n.all_input_nodes)

    visit(roots)
    changed = True
    while changed:
        changed = False
        for m, v in mutators:
            if m not in inside and m not in stop and (v in inside or v in boundary):
                visit([m])
                changed = True
    return inside, boundary


@dataclass
class _Plan:
    traced: Traced
    path: str
    structure: Any  # the cut output, fx.Node in place of tensors
    head: set[fx.Node]
    carried: list[fx.Node]  # head values the tail needs, in graph order
    tail: set[fx.Node]


def _plan(t: Traced, model: nn.Module, path: str, *, with_tail: bool) -> _Plan:
    name, structure = _cut_structure(t, model, path)
    order = t.index()
    nodes = list(t.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    outs = _leaves_of(structure)
    cut_at = max(order[n] for n in outs)
    mutations = [(n, v) for n in nodes if (v := _mutated(n, model, t)) is not None]
    head, _ = _collect(
        [*outs, *placeholders], set(), [(m, v) for m, v in mutations if order[m] < cut_at]
    )
    if not with_tail:
        return _Plan(t, name, structure, head, [], set())
    output = nodes[-1]
    tail, carried = _collect(
        output.all_input_nodes, head, [(m, v) for m, v in mutations if m not in head]
    )
    return _Plan(t, name, structure, head, sorted(carried, key=order.__getitem__), tail)


# --------------------------------------------------------------------------- build


def copy_objects(objs: dict[str, Any]) -> dict[str, Any]:
    """Deep-copy modules/tensors together: shared tensors stay shared among the copies.

    Plain parameters and buffers are cloned up front (cheaper than
    ``copy.deepcopy`` discovering them one by one); ``requires_grad`` is kept.
    """
    memo: dict[int, Any] = {}

    def prefill(t: torch.Tensor, param: bool) -> None:
        if id(t) in memo:
            return
        if param and type(t) is nn.Parameter and not t.__dict__:
            memo[id(t)] = nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)
        elif not param and type(t) is torch.Tensor and not t.requires_grad:
            memo[id(t)] = t.detach().clone()

    with torch.no_grad():
        for obj in objs.values():
            if isinstance(obj, nn.Module):
                for p in obj.parameters():
                    prefill(p, True)
                for b in obj.buffers():
                    prefill(b, False)
            elif isinstance(obj, torch.Tensor):
                prefill(obj, isinstance(obj, nn.Parameter))
        return {k: _copy.deepcopy(v, memo) for k, v in objs.items()}


def _roots(t: Traced, graph: fx.Graph, copy: bool, memo_objs: dict[str, Any]) -> dict[str, Any]:
    roots: dict[str, Any] = {}
    for n in graph.nodes:
        if n.op in ("call_module", "get_attr"):
            roots[n.target] = memo_objs[n.target] if copy else _fetch(t, n.target)
    return roots


def _copy_graph(t: Traced, keep: set[fx.Node], env: dict[fx.Node, fx.Node], g: fx.Graph) -> None:
    for n in t.graph.nodes:
        if n in keep and n.op not in ("placeholder", "output"):
            env[n] = g.node_copy(n, lambda a: env[a])


def _head_graph(plan: _Plan) -> fx.Graph:
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in plan.traced.graph.nodes:
        if n.op == "placeholder":
            env[n] = g.node_copy(n)
    _copy_graph(plan.traced, plan.head, env, g)
    result = fx.node.map_arg(plan.structure, lambda a: env[a])
    extras = [n for n in plan.carried if n not in set(_leaves_of(plan.structure))]
    if extras:
        result = (result, *(env[n] for n in extras))
    g.output(result)
    return g


def _unpack(
    g: fx.Graph, source: fx.Node, structure: Any, env: dict[fx.Node, fx.Node], wanted: set[fx.Node]
) -> None:
    """Bind ``env[node]`` for each wanted node inside ``structure``, read from ``source``."""
    if isinstance(structure, fx.Node):
        if structure in wanted:
            env[structure] = source
        return
    if isinstance(structure, (tuple, list)):
        items: Iterable[tuple[Any, Any]] = enumerate(structure)
    elif isinstance(structure, dict):
        items = structure.items()
    else:
        return
    for key, sub in items:
        if wanted & set(_leaves_of(sub)):
            _unpack(g, g.call_function(operator.getitem, (source, key)), sub, env, wanted)


def _tail_graph(plan: _Plan) -> fx.Graph:
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    x = g.placeholder("x")
    wanted = set(plan.carried)
    inside = set(_leaves_of(plan.structure))
    extras = [n for n in plan.carried if n not in inside]
    if extras:
        _unpack(g, g.call_function(operator.getitem, (x, 0)), plan.structure, env, wanted)
        for i, n in enumerate(extras, start=1):
            env[n] = g.call_function(operator.getitem, (x, i))
    else:
        _unpack(g, x, plan.structure, env, wanted)
    _copy_graph(plan.traced, plan.tail, env, g)
    output = next(n for n in reversed(plan.traced.graph.nodes) if n.op == "output")
    g.output(fx.node.map_arg(output.args[0], lambda a: env[a]))
    return g


def _module(
    t: Traced, graph: fx.Graph, roots: dict[str, Any], name: str, model: nn.Module
) -> fx.GraphModule:
    graph.lint()
    gm = fx.GraphModule(roots, graph, class_name=name)
    gm.training = model.training
    gm.meta["surgery_engine"] = t.engine  # hook (F): which engine traced it
    return gm


def _objects(t: Traced, graphs: Iterable[fx.Graph], copy: bool) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    for g in graphs:
        for n in g.nodes:
            if n.op in ("call_module", "get_attr"):
                targets[n.target] = _fetch(t, n.target)
    return copy_objects(targets) if copy else targets


def _check_copy(copy: object) -> None:
    if not isinstance(copy, bool):
        raise ArgumentError(f"copy must be True or False, got {copy!r}")


def with_prefix(e: SurgeryError, prefix: str, suffix: str = "") -> SurgeryError:
    """A copy of ``e`` (same class and attributes) whose message is ``prefix + msg + suffix``."""
    new = type(e).__new__(type(e))
    new.__dict__.update(e.__dict__)
    msg = str(e)
    new.args = (prefix + msg + suffix,)
    return new


def _context(op: str, model: nn.Module, path: object, e: SurgeryError) -> SurgeryError:
    """Re-raise ``e`` with the operation, model class and path in front, once."""
    head = f"{op}({type(model).__name__}, {str(path)!r}): "
    if str(e).startswith(head):
        return e
    hint = ""
    if getattr(e, "in_forward", False):
        hint = "\n" + _TRY.format(path=str(path))
    return with_prefix(e, head, hint)


def _trace(model: nn.Module, example_inputs: Any, engine: str) -> Traced:  # hook (F)
    """torch.fx, then torch.export where fx fails (surgery/trace/_export.py)."""
    found = trace_with_fallback(model, example_inputs, trace_model, engine)  # hook (F)
    if isinstance(found, Traced):  # hook (F)
        return found  # hook (F)
    return Traced(
        found.model, found.graph, found.calls, set(), attrs=found.attrs, engine=found.engine
    )  # hook (F)


def cut(
    model: nn.Module,
    path: str,
    *,
    copy: bool = True,
    example_inputs: Any = None,
    engine: str = "auto",
) -> nn.Module:
    """A module computing what ``model``'s forward computes up to the output of ``path``.

    The model's own forward is traced with ``torch.fx``, so functional code
    between modules (``torch.flatten``, additions of skip connections,
    reshapes) is kept, and everything not needed for that output is dropped.
    A module that forward calls more than once is cut after its first call
    (like torchvision's node names: ``relu``, then ``relu_1``). A slice path
    (``"features[:7]"``) cuts after its last member. A path that names no
    module may be a node name of torchvision's ``get_graph_node_names``
    (``"flatten"``, ``"layer1.0.relu_1"``, ``"layer2.0.add"``): the cut is
    then after that operation. The graph follows the
    control flow of the model's current mode (``model.training``); modules
    without children (Dropout, StochasticDepth...) stay live steps that follow
    the result's mode.

    Args:
        model: any traceable ``nn.Module`` (all torchvision classification
            models, timm models). It is not changed.
        path: the module to cut after, e.g. ``"layer3"`` or ``"features.6"``
            (or a torchvision node name, see above).
        copy: copy the parameters and buffers (default), so the result never
            shares them with ``model``; ``copy=False`` shares them on purpose.
        example_inputs: where torch.fx cannot trace the model (transformers
            models), torch.export runs on these: a tensor, a tuple, or a dict
            of keyword inputs (``{"input_ids": ids}``); see docs/huggingface.md.
            The result's ``meta["surgery_engine"]`` says which engine ran.
        engine: ``"auto"`` (torch.fx, then torch.export), ``"fx"`` or ``"export"``.

    Returns:
        A ``torch.fx.GraphModule`` (a plain ``nn.Module``) in ``model``'s mode,
        returning the output of the module at ``path`` as that module returns it.

    Raises:
        PathSyntaxError, PathNotFoundError: the path is wrong.
        PathError: forward never calls that module, or calls it inside another
            module's single step (e.g. ``MultiheadAttention.out_proj``).
        TraceError: torch.fx cannot trace the forward code around the cut; the
            message says what to try.

    Example:
        >>> import torch, torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None).eval()
        >>> body = surgery.cut(m, "layer3")
        >>> body(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 256, 4, 4])
        >>> feats = surgery.cut(m, "avgpool", copy=False)
        >>> feats(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 512, 1, 1])
        >>> any(p is q for p in body.parameters() for q in m.parameters())
        False
    """
    _check_copy(copy)
    try:
        t = _trace(model, example_inputs, engine)  # hook (F): fx, then torch.export
        plan = _plan(t, model, path, with_tail=False)
        g = _head_graph(plan)
        objs = _objects(t, [g], copy)
        return _module(t, g, _roots(t, g, copy, objs), f"{type(model).__name__}Cut", model)
    except SurgeryError as e:
        raise _context("cut", model, path, e) from None


def split(
    model: nn.Module,
    path: str,
    *,
    copy: bool = True,
    example_inputs: Any = None,
    engine: str = "auto",
) -> tuple[nn.Module, nn.Module]:
    """Split ``model`` after the module at ``path`` into ``(head, tail)``.

    ``tail(head(x))`` computes exactly ``model(x)``, for every module that
    forward calls, including cuts inside residual blocks: values that cross the
    cut (a skip connection, the block's input, the model's input) are carried.
    ``head(x)`` returns the output of the module at ``path`` when nothing else
    crosses, and ``(output, *carried)`` otherwise; ``tail`` takes that value.
    Cutting after the last module gives a tail that returns its input.
    Cut points follow :func:`cut` (first call; slices cut after their last
    member; the model's current mode).

    Args:
        model: any traceable ``nn.Module``; it is not changed.
        path: the module to split after (any ``named_modules`` path forward
            calls; not the root).
        copy: copy parameters and buffers (default): neither part shares them
            with ``model``. Both parts are copied together, so a parameter
            both parts use (tied weights) stays tied between them. With
            ``copy=False`` both parts use ``model``'s own modules.
        example_inputs: the inputs torch.export traces with where torch.fx
            fails (a tensor, a tuple, or a dict of keyword inputs); the head
            then takes them by name: ``tail(head(**inputs)) == model(**inputs)``.
        engine: ``"auto"`` (torch.fx, then torch.export), ``"fx"`` or ``"export"``.

    Returns:
        ``(head, tail)``: two ``torch.fx.GraphModule`` in ``model``'s mode.

    Raises:
        ArgumentError: ``path`` is the root.
        PathSyntaxError, PathNotFoundError, PathError, TraceError: as for :func:`cut`.

    Example:
        >>> import torch, torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None).eval()
        >>> x = torch.randn(1, 3, 64, 64)
        >>> head, tail = surgery.split(m, "layer2")
        >>> head(x).shape
        torch.Size([1, 128, 8, 8])
        >>> torch.allclose(tail(head(x)), m(x), atol=1e-5)
        True
        >>> head, tail = surgery.split(m, "layer2.0.bn1")  # inside a residual block
        >>> [tuple(v.shape) for v in head(x)]  # bn1 output, block input (skip)
        [(1, 128, 8, 8), (1, 64, 16, 16)]
        >>> torch.allclose(tail(head(x)), m(x), atol=1e-5)
        True
    """
    _check_copy(copy)
    try:
        if parse_path(path).is_root:
            raise ArgumentError(
                "cannot split at the root (path ''): name a module, e.g. "
                f"{_first_child(model)!r}; use surgery.cut(model, '') for the whole forward"
            )
        t = _trace(model, example_inputs, engine)  # hook (F): fx, then torch.export
        plan = _plan(t, model, path, with_tail=True)
        hg, tg = _head_graph(plan), _tail_graph(plan)
        objs = _objects(t, [hg, tg], copy)
        cls = type(model).__name__
        return (
            _module(t, hg, _roots(t, hg, copy, objs), f"{cls}Head", model),
            _module(t, tg, _roots(t, tg, copy, objs), f"{cls}Tail", model),
        )
    except SurgeryError as e:
        raise _context("split", model, path, e) from None


def _first_child(model: nn.Module) -> str:
    return next((k for k, v in model._modules.items() if v is not None), "layer1")
