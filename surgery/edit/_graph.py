"""The in-place graph edits: ``replace``, ``delete``, ``insert``.

Each is a planner on the edit engine (:mod:`surgery.edit._engine`): the path is
resolved, the edit is planned against working copies and checked (each module
object once, no cycle, the alias policy), and only then committed.
``dry_run=True`` returns the :class:`~surgery.EditPlan` and changes nothing.
"""

from __future__ import annotations

from torch import nn

from .._boundary import operation
from .._errors import ArgumentError
from ..paths._grammar import Path
from ..paths._resolve import LIST_LIKE, check_model, join_path, resolve
from ._engine import Planner, check_aliases, run_plan
from ._hf_config import sync_for_delete, sync_for_insert
from ._plan import EditPlan

__all__ = ["delete", "insert", "replace"]


def _call(op: str, path: object, module: object) -> str:
    shown = repr(module)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"{op}(model, {str(path)!r}, {shown})"


def _check_module(op: str, path: object, module: object) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise ArgumentError(
            f"{_call(op, path, module)}: module must be an nn.Module, got {type(module).__name__}",
            path=str(path),
        )
    return module


def replace(
    model: nn.Module,
    path: str | Path,
    module: nn.Module,
    *,
    aliases: str = "warn",
    dry_run: bool = False,
) -> nn.Module | EditPlan:
    """Replace the module at ``path`` by ``module``, in place; return the old one.

    Unlike ``set_submodule``, a wrong path raises instead of creating an attribute.
    The edit applies to the module *object*: if it is reachable under several
    paths (a shared module), every one of them gets ``module``, with one
    :class:`~surgery.SharedModuleWarning` naming them (``aliases="error"``
    refuses instead).

    Args:
        model: the model to change, in place.
        path: the module to replace (not the root, not a slice).
        module: the new module.
        aliases: ``"warn"`` (default) or ``"error"`` for a shared module.
        dry_run: return the :class:`~surgery.EditPlan` and change nothing.

    Returns:
        The old module (the plan with ``dry_run=True``).

    Raises:
        PathNotFoundError: no module at ``path`` (nothing is changed).
        ArgumentError: ``module`` is not an ``nn.Module``, ``path`` is the root
            or a slice, ``module`` contains ``path``'s parent (a cycle), or a
            shared module with ``aliases="error"``.

    Example:
        >>> import torch, torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> old = surgery.replace(m, "fc", torch.nn.Linear(512, 10))
        >>> old.out_features, m.fc.out_features
        (1000, 10)
        >>> surgery.replace(m, "fc", torch.nn.Identity(), dry_run=True).edits[0].action
        'replace'
    """
    with operation("replace", model=model, path=path):
        check_model(model, "replace")
        _check_module("replace", path, module)
        policy = check_aliases(aliases)
        target = resolve(model, path)
        if target.parent is None:
            raise ArgumentError("cannot replace the root (path ''): use the new module instead")
        if target.is_slice:
            raise ArgumentError(
                f"cannot replace the slice {str(path)!r} by one module: delete it and insert, "
                f"or replace its members one by one"
            )
        planner = Planner(model, "replace")
        planner.replace(target.module, module, path=target.name)
        plan = run_plan(planner.finish(policy), dry_run=dry_run)
        return plan if dry_run else target.module


