"""Shared helpers for the recipes: recorded checks and friendly messages for missing extras.

Every recipe prints what it verified with :func:`check` and ends with :func:`finish`, which
exits non-zero when any check failed, so ``python recipes/NAME.py`` doubles as a test.
"""

from __future__ import annotations

import importlib
import sys
import time
from typing import NoReturn

__all__ = ["check", "finish", "fmt", "require", "section"]

_results: list[tuple[bool, str]] = []
_started = time.perf_counter()

EXTRA_HINT = "install the [recipes] extra: pip install -e '.[recipes]'"


def check(cond: object, msg: str) -> bool:
    """Record one verified fact (``ok``) or a failure (``FAIL``) and print it."""
    ok = bool(cond)
    _results.append((ok, msg))
    print(f"  {'ok  ' if ok else 'FAIL'}  {msg}", flush=True)
    return ok


def section(title: str) -> None:
    """Print a section heading."""
    print(f"\n== {title}", flush=True)


def fmt(n: int) -> str:
    """Format an integer with thousands separators: ``fmt(2325002) == '2,325,002'``."""
    return f"{n:,}"


def require(*modules: str) -> None:
    """Import optional modules or exit 1 saying which extra to install."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        print(
            f"this recipe needs {', '.join(missing)}: {EXTRA_HINT}",
            file=sys.stderr,
        )
        sys.exit(1)


def finish(name: str) -> NoReturn:
    """Print the summary line and exit: 0 when every check passed, 1 otherwise."""
    failed = [msg for ok, msg in _results if not ok]
    took = time.perf_counter() - _started
    if failed:
        print(f"\n{name}: {len(failed)} of {len(_results)} checks FAILED ({took:.1f} s):")
        for msg in failed:
            print(f"  - {msg}")
        sys.exit(1)
    print(f"\n{name}: all {len(_results)} checks passed ({took:.1f} s)")
    sys.exit(0)
