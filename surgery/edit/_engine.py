"""The edit engine: plan every change on working copies, check it, then commit it in one loop.

:class:`Planner` stands on one walk of the model (a
:class:`~surgery.paths._index.ModuleIndex`, passed in when the operation
selected its targets from the same walk): for every module object, all the
places it lives, ``(path, parent, key)`` and the ancestors on that path.
Operations then describe their changes by module *identity*:

* :meth:`Planner.replace` / :meth:`Planner.delete` edit a module object at
  every one of its locations (the alias policy: every path sees the change);
* :meth:`Planner.insert` adds an entry to a Sequential/ModuleList;
* :meth:`Planner.put` sets one ``(parent, key)`` slot (for slots holding None);
* :meth:`Planner.set` records a non-structural change (``requires_grad``,
  hooks, modes, attributes) as a prepared write.

Edits go into per-container working copies of ``_modules`` (numbered
containers are renumbered there). :meth:`Planner.finish` validates the whole
plan (each object edited exactly once, no edit inside another edit's subtree,
no cycle, the alias policy) and returns an :class:`EditPlan`. Cycles can only
come from a new module that holds modules of the model; fresh ones are seen
to be fresh with one id lookup per module they contain. :func:`commit`
assigns the prepared dicts and values in a loop that allocates nothing, runs
no user code and validates nothing, so it cannot fail halfway.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, NamedTuple

from torch import nn

from .._boundary import check_choice
from .._errors import ArgumentError, SharedModuleWarning
from ..paths._index import Location, ModuleIndex, on_chain
from ..paths._resolve import CONTAINERS, LIST_LIKE, join_path
from ._plan import Edit, EditPlan, Setting, Step

__all__ = ["ALIAS_POLICIES", "Planner", "check_aliases", "commit", "run_plan"]

ALIAS_POLICIES = ("warn", "error")
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CYCLE = (
    "cannot put this {kind} at {path!r}: it contains {ancestor}, which holds {path!r}, so the "
    "model would contain itself (a cycle; state_dict() and named_modules() would never end).\n"
    "  put a copy there instead: surgery.{op}(model, {path!r}, copy.deepcopy(module))"
)
_SHARED = (
    "{op}: {listing}. The edit applies to the module object, so every one of its paths sees "
    "the change.\n  to refuse such edits, pass aliases='error'; to change one place only, assign "
    "it directly: setattr(surgery.get(model, {parent!r}), {key!r}, new)"
)


def check_aliases(aliases: object) -> str:
    """Raise ArgumentError unless ``aliases`` is one of :data:`ALIAS_POLICIES`."""
    return check_choice(
        "aliases",
        aliases,
        {
            "warn": "edit the shared module object at every path, with a SharedModuleWarning",
            "error": "refuse",
        },
    )


def _subtree_ids(module: nn.Module) -> set[int]:
    return {id(m) for m in module.modules()}


def _holds_any(module: nn.Module, known: dict[int, Any]) -> bool:
    """Whether ``module`` or a module inside it has an id in ``known`` (a model's modules)."""
    if id(module) in known:
        return True
    if not module._modules:
        return False
    stack, seen = [module], {id(module)}
    while stack:
        for child in stack.pop()._modules.values():
            if child is None:
                continue
            ident = id(child)
            if ident in known:
                return True
            if ident not in seen:
                seen.add(ident)
                stack.append(child)
    return False


class _Insert(NamedTuple):
    container: nn.Module
    temp_key: str
    new: nn.Module
    container_paths: tuple[str, ...]


class Planner:
    """Collects the edits and settings of one operation on ``model``; see the module docstring."""

    def __init__(self, model: nn.Module, op: str, index: ModuleIndex | None = None) -> None:
        self.model = model
        self.op = op
        self.index = index if index is not None and index.model is model else ModuleIndex(model)
        self._work: dict[int, tuple[nn.Module, OrderedDict[str, nn.Module | None]]] = {}
        self._numbered: dict[int, bool] = {}  # container id -> keys were "0", "1", ...
        self._rekeyed: set[int] = set()  # containers whose keys change (insert, delete)
        self._edited: dict[int, str] = {}  # old module id -> the path it was edited at
        self._edits: list[Edit | _Insert] = []
        self._settings: list[Setting] = []
        self._steps: list[Step] = []
        self._count = 0
        self._reuses = False  # a new module holds modules of the model: check for cycles

    # ------------------------------------------------------------------ lookups

    def locations(self, module: nn.Module) -> list[Location]:
        """Every location of ``module`` in the model, in model order ([] for the root)."""
        return self.index.locations(module)

    def paths_of(self, module: nn.Module) -> list[str]:
        """Every path of ``module`` in the model, in model order ([] if it is not in the model)."""
        return self.index.paths(module)

    def _ancestors(self, module: nn.Module) -> set[int]:
        """``module`` and every module above any of its locations."""
        return {id(module)}.union(*(loc.ancestors for loc in self.index.locations(module)))

    def _working(self, container: nn.Module) -> OrderedDict[str, nn.Module | None]:
        entry = self._work.get(id(container))
        if entry is None:
            entry = (container, OrderedDict(container._modules))
            self._work[id(container)] = entry
        return entry[1]

    def _is_numbered(self, container: nn.Module) -> bool:
        numbered = self._numbered.get(id(container))
        if numbered is None:
            keys = list(container._modules)
            numbered = isinstance(container, LIST_LIKE) and keys == [
                str(i) for i in range(len(keys))
            ]
            self._numbered[id(container)] = numbered
        return numbered

    # ------------------------------------------------------------------ structural edits

    def _claim(self, module: nn.Module, path: str) -> list[Location]:
        locs = self.index.locations(module)
        if not locs:
            what = "the root" if module is self.model else "a module that is not in the model"
            raise ArgumentError(f"cannot {self.op} {path or '(root)'!r}: it is {what}")
        if id(module) in self._edited:
            raise ArgumentError(
                f"{path!r} is the same module object as {self._edited[id(module)]!r}, which this "
                f"{self.op} already edits: each module object is edited exactly once"
            )
        self._edited[id(module)] = path
        return locs

    def _check_cycle(self, new: nn.Module, ancestors: Iterable[int], path: str, kind: str) -> None:
        """Refuse ``new`` at ``path`` if it contains one of ``ancestors``; call only when
        :meth:`_reuses_model` says ``new`` holds modules of the model (fresh ones cannot)."""
        inside = _subtree_ids(new)
        first = self.index.first

        def outermost_first(i: int) -> tuple[bool, int]:
            loc = first.get(i)
            return (loc is not None, loc.path.count(".") if loc is not None else 0)

        for anc in sorted(ancestors, key=outermost_first):
            if anc in inside:
                loc = first.get(anc)
                name = loc.path if loc is not None else ""
                where = f"{name!r}" if name else "the model itself"
                raise ArgumentError(_CYCLE.format(kind=kind, path=path, ancestor=where, op=self.op))

    def _check_new(self, new: object, path: str, call: str) -> nn.Module:
        if not isinstance(new, nn.Module):
            raise ArgumentError(
                f"{call}: module must be an nn.Module, got {type(new).__name__}; pass the module "
                f"to put at {path!r}"
            )
        return new

    def _reuses_model(self, new: nn.Module) -> bool:
        """Whether ``new`` holds modules of the model (then cycles must be checked)."""
        if _holds_any(new, self.index.first):
            self._reuses = True
            return True
        return False

    def replace(self, module: nn.Module, new: nn.Module | None, *, path: str | None = None) -> Edit:
        """Every location of ``module`` gets ``new`` (``None``: the slot holds None)."""
        shown = path if path is not None else (self.paths_of(module) or [""])[0]
        locs = self._claim(module, shown)
        if new is not None and self._reuses_model(new):
            for loc in locs:
                self._check_cycle(new, loc.ancestors, loc.path, "module")
        for loc in locs:
            self._working(loc.parent)[loc.key] = new
        action = "replace" if new is not None else "delete"
        return self._record(module, new, shown, action)

    def delete(self, module: nn.Module, *, path: str | None = None) -> Edit:
        """Remove ``module`` from every container holding it; elsewhere put ``nn.Identity``."""
        shown = path if path is not None else (self.paths_of(module) or [""])[0]
        locs = self._claim(module, shown)
        identity: nn.Module | None = None
        for loc in locs:
            work = self._working(loc.parent)
            if isinstance(loc.parent, CONTAINERS):
                work.pop(loc.key, None)
                self._rekeyed.add(id(loc.parent))
            else:
                identity = identity or nn.Identity()
                work[loc.key] = identity
        return self._record(module, identity, shown, "delete")

    def _record(self, old: nn.Module, new: nn.Module | None, path: str, action: str) -> Edit:
        first = self.index.first.get(id(old))
        if first is not None and first.path == path and id(old) not in self.index.shared:
            aliases: tuple[str, ...] = ()  # the common case, without building the path list
        else:
            aliases = tuple(p for p in self.paths_of(old) if p != path)
        edit = Edit.make(path, old, new, aliases, action)
        self._edits.append(edit)
        return edit

    def put(self, parent: nn.Module, key: str, new: nn.Module | None, *, path: str) -> None:
        """Set the one slot ``parent._modules[key]`` (which holds None or nothing) to ``new``."""
        if new is not None and self._reuses_model(new):
            self._check_cycle(new, self._ancestors(parent), path, "module")
        work = self._working(parent)
        action = "insert" if key not in work else "replace"
        if new is None:
            if key in work:
                self._rekeyed.add(id(parent))
            work.pop(key, None)
            action = "delete"
        else:
            if key not in work:
                self._rekeyed.add(id(parent))
            work[key] = new
        self._edits.append(Edit(path, None, new, (), action))

    def insert(
        self, container: nn.Module, key: str, new: nn.Module, *, after: bool, name: str | None
    ) -> None:
        """Insert ``new`` before (or after) ``container``'s entry ``key``."""
        work = self._working(container)
        numbered = self._is_numbered(container)
        cpaths = tuple(self.paths_of(container))
        if self._reuses_model(new):
            self._check_cycle(new, self._ancestors(container), join_path(cpaths[0], key), "module")
        self._rekeyed.add(id(container))
        if numbered:
            if name is not None:
                raise ArgumentError("name= is only for Sequentials with named entries")
            self._count += 1
            new_key = f"\x00new{self._count}"
        else:
            new_key = _fresh_key(container, work, new, name)
        items = list(work.items())
        pos = list(work).index(key) + (1 if after else 0)
        items.insert(pos, (new_key, new))
        work.clear()
        work.update(items)
        self._edits.append(_Insert(container, new_key, new, cpaths))

    # ------------------------------------------------------------------ settings

    def set(
        self, obj: Any, kind: str, name: Any, value: Any, *, setting: Setting | None = None
    ) -> None:
        """Record one prepared write (see :data:`~surgery.edit._plan.Step`), and what it means."""
        self._steps.append((obj, kind, name, value))
        if setting is not None:
            self._settings.append(setting)

    def describe(self, setting: Setting) -> None:
        """Record a setting whose writes are recorded separately (or are the edits')."""
        self._settings.append(setting)

    # ------------------------------------------------------------------ finish

    def finish(self, aliases: str = "warn") -> EditPlan:
        """Validate the whole plan and return it, ready for :func:`commit`.

        Raises:
            ArgumentError: an edit inside another edit's subtree, a cycle, or a
                shared module with ``aliases="error"``.
        """
        edits: list[Edit] = []
        final_keys: dict[tuple[int, str], str] = {}
        for cid in self._rekeyed:
            container, work = self._work[cid]
            if self._is_numbered(container):
                renamed = OrderedDict((str(i), m) for i, m in enumerate(work.values()))
                for i, k in enumerate(work):
                    final_keys[(id(container), k)] = str(i)
                work.clear()
                work.update(renamed)
        for e in self._edits:
            if isinstance(e, _Insert):
                key = final_keys.get((id(e.container), e.temp_key), e.temp_key)
                paths = [join_path(p, key) for p in e.container_paths] or [key]
                edits.append(Edit(paths[0], None, e.new, tuple(paths[1:]), "insert"))
            else:
                edits.append(e)
        self._check_nested(edits)
        if self._reuses:  # fresh modules alone cannot close a cycle
            self._check_acyclic()
        shared = [e for e in edits if e.aliases]
        if shared and aliases == "error":
            listing = "; ".join(
                f"the module at {e.path!r} is also reachable at {', '.join(map(repr, e.aliases))}"
                for e in shared
            )
            parent, _, key = shared[0].path.rpartition(".")
            raise ArgumentError(
                f"{listing} (aliases='error'). Nothing was changed.\n  to edit the shared object "
                f"at every path, pass aliases='warn'; to change one place only, assign it "
                f"directly: setattr(surgery.get(model, {parent!r}), {key!r}, new)"
            )
        steps: list[Step] = [
            (container, "dict", "_modules", work) for container, work in self._work.values()
        ]
        return EditPlan(
            self.op, type(self.model).__name__, edits, list(self._settings), steps + self._steps
        )

    def _check_nested(self, edits: list[Edit]) -> None:
        edited = {id(e.old): e.path for e in edits if e.old is not None}
        for e in edits:
            if e.old is None:
                continue
            for loc in self.index.locations(e.old):
                anc = on_chain(loc.chain, edited)
                if anc is not None:
                    raise ArgumentError(
                        f"{e.path!r} lies inside {edited[anc]!r}, which this {self.op} also "
                        f"edits: edit the outer module or the inner one, not both"
                    )

    def _check_acyclic(self) -> None:
        """The model after the commit has no cycle (a backstop for the per-edit checks)."""
        done: set[int] = set()
        stack: list[tuple[nn.Module, str, bool]] = [(self.model, "", False)]
        active: set[int] = set()
        while stack:
            module, path, leaving = stack.pop()
            if leaving:
                active.discard(id(module))
                done.add(id(module))
                continue
            if id(module) in done:
                continue
            active.add(id(module))
            stack.append((module, path, True))
            entry = self._work.get(id(module))
            children = entry[1] if entry is not None else module._modules
            for key, child in children.items():
                if child is None:
                    continue
                if id(child) in active:
                    raise ArgumentError(
                        _CYCLE.format(
                            kind="module",
                            path=join_path(path, key),
                            ancestor="an ancestor",
                            op=self.op,
                        )
                    )
                if id(child) not in done:
                    stack.append((child, join_path(path, key), False))


def _fresh_key(
    container: nn.Module, work: OrderedDict[str, Any], module: nn.Module, name: str | None
) -> str:
    if name is not None:
        if not isinstance(name, str) or not name or "." in name:
            raise ArgumentError(f"name must be a non-empty str without '.', got {name!r}")
        if name in work:
            raise ArgumentError(f"name {name!r} is already taken in this container")
        return name
    base = type(module).__name__.lower()
    key, i = base, 1
    while key in work or hasattr(container, key):
        key = f"{base}_{i}"
        i += 1
    return key


def commit(plan: EditPlan) -> None:
    """Apply a finished plan: plain assignments only, so it cannot fail halfway."""
    for obj, kind, name, value in plan.steps:
        if kind == "dict":
            obj.__dict__[name] = value
        elif kind == "attr":
            setattr(obj, name, value)
        elif kind == "setitem":
            obj[name] = value
        elif kind == "delitem":
            del obj[name]
        else:  # "pop"
            obj.__dict__.pop(name, None)


def run_plan(plan: EditPlan, *, dry_run: bool) -> EditPlan:
    """``dry_run``: return the plan untouched; otherwise warn about shared modules, commit."""
    if dry_run:
        return plan
    shared = [e for e in plan.edits if e.aliases]
    if shared:
        listing = "; ".join(
            f"the module at {e.path!r} is also reachable at {', '.join(map(repr, e.aliases))}"
            for e in shared
        )
        parent, _, key = shared[0].path.rpartition(".")
        warnings.warn(
            _SHARED.format(op=plan.op, listing=listing, parent=parent, key=key),
            SharedModuleWarning,
            stacklevel=_stacklevel(),
        )
    commit(plan)
    return plan


def _stacklevel() -> int:
    """The stack level of the first frame outside the surgery package (the user's call)."""
    import sys

    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level
