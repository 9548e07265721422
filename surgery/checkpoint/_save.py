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

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._errors import ArgumentError, LoadError
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
        if v.is_meta:
            raise LoadError(f"cannot save {k!r}: it is on the meta device (no data)")
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


def _save_file(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tmp = path + ".tmp"
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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

    Raises:
        LoadError: a value is not a tensor, or is on the meta device.
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
        parent = os.path.dirname(os.path.abspath(out))
        os.makedirs(parent, exist_ok=True)
        _save_file(tensors, out, meta)
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
    os.makedirs(folder, exist_ok=True)
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
    for i, shard in enumerate(shards, 1):
        name = f"{stem}-{i:05d}-of-{n:05d}.safetensors"
        shard_aliases = {a: k for a, k in aliases.items() if k in shard}
        meta = {"format": "pt"}
        if shard_aliases:
            meta[ALIASES_KEY] = json.dumps(shard_aliases)
        _save_file(shard, os.path.join(folder, name), meta)
        for k in shard:
            weight_map[k] = name
        for a in shard_aliases:
            weight_map[a] = name
    index_path = os.path.join(folder, f"{stem}.safetensors.index.json")
    index = {
        "metadata": {"total_size": sum(v.nbytes for v in tensors.values())},
        "weight_map": weight_map,
    }
    with open(index_path + ".tmp", "w") as f:
        json.dump(index, f, indent=2)
    os.replace(index_path + ".tmp", index_path)
    return index_path
