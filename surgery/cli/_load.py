"""CLI subcommands for checkpoints: ``plan``, ``diff``, ``convert`` and ``tree CKPT``.

Registered in :data:`surgery.cli.SUBCOMMANDS` on import (``cli.main`` imports
this module lazily)::

    surgery plan CKPT --into MODEL [--at PATH] [--rename OLD=NEW ...] [--include P ...]
                 [--exclude P ...] [--key K] [--strict] [--on-mismatch skip] [--json]
    surgery diff A B [--json]          A, B: checkpoints or model specs
    surgery convert IN OUT [--max-shard-size S] [--key K]
    surgery tree CKPT [--depth N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .._errors import ArgumentError
from ..checkpoint import CASTING, TensorInfo, open_source
from ..checkpoint._load import load_partial
from ..checkpoint._save import save_state_dict
from . import SUBCOMMANDS, load_model_spec

__all__ = ["checkpoint_infos", "format_checkpoint_tree"]


def _dtype(info: TensorInfo) -> str:
    return str(info.dtype).removeprefix("torch.")


def _size(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover


def checkpoint_infos(spec: str, key: str | None = None) -> tuple[str, dict[str, TensorInfo]]:
    """(description, key -> TensorInfo) of a checkpoint path or a model spec (built on meta)."""
    if os.path.exists(spec):
        with open_source(spec, key=key) as src:
            desc = src.description + (f" [{src.unwrapped!r}]" if src.unwrapped else "")
            keys = src.keys()
            return desc, {k: src.info(k) for k in keys}
    model = load_model_spec(spec, meta=True)
    sd = model.state_dict()
    return spec, {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in sd.items()}


def format_checkpoint_tree(
    title: str, infos: dict[str, TensorInfo], depth: int | None = None
) -> str:
    """Keys as an indented module tree with shapes and dtypes; deeper levels summed."""
    total_values = sum(i.numel for i in infos.values())
    total_bytes = sum(i.nbytes for i in infos.values())
    lines = [f"{title}: {len(infos)} tensors, {total_values:,} values, {_size(total_bytes)}"]
    if depth is not None:
        groups: dict[str, list[TensorInfo]] = {}
        for k, info in infos.items():
            parts = k.split(".")
            head = ".".join(parts[:depth]) if len(parts) > depth else k
            groups.setdefault(head, []).append(info)
        infos_view = groups
    else:
        infos_view = {k: [v] for k, v in infos.items()}
    printed: list[str] = []
    rows: list[tuple[str, str, str]] = []
    for k, group in infos_view.items():
        parts = k.split(".")
        common = 0
        while common < min(len(printed), len(parts) - 1) and printed[common] == parts[common]:
            common += 1
        for level in range(common, len(parts) - 1):
            rows.append(("  " * level + parts[level], "", ""))
        printed = parts[:-1]
        label = "  " * (len(parts) - 1) + parts[-1]
        if len(group) == 1 and (depth is None or k in infos):
            rows.append((label, str(group[0].shape), _dtype(group[0])))
        else:
            values = sum(i.numel for i in group)
            dtypes = sorted({_dtype(i) for i in group})
            rows.append((label, f"{len(group)} tensors, {values:,} values", "/".join(dtypes)))
    width = max((len(r[0]) for r in rows), default=0)
    width2 = max((len(r[1]) for r in rows), default=0)
    for a, b, c in rows:
        lines.append(f"{a.ljust(width)}  {b.ljust(width2)}  {c}".rstrip())
    return "\n".join(lines)


# -- tree CKPT -----------------------------------------------------------------


def _run_tree_file(args: Any) -> int:
    """Print a checkpoint's keys, shapes and dtypes as a tree."""
    if getattr(args, "input", None):
        raise ArgumentError("--input applies to models, not to a checkpoint file")
    title, infos = checkpoint_infos(args.spec, getattr(args, "key", None))
    if args.json:
        rows = [{"key": k, "shape": list(i.shape), "dtype": _dtype(i)} for k, i in infos.items()]
        print(json.dumps({"source": title, "tensors": rows}, indent=2))
    else:
        print(format_checkpoint_tree(title, infos, args.depth))
    return 0


# -- plan ------------------------------------------------------------------------


