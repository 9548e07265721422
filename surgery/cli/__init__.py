"""The ``surgery`` command-line tool.

Subcommands::

    surgery tree SPEC [--depth N] [--input 1,3,224,224] [--json]
    surgery find MODEL PATTERN [--types T ...] [--json]

A model SPEC is ``torchvision:NAME`` (built with ``weights=None``),
``package.module:callable`` (called with no arguments), or a checkpoint file.
Every ``SurgeryError`` becomes a one-paragraph message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .._errors import ArgumentError, SurgeryError
from ..trace._tree import tree

__all__ = ["build_parser", "load_model_spec", "main", "parse_shape"]


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``1x3x224x224``) -> ``(1, 3, 224, 224)``."""
    parts = text.replace("x", ",").replace(" ", "").strip("()[]").split(",")
    try:
        dims = tuple(int(p) for p in parts if p)
    except ValueError:
        raise ArgumentError(f"--input must be integers such as 1,3,224,224, got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise ArgumentError(f"--input must be positive integers such as 1,3,224,224, got {text!r}")
    return dims


def load_model_spec(spec: str, *, meta: bool = False) -> nn.Module:
    """Build the model a CLI ``SPEC`` names.

    ``torchvision:resnet18`` builds ``torchvision.models.get_model("resnet18",
    weights=None)``; ``package.module:callable`` imports and calls it with no
    arguments. With ``meta=True`` the model is built on the meta device (no memory).

    Raises:
        ArgumentError: the spec is malformed or names nothing.
    """
    if ":" not in spec:
        raise ArgumentError(
            f"model spec {spec!r} is neither torchvision:NAME nor package.module:callable "
            "nor an existing checkpoint file"
        )
    prefix, _, name = spec.partition(":")
    factory: Callable[[], Any]
    if prefix == "torchvision":
        import torchvision

        available = torchvision.models.list_models()
        if name not in available:
            import difflib

            close = difflib.get_close_matches(name, available, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ArgumentError(f"torchvision has no model {name!r}{hint}")

        def factory() -> Any:
            return torchvision.models.get_model(name, weights=None)

    else:
        try:
            module = importlib.import_module(prefix)
        except ImportError as exc:
            raise ArgumentError(f"cannot import {prefix!r} from spec {spec!r}: {exc}") from None
        obj = module
        for part in name.split("."):
            if not hasattr(obj, part):
                raise ArgumentError(f"{prefix!r} has no attribute {name!r} (spec {spec!r})")
            obj = getattr(obj, part)
        if not callable(obj):
            raise ArgumentError(f"{spec!r} is not callable")
        factory = obj
    if meta:
        with torch.device("meta"):
            model = factory()
    else:
        model = factory()
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"{spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


# Extra subcommands register themselves here: name -> (configure(parser), run(args) -> int).
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[Any], int]]] = {}


def _configure_tree(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="torchvision:NAME, package.module:callable, or a checkpoint file")
    p.add_argument("--depth", type=int, default=None, help="show paths of at most N segments")
    p.add_argument("--input", default=None, help="input size such as 1,3,224,224 (adds shapes)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def _run_tree(args: Any) -> int:
    input_size = parse_shape(args.input) if args.input else None
    tree_of_file = SUBCOMMANDS.get("__tree_file__")
    import os

    if tree_of_file is not None and os.path.exists(args.spec):
        return tree_of_file[1](args)
    model = load_model_spec(args.spec, meta=True)
    result = tree(model, depth=args.depth, input_size=input_size)
    print(result.to_json(indent=2) if args.json else result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surgery", description="Path-addressable model surgery for PyTorch."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("tree", help="print a model's (or a checkpoint's) module tree")
    _configure_tree(p)
    p.set_defaults(run=_run_tree)
    from ._find import register as register_find

    register_find(sub).set_defaults(load_model=load_model_spec)
    for name, (configure, run) in SUBCOMMANDS.items():
        if name.startswith("__"):
            continue
        sp = sub.add_parser(
            name, help=(run.__doc__ or "").strip().splitlines()[0] if run.__doc__ else None
        )
        configure(sp)
        sp.set_defaults(run=run)
    return parser


def _register_extensions() -> None:
    """Import the modules that add subcommands (kept lazy so `import surgery` stays light)."""
    for mod in ("surgery.cli._load",):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``surgery`` console script."""
    _register_extensions()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except SurgeryError as exc:
        print(f"surgery {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
