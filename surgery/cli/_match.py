"""CLI subcommand ``surgery match CKPT --into MODEL [--json] [--rules]``.

The model is built on the meta device; only the checkpoint's headers are read.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..checkpoint._match import match_keys
from ._spec import SPEC_FORMS, add_kwargs_option, load_model_spec, parse_kwargs

__all__ = ["register"]


def register(subcommands: Any) -> None:
    """Add ``surgery match`` to the CLI's subcommands."""
    p: argparse.ArgumentParser = subcommands.add_parser(
        "match",
        help="match a checkpoint's keys to a model's by name and structure",
        description="Infer which checkpoint key loads into which model key, by name first and "
        "then by structure (registration order, shapes, the module tree), never by guess: "
        "keys that could map more than one way are listed as ambiguous. Only the checkpoint's "
        "headers are read; the model is built on the meta device. --rules prints "
        "(regex, replacement) pairs to pin in code (load_partial(..., rename=rules)).",
    )
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint file, sharded index or directory")
    p.add_argument("--into", required=True, metavar="MODEL", help=f"the model: {SPEC_FORMS}")
    add_kwargs_option(p)
    p.add_argument("--at", default=None, help="module path in the model the keys are relative to")
    p.add_argument("--include", action="append", metavar="P", help="pattern to select (repeatable)")
    p.add_argument("--exclude", action="append", metavar="P", help="pattern to drop (repeatable)")
    p.add_argument("--json", action="store_true", help="print the match as JSON")
    p.add_argument("--rules", action="store_true", help="print (regex, replacement) rules to pin")
    p.set_defaults(run=_run)


def _run(args: Any) -> int:
    """Match a checkpoint's keys to a model's by name and structure (headers only)."""
    model = load_model_spec(args.into, meta=True, kwargs=parse_kwargs(args.kwargs), option="--into")
    km = match_keys(args.ckpt, model, at=args.at, include=args.include, exclude=args.exclude)
    if args.rules:
        rules = km.rules()
        print(
            json.dumps(rules, indent=2)
            if args.json
            else "rename = [\n" + "".join(f"    ({p!r}, {r!r}),\n" for p, r in rules) + "]"
        )
        if km.reshaped and not args.json:
            print(
                f"# {len(km.reshaped)} tensor(s) are stored in another shape: load with "
                "on_mismatch='reshape' (--on-mismatch reshape)"
            )
    elif args.json:
        print(km.to_json(indent=2))
    else:
        print(km)
    return 0
