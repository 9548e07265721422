"""The in-place graph edits: ``replace``, ``delete``, ``insert``.

Every function here is parse -> plan -> apply: the path is resolved to a
:class:`~surgery.paths._resolve.Target` without changing anything, and only a
complete, valid plan is applied.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

from torch import nn

from .._errors import ArgumentError, SharedModuleWarning
from ..paths._grammar import Path
from ..paths._resolve import CONTAINERS, LIST_LIKE, Target, join_path, module_paths, resolve
from ._hf_config import sync_for_delete, sync_for_insert

__all__ = ["delete", "insert", "replace"]


def _warn_shared(model: nn.Module, target: Target, action: str) -> None:
    paths = module_paths(model).get(id(target.module), [])
    others = [p for p in paths if p != target.name]
    if others:
        warnings.warn(
            f"{action} {target.name!r} only: the same module object is also reachable at "
            f"{', '.join(map(repr, others))}, which keeps the old module",
            SharedModuleWarning,
            stacklevel=3,
        )


def _check_module(module: object, what: str = "module") -> nn.Module:
    if not isinstance(module, nn.Module):
        raise ArgumentError(f"{what} must be an nn.Module, got {type(module).__name__}")
    return module


def replace(model: nn.Module, path: str | Path, module: nn.Module) -> nn.Module:
    """Replace the module at ``path`` by ``module``, in place; return the old one.

    Unlike ``set_submodule``, a wrong path raises instead of creating an attribute.

    Raises:
        PathNotFoundError: no module at ``path`` (nothing is changed).
        ArgumentError: ``module`` is not an ``nn.Module``, or ``path`` is the root or a slice.

    Example:
        >>> import torch, torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> old = surgery.replace(m, "fc", torch.nn.Linear(512, 10))
        >>> old.out_features, m.fc.out_features
        (1000, 10)
    """
    _check_module(module)
    target = resolve(model, path)
    if target.parent is None:
        raise ArgumentError("cannot replace the root (path ''): use the new module instead")
    if target.is_slice:
        raise ArgumentError(
            f"cannot replace the slice {str(path)!r} by one module: delete it and insert, "
            f"or replace its members one by one"
        )
    _warn_shared(model, target, "replacing")
    assert target.key is not None
    setattr(target.parent, target.key, module)
    return target.module


def _renumber(container: nn.Module, numeric: bool) -> None:
    if numeric:
        values = list(container._modules.values())
        container._modules = OrderedDict((str(i), m) for i, m in enumerate(values))


def _is_numbered(container: nn.Module) -> bool:
    return list(container._modules) == [str(i) for i in range(len(container._modules))]


def delete(model: nn.Module, path: str | Path) -> nn.Module:
    """Remove the module at ``path``, in place; return it.

    An entry of a Sequential/ModuleList/ModuleDict is removed (Sequential and
    ModuleList entries are re-indexed); any other child is replaced by
    ``nn.Identity`` so that ``forward`` keeps working. A slice removes all its
    members and returns them in a container. On a transformers model's layer
    list, the config (layer count, per-layer lists such as ``layer_types``) and
    the layers' ``layer_idx`` follow (see docs/huggingface.md).

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.vgg16_bn(weights=None)
        >>> n = len(m.classifier)
        >>> _ = surgery.delete(m, "classifier[-1]")
        >>> len(m.classifier) == n - 1
        True
        >>> type(surgery.delete(m, "avgpool")).__name__, type(m.avgpool).__name__
        ('AdaptiveAvgPool2d', 'Identity')
    """
    target = resolve(model, path)
    parent = target.parent
    if parent is None:
        raise ArgumentError("cannot delete the root (path '')")
    sync = sync_for_delete(model, target)  # hook (F): a transformers config, planned first
    if target.is_slice:
        numbered = _is_numbered(parent)
        for k in target.member_keys:
            del parent._modules[k]
        _renumber(parent, numbered)
        sync.apply()  # hook (F)
        return target.module
    assert target.key is not None
    _warn_shared(model, target, "deleting")
    if isinstance(parent, CONTAINERS):
        numbered = isinstance(parent, LIST_LIKE) and _is_numbered(parent)
        del parent._modules[target.key]
        _renumber(parent, numbered)
        sync.apply()  # hook (F)
    else:
        setattr(parent, target.key, nn.Identity())
    return target.module


def _fresh_key(container: nn.Module, module: nn.Module, name: str | None) -> str:
    if name is not None:
        if not isinstance(name, str) or not name or "." in name:
            raise ArgumentError(f"name must be a non-empty str without '.', got {name!r}")
        if name in container._modules:
            raise ArgumentError(f"name {name!r} is already taken in this container")
        return name
    base = type(module).__name__.lower()
    key, i = base, 1
    while key in container._modules or hasattr(container, key):
        key = f"{base}_{i}"
        i += 1
    return key


def insert(
    model: nn.Module,
    path: str | Path,
    module: nn.Module,
    *,
    after: bool = False,
    name: str | None = None,
) -> str:
    """Insert ``module`` before (or ``after``) the entry at ``path``, in place.

    ``path`` names an entry of a Sequential or ModuleList; numbered entries are
    re-indexed. In a Sequential with named entries the new entry is called
    ``name`` (default: the class name in lower case).

    Returns:
        The path of the inserted module.

    Raises:
        ArgumentError: the entry is not in a Sequential/ModuleList (wrap it:
            ``replace(model, path, nn.Sequential(new, old))``).

    Example:
        >>> import torch, torchvision, surgery
        >>> m = torchvision.models.vgg16_bn(weights=None)
        >>> surgery.insert(m, "classifier[-1]", torch.nn.Dropout(0.2))
        'classifier.6'
        >>> type(m.classifier[6]).__name__, type(m.classifier[7]).__name__
        ('Dropout', 'Linear')
    """
    _check_module(module)
    target = resolve(model, path)
    parent = target.parent
    if parent is None or target.is_slice or not isinstance(parent, LIST_LIKE):
        where = type(parent).__name__ if parent is not None else "nothing (it is the root)"
        raise ArgumentError(
            f"cannot insert at {str(path)!r}: it is held by {where}, not a Sequential or "
            f"ModuleList.\n  wrap it instead: surgery.replace(model, {str(path)!r}, "
            f"nn.Sequential(new, surgery.get(model, {str(path)!r})))"
        )
    assert target.key is not None
    numbered = _is_numbered(parent)
    keys = list(parent._modules)
    pos = keys.index(target.key) + (1 if after else 0)
    if numbered:
        if name is not None:
            raise ArgumentError("name= is only for Sequentials with named entries")
        new_key = "__surgery_new__"
    else:
        new_key = _fresh_key(parent, module, name)
    sync = sync_for_insert(model, target, pos, module)  # hook (F): planned before the edit
    items = list(parent._modules.items())
    items.insert(pos, (new_key, module))
    parent._modules = OrderedDict(items)
    _renumber(parent, numbered)
    sync.apply()  # hook (F)
    final_key = str(pos) if numbered else new_key
    prefix = target.name.rsplit(".", 1)[0] if "." in target.name else ""
    return join_path(prefix, final_key)
