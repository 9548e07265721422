"""The commit: the only phase of :func:`surgery.load_partial` that writes into the model."""

from __future__ import annotations

from typing import NoReturn

import torch
from torch import nn

from .._errors import LoadError
from ._fileio import prefault
from ._materialize import install, is_dtensor, read_for, run_init
from ._plan import Item, Plan
from ._report import MAX_LISTED, quoted
from ._source import TensorSource

__all__ = ["commit"]


def _exclusive(t: torch.Tensor) -> bool:
    """True when nothing but ``t`` refers to its storage, which it covers exactly.

    Then new values can be swapped in (``t.data = new``) without anyone
    observing the old storage; otherwise they are copied in place.
    """
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None or type(t) not in (torch.Tensor, nn.Parameter) or t.is_meta:
        return False
    storage = t.untyped_storage()
    if t.storage_offset() != 0 or storage.nbytes() != t.nbytes:
        return False
    # references: t's own storage + the temporary `storage` object above
    return int(use_count(storage._cdata)) <= 2


def _failed(exc: BaseException, message: str) -> NoReturn:
    """Raise the error for a fault while reading or writing: a LoadError caused by ``exc``.

    A :class:`~surgery.LoadError` (a :class:`~surgery.CheckpointError` from a file
    that changed under the reader) keeps its type and fields; any other
    ``Exception`` (an allocator error, an ``OSError``, a failing ``copy_``)
    becomes a ``LoadError`` whose ``__cause__`` is the original.
    ``BaseException`` s that are not errors (``KeyboardInterrupt``,
    ``SystemExit``) propagate as they are, after the rollback.
    """
    if not isinstance(exc, Exception):
        raise exc
    if isinstance(exc, LoadError):
        raise type(exc)(message, key=exc.key, file=exc.file) from exc
    raise LoadError(message) from exc


def commit(plan: Plan, source: TensorSource, *, transactional: bool) -> None:
    """Write the planned tensors into the model (the only phase that mutates).

    transactional=True: values are staged into fresh tensors first (a fault
    while reading leaves the model untouched), then tensors with shared storage
    are copied in place after a snapshot (restored on a fault), and the others
    swap in their staged storage (``param.data = staged``: the Parameter object
    stays the same, and nothing else could observe the old storage).

    transactional=False: ``target.copy_(value)`` in checkpoint order; a fault
    names the tensors already written.
    """
    # Targets on meta have no storage to write into: their values (read, or made by
    # the module's initializer) are staged first and assigned last, after every
    # other write succeeded, so a fault anywhere leaves them on meta.
    meta_values = _stage_meta(plan, source)
    items = [it for it in plan.items if not it.target.is_meta]
    _write(items, source, transactional=transactional)
    for owners, old, value in meta_values:
        install(owners, old, value)


def _stage_meta(
    plan: Plan, source: TensorSource
) -> list[tuple[list[tuple[nn.Module, str]], torch.Tensor, torch.Tensor]]:
    """Values for the targets on meta: read without a copy when the dtype matches."""
    staged = []
    current = "?"
    seen: set[tuple[int, int]] = set()  # memory already given to another target
    try:
        for it in plan.items:
            if not it.target.is_meta:
                continue
            current = it.model_keys[0]
            value = read_for(source, it.ckpt_key, it.target).detach()
            where = (value.data_ptr(), value.nbytes)
            if value.dtype != it.target.dtype:
                value = value.to(it.target.dtype)
            elif plan.copy_meta or (value.nbytes and where in seen):
                value = value.clone()  # never tie tensors the model keeps apart
            seen.add(where)
            staged.append((it.owners, it.target, value))
        for init in plan.inits:
            current = init.module_name or "(root)"
            staged.extend(run_init([init]))
    except BaseException as exc:
        _failed(
            exc,
            f"materializing {current!r} failed ({type(exc).__name__}: {exc}); the model was "
            "left unchanged",
        )
    return staged


def _unchanged(verb: str, current: Item | None, exc: BaseException) -> NoReturn:
    """Raise the error for a fault of the transactional commit (the model is unchanged)."""
    name = current.model_keys[0] if current is not None else "?"
    _failed(
        exc,
        f"{verb} {name!r} failed ({type(exc).__name__}: {exc}); the model was left "
        "unchanged (transactional=True)",
    )


def _fresh_like(target: torch.Tensor) -> torch.Tensor:
    """New memory laid out like ``target``, backed by huge pages where the kernel allows."""
    new = torch.empty_strided(
        target.shape, target.stride(), dtype=target.dtype, device=target.device
    )
    prefault(new)
    return new


def _bump_version(t: torch.Tensor) -> None:
    """Tell autograd that ``t`` was written (bytes were read straight into its memory)."""
    bump = getattr(torch.autograd.graph, "increment_version", None)
    if bump is not None:
        bump(t)


def _write(items: list[Item], source: TensorSource, *, transactional: bool) -> None:
    """Write values into materialized targets (see :func:`commit`)."""
    with torch.no_grad():
        if not transactional:
            written: list[str] = []
            for item in items:
                try:
                    if is_dtensor(item.target):
                        item.target.copy_(read_for(source, item.ckpt_key, item.target))
                    else:
                        source.read_into(item.ckpt_key, item.target)
                        _bump_version(item.target)
                except BaseException as exc:
                    _failed(
                        exc,
                        f"writing {item.model_keys[0]!r} failed ({type(exc).__name__}: {exc}); "
                        f"transactional=False: the model is partially loaded, "
                        f"{len(written)} tensor(s) already written: {quoted(written, MAX_LISTED)}",
                    )
                written.extend(item.model_keys)
            return
        # 1. read everything (nothing in the model changes; any fault here is harmless)
        swap = [it for it in items if _exclusive(it.target)]
        swap_ids = {id(it) for it in swap}
        in_place = [it for it in items if id(it) not in swap_ids]
        staged: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        current: Item | None = None
        try:
            for it in swap:
                current = it
                new = _fresh_like(it.target)
                source.read_into(it.ckpt_key, new)
                staged.append(new)
            for it in in_place:  # shared storage: copied in place below, after a snapshot
                current = it
                values.append(read_for(source, it.ckpt_key, it.target))
        except BaseException as exc:
            _unchanged("reading", current, exc)
        # 2. the writes: in-place copies (rolled back on a fault), then storage swaps
        snapshots: list[tuple[torch.Tensor, torch.Tensor]] = []
        try:
            for it, value in zip(in_place, values):
                current = it
                snapshots.append((it.target, it.target.clone()))
                it.target.copy_(value)
        except BaseException as exc:
            for target, snap in reversed(snapshots):
                torch.ops.aten.copy_.default(target, snap)
            _unchanged("writing", current, exc)
        for it, new in zip(swap, staged):
            it.target.data = new
