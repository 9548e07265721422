"""Swap modules by pattern and type: ``swap`` and its report, a pure planner on the edit engine.

Every selected module (outermost first; selected descendants of a swapped
module are not visited) goes through the caller's factory once, shared
modules included. All factory calls run, and every result is checked and
placed (mode, device, dtype) before the engine commits anything.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._boundary import building, operation, user_call
from .._errors import ArgumentError, SurgeryError
from ..paths._grammar import Slice, compile_pattern, parse_path
from ..paths._index import ModuleIndex, on_chain
from ..paths._resolve import check_model, select
from ._engine import Planner, check_aliases, run_plan
from ._plan import EditPlan

__all__ = ["SwapReport", "swap"]


@dataclass
class SwapReport:
    """What :func:`swap` did (or, with ``dry_run=True``, would do).

    Attributes:
        swapped: path -> (old type name, new type name), for every module replaced.
        kept: paths where the factory returned the module itself.
        skipped_nested: selected paths inside a swapped module (not visited).
        shared: path -> the other paths of the same module object (swapped at all).
        plan: the engine's :class:`~surgery.EditPlan`.
        dry_run: True when nothing was installed.

    Example:
        >>> import torch, torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> report = surgery.swap(m, "layer1.**", lambda mod: torch.nn.SiLU(), types=torch.nn.ReLU)
        >>> report.swapped
        {'layer1.0.relu': ('ReLU', 'SiLU'), 'layer1.1.relu': ('ReLU', 'SiLU')}
        >>> print(report)
        swap(ResNet): 2 swapped, 0 kept, 0 nested skipped
          path           old   new   note
          layer1.0.relu  ReLU  SiLU  -
          layer1.1.relu  ReLU  SiLU  -
    """

    model_type: str
    swapped: dict[str, tuple[str, str]] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    skipped_nested: list[str] = field(default_factory=list)
    shared: dict[str, list[str]] = field(default_factory=dict)
    plan: EditPlan | None = field(default=None, repr=False, compare=False)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths and type names."""
        return {
            "model_type": self.model_type,
            "swapped": {p: list(t) for p, t in self.swapped.items()},
            "kept": list(self.kept),
            "skipped_nested": list(self.skipped_nested),
            "shared": {p: list(o) for p, o in self.shared.items()},
            "dry_run": self.dry_run,
        }

    def to_json(self, **kwargs: Any) -> str:
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        head = (
            f"swap({self.model_type}): {len(self.swapped)} swapped, {len(self.kept)} kept, "
            f"{len(self.skipped_nested)} nested skipped" + (" (dry run)" if self.dry_run else "")
        )
        rows: list[tuple[str, ...]] = [("path", "old", "new", "note")]
        for p, (old, new) in self.swapped.items():
            note = f"shared with {', '.join(self.shared[p])}" if p in self.shared else "-"
            rows.append((p, old, new, note))
        rows += [(p, "", "", "kept") for p in self.kept]
        rows += [(p, "", "", "nested: not visited") for p in self.skipped_nested]
        if len(rows) == 1:
            return head
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [head] + [
            "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows
        ]
        return "\n".join(lines)


def _takes_path(factory: Callable[..., Any]) -> bool:
    """``factory(module, path)`` unless it takes exactly one positional parameter."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2


def _where(module: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """The device of ``module``'s first tensor and its first floating dtype (None: none)."""
    device = None
    stack = [module]
    while stack:
        m = stack.pop()
        for tensors in (m._parameters, m._buffers):
            for t in tensors.values():
                if t is None:
                    continue
                if device is None:
                    device = t.device
                if t.is_floating_point():
                    return device, t.dtype
        if m._modules:
            stack.extend(reversed([c for c in m._modules.values() if c is not None]))
    return device, None


def _misplaced(
    tensors: dict[str, Any], device: torch.device | None, dtype: torch.dtype | None
) -> bool:
    for t in tensors.values():
        if t is None:
            continue
        if device is not None and t.device != device:
            return True
        if dtype is not None and t.dtype != dtype and t.is_floating_point():
            return True
    return False


def _place(new: nn.Module, old: nn.Module, in_model: dict[int, Any], keep_dtype: bool) -> None:
    """Give the new parts of ``new`` the old module's mode, device and floating dtype.

    Parts of the model inside ``new`` (a wrapped original) are never touched;
    tensors already on the right device with the right dtype are not moved.
    """
    mode = old.training
    where: tuple[torch.device | None, torch.dtype | None] | None = None  # found on first need
    stack, seen = [new], set()
    while stack:
        m = stack.pop()
        if id(m) in in_model or id(m) in seen:
            continue  # a module of the model (a wrapped original): left as it is
        seen.add(id(m))
        if m.training != mode:
            m.training = mode
        if m._modules:
            stack.extend(c for c in m._modules.values() if c is not None)
        if not (m._parameters or m._buffers):
            continue
        if where is None:
            device, dtype = _where(old)
            where = (device, None if keep_dtype else dtype)
        device, dtype = where
        if (device is not None or dtype is not None) and (
            _misplaced(m._parameters, device, dtype) or _misplaced(m._buffers, device, dtype)
        ):
            m._apply(
                lambda x, d=device, f=dtype: x.to(
                    device=d, dtype=f if x.is_floating_point() else None
                ),
                recurse=False,
            )


