"""``surgery.load_partial`` and ``surgery.open_checkpoint``: the public entry points.

Three phases, as everywhere in ``surgery``:

1. **parse**: open the source (:mod:`surgery.checkpoint._open`, one module per
   format), compile ``include``, ``exclude`` and ``rename``
   (:mod:`surgery.checkpoint._rename`), resolve ``at``.
2. **plan** (:mod:`surgery.checkpoint._plan`): select and rename keys, match them
   to model tensors using only shapes and dtypes from the checkpoint's header;
   check collisions, shapes, casts, layouts, tied parameters, strictness and meta
   targets. Every problem of a kind is listed in one error. The plan is the
   report (:mod:`surgery.checkpoint._report`); ``dry_run=True`` returns it.
3. **commit** (:mod:`surgery.checkpoint._commit`): read every value, then write.
   Transactional by default (see ``docs/loading.md``, "All or nothing").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from .._boundary import check_choice, operation
from .._errors import ArgumentError
from ._auto import auto_rules, split_auto
from ._casting import CASTING
from ._commit import commit
from ._open import open_source
from ._plan import build_plan, select_keys
from ._rename import KeyFilter, RenameRules, RenameSpec
from ._report import StateDictView
from ._reshape import ReshapedSource

__all__ = ["load_partial", "open_checkpoint"]


def _check_args(
    into: Any,
    at: Any,
    strict: Any,
    on_mismatch: Any,
    casting: Any,
    dry_run: Any,
    transactional: Any,
    init_missing: Any = False,
) -> None:
    if into is not None and not isinstance(into, nn.Module):
        raise ArgumentError(f"into must be an nn.Module (or None), got {type(into).__name__}")
    if at is not None and into is None:
        raise ArgumentError("at= names a module of into=; pass into= too")
    if at is not None and not isinstance(at, str):
        raise ArgumentError(f"at must be a module path (str), got {type(at).__name__}")
    check_choice("on_mismatch", on_mismatch, ("error", "skip", "reshape"))
    check_choice("casting", casting, CASTING)
    for name, value in (
        ("strict", strict),
        ("dry_run", dry_run),
        ("transactional", transactional),
        ("init_missing", init_missing),
    ):
        if not isinstance(value, bool):
            raise ArgumentError(f"{name} must be True or False, got {value!r}")


def load_partial(
    source: Any,
    *,
    into: nn.Module | None = None,
    at: str | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    rename: RenameSpec = None,
    strict: bool = False,
    on_mismatch: str = "error",
    casting: str = "same_kind",
    dry_run: bool = False,
    transactional: bool = True,
    key: str | None = None,
    init_missing: bool = False,
    mmap: bool = False,
    on_ambiguous: str = "error",
) -> Any:
    """Load part of a checkpoint into a model, in place, all or nothing.

    Every check (selection, renaming, shapes, dtypes, tied parameters,
    strictness) happens before the first write, so on any error the model is
    exactly as it was. Parameters keep their identity, so an optimizer built
    before the load keeps working. Buffers (BatchNorm statistics) load too.

    Args:
        source: a checkpoint path (``.pt``/``.pth``/``.bin``/``.ckpt``, read with
            torch's weights-only unpickler, every record checked; ``.safetensors``; a
            sharded ``*.index.json``), a directory holding one, a Mapping of
            tensors, or an ``nn.Module``. A wrapper (``{"model": ...}``,
            ``{"state_dict": ...}``, ...) is unwrapped; ``key=`` picks one when
            several entries hold tensors.
        into: the model to load into. Without it, the filtered, renamed state
            dict is returned as a lazy read-only Mapping.
        at: a module path in ``into``; checkpoint keys are relative to it.
        include: pattern(s) on checkpoint keys before renaming: a module path
            selects the keys under it (``"backbone"``), ``*`` matches within a
            segment, ``**`` across, ``re:`` is a regex. Default: all keys.
        exclude: pattern(s) removed from the selection.
        rename: ``{"old.prefix.": "new.prefix."}`` (dot boundaries, the longest
            prefix wins), a list of ``(regex, replacement)`` pairs applied in
            order (``re.sub``, count 1; the replacement may be a callable on the
            match), or a callable ``key -> new key | None`` (None drops).
            ``"auto"`` infers the mapping with :func:`surgery.match_keys` (by
            name, then by structure; never by guess); ``["auto", {...}]``
            applies the explicit rules first. Every inferred mapping is in
            ``report.renamed`` and ``report.how``.
        strict: every model key under ``at`` must be loaded and every selected
            checkpoint key used.
        on_mismatch: ``"error"`` (default) or ``"skip"`` for shape mismatches;
            ``"reshape"`` loads a checkpoint tensor that holds the model
            tensor's values in another shape (size-1 dimensions: ``(C, 1, 1)``
            against ``(C,)``, a 1x1 convolution against an ``nn.Linear``; or a
            matrix ``(out, c*kh*kw)`` against a kernel ``(out, c, kh, kw)``)
            reshaped, listed in ``report.reshaped``, and refuses other
            mismatches as ``"error"`` does. ``rename="auto"`` loads the reshapes
            its match proves (``KeyMatch.reshaped``) under any setting.
        casting: ``"no"``, ``"equiv"``, ``"safe"``, ``"same_kind"`` (default:
            float<->float allowed unless a finite value overflows; float to
            integer refused) or ``"unsafe"``.
        dry_run: plan and check only; return the report, change nothing.
        transactional: True (default): a fault while writing leaves the model
            unchanged (costs up to the loaded bytes in temporary memory).
            False: copy in place as tensors are read (no extra memory); a fault
            names the tensors already written.
        key: the wrapper entry of the checkpoint that holds the state dict.
        init_missing: for a model built on the meta device: tensors (under
            ``at``) that no checkpoint key fills are materialized on CPU by their
            module's own initializer (``reset_parameters()``, or
            MultiheadAttention's) and listed in ``report.initialized``. Without
            it, tensors left on meta are an error naming them.
        mmap: False (default): every loaded tensor is a private copy, so the
            model never depends on the file. True: zero-copy, memory-mapped
            tensors where the dtypes allow; the model then reads the file as it
            is, so overwriting or truncating it later changes or breaks the model.
        on_ambiguous: with ``rename="auto"``: ``"error"`` (default) refuses when
            a selected key could map to more than one key; ``"skip"`` leaves
            those keys out (they end in ``missing`` / ``unexpected``).

    Into a model on the meta device (``with torch.device("meta"): model = ...``)
    exactly the loaded tensors are materialized: like
    ``load_state_dict(assign=True)``, the freshly read tensor (memory-mapped
    with ``mmap=True``) becomes the parameter's storage when the dtypes match (no extra copy; a
    Mapping source's own tensors are used as they are, an ``nn.Module`` source
    is copied). A parameter on meta is replaced by a new ``nn.Parameter``
    (``requires_grad`` kept); identity is kept for materialized parameters only.
    Into ``DTensor`` parameters (FSDP2), each rank reads and writes its own shard
    (a DCP checkpoint is read shard by shard).

    Returns:
        A :class:`LoadReport` when ``into`` is given, else a lazy Mapping.

    Raises:
        CheckpointError: the file is missing, unreadable, corrupt or unsafe.
        LoadError: nothing matches (with a rename hint), shape mismatches,
            refused casts, rename collisions, tied values that differ,
            non-tensor values, ``strict`` violations, or tensors left on the
            meta device; all listed.
        ArgumentError: an argument has the wrong type or value.
        PathNotFoundError: ``at`` names no module of ``into``.

    Example:
        >>> import torch, torchvision, surgery
        >>> ssl = torchvision.models.resnet18(weights=None)
        >>> ckpt = {"model": {f"backbone.{k}": v for k, v in ssl.state_dict().items()}}
        >>> clf = torchvision.models.resnet18(weights=None, num_classes=10)
        >>> report = surgery.load_partial(ckpt, into=clf, rename={"backbone.": ""},
        ...                               exclude="backbone.fc")
        >>> len(report.loaded), report.missing, report.unwrapped
        (120, ['fc.weight', 'fc.bias'], 'model')
        >>> torch.equal(clf.conv1.weight, ssl.conv1.weight)
        True
        >>> sd = surgery.load_partial(ckpt, include="backbone.layer4", rename={"backbone.": ""})
        >>> len(sd), next(iter(sd))
        (30, 'layer4.0.conv1.weight')
    """
    with operation("load_partial", model=into, file=_file_of(source)):
        _check_args(into, at, strict, on_mismatch, casting, dry_run, transactional, init_missing)
        if not isinstance(mmap, bool):
            raise ArgumentError(f"mmap must be True or False, got {mmap!r}")
        auto, rename = split_auto(rename)
        check_choice("on_ambiguous", on_ambiguous, ("error", "skip"))
        if auto and into is None:
            raise ArgumentError("rename='auto' matches keys against a model: pass into= too")
        return _load(
            source,
            into,
            at,
            include,
            exclude,
            rename,
            strict=strict,
            on_mismatch=on_mismatch,
            casting=casting,
            dry_run=dry_run,
            transactional=transactional,
            key=key,
            init_missing=init_missing,
            mmap=mmap,
            auto=auto,
            on_ambiguous=on_ambiguous,
        )


def _file_of(source: Any) -> str | None:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else None


def _load(
    source: Any,
    into: nn.Module | None,
    at: str | None,
    include: str | Sequence[str] | None,
    exclude: str | Sequence[str] | None,
    rename: RenameSpec,
    *,
    strict: bool,
    on_mismatch: str,
    casting: str,
    dry_run: bool,
    transactional: bool,
    key: str | None,
    init_missing: bool,
    mmap: bool,
    auto: bool = False,
    on_ambiguous: str = "error",
) -> Any:
    """parse -> plan -> commit (see :func:`load_partial`)."""
    rules = RenameRules.build(rename)
    src = open_source(source, key=key, mmap=mmap)
    owned = src is not source
    keep_open = False
    try:
        keyfilter = KeyFilter.build(include, exclude, src.keys())
        match = None
        if auto and into is not None:
            rules, match = auto_rules(
                src, keyfilter, rules, into, at, on_ambiguous=on_ambiguous, on_mismatch=on_mismatch
            )
        key_map, selected = select_keys(src, keyfilter, rules)
        if into is None:
            keep_open = True
            return StateDictView(src, key_map, rules.unused())
        plan = build_plan(
            src,
            into,
            at,
            key_map,
            selected,
            rules,
            strict=strict,
            on_mismatch=on_mismatch,
            casting=casting,
            init_missing=init_missing,
            reshape=auto or on_mismatch == "reshape",
        )
        plan.report.dry_run = dry_run
        if match is not None:
            plan.report.how = {k: match.how.get(k, "name") for k in plan.report.loaded}
        plan.copy_meta = isinstance(source, nn.Module)
        if not dry_run:
            commit(
                plan,
                ReshapedSource(src, plan.reshape) if plan.reshape else src,
                transactional=transactional,
            )
        return plan.report
    finally:
        if owned and not keep_open:
            src.close()


def open_checkpoint(path: Any, *, key: str | None = None, mmap: bool = False) -> StateDictView:
    """Open a checkpoint as a lazy, read-only mapping of its tensors; reads only headers.

    The same sources as :func:`load_partial` (``.pt``/``.pth``/``.bin``/``.ckpt``,
    ``.safetensors``, a sharded ``*.index.json``, a DCP directory, a directory
    holding one checkpoint, a Mapping or an ``nn.Module``). ``view.info(key)``
    gives a tensor's shape and dtype without reading it; ``view[key]`` reads it
    then, as a private copy (``mmap=True``: a zero-copy view of a memory map,
    which aliases the file). A file that changed size since it was opened is a
    ``CheckpointError``, never a crash. Close the view (or use it as a context
    manager) to release the file.

    Args:
        path: the checkpoint.
        key: the wrapper entry that holds the state dict, when ambiguous.
        mmap: memory-map tensors instead of copying them (see :func:`load_partial`).

    Returns:
        A :class:`StateDictView` (checkpoint order).

    Raises:
        CheckpointError: the file is missing, unreadable, corrupt or unsafe.
        LoadError: the content is not a state dict.

    Example:
        >>> import os, tempfile, torch, torchvision, surgery
        >>> path = os.path.join(tempfile.mkdtemp(), "r18.pt")
        >>> torch.save({"model": torchvision.models.resnet18(weights=None).state_dict()}, path)
        >>> with surgery.open_checkpoint(path) as ckpt:
        ...     print(len(ckpt), ckpt.unwrapped, ckpt.info("fc.weight").shape)
        ...     print(ckpt["fc.bias"].shape)
        122 model (1000, 512)
        torch.Size([1000])
    """
    with operation("open_checkpoint", file=_file_of(path)):
        if not isinstance(mmap, bool):
            raise ArgumentError(f"mmap must be True or False, got {mmap!r}")
        src = open_source(path, key=key, mmap=mmap)
        return StateDictView(src, {k: k for k in src}, [])
