"""``surgery tree``: a model's module tree, or a checkpoint's keys as a tree."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .._errors import ArgumentError
from ..checkpoint import TensorInfo
from ..trace._tree import tree
from ._render import count, dtype_name, size_text
from ._spec import (
    SPEC_FORMS,
    add_kwargs_option,
    checkpoint_infos,
    load_model_spec,
    parse_kwargs,
    parse_shape,
)

__all__ = ["format_checkpoint_tree", "register"]


def format_checkpoint_tree(
    title: str, infos: dict[str, TensorInfo], depth: int | None = None
) -> str:
    """Keys as a tree of full paths, indented by depth, with shapes and dtypes.

    With ``depth``, keys deeper than ``depth`` segments are summed into their
    prefix's row.

    Example:
        >>> import torch
        >>> infos = {"fc.weight": TensorInfo((2, 4), torch.float32), "fc.bias": TensorInfo((2,), torch.float32)}
        >>> print(format_checkpoint_tree("clf.pt", infos, depth=1))
        clf.pt: 2 tensors, 10 values, 40 B
        fc  2 tensors, 10 values  float32
    """
    total_values = sum(i.numel for i in infos.values())
    total_bytes = sum(i.nbytes for i in infos.values())
    lines = [
        f"{title}: {count(len(infos), 'tensor')}, {total_values:,} values, {size_text(total_bytes)}"
    ]
    groups: dict[str, list[TensorInfo]] = {}
    for k, info in infos.items():
        parts = k.split(".")
        head = ".".join(parts[:depth]) if depth is not None and len(parts) > depth else k
        groups.setdefault(head, []).append(info)
    printed: list[str] = []
    rows: list[tuple[str, str, str]] = []
    for k, group in groups.items():
        parts = k.split(".")
        common = 0
        while common < min(len(printed), len(parts) - 1) and printed[common] == parts[common]:
            common += 1
        for level in range(common, len(parts) - 1):
            rows.append(("  " * level + ".".join(parts[: level + 1]), "", ""))
        printed = parts[:-1]
        label = "  " * (len(parts) - 1) + k
        if len(group) == 1 and k in infos:
            rows.append((label, str(group[0].shape), dtype_name(group[0].dtype)))
        else:
            values = sum(i.numel for i in group)
            dtypes = sorted({dtype_name(i.dtype) for i in group})
            rows.append(
                (label, f"{count(len(group), 'tensor')}, {values:,} values", "/".join(dtypes))
            )
    width = max((len(r[0]) for r in rows), default=0)
    width2 = max((len(r[1]) for r in rows), default=0)
    for a, b, c in rows:
        lines.append(f"{a.ljust(width)}  {b.ljust(width2)}  {c}".rstrip())
    return "\n".join(lines)


def _run_tree(args: Any) -> int:
    if os.path.exists(args.spec) and ":" not in args.spec:
        if args.input:
            raise ArgumentError("--input applies to models, not to a checkpoint file")
        if args.kwargs:
            raise ArgumentError("--kwargs applies to model specs, not to a checkpoint file")
        title, infos = checkpoint_infos(args.spec, args.key)
        if args.json:
            rows = [
                {"key": k, "shape": list(i.shape), "dtype": dtype_name(i.dtype)}
                for k, i in infos.items()
            ]
            print(json.dumps({"source": title, "tensors": rows}, indent=2))
        else:
            print(format_checkpoint_tree(title, infos, args.depth))
        return 0
    if args.key:
        raise ArgumentError("--key applies to checkpoint files, not to model specs")
    if args.depth is not None and args.depth < 0:
        raise ArgumentError(f"--depth must be 0 or more, got {args.depth}")
    input_size = parse_shape(args.input) if args.input else None
    model = load_model_spec(args.spec, meta=True, kwargs=parse_kwargs(args.kwargs))
    result = tree(model, depth=args.depth, input_size=input_size)
    print(result.to_json(indent=2) if args.json else result)
    return 0


def register(subcommands: Any) -> None:
    """Add ``surgery tree`` to the CLI's subcommands."""
    p: argparse.ArgumentParser = subcommands.add_parser(
        "tree",
        help="print a model's module tree, or a checkpoint's keys as a tree",
        description="Print a model's module tree (full paths indented by depth, types, "
        "parameter counts, trainable/frozen, shared modules and, with --input, output "
        "shapes from a meta-device forward), or a checkpoint's keys as a tree with shapes, "
        "dtypes and sizes. Models are built on the meta device: no memory, no download.",
    )
    p.add_argument("spec", metavar="SPEC", help=f"{SPEC_FORMS}, or a checkpoint file")
    p.add_argument("--depth", type=int, default=None, help="show paths of at most N segments")
    p.add_argument(
        "--input",
        default=None,
        metavar="SHAPE",
        help="input size such as 1,3,224,224 (adds shapes)",
    )
    add_kwargs_option(p)
    p.add_argument(
        "--key", default=None, help="a checkpoint's wrapper entry holding the state dict ('model')"
    )
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(run=_run_tree)
