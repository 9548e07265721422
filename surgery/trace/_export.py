"""The second tracing engine: ``torch.export`` (non-strict), for models ``torch.fx`` cannot trace.

``torch.fx`` symbolic tracing fails on most Hugging Face ``transformers``
models (their ``forward`` inspects its arguments, builds masks, branches on
configuration). ``torch.export.export(model, args, kwargs, strict=False)``
runs the real Python ``forward`` on fake tensors (no compute, no memory for
the values) and records an ATen graph in which every node keeps the module
stack it was created under (``node.meta["nn_module_stack"]``). From it:

* **cut points** are module boundaries: the values computed inside a module's
  call and used after it are that call's output (:func:`export_trace` gives
  them in the terms of the fx engine's ``Traced``, so its planner and builder
  serve both engines: ``split(..., engine="export")`` forces this one);
* **split / cut** are lossless: the head takes the example's inputs by name
  (``head(**inputs)``), the tail rebuilds the model's own output (a
  ``ModelOutput`` for transformers), and ``tail(head(**inputs)) == model(**inputs)``.
  The graph is specialized to the example's non-tensor arguments and the
  train/eval mode; its input sizes stay free (``Dim.AUTO``) wherever the forward
  allows, except dimensions of size 1 in the example (torch pins those: trace
  with a batch of 2 or more for a batch-size-free split). Every module of the
  graph is inlined (ATen ops reading parameters), so the parts are ``GraphModule`` s with ``meta["surgery_engine"]
  == "torch.export"``.

The export runs on a structural copy of the model (its own module objects and
attributes, the caller's tensors; export never writes into tensors), so the
caller's model is never changed. A model whose forward returns a KV cache is
traced with the cache disabled: ``config.use_cache=False`` on the copy (unless
the example passes ``use_cache`` itself).

``example_inputs`` is a tensor, a tuple of positional inputs, or a dict of
keyword inputs (``{"input_ids": ..., "attention_mask": ...}``);
:func:`normalize_example_inputs` checks it against the model's ``forward``.
Without one, a ``PreTrainedModel``'s own ``dummy_inputs`` are used.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import typing
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from .._errors import ArgumentError, SurgeryError, TraceError
from ._meta import eval_mode, meta_copy, structural_copy

__all__ = [
    "ENGINE_EXPORT",
    "ENGINE_FX",
    "ExportTrace",
    "example_data",
    "example_output_shape",
    "example_shapes",
    "export_cut_points",
    "export_output_shapes",
    "export_trace",
    "normalize_example_inputs",
    "on_meta",
    "shape_of",
    "token_input_hint",
    "trace_with_fallback",
]

ENGINE_FX = "torch.fx"
ENGINE_EXPORT = "torch.export"
_SPEC = "_surgery_out_spec"
Example = tuple[tuple[Any, ...], dict[str, Any]]


# ----------------------------------------------------------------------------- example inputs


def _forward_parameters(model: nn.Module) -> tuple[list[str], bool, bool]:
    """The forward's parameter names, and whether it takes ``*args`` / ``**kwargs``."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):  # a builtin forward: accept anything
        return [], True, True
    names, var_pos, var_kw = [], False, False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            var_pos = True
        elif p.kind is inspect.Parameter.VAR_KEYWORD:
            typed = _typed_kwargs(p.annotation)  # **kwargs: Unpack[SomeTypedDict]
            if typed is None:
                var_kw = True
            else:
                names += [k for k in typed if k not in names]
        else:
            names.append(p.name)
    return names, var_pos, var_kw


def _typed_kwargs(annotation: Any) -> list[str] | None:
    """The keys of ``**kwargs: Unpack[TypedDict]`` (transformers' ``TransformersKwargs``)."""
    args = typing.get_args(annotation) if annotation is not inspect.Parameter.empty else ()
    typed_dict = len(args) == 1 and getattr(args[0], "__total__", None) is not None
    if typed_dict and isinstance(getattr(args[0], "__annotations__", None), dict):
        return list(args[0].__annotations__)
    return None