def _parse_rename(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ArgumentError(
                f"--rename takes OLD=NEW prefixes (e.g. --rename backbone.= or "
                f"--rename module.=), got {item!r}"
            )
        old, _, new = item.partition("=")
        out[old] = new
    return out


def _configure_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", help="checkpoint file, sharded index or directory")
    p.add_argument("--into", required=True, help="model spec: torchvision:NAME or pkg.mod:callable")
    p.add_argument("--at", default=None, help="module path in the model the keys are relative to")
    p.add_argument("--rename", action="append", metavar="OLD=NEW", help="prefix rule (repeatable)")
    p.add_argument("--include", action="append", metavar="P", help="pattern to select (repeatable)")
    p.add_argument("--exclude", action="append", metavar="P", help="pattern to drop (repeatable)")
    p.add_argument("--key", default=None, help="wrapper entry holding the state dict")
    p.add_argument("--strict", action="store_true", help="every model key loaded, every key used")
    p.add_argument("--on-mismatch", default="error", choices=["error", "skip"])
    p.add_argument("--casting", default="same_kind", choices=list(CASTING))
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_plan(args: Any) -> int:
    """Show what load_partial would load (a dry run; nothing is read but headers)."""
    # built on meta (no initialization cost), then given uninitialized storage that is
    # never touched (a dry run writes nothing), so the plan is the one of a real model
    model = load_model_spec(args.into, meta=True).to_empty(device="cpu")
    report = load_partial(
        args.ckpt,
        into=model,
        at=args.at,
        include=args.include,
        exclude=args.exclude,
        rename=_parse_rename(args.rename),
        strict=args.strict,
        on_mismatch=args.on_mismatch,
        casting=args.casting,
        dry_run=True,
        key=args.key,
    )
    print(report.to_json(indent=2) if args.json else report)
    return 0


# -- diff ------------------------------------------------------------------------


def _configure_diff(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="checkpoint file or model spec")
    p.add_argument("b", help="checkpoint file or model spec")
    p.add_argument("--key-a", default=None, help="wrapper entry of A")
    p.add_argument("--key-b", default=None, help="wrapper entry of B")
    p.add_argument("--json", action="store_true", help="print the differences as JSON")


def diff_infos(a: dict[str, TensorInfo], b: dict[str, TensorInfo]) -> dict[str, Any]:
    """Keys only in A, only in B, and keys whose shape or dtype differ."""
    shape = {
        k: [list(a[k].shape), list(b[k].shape)] for k in a if k in b and a[k].shape != b[k].shape
    }
    dtype = {k: [_dtype(a[k]), _dtype(b[k])] for k in a if k in b and a[k].dtype != b[k].dtype}
    return {
        "only_a": [k for k in a if k not in b],
        "only_b": [k for k in b if k not in a],
        "shape": shape,
        "dtype": dtype,
        "same": sum(1 for k in a if k in b and a[k] == b[k]),
    }


def _run_diff(args: Any) -> int:
    """List the keys, shapes and dtypes that differ between two checkpoints or models."""
    ta, a = checkpoint_infos(args.a, args.key_a)
    tb, b = checkpoint_infos(args.b, args.key_b)
    d = diff_infos(a, b)
    if args.json:
        print(json.dumps({"a": ta, "b": tb, **d}, indent=2))
        return 0
    lines = [
        f"A: {ta} ({len(a)} tensors)",
        f"B: {tb} ({len(b)} tensors)",
        f"{d['same']} identical in shape and dtype, {len(d['only_a'])} only in A, "
        f"{len(d['only_b'])} only in B, {len(d['shape'])} shape and {len(d['dtype'])} dtype "
        "differences",
    ]
    for k in d["only_a"]:
        lines.append(f"- {k!r}  {tuple(a[k].shape)} {_dtype(a[k])}")
    for k in d["only_b"]:
        lines.append(f"+ {k!r}  {tuple(b[k].shape)} {_dtype(b[k])}")
    for k, (sa, sb) in d["shape"].items():
        lines.append(f"~ {k!r}  shape {tuple(sa)} -> {tuple(sb)}")
    for k, (da, db) in d["dtype"].items():
        lines.append(f"~ {k!r}  dtype {da} -> {db}")
    print("\n".join(lines))
    return 0


# -- convert ---------------------------------------------------------------------


def _configure_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="IN", help="checkpoint to read (pickle, safetensors, index)")
    p.add_argument("dst", metavar="OUT", help="safetensors file (or directory when sharded)")
    p.add_argument("--max-shard-size", default=None, help="e.g. 2GB, 500MB: write shards + index")
    p.add_argument("--key", default=None, help="wrapper entry holding the state dict")


def _run_convert(args: Any) -> int:
    """Rewrite a (pickle) checkpoint as safetensors, optionally sharded."""
    with open_source(args.src, key=args.key) as src:
        keys = src.keys()
        tensors = {k: src.read(k) for k in keys}
        written = save_state_dict(tensors, args.dst, max_shard_size=args.max_shard_size)
        nbytes = sum(t.nbytes for t in tensors.values())
        via = f" [{src.unwrapped!r}]" if src.unwrapped else ""
    print(f"wrote {written}: {len(tensors)} tensors, {_size(nbytes)} from {args.src}{via}")
    return 0


SUBCOMMANDS["plan"] = (_configure_plan, _run_plan)
SUBCOMMANDS["diff"] = (_configure_diff, _run_diff)
SUBCOMMANDS["convert"] = (_configure_convert, _run_convert)
SUBCOMMANDS["__tree_file__"] = (lambda p: None, _run_tree_file)
