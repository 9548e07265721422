"""``surgery.match_keys``: map a checkpoint's keys onto a model's by name, then by structure.

Only headers are read (keys, shapes, dtypes, through
:mod:`surgery.checkpoint._source`). The algorithm lives in
:mod:`surgery.checkpoint._align` and is documented in ``docs/matching.md``.
:mod:`surgery.checkpoint._auto` turns a match into explicit rename rules for
``load_partial(rename="auto")``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._boundary import operation
from .._errors import ArgumentError
from ..paths._resolve import check_model, join_path, resolve
from ._align import Entry, align
from ._open import open_source
from ._rename import KeyFilter, RenameRules, RenameSpec
from ._source import TensorSource

__all__ = ["KeyMatch", "match_keys", "match_source"]

_MAX_LISTED = 50


_KINDS: dict[torch.dtype, int] = {}


def _kind(dtype: torch.dtype) -> int:
    """0 bool, 1 integer, 2 floating point, 3 complex."""
    kind = _KINDS.get(dtype)
    if kind is None:
        kind = (
            0
            if dtype == torch.bool
            else 3
            if dtype.is_complex
            else 2
            if dtype.is_floating_point
            else 1
        )
        _KINDS[dtype] = kind
    return kind


@dataclass
class KeyMatch:
    """How a checkpoint's keys map onto a model's, found by :func:`match_keys`.

    Model keys are full paths in the model (``at`` included); checkpoint keys are
    as stored, before renaming.

    Attributes:
        mapping: model key -> checkpoint key, for every matched key (model order).
        how: model key -> ``"name"`` (same name), ``"rename"`` (same name after
            the caller's ``rename``) or ``"structure"`` (inferred).
        ambiguous: groups ``(model keys, candidate checkpoint keys)`` that the
            evidence cannot assign one way; none of them is in ``mapping``.
        unmatched_model: model keys with no counterpart.
        unmatched_checkpoint: selected checkpoint keys with no counterpart.
        mismatched: model key -> (checkpoint key, checkpoint shape, model shape)
            for pairs aligned by name or structure whose shapes differ; never
            loaded.
        reshaped: model key -> (checkpoint shape, model shape) for the keys of
            ``mapping`` whose tensors hold the same values in another shape
            (size-1 dimensions: a ``(C, 1, 1)`` layer scale and a ``(C,)`` one, a
            1x1 convolution and an ``nn.Linear``; or a matrix and a convolution
            kernel, VGG's classifier); ``load_partial(rename="auto")`` loads them
            reshaped (with pinned rules: ``on_mismatch="reshape"``).

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> sd = {k.replace("layer", "stage"): v for k, v in m.state_dict().items()}
        >>> km = surgery.match_keys(sd, m)
        >>> km.mapping["layer1.0.conv1.weight"], km.how["layer1.0.conv1.weight"]
        ('stage1.0.conv1.weight', 'structure')
        >>> km.rules()
        [('^stage(\\\\d+)\\\\.', 'layer\\\\1.')]
    """

    mapping: dict[str, str] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)
    ambiguous: list[tuple[list[str], list[str]]] = field(default_factory=list)
    unmatched_model: list[str] = field(default_factory=list)
    unmatched_checkpoint: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=dict
    )
    reshaped: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def rules(self) -> list[tuple[str, str]]:
        """A short list of ``(regex, replacement)`` pairs that reproduces ``mapping``.

        Pass it as ``load_partial(..., rename=km.rules())`` to pin the mapping in
        code (add ``on_mismatch="reshape"`` when ``reshaped`` is not empty). Prefix rules are generalized over block indices that both sides
        share; the list is checked to rename every mapped checkpoint key to its
        model key and no other checkpoint key onto a model key (otherwise one
        exact rule per key is returned).
        """
        pairs = [(c, m) for m, c in self.mapping.items() if c != m]
        rules = _general_rules(pairs)
        if not self._reproduces(rules):
            rules = [(f"^{re.escape(c)}$", m.replace("\\", "\\\\")) for c, m in pairs]
        return rules

    def _reproduces(self, rules: list[tuple[str, str]]) -> bool:
        compiled = RenameRules.build(rules)
        for m, c in self.mapping.items():
            if compiled.apply(c) != m:
                return False
        targets = set(self.mapping)
        others = list(self.unmatched_checkpoint) + [c for c, _a, _b in self.mismatched.values()]
        others += [c for _ms, cs in self.ambiguous for c in cs if c not in self.mapping.values()]
        return all(compiled.apply(c) not in targets for c in others)

    def to_dict(self) -> dict[str, Any]:
        """The match as JSON-ready data."""
        return {
            "mapping": dict(self.mapping),
            "how": dict(self.how),
            "ambiguous": [{"model": list(ms), "candidates": list(cs)} for ms, cs in self.ambiguous],
            "unmatched_model": list(self.unmatched_model),
            "unmatched_checkpoint": list(self.unmatched_checkpoint),
            "mismatched": {
                m: {"checkpoint": c, "checkpoint_shape": list(a), "model_shape": list(b)}
                for m, (c, a, b) in self.mismatched.items()
            },
            "reshaped": {
                m: {"checkpoint_shape": list(a), "model_shape": list(b)}
                for m, (a, b) in self.reshaped.items()
            },
        }

    def to_json(self, **kwargs: Any) -> str:
        """``json.dumps(self.to_dict(), **kwargs)``."""
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        counts: dict[str, int] = {}
        for h in self.how.values():
            counts[h] = counts.get(h, 0) + 1
        by = ", ".join(f"{n} by {h}" for h, n in sorted(counts.items()))
        lines = [
            f"KeyMatch: {len(self.mapping)} matched ({by or 'none'}), "
            f"{len(self.reshaped)} reshaped, "
            f"{len(self.mismatched)} mismatched, {len(self.ambiguous)} ambiguous group(s), "
            f"{len(self.unmatched_model)} unmatched model key(s), "
            f"{len(self.unmatched_checkpoint)} unmatched checkpoint key(s)"
        ]
        groups: dict[str, list[str]] = {}
        for m in self.mapping:
            groups.setdefault(m.rpartition(".")[0] or "(root)", []).append(m)
        width = max((len(c) for c in self.mapping.values()), default=0)
        for module, keys in groups.items():
            lines.append(f"  {module}")
            for m in keys:
                c = self.mapping[m]
                how = self.how.get(m, "?")
                if m in self.reshaped:
                    a, b = self.reshaped[m]
                    how += f", reshaped {a} -> {b}"
                lines.append(f"    {c.ljust(width)} -> {m}  [{how}]")
        if self.mismatched:
            lines.append(f"  mismatched, never loaded ({len(self.mismatched)}):")
            for m, (c, a, b) in self.mismatched.items():
                lines.append(f"    {c} {a} -> {m} {b}")
        for ms, cs in self.ambiguous:
            lines.append(f"  ambiguous: {', '.join(ms)} <- one of {', '.join(cs)}")
        if self.unmatched_model:
            lines.append(_shown("unmatched model keys", self.unmatched_model))
        if self.unmatched_checkpoint:
            lines.append(_shown("unmatched checkpoint keys", self.unmatched_checkpoint))
        return "\n".join(lines)


def _shown(title: str, keys: Sequence[str]) -> str:
    head = ", ".join(map(repr, keys[:_MAX_LISTED]))
    more = f", ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return f"  {title} ({len(keys)}): {head}{more}"


# ---------------------------------------------------------------------------
# rules(): generalized prefix rules
# ---------------------------------------------------------------------------

_NUM = re.compile(r"\d+")


def _split_common_suffix(c: str, m: str) -> tuple[str, str, str]:
    cs, ms = c.split("."), m.split(".")
    n = 0
    while n < min(len(cs), len(ms)) and cs[-1 - n] == ms[-1 - n]:
        n += 1
    if n == 0:
        return c, m, ""
    return ".".join(cs[:-n]), ".".join(ms[:-n]), ".".join(cs[-n:])


def _template(c: str, m: str) -> tuple[str, str]:
    """(regex, replacement) for prefix ``c`` -> ``m``, numbers shared by both generalized."""
    m_nums = [x.group() for x in _NUM.finditer(m)]
    pattern, groups, pos = "", [], 0
    for x in _NUM.finditer(c):
        pattern += re.escape(c[pos : x.start()])
        if x.group() in m_nums and x.group() not in groups:
            groups.append(x.group())
            pattern += r"(\d+)"
        else:
            pattern += re.escape(x.group())
        pos = x.end()
    pattern += re.escape(c[pos:])
    repl, pos, placed = "", 0, set()
    for x in _NUM.finditer(m):
        repl += m[pos : x.start()].replace("\\", "\\\\")
        if x.group() in groups and x.group() not in placed:  # each number is used once
            placed.add(x.group())
            repl += f"\\{groups.index(x.group()) + 1}"
        else:
            repl += x.group()
        pos = x.end()
    repl += m[pos:].replace("\\", "\\\\")
    return pattern, repl


def _rule(cp: str, mp: str, rest: str) -> tuple[str, str]:
    """The rule renaming prefix ``cp`` to ``mp`` in front of the common ``rest``."""
    pat, repl = _template(cp, mp)
    if not rest:
        return f"^{pat}$", repl
    if not cp:  # a prefix added in front of the whole key: one key at a time
        pat_all, repl_all = _template(rest, f"{mp}.{rest}")
        return f"^{pat_all}$", repl_all
    return f"^{pat}\\.", f"{repl}." if mp else ""


def _general_rules(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    rules: dict[str, str] = {}
    conflict: set[str] = set()
    order: list[str] = []
    for c, m in pairs:
        cp, mp, rest = _split_common_suffix(c, m)
        pat, repl = _rule(cp, mp, rest)
        if pat in rules and rules[pat] != repl:
            conflict.add(pat)
        elif pat not in rules:
            rules[pat] = repl
            order.append(pat)
    out = [(p, rules[p]) for p in order if p not in conflict]
    if conflict:  # literal rules for the keys whose generalization conflicts
        done = {p for p, _ in out}
        for c, m in pairs:
            pat, _ = _rule(*_split_common_suffix(c, m))
            if pat in done:
                continue
            out.append((f"^{re.escape(c)}$", m.replace("\\", "\\\\")))
    return out


# ---------------------------------------------------------------------------
# matching
# ---------------------------------------------------------------------------


def match_source(
    src: TensorSource,
    keyfilter: KeyFilter,
    rules: RenameRules,
    model: nn.Module,
    at: str | None,
) -> KeyMatch:
    """Match the selected, renamed keys of ``src`` to the tensors of ``model`` under ``at``."""
    target = resolve(model, at or "")
    root = target.module
    prefix = target.container_name if target.is_slice else target.name
    renamed: list[tuple[str, str]] = []  # (checkpoint key, renamed key)
    all_keys = src.keys()
    for k in all_keys:
        if keyfilter.selects(k):
            new = rules.apply(k)
            if new is not None:
                renamed.append((k, new))
    ckpt = []
    for k, new in renamed:
        info = src.info(k)
        ckpt.append(Entry(new, tuple(info.shape), _kind(info.dtype)))
    model_sd = root.state_dict(keep_vars=True)
    items = [(k, v) for k, v in model_sd.items() if isinstance(v, torch.Tensor)]
    entries = [Entry(k, tuple(v.shape), _kind(v.dtype)) for k, v in items]
    result = align(ckpt, entries)
    km = KeyMatch()
    for j, (k, _v) in enumerate(items):
        full = join_path(prefix, k)
        if j in result.matched:
            i, how = result.matched[j]
            orig, new = renamed[i]
            km.mapping[full] = orig
            km.how[full] = "rename" if how == "name" and orig != new else how
            if ckpt[i].shape != entries[j].shape:
                km.reshaped[full] = (ckpt[i].shape, entries[j].shape)
        elif j in result.mismatched:
            i = result.mismatched[j]
            km.mismatched[full] = (renamed[i][0], ckpt[i].shape, entries[j].shape)
    in_groups_m = {j for ms, _ in result.ambiguous for j in ms}
    in_groups_c = {i for _, cs in result.ambiguous for i in cs}
    for ms, cs in result.ambiguous:
        km.ambiguous.append(
            ([join_path(prefix, items[j][0]) for j in ms], [renamed[i][0] for i in cs])
        )
    km.unmatched_model = [
        join_path(prefix, k)
        for j, (k, _v) in enumerate(items)
        if j not in result.matched and j not in result.mismatched and j not in in_groups_m
    ]
    used_c = {i for i, _h in result.matched.values()} | set(result.mismatched.values())
    km.unmatched_checkpoint = [
        orig for i, (orig, _n) in enumerate(renamed) if i not in used_c and i not in in_groups_c
    ]
    return km


def _check_rename(rename: Any) -> None:
    if isinstance(rename, str):
        raise ArgumentError(
            f"match_keys takes explicit rename rules only (dict, (regex, replacement) pairs or a "
            f"callable), got {rename!r}; rename='auto' belongs to load_partial"
        )


def match_keys(
    source: Any,
    model: nn.Module,
    *,
    at: str | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    rename: RenameSpec = None,
) -> KeyMatch:
    """Map a checkpoint's keys onto a model's: by name, then by structure; never by guess.

    Keys equal to a model key (after ``rename``) are taken as they are. The
    remaining model tensors are aligned with the remaining checkpoint tensors by
    registration order, shapes and dtypes, the module tree and leaf names (see
    ``docs/matching.md``). A key whose counterpart is not proven unique goes to
    ``ambiguous`` and is not mapped. Only headers are read; the model is not
    changed. ``load_partial(..., rename="auto")`` loads through this match.

    Args:
        source: anything :func:`load_partial` accepts (a file, a directory, a
            Mapping of tensors, an ``nn.Module``).
        model: the model whose keys are the targets (may be on the meta device).
        at: a module path of ``model``; checkpoint keys are matched against the
            tensors under it.
        include: pattern(s) selecting checkpoint keys (as in ``load_partial``).
        exclude: pattern(s) removed from the selection.
        rename: explicit rename rules applied before matching (as in
            ``load_partial``).

    Returns:
        A :class:`KeyMatch`.

    Raises:
        CheckpointError: the file is missing, unreadable, corrupt or unsafe.
        LoadError: the source is not a state dict.
        ArgumentError: an argument has the wrong type or value.
        PathNotFoundError: ``at`` names no module of ``model``.

    Example:
        >>> import torch, torchvision, surgery
        >>> from torch import nn
        >>> tv = torchvision.models.vgg11(weights=None).features[:3]   # conv, relu, pool
        >>> mine = nn.Module()
        >>> mine.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU())
        >>> km = surgery.match_keys(tv, mine)
        >>> km.mapping
        {'stem.0.weight': '0.weight', 'stem.0.bias': '0.bias'}
        >>> km.how["stem.0.weight"], km.ambiguous
        ('structure', [])
    """
    with operation("match_keys", model=model):
        check_model(model, "match_keys")
        if at is not None and not isinstance(at, str):
            raise ArgumentError(f"at must be a module path (str), got {type(at).__name__}")
        _check_rename(rename)
        rules = RenameRules.build(rename)
        src = open_source(source)
        try:
            keyfilter = KeyFilter.build(include, exclude, src.keys())
            return match_source(src, keyfilter, rules, model, at)
        finally:
            if src is not source:
                src.close()
