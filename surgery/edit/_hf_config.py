"""Keep a ``transformers`` config in sync when ``delete``/``insert`` edit its layer list.

A ``PreTrainedModel`` is rebuilt from its config by ``from_pretrained``, and a
KV cache is laid out from it, so a layer edit must update, before anything is
committed:

* the layer count: the config field (``num_hidden_layers``, ``n_layer``,
  ``num_layers``, ``encoder_layers``...) whose value is the container's length
  (``decoder`` in the path picks the decoder's field of an encoder-decoder);
* per-layer lists (a config list with one entry per layer, e.g. Qwen2's
  ``layer_types``), edited per index; an inserted layer's entry comes from
  its own attribute (``attention_type`` for ``layer_types``);
* per-layer indices stored in modules (``layer_idx``: the KV cache slot of an
  attention module), renumbered to the new positions.

:func:`plan_layer_sync` returns a :class:`LayerSync` (the pending changes;
:meth:`LayerSync.plan_into` records them as settings of the edit engine's plan,
committed with the structural edit) or refuses with an ``ArgumentError`` before the edit changes anything. A container
whose length is no config layer count is not a layer list: nothing to sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .._errors import ArgumentError
from ..paths._resolve import LIST_LIKE, Target
from ._engine import Planner
from ._hf import config_settings, is_pretrained
from ._plan import Setting

__all__ = ["LayerSync", "plan_layer_sync", "sync_for_delete", "sync_for_insert"]

_COUNTS = (
    "num_hidden_layers",
    "n_layer",
    "n_layers",
    "num_layers",
    "encoder_layers",
    "decoder_layers",
    "num_decoder_layers",
)
_INDEX_ATTRS = ("layer_idx", "layer_id", "layer_index")
_ENTRY_ATTRS = {"layer_types": "attention_type"}  # config list -> the layer's own attribute


@dataclass
class LayerSync:
    """Pending config and module changes for one layer-list edit (empty: nothing to do)."""

    config: Any = None
    values: dict[str, Any] = field(default_factory=dict)
    # (module, attribute, new value, its path after the edit: the index is the new value)
    indices: list[tuple[nn.Module, str, int, str]] = field(default_factory=list)

    def plan_into(self, planner: Planner, model: nn.Module) -> None:
        """Record the config values and module indices as settings of ``planner``'s plan."""
        if self.config is None:
            return
        config_settings(planner, model, self.values)
        for module, attr, value, where in self.indices:
            old = getattr(module, attr)
            planner.set(module, "attr", attr, value, setting=Setting(where, attr, old, value))


def _count_fields(cfg: Any, length: int, path: str) -> list[str]:
    """The config fields counting the layers of the list at ``path`` (aliases included).

    Of an encoder-decoder's fields, ``decoder`` in the path picks the decoder's
    (``decoder_layers``), otherwise the others (``encoder_layers``, and a
    ``num_hidden_layers`` mirroring it).
    """
    known = cfg.to_dict()
    fields = [f for f in _COUNTS if isinstance(known.get(f), int) and known.get(f) == length]
    decoder = "decoder" in path.lower()
    return [f for f in fields if ("decoder" in f) == decoder]


def plan_layer_sync(
    model: nn.Module,
    container: nn.Module,
    path: str,
    order: list[int | None],
    new: nn.Module | None,
) -> LayerSync:
    """The config/module changes for the layer list at ``path`` taking the new ``order``.

    ``order`` lists, for each new position, the original index kept there, or
    None for the inserted module ``new``.

    Raises:
        ArgumentError: a per-layer config entry cannot be derived for an
            inserted layer.
    """
    cfg = getattr(model, "config", None)
    if not is_pretrained(model) or cfg is None or not isinstance(container, LIST_LIKE):
        return LayerSync()
    length = len(container)
    counts = _count_fields(cfg, length, path)
    if not counts:
        return LayerSync()
    sync = LayerSync(cfg, dict.fromkeys(counts, len(order)))
    for key, value in cfg.to_dict().items():
        if key in counts or not isinstance(value, (list, tuple)) or len(value) != length:
            continue
        entries = []
        for i in order:
            if i is not None:
                entries.append(value[i])
                continue
            attr = _ENTRY_ATTRS.get(key)
            entry = getattr(new, attr, None) if attr is not None and new is not None else None
            built_for = _built_for(new)
            if entry is None and built_for is not None and built_for < length:
                entry = value[built_for]  # a layer built for that index of this config
            if entry is None:
                raise ArgumentError(
                    f"config.{key} has one entry per layer of {path!r}, and the inserted "
                    f"{type(new).__name__} does not say its own"
                    + (f" (no {attr!r} attribute, no layer_idx)" if attr else " (no layer_idx)")
                    + f": insert a layer built from this config, or set config.{key} yourself"
                )
            entries.append(entry)
        sync.values[key] = type(value)(entries)
    children = list(container.children())
    for position, i in enumerate(order):
        layer = new if i is None else children[i]
        if layer is None:
            continue
        prefix = f"{path}.{position}".lstrip(".")
        for sub, module in layer.named_modules():
            for attr in _INDEX_ATTRS:
                value = getattr(module, attr, None)
                if isinstance(value, int) and not isinstance(value, bool) and value != position:
                    where = f"{prefix}.{sub}" if sub else prefix
                    sync.indices.append((module, attr, position, where))
    return sync


def _built_for(layer: nn.Module | None) -> int | None:
    """The ``layer_idx`` the layer was built with (the first found), if any."""
    for module in layer.modules() if layer is not None else ():
        for attr in _INDEX_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def _container_path(target: Target) -> str:
    if target.is_slice:
        return target.container_name
    return target.name.rsplit(".", 1)[0] if "." in target.name else ""


def sync_for_delete(model: nn.Module, target: Target) -> LayerSync:
    """The sync for ``delete(model, path)`` of an entry or a slice of a layer list."""
    parent = target.parent
    if parent is None or not isinstance(parent, LIST_LIKE):
        return LayerSync()
    gone = set(target.member_keys) if target.is_slice else {target.key}
    order: list[int | None] = [i for i, k in enumerate(parent._modules) if k not in gone]
    return plan_layer_sync(model, parent, _container_path(target), order, None)


def sync_for_insert(
    model: nn.Module, target: Target, position: int, module: nn.Module
) -> LayerSync:
    """The sync for ``insert`` of ``module`` at ``position`` of a layer list."""
    parent = target.parent
    if parent is None or not isinstance(parent, LIST_LIKE):
        return LayerSync()
    order: list[int | None] = list(range(len(parent)))
    order.insert(position, None)
    return plan_layer_sync(model, parent, _container_path(target), order, module)