def normalize_example_inputs(model: nn.Module, example_inputs: Any) -> Example:
    """``(args, kwargs)`` from a tensor, a tuple/list of inputs, or a dict of keyword inputs.

    Raises:
        ArgumentError: another type, a key that is not a parameter of
            ``model.forward`` (the message names its parameters), or more
            positional inputs than ``forward`` takes.

    Example:
        >>> import torch, torchvision
        >>> m = torchvision.models.resnet18(weights=None)
        >>> args, kwargs = normalize_example_inputs(m, torch.zeros(1, 3, 8, 8))
        >>> len(args), kwargs
        (1, {})
        >>> normalize_example_inputs(m, {"pixels": torch.zeros(1)})
        Traceback (most recent call last):
        ...
        surgery._errors.ArgumentError: example_inputs has the key 'pixels', which is not a parameter of ResNet.forward; its parameters are: x
    """
    if isinstance(example_inputs, torch.Tensor):
        args: tuple[Any, ...] = (example_inputs,)
        kwargs: dict[str, Any] = {}
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    elif isinstance(example_inputs, dict):
        args, kwargs = (), dict(example_inputs)
    else:
        raise ArgumentError(
            f"example_inputs must be a tensor, a tuple of inputs or a dict of keyword inputs "
            f"such as {{'input_ids': ..., 'attention_mask': ...}}, got {type(example_inputs).__name__}"
        )
    names, var_pos, var_kw = _forward_parameters(model)
    cls = type(model).__name__
    listing = ", ".join(names) or "(none)"
    bad = [k for k in kwargs if not isinstance(k, str) or (k not in names and not var_kw)]
    if bad:
        noun = "the key" if len(bad) == 1 else "the keys"
        which = "is not a parameter" if len(bad) == 1 else "are not parameters"
        raise ArgumentError(
            f"example_inputs has {noun} {', '.join(map(repr, bad))}, which {which} of "
            f"{cls}.forward; its parameters are: {listing}"
        )
    if len(args) > len(names) and not var_pos:
        raise ArgumentError(
            f"example_inputs has {len(args)} positional inputs, but {cls}.forward takes "
            f"{len(names)} ({listing})"
        )
    return args, kwargs


def _device_of(model: nn.Module) -> torch.device | None:
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return None


