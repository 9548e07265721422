"""``surgery.save_state_dict``: safetensors files, optionally sharded, ties kept.

safetensors refuses tensors that share memory. Tied tensors (the same storage,
offset, shape and strides under several keys, e.g. an embedding tied to the
output layer) are stored once; the other names are recorded as aliases in the
file's metadata (``"surgery.aliases"``: JSON ``{alias: stored key}``), and
:class:`surgery.checkpoint._safetensors.SafetensorsSource` exposes them again as keys, so that
``load_partial`` restores the tie (or fills both untied tensors). Other tensors
that overlap in memory without being identical are stored as separate copies.

With ``max_shard_size``, the tensors are split, in order, into
``model-00001-of-0000N.safetensors`` shards with a Hugging Face style
``model.safetensors.index.json``::

    {"metadata": {"total_size": <bytes>}, "weight_map": {key: shard file name}}
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .._boundary import operation
from .._errors import ArgumentError, SaveError
from ._dcp import save_dcp
from ._source import reject_non_tensors

__all__ = ["ALIASES_KEY", "parse_size", "save_state_dict"]

#: Metadata entry holding ``{alias: stored key}`` as JSON.
ALIASES_KEY = "surgery.aliases"

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(size: int | str) -> int:
    """``"2GB"`` -> 2_000_000_000, ``"10MiB"`` -> 10_485_760, ints pass through.

    Decimal units (KB, MB, GB) are powers of 10 and binary ones (KiB, MiB, GiB)
    powers of 2, as in Hugging Face ``max_shard_size``.

    Raises:
        ArgumentError: not a positive size.
    """
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    elif isinstance(size, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", size)
        unit = m.group(2).upper() if m else None
        if not m or unit not in _UNITS:
            raise ArgumentError(
                f"max_shard_size must be bytes (int) or a size such as '2GB', '500MB', '1GiB'; "
                f"got {size!r}"
            )
        value = int(float(m.group(1)) * _UNITS[unit])
    else:
        raise ArgumentError(f"max_shard_size must be an int or a str, got {type(size).__name__}")
    if value <= 0:
        raise ArgumentError(f"max_shard_size must be positive, got {size!r}")
    return value


def _view_key(t: torch.Tensor) -> tuple[Any, ...]:
    return (
        t.device,
        t.untyped_storage().data_ptr(),
        t.storage_offset(),
        tuple(t.shape),
        t.stride(),
        t.dtype,
    )


def _prepare(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to write, contiguous and unshared; alias -> stored key)."""
    reject_non_tensors(state)
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_of_view: dict[tuple[Any, ...], str] = {}
    storages: dict[tuple[Any, int], int] = {}
    for k, v in state.items():
        v = v.detach()
        if v.numel() > 0:
            vk = _view_key(v)
            if vk in first_of_view:
                aliases[k] = first_of_view[vk]
                continue
            first_of_view[vk] = k
            sk = (v.device, v.untyped_storage().data_ptr())
            storages[sk] = storages.get(sk, 0) + 1
        tensors[k] = v
    for k, v in tensors.items():
        shared = v.numel() > 0 and storages[(v.device, v.untyped_storage().data_ptr())] > 1
        partial = v.untyped_storage().nbytes() != v.nbytes
        if shared or partial or not v.is_contiguous():
            v = v.contiguous().clone() if (shared or partial) else v.contiguous()
        tensors[k] = v.cpu()
    return tensors, aliases


def _temp_name(final: str) -> str:
    """A hidden temporary name next to ``final`` (same directory, so rename is atomic)."""
    folder, base = os.path.split(final)
    return os.path.join(folder, f".{base}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _remove_quietly(paths: list[str]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            os.remove(p)


def _write_all(files: list[tuple[str, Callable[[str], None]]]) -> None:
    """Write every file under a temporary name, then rename each into place, the last last.

    ``files`` is ``(final path, writer(temp path))`` in order; the index goes last.
    Nothing is renamed until every file was written, so a failure while writing
    (disk full, an interrupt) leaves no new file and changes no existing one.

    Raises:
        SaveError: a write failed (the original error is the ``__cause__``).
    """
    temps: list[str] = []
    current = files[0][0] if files else ""
    try:
        for final, writer in files:
            current = final
            tmp = _temp_name(final)
            temps.append(tmp)
            writer(tmp)
        for (final, _w), tmp in zip(files, temps):
            current = final
            os.replace(tmp, final)
    except BaseException as exc:
        _remove_quietly(temps)
        if not isinstance(exc, Exception):
            raise
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SaveError(
            f"cannot write {current!r} ({type(exc).__name__}: {detail}); nothing was written "
            "and an existing checkpoint there is unchanged",
            file=current,
        ) from exc


def _safetensors_writer(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> Callable[[str], None]:
    from safetensors.torch import save_file

    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata=metadata)

    return write


def _json_writer(obj: Any) -> Callable[[str], None]:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)

    return write


def _stale_shards(folder: str, stem: str, keep: set[str]) -> list[str]:
    """Shards of an earlier save (``{stem}-0000i-of-0000N.safetensors``) the new index drops."""
    pattern = re.compile(re.escape(stem) + r"-\d{5}-of-\d{5}\.safetensors")
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [os.path.join(folder, n) for n in names if pattern.fullmatch(n) and n not in keep]


