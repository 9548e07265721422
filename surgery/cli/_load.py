"""``surgery plan``, ``diff`` and ``convert``: checkpoints from the shell.

::

    surgery plan CKPT --into SPEC [--at PATH] [--rename OLD=NEW ...] [--include P ...]
                 [--exclude P ...] [--key K] [--strict] [--on-mismatch skip] [--json]
    surgery diff A B [--json]          A, B: checkpoints or model specs; exit 1 if they differ
    surgery convert IN OUT [--max-shard-size S] [--key K] [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from typing import Any

import torch

from .._errors import ArgumentError, SaveError
from ..checkpoint import CASTING, TensorInfo, open_source
from ..checkpoint._load import load_partial
from ..checkpoint._save import save_state_dict
from ._render import count, dtype_name, size_text
from ._spec import SPEC_FORMS, add_kwargs_option, checkpoint_infos, load_model_spec, parse_kwargs

__all__ = ["diff_infos", "register"]


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
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint file, sharded index or directory")
    p.add_argument(
        "--into",
        required=True,
        metavar="SPEC",
        help=f"the model to load into: a model spec ({SPEC_FORMS}), not a checkpoint",
    )
    add_kwargs_option(p)
    p.add_argument("--at", default=None, help="module path in the model the keys are relative to")
    p.add_argument(
        "--rename",
        action="append",
        metavar="OLD=NEW",
        help="replace the key prefix OLD by NEW, e.g. --rename backbone.= (repeatable)",
    )
    p.add_argument(
        "--include",
        action="append",
        metavar="P",
        help="path or pattern of keys to load (repeatable)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        metavar="P",
        help="path or pattern of keys to drop (repeatable)",
    )
    p.add_argument(
        "--key", default=None, help="the checkpoint's wrapper entry holding the state dict"
    )
    p.add_argument(
        "--strict", action="store_true", help="require every model key loaded and every key used"
    )
    p.add_argument(
        "--on-mismatch",
        default="error",
        choices=["error", "skip", "reshape"],
        help="a key whose shape differs from the model's: refuse the load (error, the "
        "default), leave that tensor as it is (skip), or load a tensor that holds the same "
        "values in another shape, e.g. (C, 1, 1) into (C,), refusing other mismatches (reshape)",
    )
    p.add_argument(
        "--casting",
        default="same_kind",
        choices=list(CASTING),
        help="which dtype conversions are allowed, as in numpy (default: same_kind)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_plan(args: Any) -> int:
    # built on meta (no initialization cost), then given uninitialized storage that is
    # never touched (a dry run writes nothing), so the plan is the one of a real model
    model = load_model_spec(
        args.into, meta=True, kwargs=parse_kwargs(args.kwargs), option="--into", files=False
    ).to_empty(device="cpu")
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
    p.add_argument("a", metavar="A", help=f"checkpoint file or model spec ({SPEC_FORMS})")
    p.add_argument("b", metavar="B", help=f"checkpoint file or model spec ({SPEC_FORMS})")
    p.add_argument("--key-a", default=None, help="the wrapper entry of checkpoint A")
    p.add_argument("--key-b", default=None, help="the wrapper entry of checkpoint B")
    p.add_argument("--kwargs-a", default=None, metavar="JSON", help="--kwargs for model spec A")
    p.add_argument("--kwargs-b", default=None, metavar="JSON", help="--kwargs for model spec B")
    p.add_argument("--json", action="store_true", help="print the differences as JSON")


def diff_infos(a: dict[str, TensorInfo], b: dict[str, TensorInfo]) -> dict[str, Any]:
    """Keys only in A, only in B, and keys whose shape or dtype differ.

    Example:
        >>> import torch
        >>> d = diff_infos({"w": TensorInfo((2,), torch.float32)}, {"w": TensorInfo((3,), torch.float32)})
        >>> d["shape"], d["same"]
        ({'w': [[2], [3]]}, 0)
    """
    shape = {
        k: [list(a[k].shape), list(b[k].shape)] for k in a if k in b and a[k].shape != b[k].shape
    }
    dtype = {
        k: [dtype_name(a[k].dtype), dtype_name(b[k].dtype)]
        for k in a
        if k in b and a[k].dtype != b[k].dtype
    }
    return {
        "only_a": [k for k in a if k not in b],
        "only_b": [k for k in b if k not in a],
        "shape": shape,
        "dtype": dtype,
        "same": sum(1 for k in a if k in b and a[k] == b[k]),
    }


def _run_diff(args: Any) -> int:
    ta, a = checkpoint_infos(args.a, args.key_a, parse_kwargs(args.kwargs_a, "--kwargs-a"))
    tb, b = checkpoint_infos(args.b, args.key_b, parse_kwargs(args.kwargs_b, "--kwargs-b"))
    d = diff_infos(a, b)
    differ = 1 if (d["only_a"] or d["only_b"] or d["shape"] or d["dtype"]) else 0
    if args.json:
        print(json.dumps({"a": ta, "b": tb, **d}, indent=2))
        return differ
    lines = [
        f"A: {ta} ({count(len(a), 'tensor')})",
        f"B: {tb} ({count(len(b), 'tensor')})",
        f"{d['same']} identical in shape and dtype, {len(d['only_a'])} only in A, "
        f"{len(d['only_b'])} only in B, {len(d['shape'])} shape and {len(d['dtype'])} dtype "
        "differences",
    ]
    for k in d["only_a"]:
        lines.append(f"- {k!r}  {tuple(a[k].shape)} {dtype_name(a[k].dtype)}")
    for k in d["only_b"]:
        lines.append(f"+ {k!r}  {tuple(b[k].shape)} {dtype_name(b[k].dtype)}")
    for k, (sa, sb) in d["shape"].items():
        lines.append(f"~ {k!r}  shape {tuple(sa)} -> {tuple(sb)}")
    for k, (da, db) in d["dtype"].items():
        lines.append(f"~ {k!r}  dtype {da} -> {db}")
    print("\n".join(lines))
    return differ


# -- convert ---------------------------------------------------------------------

#: OUT's suffix -> the format ``convert`` writes there.
FORMATS = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".bin": "torch"}


def _configure_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="IN", help="checkpoint to read (pickle, safetensors, index, DCP)")
    p.add_argument(
        "dst",
        metavar="OUT",
        help="file to write; its suffix picks the format: .safetensors, or .pt/.pth/.bin for a "
        "torch zip of plain tensors (with --max-shard-size: a directory of safetensors shards)",
    )
    p.add_argument(
        "--max-shard-size",
        default=None,
        metavar="SIZE",
        help="e.g. 2GB, 500MB: write safetensors shards and an index into the directory OUT",
    )
    p.add_argument("--key", default=None, help="the wrapper entry holding the state dict")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def _out_format(dst: str, sharded: bool, force: bool) -> str:
    if os.path.lexists(dst) and not force:
        raise ArgumentError(f"{dst!r} exists; pass --force to overwrite it", file=dst)
    if sharded:
        if os.path.isfile(dst):
            raise ArgumentError(
                f"--max-shard-size writes a directory of shards, but {dst!r} is a file", file=dst
            )
        return "sharded"
    suffix = os.path.splitext(dst)[1].lower()
    if suffix not in FORMATS:
        known = ", ".join(FORMATS)
        raise ArgumentError(
            f"cannot tell the format of {dst!r} from its suffix {suffix or '(none)'!r}: name a "
            f"file ending in one of {known}, or pass --max-shard-size to write shards into a "
            "directory",
            file=dst,
        )
    return FORMATS[suffix]


def _save_torch(tensors: dict[str, torch.Tensor], dst: str) -> None:
    """A torch zip of plain tensors, written atomically (a temporary file, then a rename)."""
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise SaveError(f"cannot write {dst!r}: the directory {folder!r} does not exist", file=dst)
    fd, tmp = tempfile.mkstemp(prefix=".surgery-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({k: t.detach().as_subclass(torch.Tensor) for k, t in tensors.items()}, f)
        os.replace(tmp, dst)
    except OSError as e:
        raise SaveError(f"cannot write {dst!r}: {e.strerror or e}", file=dst) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _run_convert(args: Any) -> int:
    fmt = _out_format(args.dst, args.max_shard_size is not None, args.force)
    with open_source(args.src, key=args.key) as src:
        keys = src.keys()
        tensors = {k: src.read(k) for k in keys}
        if fmt == "torch":
            _save_torch(tensors, args.dst)
            written = args.dst
        else:
            written = save_state_dict(tensors, args.dst, max_shard_size=args.max_shard_size)
        nbytes = sum(t.nbytes for t in tensors.values())
        via = f" [{src.unwrapped!r}]" if src.unwrapped else ""
    print(
        f"wrote {written}: {count(len(tensors), 'tensor')}, {size_text(nbytes)} "
        f"from {args.src}{via}"
    )
    return 0


def register(subcommands: Any) -> None:
    """Add ``surgery plan``, ``diff`` and ``convert`` to the CLI's subcommands."""
    plan = subcommands.add_parser(
        "plan",
        help="show what load_partial would load (a dry run)",
        description="Show what surgery.load_partial would load from CKPT into the model SPEC: "
        "a dry run that reads only the checkpoint's headers and changes nothing. Without a "
        "fitting --rename or --at, it fails with a hint that names the options to add.",
    )
    _configure_plan(plan)
    plan.set_defaults(run=_run_plan)
    diff = subcommands.add_parser(
        "diff",
        help="compare the keys, shapes and dtypes of two checkpoints or models",
        description="List the keys, shapes and dtypes that differ between A and B (checkpoints "
        "or model specs). Like diff(1), exit code 0 means no difference and 1 some difference; "
        "tensor values are not compared.",
    )
    _configure_diff(diff)
    diff.set_defaults(run=_run_diff)
    convert = subcommands.add_parser(
        "convert",
        help="rewrite a checkpoint as safetensors or as a torch zip of plain tensors",
        description="Read IN safely (pickles with weights_only=True, never an unsafe "
        "fallback) and write its tensors to OUT in the format OUT's suffix names: "
        ".safetensors, or .pt/.pth/.bin for a torch zip of plain tensors; with "
        "--max-shard-size, safetensors shards and an index in the directory OUT. An existing "
        "OUT is kept unless --force is given.",
    )
    _configure_convert(convert)
    convert.set_defaults(run=_run_convert)