def delete(
    model: nn.Module, path: str | Path, *, aliases: str = "warn", dry_run: bool = False
) -> nn.Module | EditPlan:
    """Remove the module at ``path``, in place; return it.

    An entry of a Sequential/ModuleList/ModuleDict is removed (Sequential and
    ModuleList entries are re-indexed); any other child is replaced by
    ``nn.Identity`` so that ``forward`` keeps working. A slice removes all its
    members and returns them in a container. A module reachable under several
    paths is removed from all of them (see :func:`replace` for ``aliases``).
    On a transformers model's layer list, the config (layer count, per-layer
    lists such as ``layer_types``) and the layers' ``layer_idx`` follow, as
    settings of the same plan (see docs/huggingface.md).

    Args:
        model: the model to change, in place.
        path: the module or slice to remove.
        aliases: ``"warn"`` (default) or ``"error"`` for a shared module.
        dry_run: return the :class:`~surgery.EditPlan` and change nothing.

    Returns:
        The removed module (the plan with ``dry_run=True``).

    Raises:
        PathNotFoundError: no module at ``path``.
        ArgumentError: ``path`` is the root, or a shared module with ``aliases="error"``.

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
    with operation("delete", model=model, path=path):
        check_model(model, "delete")
        policy = check_aliases(aliases)
        target = resolve(model, path)
        parent = target.parent
        if parent is None:
            raise ArgumentError("cannot delete the root (path '')")
        planner = Planner(model, "delete")
        if target.is_slice:
            members: dict[int, tuple[str, nn.Module]] = {}
            for name, key in zip(target.member_names(), target.member_keys):
                member = parent._modules[key]
                assert member is not None
                members.setdefault(id(member), (name, member))  # one object: one edit
            for name, member in members.values():
                planner.delete(member, path=name)
        else:
            planner.delete(target.module, path=target.name)
        # a transformers config (layer count, per-layer lists, layer_idx): settings of the plan
        sync_for_delete(model, target).plan_into(planner, model)
        plan = run_plan(planner.finish(policy), dry_run=dry_run)
        return plan if dry_run else target.module


def insert(
    model: nn.Module,
    path: str | Path,
    module: nn.Module,
    *,
    after: bool = False,
    name: str | None = None,
    aliases: str = "warn",
    dry_run: bool = False,
) -> str | EditPlan:
    """Insert ``module`` before (or ``after``) the entry at ``path``, in place.

    ``path`` names an entry of a Sequential or ModuleList; numbered entries are
    re-indexed. In a Sequential with named entries the new entry is called
    ``name`` (default: the class name in lower case). If the container is
    reachable under several paths, all of them see the new entry. On a
    transformers model's layer list the config and ``layer_idx`` follow (as
    for :func:`delete`); a per-layer config entry that cannot be derived for
    the new layer is refused before anything changes.

    Args:
        model: the model to change, in place.
        path: the entry to insert before (or after).
        module: the new module.
        after: insert after the entry instead of before.
        name: the key in a Sequential with named entries.
        aliases: ``"warn"`` (default) or ``"error"`` for a shared container.
        dry_run: return the :class:`~surgery.EditPlan` and change nothing.

    Returns:
        The path of the inserted module (the plan with ``dry_run=True``).

    Raises:
        ArgumentError: the entry is not in a Sequential/ModuleList (wrap it:
            ``replace(model, path, nn.Sequential(new, old))``), ``module`` is not
            an ``nn.Module`` or contains the container (a cycle).

    Example:
        >>> import torch, torchvision, surgery
        >>> m = torchvision.models.vgg16_bn(weights=None)
        >>> surgery.insert(m, "classifier[-1]", torch.nn.Dropout(0.2))
        'classifier.6'
        >>> type(m.classifier[6]).__name__, type(m.classifier[7]).__name__
        ('Dropout', 'Linear')
    """
    with operation("insert", model=model, path=path):
        check_model(model, "insert")
        _check_module("insert", path, module)
        policy = check_aliases(aliases)
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
        planner = Planner(model, "insert")
        planner.insert(parent, target.key, module, after=after, name=name)
        position = list(parent._modules).index(target.key) + (1 if after else 0)
        sync_for_insert(model, target, position, module).plan_into(planner, model)
        finished = planner.finish(policy)
        new_key = finished.edits[-1].path.rsplit(".", 1)[-1]
        plan = run_plan(finished, dry_run=dry_run)
        if dry_run:
            return plan
        prefix = target.name.rsplit(".", 1)[0] if "." in target.name else ""
        return join_path(prefix, new_key)
