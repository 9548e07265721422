"""CLI subcommand ``surgery match CKPT --into MODEL [--json] [--rules]``.

Registered in :data:`surgery.cli.SUBCOMMANDS` on import. The model is built on
the meta device; only the checkpoint's headers are read.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..checkpoint._match import match_keys
from . import SUBCOMMANDS, load_model_spec

__all__: list[str] = []


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", help="checkpoint file, sharded index or directory")
    p.add_argument("--into", required=True, help="model spec: torchvision:NAME or pkg.mod:callable")
    p.add_argument("--at", default=None, help="module path in the model the keys are relative to")
    p.add_argument("--include", action="append", metavar="P", help="pattern to select (repeatable)")
    p.add_argument("--exclude", action="append", metavar="P", help="pattern to drop (repeatable)")
    p.add_argument("--json", action="store_true", help="print the match as JSON")
    p.add_argument("--rules", action="store_true", help="print (regex, replacement) rules to pin")


def _run(args: Any) -> int:
    """Match a checkpoint's keys to a model's by name and structure (headers only)."""
    model = load_model_spec(args.into, meta=True)
    km = match_keys(args.ckpt, model, at=args.at, include=args.include, exclude=args.exclude)
    if args.rules:
        rules = km.rules()
        print(
            json.dumps(rules, indent=2)
            if args.json
            else "rename = [\n" + "".join(f"    ({p!r}, {r!r}),\n" for p, r in rules) + "]"
        )
    elif args.json:
        print(km.to_json(indent=2))
    else:
        print(km)
    return 0


SUBCOMMANDS["match"] = (_configure, _run)
