"""Cut and split any traceable model at a module path, with ``torch.fx``.

The engine has three steps, as everywhere in `surgery`:

1. **trace** the model's own ``forward`` once, on a copy
   (:func:`surgery.trace._fx.trace_model`), recording the output of every
   module call; untraceable submodules become opaque steps, so only the code
   that surrounds the cut must be traceable; where torch.fx cannot trace the
   forward at all (transformers models), ``torch.export`` does
   (:mod:`surgery.trace._export`, ``engine=``/``example_inputs=``); the cut
   node is found by :func:`surgery.trace._points.cut_structure`;
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
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .._boundary import operation
from .._errors import ArgumentError, PathNotFoundError, SurgeryError
from ..paths._grammar import Path, parse_path
from ..paths._resolve import check_model
from ._fx import Traced, fetch, leaves_of, signature_of, trace_model
from ._points import cut_structure, resolve_stage

__all__ = [
    "copy_objects",
    "cut",
    "split",
    "with_prefix",
]

_TRY = (
    "  try: surgery.take(model, {path!r}) for the module itself (without the forward code "
    "around it),\n"
    "       surgery.compose(...) of the parts you need, or a traceable forward "
    "(torch.fx cannot branch on tensor values)"
)


# --------------------------------------------------------------------------- plan


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


def _inplace_kwarg(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if kwargs.get("inplace") is True:
        return True
    try:
        sig = signature_of(fn)
    except TypeError:  # unhashable callable
        return False
    if sig is None or "inplace" not in sig.parameters:
        return False
    try:
        return sig.bind(*args, **kwargs).arguments.get("inplace") is True
    except TypeError:
        return False


def _mutated(node: fx.Node, model: nn.Module, t: Traced) -> list[fx.Node]:
    """The nodes whose values ``node`` may modify in place (conservative).

    Known in-place forms modify their first argument. A call whose result nothing
    uses can only matter by its side effects (torchvision's MViT calls a wrapped
    ``_add_shortcut`` that adds into its first argument and returns nothing used),
    so it may modify any of its arguments.
    """
    if not node.users and node.op in ("call_function", "call_method", "call_module"):
        return list(node.all_input_nodes)
    first = _mutated_first(node, model, t)
    return [first] if first is not None else []


def _mutated_first(node: fx.Node, model: nn.Module, t: Traced) -> fx.Node | None:
    """The first argument, where ``node`` is a known in-place form."""
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
        mod = fetch(t, str(node.target))
        if getattr(mod, "inplace", False) is True:
            return first
    return None


def _collect(
    roots: Iterable[fx.Node], stop: set[fx.Node], mutators: list[tuple[fx.Node, list[fx.Node]]]
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
        for m, vs in mutators:
            if m not in inside and m not in stop and any(v in inside or v in boundary for v in vs):
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
    name, structure = cut_structure(t, model, path)
    order = t.index()
    nodes = list(t.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    outs = leaves_of(structure)
    cut_at = max(order[n] for n in outs)
    mutations = [(n, vs) for n in nodes if (vs := _mutated(n, model, t))]
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
            roots[n.target] = memo_objs[n.target] if copy else fetch(t, n.target)
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
    extras = [n for n in plan.carried if n not in set(leaves_of(plan.structure))]
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
        if wanted & set(leaves_of(sub)):
            _unpack(g, g.call_function(operator.getitem, (source, key)), sub, env, wanted)


def _tail_graph(plan: _Plan) -> fx.Graph:
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    x = g.placeholder("x")
    wanted = set(plan.carried)
    inside = set(leaves_of(plan.structure))
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
    gm.meta["surgery_engine"] = t.engine  # which engine traced it
    return gm


def _objects(t: Traced, graphs: Iterable[fx.Graph], copy: bool) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    for g in graphs:
        for n in g.nodes:
            if n.op in ("call_module", "get_attr"):
                targets[n.target] = fetch(t, n.target)
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
    elif isinstance(e, PathNotFoundError) and "cut_points" not in str(e):
        hint = "\n  list valid cut points with surgery.cut_points(model)"
    return with_prefix(e, head, hint)


def _module_path(model: nn.Module, path: object) -> str:
    """``path`` itself, or the module a ``"stage:N"`` path names (checked)."""
    if not isinstance(path, (str, Path)):
        raise ArgumentError(
            f"path must be a module path string such as 'layer3', got {type(path).__name__}"
        )
    stage = resolve_stage(model, path)
    return stage if stage is not None else str(path)


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
    then after that operation. A ``ModuleList``/``Sequential`` that forward
    iterates (``for block in self.blocks: x = block(x)``) is cut after its
    last entry. ``"stage:N"`` names timm's feature stage ``N``: the module
    ``model.feature_info[N]["module"]`` (the level ``out_indices=(N,)``
    returns). :func:`surgery.cut_points` lists the valid module paths. The
    graph follows the control flow of the model's current mode
    (``model.training``); optional ``forward`` arguments take their defaults
    (``mask=None`` is absent, not a given tensor); modules without children
    (Dropout, StochasticDepth...) and batch norms stay live steps that follow
    the result's mode.

    Args:
        model: any traceable ``nn.Module`` (all torchvision classification
            models, timm models). It is not changed, not even its caches:
            the trace runs on a copy.
        path: the module to cut after, e.g. ``"layer3"`` or ``"features.6"``
            (or a torchvision node name, or ``"stage:2"``, see above).
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
        PathSyntaxError, PathNotFoundError: the path is wrong (for ``"stage:N"``:
            ``N`` is out of range, or the model has no ``feature_info``; the
            message lists the stages).
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
        >>> import timm
        >>> t = timm.create_model("resnet18").eval()
        >>> [f["module"] for f in t.feature_info]
        ['act1', 'layer1', 'layer2', 'layer3', 'layer4']
        >>> surgery.cut(t, "stage:2")(torch.randn(1, 3, 64, 64)).shape  # layer2
        torch.Size([1, 128, 8, 8])
    """
    with operation("cut", model=model, path=path):
        try:
            _check_copy(copy)
            check_model(model, "cut")
            target = _module_path(model, path)
            t = trace_model(model, example_inputs=example_inputs, engine=engine)
            plan = _plan(t, model, target, with_tail=False)
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
    Cut points follow :func:`cut` (first call; slices and iterated
    ``ModuleList``s cut after their last member; ``"stage:N"`` is timm's
    feature stage ``N``; the model's current mode; optional ``forward``
    arguments at their defaults); :func:`surgery.cut_points` lists them.

    Args:
        model: any traceable ``nn.Module``; it is not changed (the trace runs
            on a copy).
        path: the module to split after (any path of
            :func:`surgery.cut_points`, a torchvision node name, or
            ``"stage:N"``; not the root).
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
        ArgumentError: ``path`` is the root, or ``copy`` is not a bool.
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
    with operation("split", model=model, path=path):
        try:
            _check_copy(copy)
            check_model(model, "split")
            target = _module_path(model, path)
            if parse_path(target).is_root:
                raise ArgumentError(
                    "cannot split at the root (path ''): name a module, e.g. "
                    f"{_first_child(model)!r}; use surgery.cut(model, '') for the whole forward"
                )
            t = trace_model(model, example_inputs=example_inputs, engine=engine)
            plan = _plan(t, model, target, with_tail=True)
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