def _to(value: Any, device: torch.device | None) -> Any:
    def move(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and device is not None and t.device != device:
            return t.to(device)
        return t

    return pytree.tree_map(move, value)


def on_meta(example: Example) -> Example:
    """The example with every tensor replaced by a meta tensor of the same shape and dtype."""

    def meta(t: Any) -> Any:
        return torch.empty_like(t, device="meta") if isinstance(t, torch.Tensor) else t

    return pytree.tree_map(meta, example[0]), pytree.tree_map(meta, example[1])


def example_shapes(example: Example) -> tuple[list[tuple[int, ...]], list[torch.dtype]]:
    """The shapes and dtypes of the example's tensors, in order."""
    leaves = [t for t in pytree.tree_leaves(example) if isinstance(t, torch.Tensor)]
    return [tuple(t.shape) for t in leaves], [t.dtype for t in leaves]


def _default_example(model: nn.Module) -> Example | None:
    """A ``PreTrainedModel``'s ``dummy_inputs``, when they hold its main input."""
    main = getattr(model, "main_input_name", None)
    try:
        dummy = getattr(model, "dummy_inputs", None)
    except Exception:
        return None
    if isinstance(dummy, dict) and main in dummy:
        # only what forward names: T5EncoderModel's dummy inputs hold decoder ids that
        # its forward would swallow into **kwargs
        names, _, _ = _forward_parameters(model)
        return (), {
            k: v
            for k, v in dummy.items()
            if isinstance(v, torch.Tensor) and (k in names or k == main)
        }
    return None


def token_input_hint(model: nn.Module, input_size: Any, error: BaseException) -> str:
    """A hint for ``input_size=`` on a model whose input is token ids (float meta inputs fail).

    Empty unless the model's first layer is an ``nn.Embedding`` or the error is an
    embedding's complaint about float indices.
    """
    first = next((m for m in model.modules() if not list(m.children())), None)
    if not isinstance(first, nn.Embedding) and "'indices'" not in str(error):
        return ""
    name = getattr(model, "main_input_name", None) or "input_ids"
    size = tuple(input_size) if isinstance(input_size, (tuple, list)) else (1, 8)
    if size and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    return (
        f"; its input is integer token ids, which input_size= cannot describe: pass "
        f"example_inputs={{{name!r}: torch.zeros({size}, dtype=torch.long)}}"
    )


# ----------------------------------------------------------------------------- export


def _without_cache(clone: nn.Module, kwargs: dict[str, Any]) -> None:
    names, _, _ = _forward_parameters(clone)
    cfg = getattr(clone, "config", None)
    if "use_cache" in names and "use_cache" not in kwargs and hasattr(cfg, "use_cache"):
        cfg.use_cache = False  # type: ignore[union-attr]


_EXPORT_LOGGERS = ("torch._export", "torch.export", "torch.fx.experimental.symbolic_shapes")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Export's own notices (warnings, and log lines such as "0/1 specialized") are not
    the caller's business."""
    loggers = [logging.getLogger(name) for name in _EXPORT_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text and text[0] else type(e).__name__


def _any_size(value: Any) -> Any:
    """``dynamic_shapes`` for one input: every dimension of every tensor ``Dim.AUTO``."""
    if isinstance(value, torch.Tensor):
        return {i: torch.export.Dim.AUTO for i in range(value.dim())} or None
    if isinstance(value, (list, tuple)):
        return type(value)(_any_size(v) for v in value) if value else None
    if isinstance(value, dict):
        return {k: _any_size(v) for k, v in value.items()}
    return None


def _dynamic_shapes(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``Dim.AUTO`` for every input dimension, keyed like ``forward``'s parameters (or None)."""
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    return {name: _any_size(value) for name, value in bound.arguments.items()}


def _export(
    model: nn.Module, example: Example, evaluate: bool, dynamic: bool = False
) -> torch.export.ExportedProgram:
    """Export a structural copy; ``dynamic``: sizes left free where the forward allows.

    With ``dynamic=True`` every input dimension is ``Dim.AUTO``: torch.export keeps
    a dimension symbolic unless the forward pins it (a size of 1 in the example is
    pinned too: torch's 0/1 specialization). Where the dynamic export fails, the
    static one (specialized to the example's shapes) is used.
    """
    args, kwargs = example
    device = _device_of(model)
    args, kwargs = _to(args, device), _to(kwargs, device)
    clone = structural_copy(model)
    if evaluate:
        clone.eval()
    _without_cache(clone, kwargs)
    shapes = _dynamic_shapes(clone, args, kwargs) if dynamic else None
    with _quiet(), torch.no_grad():
        if shapes is not None:
            with contextlib.suppress(Exception):
                return torch.export.export(clone, args, kwargs, dynamic_shapes=shapes, strict=False)
        return torch.export.export(clone, args, kwargs, strict=False)


def _module_calls(graph: fx.Graph, model: nn.Module) -> dict[str, list[Any]]:
    """Module path -> the output of each call: the values its call computes and others use."""
    known = {name for name, _ in model.named_modules() if name}
    groups: dict[str, list[fx.Node]] = {}
    where: dict[str, str] = {}
    for n in graph.nodes:
        stack = n.meta.get("nn_module_stack") or {}
        for key, value in stack.items():
            path = value[0] if isinstance(value, tuple) else None
            if isinstance(path, str) and path in known:
                groups.setdefault(key, []).append(n)
                where[key] = path
    calls: dict[str, list[Any]] = {}
    for key, nodes in groups.items():  # dicts keep insertion order: first node order
        inside = set(nodes)
        outs = [n for n in nodes if any(u not in inside for u in n.users)]
        outs = [n for n in outs if isinstance(n.meta.get("val"), torch.Tensor)]
        if outs:
            calls.setdefault(where[key], []).append(outs[0] if len(outs) == 1 else tuple(outs))
    return calls


@dataclass
class ExportTrace:
    """A model traced by ``torch.export``, in the terms of the fx engine's ``Traced``.

    Attributes:
        model: the exported ``GraphModule`` (its parameters are the model's own
            tensors, at the model's paths: ``get_attr`` targets resolve there).
        graph: its graph; the output rebuilds the model's own output structure.
        calls: module path -> the output of each call (``fx.Node`` or a tuple).
        attrs: objects the graph reads that are not the model's (the output spec).
    """

    model: nn.Module
    graph: fx.Graph
    calls: dict[str, list[Any]]
    attrs: dict[str, Any] = field(default_factory=dict)
    engine: str = ENGINE_EXPORT


def export_trace(
    model: nn.Module, example_inputs: Any = None, *, fx_error: Any = None, evaluate: bool = False
) -> Any:
    """Trace ``model`` with ``torch.export`` into an :class:`ExportTrace`.

    The graph's output rebuilds the model's own output structure. Modules are
    inlined, so ``leaves`` is empty and every parameter is a ``get_attr``. The
    graph follows the model's mode (``evaluate=True``: eval mode, for shapes).

    Raises:
        ArgumentError: ``example_inputs`` is malformed (see :func:`normalize_example_inputs`).
        TraceError: ``torch.export`` fails (naming ``fx_error`` too, when given),
            or there is no example to trace with.

    Example:
        >>> import torch, torchvision
        >>> m = torchvision.models.resnet18(weights=None).eval()
        >>> t = export_trace(m, torch.zeros(1, 3, 32, 32))
        >>> t.engine, len(t.calls["layer1"]), sorted(t.calls)[:2]
        ('torch.export', 1, ['avgpool', 'bn1'])
    """
    if example_inputs is None:
        example = _default_example(model)
        if example is None:
            raise _failure(
                model,
                fx_error,
                "it needs example inputs: pass example_inputs= (a tensor, a tuple, or a dict "
                "such as {'input_ids': ids})",
            )
    else:
        example = normalize_example_inputs(model, example_inputs)
    try:
        ep = _export(model, example, evaluate, dynamic=not evaluate)
        gm = ep.module()
    except Exception as e:
        raise _failure(model, fx_error, _reason(e)) from None
    graph = gm.graph
    for n in list(graph.nodes):
        if n.op == "call_module" and not n.users:  # export's input guards (_guards_fn)
            graph.erase_node(n)
    out_spec = gm._out_spec  # type: ignore[attr-defined]
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    leaves = list(output.args[0]) if isinstance(output.args[0], (list, tuple)) else [output.args[0]]
    setattr(gm, _SPEC, out_spec)
    with graph.inserting_before(output), _quiet():  # fx warns: the spec is no tensor
        spec = graph.get_attr(_SPEC)
        rebuilt = graph.call_function(pytree.tree_unflatten, (leaves, spec))
    output.args = (rebuilt,)
    calls = _module_calls(graph, model)
    return ExportTrace(gm, graph, calls, {_SPEC: out_spec})


def _failure(model: nn.Module, fx_error: Any, why: str) -> TraceError:
    """The error naming both engines' failures (the fx error's message and fields first)."""
    if isinstance(fx_error, TraceError):
        err = TraceError(f"{fx_error}\n  torch.export cannot trace it either: {why}")
        err.__dict__.update(fx_error.__dict__)
        return err
    return TraceError(f"torch.export cannot trace {type(model).__name__}: {why}")


def trace_with_fallback(
    model: nn.Module,
    example_inputs: Any,
    fx_trace: Callable[[nn.Module], Any],
    engine: str = "auto",
) -> Any:
    """The hook of cut/split/cut points: ``fx_trace(model)``, and :func:`export_trace` where it fails.

    ``engine`` is ``"auto"`` (fx, then torch.export), ``"fx"`` or ``"export"``.
    ``example_inputs`` is validated first, whichever engine runs.

    Raises:
        ArgumentError: a bad ``engine`` or ``example_inputs``.
        TraceError: the engine(s) fail; with ``"auto"`` the message names both failures.
    """
    if engine not in ("auto", "fx", "export"):
        raise ArgumentError(f"engine must be 'auto', 'fx' or 'export', got {engine!r}")
    if example_inputs is not None:
        normalize_example_inputs(model, example_inputs)
    if engine == "export":
        return export_trace(model, example_inputs)
    try:
        return fx_trace(model)
    except TraceError as e:
        if engine == "fx":
            raise
        fx_error = e
    return export_trace(model, example_inputs, fx_error=fx_error)


# ----------------------------------------------------------------------------- entry points


def export_cut_points(model: nn.Module, example_inputs: Any = None) -> list[str]:
    """Module paths valid for ``split``/``cut`` through ``torch.export``, in ``named_modules`` order.

    Example:
        >>> import torch, torchvision
        >>> points = export_cut_points(torchvision.models.resnet18(weights=None).eval(),
        ...                            torch.zeros(1, 3, 32, 32))
        >>> points[:3], points[-1]
        (['conv1', 'bn1', 'relu'], 'fc')
    """
    t = export_trace(model, example_inputs)
    return [name for name, _ in model.named_modules() if name and name in t.calls]


def export_output_shapes(model: nn.Module, example: Example) -> tuple[dict[str, Any], Any]:
    """Each module's output shape (first call) and the model's, from ``torch.export``.

    Shapes are lists of ints (nested like the outputs), as ``tree`` shows them.
    """
    t = export_trace(model, _as_inputs(example), evaluate=True)
    shapes = {path: shape_of(structure) for path, (structure, *_) in t.calls.items()}
    output = next(n for n in reversed(t.graph.nodes) if n.op == "output")
    leaves, _spec = output.args[0].args
    vals = [n.meta.get("val") if isinstance(n, fx.Node) else n for n in leaves]
    return shapes, shape_of(pytree.tree_unflatten(vals, t.attrs[_SPEC]))


def example_output_shape(model: nn.Module, example: Example) -> tuple[Any, list[str]]:
    """The output shape (tuples, a dict for a ``ModelOutput``) for ``verify``, and failures.

    A meta copy runs in eval mode on meta twins of the example; where that
    fails, ``torch.export`` gives the shape. A failure of both is reported.
    """
    clone = meta_copy(model)
    args, kwargs = on_meta(example)
    try:
        with eval_mode(clone), torch.no_grad():
            return _tuples(shape_of(clone(*args, **kwargs))), []
    except Exception as e:
        meta_error = _reason(e)
    try:
        return _tuples(export_output_shapes(model, example)[1]), []
    except SurgeryError as e:
        return None, [
            f"forward: fails on the meta device ({meta_error}) and "
            + str(e).splitlines()[0].replace("torch.export cannot", "torch.export cannot", 1)
        ]


def example_data(model: nn.Module, example_inputs: Any) -> Any:
    """``example_inputs`` as torchinfo's ``input_data``: a list of args or a dict of kwargs."""
    args, kwargs = normalize_example_inputs(model, example_inputs)
    if args and kwargs:  # pragma: no cover - normalize never mixes them
        raise ArgumentError("example_inputs mixes positional and keyword inputs")
    return dict(kwargs) if kwargs else list(args)


def _tuples(value: Any) -> Any:
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return tuple(value)
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _as_inputs(example: Example) -> Any:
    args, kwargs = example
    if kwargs and not args:
        return kwargs
    if args and not kwargs:
        return args
    raise SurgeryError("example_inputs mixes positional and keyword inputs")  # pragma: no cover


def shape_of(value: Any) -> Any:
    """Shapes as lists of ints, nested like ``value`` (dict keys as str; an ``fx.Node`` by its
    ``meta["val"]``); None for what holds no tensor."""
    if isinstance(value, fx.Node):
        value = value.meta.get("val")
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, dict):
        return {str(k): shape_of(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [shape_of(v) for v in value]
    return None
