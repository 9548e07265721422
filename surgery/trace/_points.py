"""Cut-point discovery: which paths ``cut``/``split`` accept, and where each one cuts.

:func:`cut_points` (public as ``surgery.cut_points``) lists the module paths;
:func:`cut_structure` finds the traced value a path (a module, a slice, an
iterated container, a torchvision node name) cuts after; :func:`resolve_stage`
maps timm's ``"stage:N"`` to a module path through ``model.feature_info``.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import torch.fx as fx
from torch import nn

from .._boundary import operation
from .._errors import ArgumentError, PathError, PathNotFoundError, TraceError
from ..paths._resolve import check_model, resolve
from ._fx import Traced, leaves_of, trace_model

__all__ = [
    "cut_points",
    "cut_structure",
    "feature_stages",
    "iterated_output",
    "resolve_stage",
    "split_points",
]

_CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)


def iterated_output(t: Traced, name: str, module: nn.Module) -> Any:
    """The output of a container that forward iterates rather than calls, or None.

    A ``ModuleList``/``Sequential``/``ModuleDict`` whose entries are each called
    once, in order, each one on what the previous one computed (``for block in
    self.blocks: x = block(x)``), has a natural cut point after its last entry:
    its output is the last entry's. Entries may be iterated containers too.
    None when the container is not iterated that way (entries used apart, or
    not all called).
    """
    if name in t.calls or not isinstance(module, _CONTAINERS):
        return None
    entries = [(k, v) for k, v in module._modules.items() if v is not None]
    if not entries:
        return None
    outs: list[list[fx.Node]] = []
    for key, entry in entries:
        path = f"{name}.{key}" if name else key
        calls = t.calls.get(path)
        if calls is not None:
            if len(calls) != 1:
                return None
            value = calls[0]
        else:
            value = iterated_output(t, path, entry)
            if value is None:
                return None
        nodes = leaves_of(value)
        if not nodes:
            return None
        outs.append(nodes)
    order = t.index()
    for before, after in itertools.pairwise(outs):
        if not _reaches(before, after, order):
            return None
    key, entry = entries[-1]
    last = f"{name}.{key}" if name else key
    return t.calls[last][0] if last in t.calls else iterated_output(t, last, entry)


def _reaches(sources: list[fx.Node], targets: list[fx.Node], order: dict[fx.Node, int]) -> bool:
    """Whether some target node is computed from (after) one of ``sources``."""
    wanted = set(sources)
    low = min(order[n] for n in sources)
    stack = [n for n in targets if order[n] > max(order[s] for s in sources)]
    seen: set[fx.Node] = set()
    while stack:
        n = stack.pop()
        if n in wanted:
            return True
        if n in seen or order[n] < low:
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return False


def split_points(
    model: nn.Module, traced: Traced | None = None, *, example_inputs: Any = None
) -> list[str]:
    """Module paths (``named_modules`` order, root excluded) valid for ``split``/``cut``.

    The implementation of :func:`cut_points`, which can reuse a trace; without
    one, torch.fx traces, then torch.export where fx fails (on ``example_inputs``).
    """
    if traced is not None:
        t = traced
    else:
        t = trace_model(model, example_inputs=example_inputs, engine="auto")
    return [
        name
        for name, mod in model.named_modules()
        if name and (name in t.calls or iterated_output(t, name, mod) is not None)
    ]


def cut_points(model: nn.Module, *, example_inputs: Any = None) -> list[str]:
    """Every module path valid for :func:`surgery.cut` / :func:`surgery.split`, in order.

    The discovery function beside the action, as torchvision's
    ``get_graph_node_names`` sits beside ``create_feature_extractor``. These
    are the modules that ``forward`` calls (directly or inside traced code),
    in ``named_modules`` order, the root excluded, plus containers
    (``ModuleList``, ``Sequential``, ``ModuleDict``) that forward iterates
    entry after entry (the cut is after their last entry). Left out: modules
    never called (an auxiliary head that only runs in train mode) and modules
    inside another module's single step (``MultiheadAttention.out_proj``).
    The model is traced on a copy and not changed. Besides these paths,
    ``cut``/``split`` accept torchvision's node names and, for timm models,
    ``"stage:N"``.

    Where torch.fx cannot trace the model (transformers models), the points
    come from ``torch.export`` on ``example_inputs`` (the module boundaries of
    each node's module stack; see :func:`surgery.split`).

    Args:
        model: any traceable ``nn.Module``.
        example_inputs: the inputs torch.export traces with where torch.fx
            fails: a tensor, a tuple, or a dict of keyword inputs
            (``{"input_ids": ids}``); a ``PreTrainedModel``'s ``dummy_inputs``
            without them.

    Returns:
        The list of paths.

    Raises:
        ArgumentError: ``example_inputs`` has keys that are not parameters of
            ``forward`` (the message names them).
        TraceError: the model's forward cannot be traced (by either engine).

    Example:
        >>> import torchvision, surgery
        >>> points = surgery.cut_points(torchvision.models.resnet18(weights=None))
        >>> points[:5], points[-1], len(points)
        (['conv1', 'bn1', 'relu', 'maxpool', 'layer1'], 'fc', 67)
    """
    with operation("cut_points", model=model):
        check_model(model, "cut_points")
        return split_points(model, example_inputs=example_inputs)


_STAGE = re.compile(r"stage:(.*)")


def feature_stages(model: nn.Module) -> list[str] | None:
    """The module names of ``model.feature_info`` (timm's feature levels), or None."""
    info = getattr(model, "feature_info", None)
    if info is None:
        return None
    if hasattr(info, "get_dicts"):  # timm's FeatureInfo (features_only models)
        info = info.get_dicts()
    if not isinstance(info, (list, tuple)):
        return None
    names = [d.get("module") if isinstance(d, dict) else None for d in info]
    if not names or not all(isinstance(n, str) for n in names):
        return None
    return names  # type: ignore[return-value]


def resolve_stage(model: nn.Module, path: object) -> str | None:
    """The module path for ``"stage:N"`` (``model.feature_info[N]["module"]``); None otherwise.

    Raises:
        PathNotFoundError: ``N`` is not a stage index, or the model declares no stages.
    """
    if not isinstance(path, str):
        return None
    match = _STAGE.fullmatch(path.strip())
    if match is None:
        return None
    stages = feature_stages(model)
    if stages is None:
        raise PathNotFoundError(
            f"{path!r} names a feature stage, but {type(model).__name__} declares none (a "
            f"'stage:N' path needs timm's model.feature_info); name a module instead: list "
            f"them with surgery.cut_points(model)",
            path=path,
        )
    text = match.group(1).strip()
    listing = ", ".join(f"stage:{i} = {name!r}" for i, name in enumerate(stages))
    if not text.isdigit() or int(text) >= len(stages):
        raise PathNotFoundError(
            f"{path!r} names no feature stage of {type(model).__name__}: it has "
            f"{len(stages)} (model.feature_info): {listing}",
            path=path,
        )
    return stages[int(text)]


def cut_structure(t: Traced, model: nn.Module, path: str) -> tuple[str, Any]:
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
        if not leaves_of(structure):
            raise ArgumentError(
                f"{name!r} ({type(target.module).__name__}) returns no tensor computed from "
                f"the input, so there is nothing to cut after"
            )
        return name, structure
    iterated = iterated_output(t, name, model.get_submodule(name))
    if iterated is not None:
        return name, iterated
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
    if kids and isinstance(mod, _CONTAINERS):
        hint = (
            f"\n  a {type(mod).__name__} that forward iterates is a cut point only when its "
            f"entries run one after another, each on the previous one's output; cut after "
            f"one of its entries, e.g. {name + '.' + kids[-1]!r}"
        )
    mode = "train" if model.training else "eval"
    raise PathError(
        f"cannot cut at {name!r} ({type(mod).__name__}): {type(model).__name__}.forward never "
        f"calls it (in {mode} mode){hint}\n"
        f"  list valid cut points with surgery.cut_points(model)"
    )


def _leaves_of_output(t: Traced) -> Any:
    out = next(n for n in reversed(t.graph.nodes) if n.op == "output")
    return out.args[0]
