"""Loading into models that are not plain CPU tensors: the meta device and DTensors.

Used by :func:`surgery.load_partial` (:mod:`surgery.checkpoint._load`):

* **Meta targets** (a model built under ``torch.device("meta")``): a loaded
  tensor is *assigned*, not copied, like ``load_state_dict(assign=True)``: the
  freshly read (with ``mmap=True``: memory-mapped) tensor becomes the
  parameter's storage when the
  dtypes match (a cast makes one new tensor). A parameter on meta has no
  storage to keep, so it is replaced by a new ``nn.Parameter`` (same
  ``requires_grad``; tied keys get the same new object). Parameters that are
  already materialized keep their identity.
* **init_missing**: tensors that would stay on meta after the load are
  materialized on CPU with their module's own initializer
  (``reset_parameters()``, or ``nn.MultiheadAttention._reset_parameters()``).
  The initializer runs on a meta copy of the module whose own tensors were
  materialized (``to_empty(recurse=False)``), so tensors of that module that
  are already real, or loaded by this call, are never re-initialized.
* **DTensor targets** (FSDP2, tensor parallel): :func:`read_for` reads a value
  laid out like the target, through the source's ``read_like`` when it has one
  (DCP reads only the local shard) or by slicing the full tensor locally
  (``distribute_tensor(..., src_data_rank=None)``, no communication).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..trace._meta import meta_copy
from ._source import TensorSource

__all__ = ["MetaInit", "initializer", "install", "is_dtensor", "plan_init", "read_for", "run_init"]


def is_dtensor(t: torch.Tensor) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (FSDP2 parameters)."""
    if type(t) in (torch.Tensor, nn.Parameter) or not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def read_for(source: TensorSource, key: str, target: torch.Tensor) -> torch.Tensor:
    """Read ``key`` in a form that can be written into ``target``.

    For a DTensor target only this rank's part is produced: the source's
    ``read_like(key, target)`` when it has one (DCP), else the full tensor is
    sliced locally. Otherwise this is ``source.read(key)``.
    """
    if is_dtensor(target):
        read_like = getattr(source, "read_like", None)
        if read_like is not None:
            return read_like(key, target)  # type: ignore[no-any-return]
        from torch.distributed.tensor import distribute_tensor

        like: Any = target
        return distribute_tensor(
            source.read(key), like.device_mesh, like.placements, src_data_rank=None
        )
    return source.read(key)


def install(
    owners: Sequence[tuple[nn.Module, str]], old: torch.Tensor, value: torch.Tensor
) -> None:
    """Put ``value`` in place of the meta tensor ``old`` under every ``(module, name)``.

    A parameter becomes one new ``nn.Parameter`` (``requires_grad`` kept), shared
    by every owner (tied keys stay tied); a buffer is assigned as is.
    """
    new: torch.Tensor = (
        nn.Parameter(value, requires_grad=old.requires_grad)
        if isinstance(old, nn.Parameter)
        else value
    )
    for module, name in owners:
        if name in module._parameters:
            module._parameters[name] = new  # type: ignore[assignment]
        else:
            module._buffers[name] = new


def initializer(module: nn.Module) -> Callable[[], None] | None:
    """The module's own initializer (bound), or None when it has none."""
    fn = getattr(module, "reset_parameters", None)
    if fn is None and isinstance(module, nn.MultiheadAttention):
        fn = module._reset_parameters
    return fn if callable(fn) else None


@dataclass
class MetaInit:
    """Tensors of one module to initialize: (full key, name in the module) groups."""

    module_name: str
    module: nn.Module
    # one entry per tensor: its full keys, its owners, and the meta tensor itself
    tensors: list[tuple[list[str], list[tuple[nn.Module, str]], torch.Tensor]] = field(
        default_factory=list
    )


def plan_init(
    root: nn.Module, prefix: str, still_meta: dict[str, torch.Tensor]
) -> tuple[list[MetaInit], list[str]]:
    """Group the tensors left on meta by the module that registers them.

    Args:
        root: the module keys are relative to (``into`` or its ``at`` submodule).
        prefix: ``at``'s path, to form full keys.
        still_meta: relative key -> meta tensor, in model order (tied keys
            appear under each name).

    Returns:
        ``(inits, problems)``: one :class:`MetaInit` per module, and one line per
        module that has no initializer (naming it and its tensors).
    """
    by_tensor: dict[int, tuple[list[str], list[tuple[nn.Module, str]], torch.Tensor]] = {}
    first_owner: dict[int, tuple[str, nn.Module, str]] = {}
    for rel, t in still_meta.items():
        mod_path, _, name = rel.rpartition(".")
        module = root.get_submodule(mod_path) if mod_path else root
        full = f"{prefix}.{rel}" if prefix else rel
        entry = by_tensor.setdefault(id(t), ([], [], t))
        entry[0].append(full)
        entry[1].append((module, name))
        if id(t) not in first_owner:
            mod_full = f"{prefix}.{mod_path}" if prefix and mod_path else (prefix or mod_path)
            first_owner[id(t)] = (mod_full, module, name)
    inits: dict[int, MetaInit] = {}
    problems: dict[int, tuple[str, nn.Module, list[str]]] = {}
    for tid, entry in by_tensor.items():
        mod_full, module, _name = first_owner[tid]
        if initializer(module) is None:
            problems.setdefault(id(module), (mod_full, module, []))[2].extend(entry[0])
            continue
        init = inits.setdefault(id(module), MetaInit(mod_full, module))
        init.tensors.append(entry)
    lines = [
        f"{name or '(root)'!r} ({type(m).__name__}) has no reset_parameters() to initialize "
        f"{', '.join(map(repr, keys))}"
        for name, m, keys in problems.values()
    ]
    return list(inits.values()), lines


def run_init(
    inits: list[MetaInit],
) -> list[tuple[list[tuple[nn.Module, str]], torch.Tensor, torch.Tensor]]:
    """Compute initial values without touching the model.

    Each module is copied on meta, its own tensors are materialized on CPU and
    its initializer runs on the copy.

    Returns:
        ``(owners, old meta tensor, new value)`` for :func:`install`.

    Raises:
        RuntimeError: the initializer failed (the caller names the module).
    """
    out = []
    for init in inits:
        scratch = meta_copy(init.module)
        scratch.to_empty(device="cpu", recurse=False)
        fn = initializer(scratch)
        if fn is not None:  # plan_init kept only modules that have one
            with torch.no_grad():
                fn()
        for _keys, owners, old in init.tensors:
            _, name = owners[0]
            value: Any = scratch._parameters.get(name)
            if value is None:
                value = scratch._buffers[name]
            out.append((owners, old, value.detach()))
    return out