def swap(
    model: nn.Module,
    pattern: str,
    factory: Callable[..., nn.Module],
    *,
    types: Any = None,
    keep_dtype: bool = False,
    aliases: str = "warn",
    dry_run: bool = False,
) -> SwapReport:
    """Replace every module ``pattern`` (and ``types``) selects by ``factory``'s result, in place.

    ``factory(module, path)`` is called (``factory(module)`` when it takes one
    positional parameter) for each selected module, outermost first: selected
    descendants of a swapped module are not visited (``skipped_nested``). A
    module reachable under several paths is passed once and its result is
    installed at all of them (the engine's alias policy: one
    :class:`~surgery.SharedModuleWarning`; ``aliases="error"`` refuses).
    Returning the module itself keeps it.

    Every factory call runs first, and every result is checked: it must be an
    ``nn.Module`` that is not the model or one of the target's ancestors. Then
    each new module takes the old one's train/eval mode, its tensors move to
    the old module's device, and its floating-point tensors are cast to the old
    module's floating dtype unless ``keep_dtype=True``. Only then is anything
    installed.

    Args:
        model: the model to change, in place.
        pattern: a path, glob or ``re:`` pattern (not a slice).
        factory: ``module -> new module`` or ``(module, path) -> new module``;
            see :mod:`surgery.layers` for ready-made ones.
        types: keep only modules of these types (see :func:`surgery.find`).
        keep_dtype: keep the new modules' floating dtypes.
        aliases: ``"warn"`` (default) or ``"error"`` for a shared module.
        dry_run: run the factories, install nothing, return the report.

    Returns:
        A :class:`SwapReport`.

    Raises:
        PathNotFoundError: the pattern or ``types`` matches nothing.
        ArgumentError: a bad ``types``, a slice pattern, or a factory result that
            is not a module, is the model or an ancestor (a cycle).
        SurgeryError: the factory raised (the original is the ``__cause__``).

    On any error the model is unchanged.

    Example:
        >>> import torch, torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> report = surgery.swap(m, "**", surgery.layers.group_norm(32), types="BatchNorm2d")
        >>> len(report.swapped), type(m.layer1[0].bn1).__name__
        (20, 'GroupNorm')
        >>> surgery.swap(m, "**", surgery.layers.activation(torch.nn.SiLU), types=torch.nn.ReLU).swapped["relu"]
        ('ReLU', 'SiLU')
        >>> m.relu
        SiLU(inplace=True)
    """
    with operation("swap", model=model, path=pattern):
        check_model(model, "swap")
        policy = check_aliases(aliases)
        if not callable(factory):
            raise ArgumentError(
                f"factory must be a callable (module) -> module or (module, path) -> module, "
                f"got {type(factory).__name__}"
            )
        if (
            isinstance(pattern, str)
            and compile_pattern(pattern).kind == "path"
            and any(isinstance(s, Slice) for s in parse_path(pattern).segments)
        ):
            raise ArgumentError(
                f"swap(model, {pattern!r}, ...): a slice names a range of a container, not "
                f"modules to swap one by one.\n  name the entries instead: "
                f"surgery.swap(model, {pattern.split('[')[0] + '.*'!r}, factory, types=...)",
                path=pattern,
            )
        index = ModuleIndex(model)  # one walk serves the selection, the plan and the checks
        selected = select(model, pattern, types, index=index)
        planner = Planner(model, "swap", index)
        in_model = index.first
        report = SwapReport(type(model).__name__, dry_run=dry_run)
        chosen: set[int] = set()
        with_path = _takes_path(factory)
        for path, module in selected:
            locations = index.locations(module)
            if chosen and any(on_chain(loc.chain, chosen) is not None for loc in locations):
                report.skipped_nested.append(path)
                continue
            if not locations:
                raise ArgumentError("cannot swap the root module: swap its children instead")
            args = (module, path) if with_path else (module,)
            new = user_call(factory, *args, what=f"the factory for {path!r}", path=path)
            chosen.add(id(module))  # kept or swapped: its selected descendants are not visited
            if new is module:
                report.kept.append(path)
                continue
            if not isinstance(new, nn.Module):
                raise ArgumentError(
                    f"the factory for {path!r} returned {type(new).__name__}, not an nn.Module",
                    path=path,
                )
            if new is model:
                raise ArgumentError(
                    f"the factory for {path!r} returned the model itself: that would make the "
                    f"model contain itself (a cycle)",
                    path=path,
                )
            with building(
                f"move the factory's module for {path!r} to the old module's device or dtype",
                error=SurgeryError,
                path=path,
            ):
                _place(new, module, in_model, keep_dtype)
            edit = planner.replace(module, new, path=path)
            report.swapped[path] = (type(module).__name__, type(new).__name__)
            if edit.aliases:
                report.shared[path] = list(edit.aliases)
        report.plan = run_plan(planner.finish(policy), dry_run=dry_run)
        return report