def save_state_dict(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    max_shard_size: int | str | None = None,
    format: str = "safetensors",
) -> str:
    """Write a model's (or a mapping's) tensors as safetensors, optionally sharded.

    Args:
        model_or_state_dict: an ``nn.Module`` (its ``state_dict()``) or a mapping
            of names to tensors.
        path: the file to write. With ``max_shard_size``: a directory (created
            if needed; shards and ``model.safetensors.index.json`` go inside), or
            a ``*.safetensors.index.json`` / ``*.safetensors`` file name whose
            stem names the shards.
        max_shard_size: split into shards of at most this size (``"2GB"``,
            ``"10MB"``, ``"1GiB"`` or bytes) and write an ``index.json``. A single
            tensor larger than the limit gets a shard of its own.
        format: ``"safetensors"`` (default), or ``"dcp"``: a
            ``torch.distributed.checkpoint`` directory at ``path``, written by
            ``dcp.save`` (:func:`surgery.checkpoint._dcp.save_dcp`). In a process group every
            rank calls it and writes its own shards of ``DTensor`` values
            (FSDP2); ``max_shard_size`` does not apply.

    Returns:
        The path written: the file, or the index.

    Every file is written under a temporary name in its destination directory
    and renamed into place once all of them are written, the index last; shards
    of an earlier save that the new index no longer names are removed only
    after the new index is in place. On any failure nothing new is left behind
    and an existing checkpoint at ``path`` is unchanged.

    Raises:
        SaveError: a key is not a string, a value is not a tensor or is on the
            meta device, ``path`` is a directory (without ``max_shard_size``), or
            a file cannot be written (the original error is the ``__cause__``).
        ArgumentError: a bad ``max_shard_size`` or ``format``.

    Example:
        >>> import os, tempfile, torch, torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> d = tempfile.mkdtemp()
        >>> index = surgery.save_state_dict(m, os.path.join(d, "r18"), max_shard_size="20MB")
        >>> os.path.basename(index), len([f for f in os.listdir(os.path.join(d, "r18"))])
        ('model.safetensors.index.json', 4)
        >>> r = surgery.load_partial(index, into=torchvision.models.resnet18(weights=None))
        >>> len(r.loaded)
        122
    """
    with operation(
        "save_state_dict", file=os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    ):
        return _save(model_or_state_dict, path, max_shard_size=max_shard_size, format=format)


def _make_dirs(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise SaveError(
            f"cannot create directory {folder!r}: {exc.strerror or exc}", file=folder
        ) from exc


def _save(
    model_or_state_dict: Any,
    path: Any,
    *,
    max_shard_size: int | str | None,
    format: str,
) -> str:
    """The body of :func:`save_state_dict`."""
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if format not in ("safetensors", "dcp"):
        raise ArgumentError(f"format must be 'safetensors' or 'dcp', got {format!r}")
    if format == "dcp" and max_shard_size is not None:
        raise ArgumentError(
            "max_shard_size applies to format='safetensors'; format='dcp' writes one file per "
            "rank (drop max_shard_size)"
        )
    if isinstance(model_or_state_dict, nn.Module):
        state: Mapping[str, Any] = model_or_state_dict.state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        state = model_or_state_dict
    else:
        raise ArgumentError(
            f"expected an nn.Module or a mapping of tensors, got {type(model_or_state_dict).__name__}"
        )
    out = os.fspath(path)
    if format == "dcp":
        return save_dcp(state, out)
    limit = parse_size(max_shard_size) if max_shard_size is not None else None
    tensors, aliases = _prepare(state)
    if limit is None:
        meta = {"format": "pt"}
        if aliases:
            meta[ALIASES_KEY] = json.dumps(aliases)
        if os.path.isdir(out):
            raise SaveError(
                f"{out!r} is a directory; pass a file name (e.g. "
                f"{os.path.join(out, 'model.safetensors')!r}), or max_shard_size= to write "
                "shards and an index into it",
                file=out,
            )
        _make_dirs(os.path.dirname(os.path.abspath(out)))
        _write_all([(out, _safetensors_writer(tensors, meta))])
        return out

    if out.endswith(".safetensors.index.json"):
        folder, stem = (
            os.path.dirname(out),
            os.path.basename(out)[: -len(".safetensors.index.json")],
        )
    elif out.endswith(".safetensors"):
        folder, stem = os.path.dirname(out), os.path.basename(out)[: -len(".safetensors")]
    else:
        folder, stem = out, "model"
    folder = folder or "."
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise SaveError(
            f"{folder!r} is a file; with max_shard_size the shards go into a directory",
            file=folder,
        )
    _make_dirs(folder)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in tensors.items():
        if shards[-1] and size + v.nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    n = len(shards)
    weight_map: dict[str, str] = {}
    files: list[tuple[str, Callable[[str], None]]] = []
    for i, shard in enumerate(shards, 1):
        name = f"{stem}-{i:05d}-of-{n:05d}.safetensors"
        shard_aliases = {a: k for a, k in aliases.items() if k in shard}
        meta = {"format": "pt"}
        if shard_aliases:
            meta[ALIASES_KEY] = json.dumps(shard_aliases)
        files.append((os.path.join(folder, name), _safetensors_writer(shard, meta)))
        for k in shard:
            weight_map[k] = name
        for a in shard_aliases:
            weight_map[a] = name
    index_path = os.path.join(folder, f"{stem}.safetensors.index.json")
    index = {
        "metadata": {"total_size": sum(v.nbytes for v in tensors.values())},
        "weight_map": weight_map,
    }
    files.append((index_path, _json_writer(index)))
    _write_all(files)  # shards first, the index last
    # only now that the new index is in place: shards of an earlier, longer save
    _remove_quietly(_stale_shards(folder, stem, set(weight_map.values())))
    return index_path
