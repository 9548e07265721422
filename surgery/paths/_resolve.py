"""Resolve paths against a model: targets, selections, ``get`` and ``find``.

Every public function here is parse -> plan -> apply: the path is parsed, then
resolved to a :class:`Target` (parent, key, module) without changing anything,
and only a complete, valid plan is applied.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .._errors import ArgumentError, PathNotFoundError
from ._grammar import Path, Slice, compile_pattern, parse_path
from ._index import ModuleIndex
from ._types import describe_types, type_matcher

__all__ = [
    "CONTAINERS",
    "LIST_LIKE",
    "Target",
    "check_model",
    "find",
    "get",
    "join_path",
    "module_paths",
    "not_found_message",
    "resolve",
    "select",
]

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
LIST_LIKE = (nn.Sequential, nn.ModuleList)
_TREE_HINT = "list valid paths with surgery.tree(model) or `surgery tree`"


@dataclass
class Target:
    """A resolved path: where a module lives, so that it can be replaced.

    For a slice, ``module`` is a new container (same class) holding the members,
    ``key`` is None and ``member_keys`` lists their keys in ``parent``.
    """

    path: Path
    name: str  # dotted name as named_modules gives it ("" for the root)
    module: nn.Module
    parent: nn.Module | None = None
    key: str | None = None
    member_keys: list[str] = field(default_factory=list)
    container_name: str = ""  # for a slice: the name of the sliced container

    @property
    def is_slice(self) -> bool:
        return self.key is None and self.parent is not None

    def member_names(self) -> list[str]:
        return [join_path(self.container_name, k) for k in self.member_keys]


def check_model(model: object, op: str) -> nn.Module:
    """Raise ArgumentError unless ``model`` is an ``nn.Module`` (``op`` names the caller)."""
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"{op} expects an nn.Module, got {type(model).__name__}")
    return model


def join_path(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _children(module: nn.Module) -> list[str]:
    return [k for k, v in module._modules.items() if v is not None]


def not_found_message(
    model: nn.Module, text: str, resolved: str, module: nn.Module, wanted: str, detail: str = ""
) -> str:
    """The 'not found' message: longest resolved prefix, children there, closest match."""
    children = _children(module)
    where = repr(resolved) if resolved else "the root"
    lines = [
        f"no module at {text!r} in {type(model).__name__}: {wanted!r} not found under {where} ({type(module).__name__})"
    ]
    if detail:
        lines.append(f"  {detail}")
    if children:
        shown = ", ".join(children[:20]) + (", ..." if len(children) > 20 else "")
        lines.append(f"  children there: {shown}")
        close = difflib.get_close_matches(wanted, children, n=1)
        if close:
            lines.append(f"  did you mean {join_path(resolved, close[0])!r}?")
    else:
        lines.append(f"  {where} has no children")
    lines.append(f"  {_TREE_HINT}")
    return "\n".join(lines)


def _slice_container(module: nn.Module, keys: list[str]) -> nn.Module:
    """A new container of the same class as ``module`` holding the members ``keys``."""
    items: list[tuple[str, nn.Module]] = [(k, module._modules[k]) for k in keys]  # type: ignore[misc]
    if isinstance(module, nn.Sequential):
        try:
            return type(module)(OrderedDict(items))
        except Exception:  # a subclass with its own __init__ signature
            return nn.Sequential(OrderedDict(items))
    try:
        return type(module)([m for _, m in items])
    except Exception:
        return nn.ModuleList([m for _, m in items])


def resolve(model: nn.Module, path: str | Path) -> Target:
    """Resolve ``path`` against ``model`` without changing anything.

    Raises:
        PathSyntaxError: the path does not parse.
        PathNotFoundError: no module there; the message shows what exists.
    """
    check_model(model, "resolving a path")
    p = parse_path(path)
    text = str(path)
    module = model
    name = ""
    parent: nn.Module | None = None
    key: str | None = None
    member_keys: list[str] = []
    # after a slice, the new container holds the original keys: edits go to the origin
    origin: tuple[nn.Module, str] | None = None
    for seg in p.segments:
        modules = module._modules
        if isinstance(seg, Slice):
            if not isinstance(module, LIST_LIKE):
                raise PathNotFoundError(
                    f"cannot slice {name or 'the root'!r} in {text!r}: it is a "
                    f"{type(module).__name__}, and only Sequential and ModuleList can be sliced.\n"
                    f"  slice a container instead, or name the children one by one "
                    f"(surgery.find(model, {(name + '.*') if name else '*'!r}))",
                    text,
                )
            keys = _children(module)[seg.to_slice()]
            if origin is not None:  # a slice of a slice: keep pointing at the real container
                parent, base = origin
            else:
                parent, base = module, name
            key, member_keys = None, keys
            origin = (parent, base)
            module = _slice_container(parent, keys)
            name = f"{name}[{seg}]"
            continue
        child_key: str | None = None
        if isinstance(seg, str):
            if modules.get(seg) is not None:
                child_key = seg
        elif seg >= 0 and modules.get(str(seg)) is not None:
            child_key = str(seg)
        elif isinstance(module, CONTAINERS):
            children = _children(module)
            if -len(children) <= seg < len(children):
                child_key = children[seg]
            else:
                raise PathNotFoundError(
                    f"index {seg} out of range in {text!r}: {name or 'the root'!r} is a "
                    f"{type(module).__name__} of length {len(children)}"
                    + (
                        f" (valid: 0..{len(children) - 1} or -{len(children)}..-1)"
                        if children
                        else ""
                    )
                    + f"\n  {_TREE_HINT}",
                    text,
                )
        if child_key is None:
            detail = ""
            if isinstance(seg, int):
                detail = (
                    f"{type(module).__name__} is not a Sequential/ModuleList/ModuleDict, "
                    "so integers are names here"
                )
            raise PathNotFoundError(
                not_found_message(model, text, name, module, str(seg), detail), text
            )
        if origin is not None:
            parent, name = origin
        else:
            parent = module
        origin, key, member_keys = None, child_key, []
        module = modules[child_key]  # type: ignore[assignment]
        name = join_path(name, child_key)
    return Target(p, name, module, parent, key, member_keys, origin[1] if origin else "")


def get(model: nn.Module, path: str | Path) -> nn.Module:
    """The module at ``path`` (no copy; see :func:`surgery.take` for a copy).

    A slice returns a new container of the same class holding the same module
    objects, as torch's own slicing does.

    Raises:
        PathSyntaxError: the path does not parse.
        PathNotFoundError: no module there; the message names the longest prefix
            that resolved, its children and the closest match.

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.vgg16_bn(weights=None)
        >>> surgery.get(m, "features[6]") is m.features[6]
        True
        >>> len(surgery.get(m, "features[7:14]"))
        7
    """
    return resolve(model, path).module


def module_paths(model: nn.Module) -> dict[int, list[str]]:
    """Every path of every module, by module id (shared modules have several)."""
    index = ModuleIndex(model)
    return {id(m): index.paths(m) for m in (model, *index.modules)}


def select(
    model: nn.Module, pattern: str | Path, types: Any = None, *, index: ModuleIndex | None = None
) -> list[tuple[str, nn.Module]]:
    """Modules named by a path or a pattern, as ``(name, module)`` in model order.

    A plain path resolves exactly (a slice gives its members); a glob or ``re:``
    pattern is matched against ``named_modules`` names, root excluded. ``types``
    keeps only instances of the given type(s) (see :func:`find`). ``index``: a
    :class:`~surgery.paths._index.ModuleIndex` of ``model`` the caller already
    has (patterns are then matched without another walk).

    Raises:
        PathSyntaxError, PathNotFoundError, ArgumentError: as for :func:`find`.
    """
    if index is not None and index.model is not model:
        index = None
    match = type_matcher(model, types, None if index is None else index.modules)
    if match is not None and index is not None and not isinstance(pattern, Path):
        pat = compile_pattern(pattern)
        if pat.kind != "path":  # the cheap type test first; the full search only to explain
            fits = pat.matcher
            kept = [
                (loc.path, m)
                for loc, m in zip(index.order, index.modules)
                if match(m) and fits(loc.path)
            ]
            if kept:
                return kept
    found = _select(model, pattern, index)
    if match is None:
        return found
    kept = [(n, m) for n, m in found if match(m)]
    if not kept:
        kinds = sorted({type(m).__name__ for _, m in found})
        raise PathNotFoundError(
            f"{str(pattern)!r} matches {len(found)} module(s) of {type(model).__name__}, but none "
            f"is a {describe_types(types)}; their types: {', '.join(kinds[:20])}"
            + (", ..." if len(kinds) > 20 else "")
            + f"\n  {_TREE_HINT}",
            str(pattern),
        )
    return kept


def _select(
    model: nn.Module, pattern: str | Path, index: ModuleIndex | None
) -> list[tuple[str, nn.Module]]:
    if isinstance(pattern, Path):
        target = resolve(model, pattern)
        return _target_members(target)
    pat = compile_pattern(pattern)
    if pat.kind == "path":
        return _target_members(resolve(model, pattern))
    match = pat.matcher
    if index is None:
        found = [(n, m) for n, m in model.named_modules() if n and match(n)]
    else:
        found = [(loc.path, m) for loc, m in zip(index.order, index.modules) if match(loc.path)]
    if not found:
        top = _children(model)
        shown = ", ".join(top[:20]) + (", ..." if len(top) > 20 else "")
        raise PathNotFoundError(
            f"pattern {pattern!r} matches no module of {type(model).__name__}\n"
            f"  top-level children: {shown or '(none)'}\n  {_TREE_HINT}",
            pattern,
        )
    return found


def _target_members(target: Target) -> list[tuple[str, nn.Module]]:
    if target.is_slice:
        assert target.parent is not None
        return [
            (n, target.parent._modules[k])  # type: ignore[misc]
            for n, k in zip(target.member_names(), target.member_keys)
        ]
    return [(target.name, target.module)]


def find(model: nn.Module, pattern: str, *, types: Any = None) -> list[str]:
    """Module paths matching ``pattern``, in ``named_modules`` order (root excluded).

    ``*`` and ``?`` match inside one segment, ``**`` any number of segments,
    ``re:`` applies ``re.fullmatch`` to the dotted path; a plain path matches
    itself (a slice gives its members).

    ``types`` keeps only the matches that are instances of the given type(s):
    a class, a tuple of classes, a class name, or a list of names. A name
    matches ``__name__`` anywhere in the MRO, so ``"BatchNorm2d"`` also selects
    timm's ``BatchNormAct2d``.

    Raises:
        PathSyntaxError: the pattern does not parse.
        PathNotFoundError: nothing matches, or a type name matches no class in
            the model (the message lists the types present).
        ArgumentError: ``types`` is of a wrong kind (an int, a module instance).

    Example:
        >>> import torch, torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> surgery.find(m, "layer1.*.bn?")
        ['layer1.0.bn1', 'layer1.0.bn2', 'layer1.1.bn1', 'layer1.1.bn2']
        >>> surgery.find(m, "**.downsample")
        ['layer2.0.downsample', 'layer3.0.downsample', 'layer4.0.downsample']
        >>> surgery.find(m, "layer4.**", types=torch.nn.BatchNorm2d)[:3]
        ['layer4.0.bn1', 'layer4.0.bn2', 'layer4.0.downsample.1']
        >>> surgery.find(m, "**", types="Linear")
        ['fc']
    """
    from .._boundary import operation

    with operation("find", model=model, path=pattern):
        return [name for name, _ in select(model, pattern, types)]
