"""One walk of a model: every place every module object lives, in model order.

:class:`ModuleIndex` is built by a single pass over ``_modules`` and serves
selection (``named``: the first path of each module object, exactly the
``named_modules()`` order), alias detection (``paths``: every path of each
object) and editing (``locations``: parent, key and the ancestors of each
place). A module object reachable under several paths is visited at each of
them; an existing cycle is not followed back into itself.
"""

from __future__ import annotations

import gc
from typing import Any, NamedTuple

from torch import nn

__all__ = ["Location", "ModuleIndex", "on_chain"]


class Location(NamedTuple):
    """One place where a module object lives."""

    path: str
    parent: nn.Module
    key: str
    chain: tuple[Any, ...]  # (id(parent), chain of the parent's location): linked, O(1) to make

    @property
    def ancestors(self) -> frozenset[int]:
        """Ids of the modules from the root down to ``parent``."""
        out, link = [], self.chain
        while link:
            out.append(link[0])
            link = link[1]
        return frozenset(out)


def on_chain(chain: tuple[Any, ...], ids: Any) -> Any:
    """The first id on ``chain`` (a :attr:`Location.chain`) that is in ``ids``, else None."""
    while chain:
        if chain[0] in ids:
            return chain[0]
        chain = chain[1]
    return None


_new_location = tuple.__new__  # Location(...) without the Python-level __new__


class ModuleIndex:
    """Every location of every module of ``model``, from one walk.

    Attributes:
        model: the walked model.
        first: module id -> the :class:`Location` of its first path (the root: None).
        shared: module id -> its further locations, for module objects reachable
            under several paths (usually empty).

    Example:
        >>> import torchvision
        >>> index = ModuleIndex(torchvision.models.resnet18(weights=None))
        >>> [p for p, _ in index.named()][:3]
        ['conv1', 'bn1', 'relu']
        >>> index.locations(index.model.layer1[0].bn1)[0].path
        'layer1.0.bn1'
        >>> index.paths(index.model), len(index)
        ([''], 68)
    """

    __slots__ = ("first", "model", "modules", "order", "shared")

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        modules: list[nn.Module] = []
        order: list[Location] = []
        first: dict[int, Location | None] = {id(model): None}
        shared: dict[int, list[Location]] = {}
        add_module, add_location = modules.append, order.append

        # Recursive, as named_modules and state_dict are (a model too deep for them is not
        # usable anyway); per node only a string, a tuple and one dict entry.
        def visit(parent: nn.Module, prefix: str, chain: tuple[Any, ...]) -> None:
            for key, child in parent._modules.items():
                if child is None:
                    continue
                path = prefix + key
                ident = id(child)
                loc = _new_location(Location, (path, parent, key, chain))
                if ident not in first:
                    first[ident] = loc
                    add_module(child)
                    add_location(loc)
                elif on_chain(chain, (ident,)) is not None:
                    continue  # an existing cycle: do not walk into it again
                else:
                    shared.setdefault(ident, []).append(loc)
                if child._modules:
                    visit(child, path + ".", (ident, chain))

        # The walk allocates a few objects per module and none of them forms a reference
        # cycle: the cyclic collector is paused meanwhile (as timeit does), so that it does
        # not traverse a freshly built model's objects again and again.
        collecting = gc.isenabled()
        gc.disable()
        try:
            visit(model, "", (id(model), ()))
        finally:
            if collecting:
                gc.enable()
        self.modules = modules  # each module object once, root excluded, in model order
        self.order = order  # its first location, in the same order
        self.first = first
        self.shared = shared

    def __contains__(self, module: object) -> bool:
        return id(module) in self.first

    def __len__(self) -> int:
        """The number of module objects, root included."""
        return len(self.first)

    def named(self) -> list[tuple[str, nn.Module]]:
        """``(path, module)`` of each module object at its first path, root excluded, in
        ``named_modules()`` order."""
        return [(loc.path, m) for loc, m in zip(self.order, self.modules)]

    def locations(self, module: nn.Module) -> list[Location]:
        """Every location of ``module``, in model order ([] for the root or a stranger)."""
        loc = self.first.get(id(module))
        if loc is None:
            return []
        more = self.shared.get(id(module))
        return [loc, *more] if more else [loc]

    def paths(self, module: nn.Module) -> list[str]:
        """Every path of ``module``, in model order (``[""]`` for the root, [] for a stranger)."""
        if module is self.model:
            return [""]
        return [loc.path for loc in self.locations(module)]
