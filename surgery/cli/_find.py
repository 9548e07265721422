"""``surgery find MODEL PATTERN [--types T ...] [--json]``: matches with types and parameter counts.

The discovery command beside ``swap`` and ``freeze``: it shows exactly what
``surgery.find(model, pattern, types=...)`` selects, one row per module path
(type, parameters, trainable parameters), so a pattern can be checked before
it is used. The model is built on the meta device: no memory, no weights.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .._boundary import operation
from ..paths._resolve import select
from ..trace._summary import count_parameters
from ._spec import SPEC_FORMS, add_kwargs_option, load_model_spec, parse_kwargs

__all__ = ["register", "run_find"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``find`` subcommand to ``subparsers`` (``parser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "find",
        help="list the modules a pattern (and --types) selects, with types and parameter counts",
        description=(
            "Print every module path PATTERN selects in MODEL, as surgery.find does, with "
            "its type and parameter counts. Example: surgery find torchvision:resnet18 "
            "'layer1.**' --types BatchNorm2d"
        ),
    )
    p.add_argument("model", metavar="MODEL", help=f"the model (built on meta): {SPEC_FORMS}")
    p.add_argument("pattern", help="a path, a glob ('layer*.*.bn?', '**.downsample') or 're:...'")
    p.add_argument(
        "--types",
        nargs="+",
        default=None,
        metavar="T",
        help="keep only modules whose class (or a base class) has one of these names",
    )
    add_kwargs_option(p)
    p.add_argument("--json", action="store_true", help="print the matches as JSON")
    p.set_defaults(run=run_find)
    return p


def _rows(model: Any, pattern: str, types: list[str] | None) -> list[dict[str, Any]]:
    rows = []
    for path, module in select(model, pattern, types):
        total, trainable = count_parameters(module)
        rows.append(
            {"path": path, "type": type(module).__name__, "params": total, "trainable": trainable}
        )
    return rows


def run_find(args: Any) -> int:
    """Print the matches of ``args.pattern`` in ``args.model``; 0 on success."""
    model = load_model_spec(args.model, meta=True, kwargs=parse_kwargs(args.kwargs), option="MODEL")
    with operation("find", model=model, path=args.pattern):
        rows = _rows(model, args.pattern, args.types)
    if args.json:
        print(json.dumps({"model": args.model, "pattern": args.pattern, "matches": rows}, indent=2))
        return 0
    table = [("path", "type", "params", "trainable")] + [
        (r["path"], r["type"], f"{r['params']:,}", f"{r['trainable']:,}") for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [row[2].rjust(widths[2]), row[3].rjust(widths[3])]
        print("  ".join(cells).rstrip())
    n = len(rows)
    print(f"{n} match{'es' if n != 1 else ''}")
    return 0
