"""Layer groups and optimizer parameter groups (discriminative learning rates).

``layer_groups`` cuts ``named_parameters`` into consecutive groups at module
paths (fastai's semantics); ``param_groups`` turns those groups into the list
of dicts every ``torch.optim`` optimizer takes, with one learning rate per
group. Parse -> plan -> apply: :func:`split_plan` resolves and validates every
path before anything is computed from it.
"""

from __future__ import annotations

import bisect
import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .._errors import ArgumentError, PathNotFoundError
from ..paths._grammar import Path, compile_pattern
from ..paths._resolve import check_model, select

__all__ = [
    "Selection",
    "SplitPlan",
    "layer_groups",
    "lr_per_group",
    "param_groups",
    "select_targets",
    "split_plan",
]


# ---------------------------------------------------------------------------
# resolving patterns to modules and parameters (shared with _freeze)
# ---------------------------------------------------------------------------


@dataclass
class Selection:
    """What one pattern names: modules (with every parameter under them) or,
    when no module matches, parameters by name."""

    pattern: str
    modules: list[tuple[str, nn.Module]] = field(default_factory=list)
    params: list[str] = field(default_factory=list)  # canonical names, model order


def _canonical_names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def select_targets(model: nn.Module, pattern: str | Path, types: Any = None) -> Selection:
    """Resolve ``pattern`` to modules, or to parameter names when it names no module.

    A module path (or glob) selects every parameter under the matched modules;
    ``"fc.bias"`` or ``"**.bias"`` select parameters directly. With ``types``,
    only modules of those types are selected (see :func:`surgery.find`).

    Raises:
        PathSyntaxError: the pattern does not parse.
        PathNotFoundError: it names neither a module nor a parameter (the error
            of the module lookup, which shows what exists).
    """
    text = str(pattern)
    canon = _canonical_names(model)
    try:
        modules = select(model, pattern, types)
    except PathNotFoundError as module_error:
        if types is not None:
            raise
        params = _select_param_names(model, text, canon)
        if not params:
            raise module_error from None
        return Selection(text, [], params)
    seen: set[int] = set()
    ids: list[int] = []
    for _, m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                ids.append(id(p))
    order = {pid: i for i, pid in enumerate(canon)}
    names = [canon[i] for i in sorted(ids, key=order.__getitem__)]
    return Selection(text, modules, names)


def _select_param_names(model: nn.Module, text: str, canon: dict[int, str]) -> list[str]:
    if isinstance(text, str) and not text.startswith("re:") and "[" in text:
        return []  # slices and bracketed indices name modules only
    try:
        pat = compile_pattern(text)
    except Exception:
        return []
    found: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if pat.matches(name) and id(p) not in found:
            found[id(p)] = canon[id(p)]
    order = {pid: i for i, pid in enumerate(canon)}
    return [found[i] for i in sorted(found, key=order.__getitem__)]


# ---------------------------------------------------------------------------
# layer groups
# ---------------------------------------------------------------------------


@dataclass
class SplitPlan:
    """Layer groups of a model, resolved and validated.

    ``groups`` holds canonical parameter names (as ``named_parameters`` gives
    them); ``starts`` the index in that order where each split path begins;
    ``module_group(m)`` the group a module belongs to (a module with
    parameters: the group of its first own parameter; one without: the group
    its position in ``named_modules`` falls into).
    """

    split_at: list[str]
    groups: list[list[str]]
    starts: list[int]
    _by_param: dict[int, int] = field(default_factory=dict, repr=False)
    _positions: dict[int, int] = field(default_factory=dict, repr=False)
    _split_positions: list[int] = field(default_factory=list, repr=False)

    def module_group(self, module: nn.Module) -> int:
        for p in module.parameters(recurse=False):
            if id(p) in self._by_param:
                return self._by_param[id(p)]
        pos = self._positions.get(id(module), 0)
        return bisect.bisect_right(self._split_positions, pos)


def _normalize_split_at(split_at: Any) -> list[str]:
    if split_at is None:
        return []
    if isinstance(split_at, (str, Path)):
        return [str(split_at)]
    if isinstance(split_at, Sequence):
        out = []
        for s in split_at:
            if not isinstance(s, (str, Path)):
                raise ArgumentError(
                    f"split_at must hold module paths (str), got {type(s).__name__} {s!r} "
                    f"in {list(split_at)!r}"
                )
            out.append(str(s))
        return out
    raise ArgumentError(
        f"split_at must be a list of module paths such as ['layer3', 'fc'], got "
        f"{type(split_at).__name__} {split_at!r}"
    )


