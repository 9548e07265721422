"""``surgery.tree``: the model as an indented table of paths, types, counts and shapes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .._boundary import operation
from .._errors import ArgumentError, SurgeryError
from ..paths._resolve import check_model, module_paths
from ._export import (
    example_shapes,
    export_output_shapes,
    normalize_example_inputs,
    on_meta,
    shape_of,
    token_input_hint,
)
from ._meta import eval_mode, meta_copy, meta_inputs

__all__ = ["ModelTree", "TreeRow", "output_shapes", "tree"]


@dataclass(frozen=True)
class TreeRow:
    """One module of the tree.

    ``params`` counts the parameters directly owned by the module, ``total``
    those of its whole subtree (shared parameters once); ``trainable`` and
    ``frozen`` split ``total``. ``shared_with`` lists the other paths of the
    same module object.

    Example:
        >>> import torchvision, surgery
        >>> row = surgery.tree(torchvision.models.resnet18(weights=None)).rows[-1]
        >>> row.path, row.type, row.params, row.trainable
        ('fc', 'Linear', 513000, 513000)
    """

    path: str
    type: str
    depth: int
    params: int
    total: int
    trainable: int
    frozen: int
    shared_with: tuple[str, ...] = ()
    output_shape: Any = None


@dataclass
class ModelTree:
    """The result of :func:`tree`: ``rows`` as data, ``str()`` as a readable tree.

    Example:
        >>> import torchvision, surgery
        >>> t = surgery.tree(torchvision.models.alexnet(weights=None), depth=1)
        >>> print(str(t).splitlines()[-1])
        Total: 61,100,840 parameters (61,100,840 trainable, 0 frozen)
        >>> t.to_dict()["rows"][1]["path"]
        'features'
    """

    model_type: str
    rows: list[TreeRow] = field(default_factory=list)
    total: int = 0
    trainable: int = 0
    frozen: int = 0
    input_size: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "total": self.total,
            "trainable": self.trainable,
            "frozen": self.frozen,
            "input_size": self.input_size,
            "rows": [asdict(r) for r in self.rows],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        show_shape = self.input_size is not None
        header = ["path", "type", "params", "total", "trainable"]
        if show_shape:
            header.append("output")
        table: list[list[str]] = []
        for r in self.rows:
            label = ("  " * r.depth) + (r.path or "(root)")  # full paths: copy them out
            state = (
                "all" if r.frozen == 0 else ("frozen" if r.trainable == 0 else f"{r.trainable:,}")
            )
            if r.total == 0:
                state = "-"
            row = [
                label,
                r.type + (f" (shared: {', '.join(r.shared_with)})" if r.shared_with else ""),
                f"{r.params:,}",
                f"{r.total:,}",
                state,
            ]
            if show_shape:
                row.append(_fmt_shape(r.output_shape))
            table.append(row)
        widths = [
            max(len(h), *(len(row[i]) for row in table)) if table else len(h)
            for i, h in enumerate(header)
        ]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
        for row in table:
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [c.rjust(w) for c, w in zip(row[2:5], widths[2:5])]
            if show_shape:
                cells.append(row[5])
            lines.append("  ".join(cells).rstrip())
        lines.append(
            f"Total: {self.total:,} parameters ({self.trainable:,} trainable, {self.frozen:,} frozen)"
        )
        return "\n".join(lines)


def _fmt_shape(shape: Any) -> str:
    if shape is None:
        return ""
    if isinstance(shape, list) and shape and all(isinstance(v, int) for v in shape):
        return "(" + ", ".join(map(str, shape)) + ")"
    if isinstance(shape, (list, tuple)):
        return "[" + ", ".join(_fmt_shape(s) for s in shape) + "]"
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{k}: {_fmt_shape(v)}" for k, v in shape.items()) + "}"
    return str(shape)


def output_shapes(
    model: nn.Module, input_size: Any, example_inputs: Any = None
) -> tuple[dict[str, Any], Any]:
    """Each module's output shape (first call) and the model's, computed on a meta copy.

    The caller's model is never moved, run or changed. With ``example_inputs``
    (instead of ``input_size``) the meta copy runs on meta twins of them, and
    where that forward fails (a transformers model reading a tensor's value),
    the shapes come from ``torch.export`` (surgery/trace/_export.py).

    Raises:
        SurgeryError: the forward cannot run on the meta device.
    """
    clone = meta_copy(model)
    shapes: dict[str, Any] = {}
    handles = []
    for name, mod in clone.named_modules():

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            shapes.setdefault(name, shape_of(out))

        handles.append(mod.register_forward_hook(hook))
    example = None
    if example_inputs is not None:
        example = normalize_example_inputs(model, example_inputs)
    args, kwargs = on_meta(example) if example is not None else (meta_inputs(input_size), {})
    try:
        with eval_mode(clone), torch.no_grad():
            out = clone(*args, **kwargs)
    except SurgeryError:
        raise
    except Exception as exc:
        if example is not None:  # torch.export where the meta forward fails
            return export_output_shapes(model, example)
        raise SurgeryError(
            f"{type(model).__name__} could not run on the meta device with input_size="
            f"{input_size!r}: {type(exc).__name__}: {exc}"
            + token_input_hint(model, input_size, exc)
        ) from exc
    finally:
        for h in handles:
            h.remove()
    return shapes, shape_of(out)


def tree(
    model: nn.Module,
    *,
    depth: int | None = None,
    input_size: Any = None,
    example_inputs: Any = None,
) -> ModelTree:
    """A readable tree of the model: paths, types, parameter counts, shapes.

    Args:
        model: any ``nn.Module`` (on CPU, GPU or the meta device).
        depth: show paths of at most this many segments (1: top-level children).
        input_size: when given, each module's output shape, computed on a meta
            copy (no real compute, the model is untouched).
        example_inputs: instead of ``input_size``: a tensor, a tuple, or a dict
            of keyword inputs (``{"input_ids": ids}``); only shapes and dtypes
            are used. Where the meta forward fails, ``torch.export`` gives the
            shapes (see docs/huggingface.md).

    Returns:
        A :class:`ModelTree`: ``rows`` as data, ``str()`` as text, ``to_json()``.

    Example:
        >>> import torchvision, surgery
        >>> t = surgery.tree(torchvision.models.resnet18(weights=None), depth=1)
        >>> [r.path for r in t.rows][:4]
        ['', 'conv1', 'bn1', 'relu']
        >>> t.total
        11689512
    """
    with operation("tree", model=model):
        check_model(model, "tree")
        if depth is not None and (not isinstance(depth, int) or depth < 0):
            raise ArgumentError(f"depth must be a non-negative int or None, got {depth!r}")
        shapes: dict[str, Any] = {}
        if input_size is not None or example_inputs is not None:
            shapes, final = output_shapes(model, input_size, example_inputs)
            shapes[""] = final
        if example_inputs is not None and input_size is None:
            input_size = example_shapes(normalize_example_inputs(model, example_inputs))[0]
        paths = module_paths(model)
        rows: list[TreeRow] = []
        for name, mod in model.named_modules():
            d = 0 if not name else name.count(".") + 1
            if depth is not None and d > depth:
                continue
            own = sum(p.numel() for p in mod.parameters(recurse=False))
            trainable = frozen = 0
            for p in mod.parameters():
                if p.requires_grad:
                    trainable += p.numel()
                else:
                    frozen += p.numel()
            others = tuple(p for p in paths.get(id(mod), []) if p != name)
            rows.append(
                TreeRow(
                    name,
                    type(mod).__name__,
                    d,
                    own,
                    trainable + frozen,
                    trainable,
                    frozen,
                    others,
                    shapes.get(name),
                )
            )
        root = rows[0]
        return ModelTree(
            type(model).__name__,
            rows,
            root.total,
            root.trainable,
            root.frozen,
            list(input_size) if input_size is not None else None,
        )
