"""Opening a checkpoint: one dispatch from a path, directory, mapping or module to its source.

Formats and engines::

    Mapping[str, Tensor]          MappingSource (values read as they are, detached)
    nn.Module                     its state_dict(keep_vars=False)
    .pt .pth .bin .ckpt (zip)     _torchfile.TorchFileSource (weights_only unpickler, preadv)
    legacy (non-zip) torch file   torch.load(weights_only=True), read whole
    .safetensors                  _safetensors.SafetensorsSource (header, preadv)
    *.index.json                  _sharded.open_sharded_index (opens only needed shards)
    directory with .metadata      _dcp.open_dcp (torch.distributed.checkpoint)
    other directory               the one checkpoint it holds (ambiguous -> CheckpointError)

This module imports the format modules; they never import it (no cycles).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from .._errors import ArgumentError, CheckpointError
from ._dcp import open_dcp
from ._safetensors import SafetensorsSource
from ._sharded import open_sharded_index, refuse_lone_shard
from ._source import CHECKPOINT_SUFFIXES, MappingSource, TensorSource, check_file
from ._torchfile import open_torch_file
from ._unwrap import unwrap_state_dict

__all__ = ["open_source"]


def _directory_checkpoint(path: str) -> str:
    """The one checkpoint file (or index) a directory holds."""
    names = sorted(os.listdir(path))
    tiers = [
        [n for n in names if n.endswith(".safetensors.index.json")],
        [n for n in names if n.endswith(".safetensors")],
        [n for n in names if n.endswith(".index.json")],
        [n for n in names if n.endswith(CHECKPOINT_SUFFIXES)],
    ]
    for tier in tiers:
        if len(tier) == 1:
            return os.path.join(path, tier[0])
        if len(tier) > 1:
            refuse_lone_shard(os.path.join(path, tier[0]))  # only shards: the index is missing
            listed = ", ".join(repr(os.path.join(path, n)) for n in tier)
            raise CheckpointError(
                f"directory {path!r} holds several checkpoints: {listed}; pass one of them"
            )
    shown = ", ".join(map(repr, names[:20])) or "(empty)"
    raise CheckpointError(
        f"directory {path!r} holds no checkpoint (.safetensors, *.index.json, "
        f"{', '.join(CHECKPOINT_SUFFIXES)}, or a torch.distributed.checkpoint .metadata); "
        f"it holds {shown}"
    )


def open_source(source: Any, *, key: str | None = None, mmap: bool = False) -> TensorSource:
    """Open anything that holds named tensors as a :class:`TensorSource`.

    Args:
        source: a Mapping of tensors, an ``nn.Module`` (its detached state dict),
            a path (str or ``os.PathLike``) to ``.pt``/``.pth``/``.bin``/``.ckpt``
            (torch zip or legacy), ``.safetensors``, a sharded ``*.index.json``, a
            torch.distributed.checkpoint directory, or a directory holding one
            checkpoint; an open ``TensorSource`` is returned as is.
        key: the wrapper entry that holds the state dict, when ambiguous.
        mmap: file sources return tensors backed by a memory map of the file
            (zero-copy; they alias the file). Default: each read is a private copy.

    Returns:
        The source; close it (or use it as a context manager) when done.

    Raises:
        CheckpointError: the file is missing, unreadable, corrupt or unsafe.
        LoadError: the content is not a state dict (non-tensor values, several
            wrapped state dicts without ``key``).
        ArgumentError: ``source`` is none of the above.

    Example:
        >>> import torchvision
        >>> from surgery.checkpoint._open import open_source
        >>> src = open_source({"model": torchvision.models.resnet18(weights=None).state_dict()})
        >>> src.unwrapped, src.keys()[:2], src.info("fc.weight").shape
        ('model', ['conv1.weight', 'bn1.weight'], (1000, 512))
    """
    if isinstance(source, TensorSource):
        return source
    if isinstance(source, nn.Module):
        return MappingSource(
            source.state_dict(keep_vars=False), f"<module {type(source).__name__}>"
        )
    if isinstance(source, Mapping):
        sd, unwrapped = unwrap_state_dict(source, key=key, description="<mapping>")
        return MappingSource(sd, "<mapping>", unwrapped)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            if os.path.exists(os.path.join(path, ".metadata")):
                return open_dcp(path, key=key)
            path = _directory_checkpoint(path)
        lower = path.lower()
        if lower.endswith(".index.json"):
            check_file(path)
            return open_sharded_index(path, mmap=mmap)
        refuse_lone_shard(path)
        if lower.endswith(".safetensors"):
            return SafetensorsSource(path, mmap=mmap)
        return open_torch_file(path, key=key, mmap=mmap)
    raise ArgumentError(
        f"cannot load from a {type(source).__name__}: pass a checkpoint path, a directory, "
        "a mapping of tensors or an nn.Module"
    )
