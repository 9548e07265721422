"""``load_partial(rename="auto")``: a :class:`KeyMatch` turned into exact renames.

``rename="auto"`` (or ``["auto", {...}]``, explicit rules first) is resolved by
:func:`auto_rules` into a rename callable over full checkpoint keys before
``load_partial``'s own machinery runs; ambiguity and structural divergence are
refused here, with the groups or the first diverging module named.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .._errors import ArgumentError, LoadError
from ..paths._resolve import resolve
from ._match import KeyMatch, match_source
from ._rename import KeyFilter, RenameRules
from ._source import TensorSource

__all__ = ["auto_rules", "split_auto"]

_MAX_LISTED = 50


AUTO = "auto"


def split_auto(rename: Any) -> tuple[bool, Any]:
    """``(auto, explicit rules)`` of a ``rename=`` spec that may hold ``"auto"``.

    ``"auto"`` -> ``(True, None)``; ``["auto", {...}]`` (or a callable, or
    ``(regex, replacement)`` pairs next to ``"auto"``) -> ``(True, those rules)``;
    anything else -> ``(False, rename)`` unchanged.

    Raises:
        ArgumentError: another string, ``"auto"`` twice, or ``"auto"`` next to
            something that is no rename rule.
    """
    if isinstance(rename, str):
        if rename == AUTO:
            return True, None
        raise ArgumentError(
            f"rename must be 'auto', a dict of prefixes, a list of (regex, replacement) pairs "
            f"or a callable; got the string {rename!r}"
        )
    if not isinstance(rename, (list, tuple)) or not any(
        isinstance(x, str) and x == AUTO for x in rename
    ):
        return False, rename
    rest = [x for x in rename if not (isinstance(x, str) and x == AUTO)]
    if len(rest) != len(rename) - 1:
        raise ArgumentError("rename lists 'auto' more than once")
    if not rest:
        return True, None
    if len(rest) == 1 and (isinstance(rest[0], Mapping) or callable(rest[0])):
        return True, rest[0]
    if len(rest) == 1 and isinstance(rest[0], list):
        rest = rest[0]
    for x in rest:
        if not (isinstance(x, (list, tuple)) and len(x) == 2 and isinstance(x[0], str)):
            raise ArgumentError(
                f"rename=['auto', ...] combines 'auto' with one dict of prefixes, one callable, "
                f"or (regex, replacement) pairs; got {x!r} ({type(x).__name__}). E.g. "
                "rename=['auto', {'module.': ''}]"
            )
    return True, list(rest)


class _AutoRules(RenameRules):
    """The explicit rules, then the inferred full-key mapping."""

    def __init__(self, explicit: RenameRules, final: dict[str, str]) -> None:
        super().__init__("callable")
        self.explicit = explicit
        self.final = final
        self.func = self._rename

    def _rename(self, key: str) -> str | None:
        if key in self.final:
            return self.final[key]
        return self.explicit.apply(key)

    def labels(self) -> list[str]:
        return self.explicit.labels()

    def unused(self) -> list[str]:
        return self.explicit.unused()


def _divergence(km: KeyMatch, model: nn.Module, src: TensorSource) -> str:
    first = next(iter(km.mismatched))
    c, a, b = km.mismatched[first]
    module = first.rpartition(".")[0] or "(root)"
    lines = [f"{c!r} {a} vs {m!r} {mb}" for m, (c, a, mb) in list(km.mismatched.items())]
    shown = "".join(f"\n    {x}" for x in lines[:_MAX_LISTED])
    more = f"\n    ... and {len(lines) - _MAX_LISTED} more" if len(lines) > _MAX_LISTED else ""
    return (
        f"the structures of {src.description} and {type(model).__name__} diverge at "
        f"{module!r}: its tensor {first!r} {b} has no counterpart of the same shape (the "
        f"checkpoint's {c!r} is {a}); {len(km.mismatched)} pair(s) aligned by name or "
        f"structure differ in shape; nothing was loaded (pass on_mismatch='skip' to load the "
        f"rest, e.g. for a new head, or exclude= them):{shown}{more}"
    )


def auto_rules(
    src: TensorSource,
    keyfilter: KeyFilter,
    rules: RenameRules,
    into: nn.Module,
    at: str | None,
    *,
    on_ambiguous: str,
    on_mismatch: str,
) -> tuple[RenameRules, KeyMatch]:
    """Rename rules that map every matched checkpoint key onto its model key.

    Mismatched pairs are mapped too, so that ``load_partial`` reports (or skips)
    them with their shapes. Keys of ambiguous groups keep their names.

    Raises:
        LoadError: a selected key is ambiguous (unless ``on_ambiguous="skip"``), or
            the structures diverge (mismatched pairs under ``on_mismatch="error"``).
    """
    km = match_source(src, keyfilter, rules, into, at)
    if km.ambiguous and on_ambiguous == "error":
        lines = [
            f"{', '.join(map(repr, ms))} <- one of {', '.join(map(repr, cs))}"
            for ms, cs in km.ambiguous
        ]
        shown = "".join(f"\n    {x}" for x in lines[:_MAX_LISTED])
        raise LoadError(
            f"rename='auto': {len(km.ambiguous)} group(s) of keys of {type(into).__name__} "
            f"could take more than one checkpoint key of {src.description} (the structure does "
            "not tell them apart); nothing was loaded. Pass on_ambiguous='skip' to load the "
            "rest, exclude= the extra keys, or add explicit rules first: "
            f"rename=['auto', {{...}}]:{shown}"
        )
    if km.mismatched and on_mismatch in ("error", "reshape"):
        raise LoadError(_divergence(km, into, src))
    target = resolve(into, at or "")
    prefix = target.container_name if target.is_slice else target.name
    cut = len(prefix) + 1 if prefix else 0
    final = {c: m[cut:] for m, c in km.mapping.items()}
    final.update({c: m[cut:] for m, (c, _a, _b) in km.mismatched.items()})
    return _AutoRules(rules, final), km
