"""The ``surgery`` command-line tool (also ``python -m surgery``).

Subcommands::

    surgery tree SPEC|CKPT [--depth N] [--input 1,3,224,224] [--kwargs JSON] [--json]
    surgery plan CKPT --into SPEC [--at P] [--rename OLD=NEW ...] [--include P ...] ...
    surgery diff A B [--json]                 A, B: checkpoints or model specs
    surgery convert IN OUT [--max-shard-size S] [--key K] [--force]

A model SPEC is ``torchvision:NAME`` (built with every ``weights*`` argument
``None``: nothing is downloaded) or ``package.module:callable`` (called with
``--kwargs``, none by default); see :mod:`surgery.cli._spec`. Every
``SurgeryError`` becomes a short message on stderr, its hints spelled as options
(:mod:`surgery.cli._render`), and exit code 2; ``diff`` exits 1 when its inputs
differ.

Adding a subcommand: write ``surgery/cli/_NAME.py`` with a function::

    def register(subcommands: argparse._SubParsersAction) -> None:
        p = subcommands.add_parser("NAME", help="one line for `surgery --help`",
                                   description="what the command does, for `surgery NAME --help`")
        p.add_argument("--opt", help="every option has help text")
        p.set_defaults(run=run_NAME)        # run_NAME(args) -> exit code

and add the module to :data:`SUBCOMMAND_MODULES` below. Registration goes one
way: this package imports the subcommand modules; they import :mod:`._spec`,
:mod:`._render` and the library, never this package.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from .._errors import SurgeryError
from . import _find, _load, _match, _tree
from ._render import render_error
from ._spec import load_model_spec, parse_kwargs, parse_shape

__all__ = [
    "SUBCOMMAND_MODULES",
    "build_parser",
    "load_model_spec",
    "main",
    "parse_kwargs",
    "parse_shape",
]

#: The subcommand modules, in the order ``surgery --help`` lists their commands.
SUBCOMMAND_MODULES: tuple[ModuleType, ...] = (_tree, _find, _load, _match)


def _version() -> str:
    from .._version import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The ``surgery`` argument parser, with every subcommand registered.

    Example:
        >>> sorted(build_parser()._subparsers._group_actions[0].choices)
        ['convert', 'diff', 'find', 'match', 'plan', 'tree']
    """
    parser = argparse.ArgumentParser(
        prog="surgery",
        description="Path-addressable model surgery for PyTorch: inspect models and "
        "checkpoints, plan partial loads, compare and convert checkpoints.",
        epilog="A model SPEC is torchvision:NAME (no weights are downloaded) or "
        "package.module:callable (see --kwargs). `surgery COMMAND --help` describes each command.",
    )
    parser.add_argument(
        "--version", action="version", version=f"surgery {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of the commands below"
    )
    for module in SUBCOMMAND_MODULES:
        module.register(sub)
    for p in sub.choices.values():
        p.set_defaults(_options=frozenset(o for a in p._actions for o in a.option_strings))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``surgery`` console script; returns the exit code.

    Example:
        >>> main(["tree", "torch.nn:Linear", "--kwargs", '{"in_features": 4, "out_features": 2}'])
        path    type    params  total  trainable
        (root)  Linear      10     10        all
        Total: 10 parameters (10 trainable, 0 frozen)
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except SurgeryError as exc:
        message = render_error(exc, args._options)
        print(f"surgery {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"surgery {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