def split_plan(model: nn.Module, split_at: Any) -> SplitPlan:
    """Resolve ``split_at`` against ``model`` and cut its parameters into groups.

    Raises:
        ArgumentError: a path has no parameters of its own, the paths are out of
            order, or the first path starts at the very first parameter.
        PathNotFoundError: a path names no module.
    """
    check_model(model, "layer groups")
    paths = _normalize_split_at(split_at)
    named = list(model.named_parameters())
    index = {id(p): i for i, (_, p) in enumerate(named)}
    positions: dict[int, int] = {}
    owner_pos: dict[int, int] = {}  # param index -> position of the module that owns it first
    owned: dict[int, list[int]] = {}  # id(module) -> indices of params it owns first
    claimed: set[int] = set()
    for pos, (_, m) in enumerate(model.named_modules()):
        positions[id(m)] = pos
        for p in m.parameters(recurse=False):
            if id(p) not in claimed:
                claimed.add(id(p))
                owned.setdefault(id(m), []).append(index[id(p)])
                owner_pos[index[id(p)]] = pos

    starts: list[int] = []
    split_positions: list[int] = []
    labels: list[str] = []
    for text in paths:
        units: list[list[tuple[str, nn.Module]]]
        found = select(model, text)
        is_path = compile_pattern(text).kind == "path"
        if is_path:
            units = [found]  # a path (or a slice of one) starts one group
        else:
            units = [[nm] for nm in found]  # a glob starts a group at every match
        unit_starts: list[tuple[int, int, str]] = []
        for unit in units:
            ids = {id(sub) for _, m in unit for sub in m.modules()}
            first = [i for mid in ids for i in owned.get(mid, [])]
            label = unit[0][0] if len(unit) == 1 else text
            if not first:
                if not is_path:
                    continue  # a glob match without parameters (e.g. a ReLU) starts nothing
                raise ArgumentError(
                    f"split_at path {text!r} has no parameters of its own (it has none, or "
                    f"they are counted where they first appear), so it cannot start a group; "
                    f"drop it or name the next module that has parameters"
                )
            start = min(first)
            if unit_starts and unit_starts[-1][0] == start:
                continue  # a glob matching a module and its first child
            unit_starts.append((start, owner_pos[start], label))
        if not unit_starts:
            raise ArgumentError(
                f"split_at pattern {text!r} matches only modules without parameters "
                f"({', '.join(n for n, _ in found[:5])}), so it cannot start a group"
            )
        for start, pos, label in unit_starts:
            if start == 0:
                raise ArgumentError(
                    f"split_at path {label!r} starts at the first parameter "
                    f"({named[0][0]!r}), so the group before it would be empty; drop it "
                    f"(the first group always starts at the first parameter)"
                )
            if starts and start <= starts[-1]:
                prev = labels[-1]
                raise ArgumentError(
                    f"split_at paths out of order: {label!r} (first parameter "
                    f"{named[start][0]!r}) does not come after {prev!r} (first parameter "
                    f"{named[starts[-1]][0]!r}); list the paths in model order, each "
                    f"starting a new group"
                )
            starts.append(start)
            split_positions.append(pos)
            labels.append(label)

    bounds = [0, *starts, len(named)]
    groups = [[named[i][0] for i in range(a, b)] for a, b in itertools.pairwise(bounds)]
    if not named:
        groups = []
    by_param: dict[int, int] = {}
    for g, (a, b) in enumerate(itertools.pairwise(bounds)):
        for i in range(a, b):
            by_param[id(named[i][1])] = g
    return SplitPlan(paths, groups, starts, by_param, positions, split_positions)


def layer_groups(model: nn.Module, split_at: Sequence[str] | str | None) -> list[list[str]]:
    """Parameter names cut into consecutive groups, each path in ``split_at`` starting one.

    fastai's semantics: the groups follow ``named_parameters`` order, every
    parameter is in exactly one group, and a shared parameter is counted where
    it first appears. A path may be a slice (``"features[7:]"``, one group
    starting at its first member); a glob starts a group at each match that
    has parameters (``"layer*"`` gives one group per stage).

    Args:
        model: any ``nn.Module``.
        split_at: module paths in model order; ``[]`` or ``None`` gives one group.

    Returns:
        A list of groups, each a list of parameter names.

    Raises:
        PathNotFoundError: a path names no module (the message shows what exists).
        ArgumentError: a path has no parameters of its own, or the paths are not
            in model order, or the first one starts at the very first parameter.

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> groups = surgery.layer_groups(m, ["layer3", "fc"])
        >>> [len(g) for g in groups]
        [30, 30, 2]
        >>> groups[1][0], groups[2]
        ('layer3.0.conv1.weight', ['fc.weight', 'fc.bias'])
    """
    return split_plan(model, split_at).groups


# ---------------------------------------------------------------------------
# learning rates and optimizer groups
# ---------------------------------------------------------------------------


