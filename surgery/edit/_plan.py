"""The plan of an in-place edit: :class:`Edit`, :class:`Setting`, :class:`EditPlan`.

A plan is data: what each operation would change, module by module
(:class:`Edit`) and attribute by attribute (:class:`Setting`). Every in-place
operation returns one with ``dry_run=True``; :mod:`surgery.edit._engine` builds
and commits them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["ACTIONS", "Edit", "EditPlan", "Setting", "Step"]

ACTIONS = ("replace", "delete", "insert")

# One prepared write of the commit: (object, kind, name, value). Kinds:
#   "dict"     obj.__dict__[name] = value   (``_modules``, ``training``, plain attributes)
#   "attr"     setattr(obj, name, value)    (a tensor's ``requires_grad`` or ``data``)
#   "setitem"  obj[name] = value            (a hooks dict)
#   "delitem"  del obj[name]                (a hooks dict)
#   "pop"      obj.__dict__.pop(name)       (a private marker attribute)
Step = tuple[Any, str, Any, Any]


def _type_name(module: nn.Module | None) -> str | None:
    return None if module is None else type(module).__name__


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, torch.Tensor):
        return f"Tensor{list(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, nn.Module):
        return type(value).__name__
    return repr(value)


@dataclass(frozen=True)
class Edit:
    """One structural change: the module object at ``path`` (and ``aliases``) becomes ``new``.

    Attributes:
        path: the path named by the operation (for ``insert``: the new entry's path).
        old: the module there before, or None (an insertion, an empty slot).
        new: the module there after, or None (deleted from its container, or a
            slot set to None).
        aliases: the other paths of the same old module object; the edit applies
            to the object, so they see it too.
        action: ``"replace"``, ``"delete"`` or ``"insert"``.

    Example:
        >>> import torch, torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> plan = surgery.replace(m, "fc", torch.nn.Linear(512, 10), dry_run=True)
        >>> edit = plan.edits[0]
        >>> edit.action, edit.path, type(edit.old).__name__, edit.new.out_features, edit.aliases
        ('replace', 'fc', 'Linear', 10, ())
    """

    path: str
    old: nn.Module | None
    new: nn.Module | None
    aliases: tuple[str, ...] = ()
    action: str = "replace"

    @classmethod
    def make(
        cls,
        path: str,
        old: nn.Module | None,
        new: nn.Module | None,
        aliases: tuple[str, ...],
        action: str,
    ) -> Edit:
        """The same record as ``Edit(...)``, built without the frozen dataclass's per-field
        ``object.__setattr__`` calls (the engine makes one per edited module)."""
        edit = object.__new__(cls)
        edit.__dict__.update(path=path, old=old, new=new, aliases=aliases, action=action)
        return edit

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: type names instead of modules."""
        return {
            "action": self.action,
            "path": self.path,
            "old": _type_name(self.old),
            "new": _type_name(self.new),
            "aliases": list(self.aliases),
        }


@dataclass(frozen=True)
class Setting:
    """One non-structural change: ``attribute`` of the thing at ``path`` goes from ``old`` to ``new``.

    ``path`` is a module path (``"bn1"``, ``""`` for the root) or a parameter
    name (``"fc.weight"``); ``attribute`` is what changes: ``"requires_grad"``,
    ``"bn_policy"`` (``"eval"``/``"train"``/``"frozen"``), ``"num_classes"``...

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> plan = surgery.freeze(m, "fc", dry_run=True)
        >>> [(s.path, s.attribute, s.old, s.new) for s in plan.settings]
        [('fc.weight', 'requires_grad', True, False), ('fc.bias', 'requires_grad', True, False)]
    """

    path: str
    attribute: str
    old: Any
    new: Any

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tensors and modules described, not included."""
        return {
            "path": self.path,
            "attribute": self.attribute,
            "old": _jsonable(self.old),
            "new": _jsonable(self.new),
        }


@dataclass
class EditPlan:
    """What an in-place operation does (or, with ``dry_run=True``, would do) to a model.

    ``edits`` are the structural changes (modules replaced, deleted, inserted),
    ``settings`` the others (``requires_grad`` flips, BatchNorm policies,
    attributes such as ``num_classes``). ``str(plan)`` is a table,
    ``plan.to_dict()`` the same data for tools.

    Example:
        >>> import torch, torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> plan = surgery.replace_head(m, 10, dry_run=True)
        >>> print(plan)
        replace_head(ResNet): 1 edit, 0 settings
          action   path  old     new     aliases
          replace  fc    Linear  Linear  -
        >>> m.fc.out_features  # a dry run changes nothing
        1000
        >>> plan.to_dict()["edits"]
        [{'action': 'replace', 'path': 'fc', 'old': 'Linear', 'new': 'Linear', 'aliases': []}]
    """

    op: str
    model_type: str
    edits: list[Edit] = field(default_factory=list)
    settings: list[Setting] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: operation, model type, edits and settings (type names and paths)."""
        return {
            "op": self.op,
            "model_type": self.model_type,
            "edits": [e.to_dict() for e in self.edits],
            "settings": [s.to_dict() for s in self.settings],
        }

    def to_json(self, **kwargs: Any) -> str:
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        n, s = len(self.edits), len(self.settings)
        lines = [
            f"{self.op}({self.model_type}): {n} edit{'' if n == 1 else 's'}, "
            f"{s} setting{'' if s == 1 else 's'}"
        ]
        if self.edits:
            rows: list[tuple[str, ...]] = [("action", "path", "old", "new", "aliases")]
            for e in self.edits:
                rows.append(
                    (
                        e.action,
                        e.path or "(root)",
                        _type_name(e.old) or "-",
                        _type_name(e.new) or "-",
                        ", ".join(e.aliases) or "-",
                    )
                )
            lines += _table(rows)
        if self.settings:
            settings: list[tuple[str, ...]] = [("path", "attribute", "old", "new")]
            for st in self.settings:
                settings.append(
                    (
                        st.path or "(root)",
                        st.attribute,
                        str(_jsonable(st.old)),
                        str(_jsonable(st.new)),
                    )
                )
            lines += _table(settings)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"EditPlan(op={self.op!r}, model_type={self.model_type!r}, "
            f"edits={len(self.edits)}, settings={len(self.settings)})"
        )


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