def _number(value: Any, what: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentError(f"{what} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        bound = "> 0" if positive else ">= 0"
        raise ArgumentError(f"{what} must be a finite number {bound}, got {value!r}")
    return v


def lr_per_group(lr: Any, n: int) -> list[float]:
    """One learning rate per group, with fastai's meaning of ``lr``.

    * a number: the same rate for every group;
    * a sequence: one rate per group (its length must be ``n``);
    * ``slice(lo, hi)``: geometric from ``lo`` (first group) to ``hi`` (last);
    * ``slice(hi)``: ``hi / 10`` for every group but the last, ``hi`` for the last.

    Example:
        >>> from surgery.train._groups import lr_per_group
        >>> [round(x, 6) for x in lr_per_group(slice(1e-5, 1e-3), 3)]
        [1e-05, 0.0001, 0.001]
        >>> lr_per_group(slice(1e-3), 3)
        [0.0001, 0.0001, 0.001]
    """
    if isinstance(lr, slice):
        if lr.step is not None:
            raise ArgumentError(f"lr=slice(...) takes no step, got {lr!r}")
        hi = _number(lr.stop, "the stop of lr=slice(lo, hi)", positive=True)
        if lr.start is None:
            return [hi / 10] * (n - 1) + [hi]
        lo = _number(lr.start, "the start of lr=slice(lo, hi)")
        if lo == 0:
            raise ArgumentError(
                f"lr={lr!r}: geometric rates need lo > 0; for fastai's 'hi/10 for the "
                f"earlier groups' rule write lr=slice({lr.stop!r})"
            )
        if n == 1:
            return [hi]
        step = (hi / lo) ** (1 / (n - 1))  # fastai's even_mults
        return [lo * step**i for i in range(n)]
    if isinstance(lr, (str, bytes)) or not (
        isinstance(lr, Sequence) or (hasattr(lr, "__len__") and hasattr(lr, "__iter__"))
    ):
        return [_number(lr, "lr")] * n
    rates = [_number(v, f"lr[{i}]") for i, v in enumerate(lr)]
    if len(rates) != n:
        raise ArgumentError(
            f"lr has {len(rates)} rates but there are {n} layer groups: pass exactly one "
            f"rate per group, a single number, or slice(lo, hi)"
        )
    return rates


def param_groups(
    model: nn.Module,
    lr: float | Sequence[float] | slice,
    *,
    split_at: Sequence[str] | str | None = None,
    weight_decay: float | None = None,
    layer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups with one learning rate per layer group.

    The layer groups are those of :func:`layer_groups`. Only trainable
    parameters (``requires_grad=True``) are included, so a frozen weight is
    never touched by weight decay; a group whose parameters are all frozen is
    left out of the result (it still counts in ``n`` for the rates). Rebuild the
    optimizer after unfreezing. The dicts hold ``"params"``, ``"lr"`` and, if
    given, ``"weight_decay"``: pass them to any ``torch.optim`` optimizer, and
    schedulers scale every group.

    Args:
        model: any ``nn.Module``.
        lr: a number (every group), a sequence (one per group), ``slice(lo, hi)``
            (geometric from the first group to the last) or ``slice(hi)``
            (``hi / 10`` for all but the last group) — fastai's semantics.
        split_at: module paths in model order, each starting a group (None: one group).
        weight_decay: a decay for every group; ``None`` keeps the optimizer's default.
        layer_decay: ``d`` gives group ``i`` of ``n`` the rate ``lr * d ** (n - 1 - i)``
            (needs a single-number ``lr``).

    Returns:
        A list of dicts for ``torch.optim``, in group order.

    Raises:
        ArgumentError: a bad rate, a sequence whose length is not the number of
            groups, ``layer_decay`` with a non-number ``lr``, or no trainable
            parameter at all.
        PathNotFoundError: a ``split_at`` path names no module.

    Example:
        >>> import torch, torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> groups = surgery.param_groups(m, slice(1e-4, 1e-2), split_at=["layer3", "fc"])
        >>> [round(g["lr"], 6) for g in groups]
        [0.0001, 0.001, 0.01]
        >>> opt = torch.optim.AdamW(groups, weight_decay=0.01)
        >>> groups = surgery.param_groups(m, 1e-3, split_at=["layer3", "fc"], layer_decay=0.5)
        >>> [g["lr"] for g in groups]
        [0.00025, 0.0005, 0.001]
    """
    plan = split_plan(model, split_at)
    n = len(plan.groups)
    if n == 0:
        raise ArgumentError(f"{type(model).__name__} has no parameters to optimize")
    if layer_decay is not None:
        d = _number(layer_decay, "layer_decay", positive=True)
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
            raise ArgumentError(
                f"layer_decay scales a single rate, but lr={lr!r}: pass one number, e.g. "
                f"param_groups(model, 1e-3, split_at=..., layer_decay={layer_decay!r}), or "
                f"drop layer_decay and give the rates yourself"
            )
        base = _number(lr, "lr")
        rates = [base * d ** (n - 1 - i) for i in range(n)]
    else:
        rates = lr_per_group(lr, n)
    wd = None if weight_decay is None else _number(weight_decay, "weight_decay")
    params = dict(model.named_parameters())
    out: list[dict[str, Any]] = []
    for names, rate in zip(plan.groups, rates):
        trainable = [params[nm] for nm in names if params[nm].requires_grad]
        if not trainable:
            continue
        group: dict[str, Any] = {"params": trainable, "lr": rate}
        if wd is not None:
            group["weight_decay"] = wd
        out.append(group)
    if not out:
        raise ArgumentError(
            f"every parameter of {type(model).__name__} is frozen, so there is nothing to "
            f"optimize: unfreeze some first (surgery.unfreeze(model, 'fc') or "
            f"surgery.freeze_to(model, -1, split_at=...))"
        )
    return out
