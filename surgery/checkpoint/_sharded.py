"""Sharded checkpoints: an ``*.index.json`` that says which shard file holds each tensor.

Two layouts are read, both written by Hugging Face ``save_pretrained`` and by
:func:`surgery.save_state_dict` with ``max_shard_size``::

    model.safetensors.index.json    {"metadata": {...}, "weight_map": {key: "model-00001-of-00002.safetensors"}}
    pytorch_model.bin.index.json    {"metadata": {...}, "weight_map": {key: "pytorch_model-00001-of-00002.bin"}}

Only the index is read when the source is opened. A shard is opened the first
time one of its keys is asked for (``info`` or ``read``), so a load that selects
a few layers with ``include=`` touches only the shards that hold them.
``ShardedSource.opened`` lists the shard files opened so far, and
``bytes_read`` counts the tensor bytes actually read.

Engines: safetensors shards go through :class:`surgery.checkpoint._safetensors.SafetensorsSource`
(the header gives shapes and dtypes without reading data); ``.bin`` shards
through :func:`surgery.checkpoint._torchfile.open_torch_file` (the pickle is read,
tensor bytes only when a tensor is asked for). Both read with ``preadv``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch

from .._errors import CheckpointError
from ._safetensors import SafetensorsSource
from ._source import CHECKPOINT_SUFFIXES, TensorInfo, TensorSource
from ._torchfile import open_torch_file

__all__ = ["ShardedSource", "open_sharded_index"]


class ShardedSource(TensorSource):
    """A sharded checkpoint, read through its index; shards open lazily.

    Attributes:
        path: the index file.
        weight_map: checkpoint key -> shard file name (relative to the index).
        metadata: the index's ``"metadata"`` entry (``{}`` when absent).
        opened: shard file names opened so far, in the order they were opened.
    """

    def __init__(
        self,
        path: str,
        weight_map: dict[str, str],
        metadata: dict[str, Any],
        *,
        mmap: bool = False,
    ) -> None:
        self.path = path
        self.mmap = mmap
        self.description = path
        self.unwrapped = None
        self.weight_map = weight_map
        self.metadata = metadata
        self.opened: list[str] = []
        self._root = os.path.dirname(os.path.abspath(path))
        self._shards: dict[str, TensorSource] = {}
        self._keys = list(weight_map)

    @property
    def shard_files(self) -> list[str]:
        """Every shard file the index names, in first-use order of the index."""
        return list(dict.fromkeys(self.weight_map.values()))

    @property
    def bytes_read(self) -> int:  # type: ignore[override]
        """Bytes of tensor data read so far, over every shard."""
        return sum(s.bytes_read for s in self._shards.values())

    def keys(self) -> list[str]:
        return list(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self.weight_map

    def info(self, key: str) -> TensorInfo:
        return self._shard(key).info(key)

    def read(self, key: str) -> torch.Tensor:
        return self._shard(key).read(key)

    def read_into(self, key: str, out: torch.Tensor) -> None:
        self._shard(key).read_into(key, out)

    def close(self) -> None:
        shards, self._shards = self._shards, {}
        for s in shards.values():
            s.close()

    def _shard(self, key: str) -> TensorSource:
        name = self.weight_map.get(key)
        if name is None:
            raise self._unknown(key)
        shard = self._shards.get(name)
        if shard is None:
            shard = self._open_shard(name)
            self._shards[name] = shard
            self.opened.append(name)
        if key not in shard:
            raise CheckpointError(
                f"{self.path!r} maps {key!r} to shard {name!r}, but that file has no such "
                f"tensor; the index and its shards do not match"
            )
        return shard

    def _open_shard(self, name: str) -> TensorSource:
        file = os.path.join(self._root, name)
        if not os.path.isfile(file):
            raise CheckpointError(
                f"shard {file!r} named by {self.path!r} does not exist; the sharded checkpoint "
                "is incomplete (every file in its weight_map must sit next to the index)"
            )
        if name.lower().endswith(".safetensors"):
            return SafetensorsSource(file, mmap=self.mmap)
        return open_torch_file(file, mmap=self.mmap)


def open_sharded_index(path: str | os.PathLike[str], *, mmap: bool = False) -> ShardedSource:
    """Open a sharded checkpoint by its ``*.index.json``; reads only the index.

    Args:
        path: ``model.safetensors.index.json`` or ``pytorch_model.bin.index.json``
            (any ``*.index.json`` whose ``weight_map`` names ``.safetensors`` or
            torch files next to it).

    Returns:
        A :class:`ShardedSource`; shards open when one of their keys is used.

    Raises:
        CheckpointError: the index is missing, not JSON, has no ``weight_map``,
            or names shard files of an unknown kind or outside its directory.

    Example:
        >>> import os, tempfile, torchvision, surgery
        >>> from surgery.checkpoint._sharded import open_sharded_index
        >>> d = tempfile.mkdtemp()
        >>> m = torchvision.models.resnet18(weights=None)
        >>> index = surgery.save_state_dict(m, d, max_shard_size="10MB")
        >>> src = open_sharded_index(index)
        >>> len(src.shard_files) > 1, src.opened
        (True, [])
        >>> src.info("fc.weight").shape, len(src.opened)
        ((1000, 512), 1)
        >>> src.close()
    """
    p = os.fspath(path)
    try:
        with open(p, encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"sharded index {p!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"cannot read sharded index {p!r}: {type(exc).__name__}: {exc}"
        ) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(
            f'{p!r} is not a sharded checkpoint index: it needs a "weight_map" object '
            'mapping tensor names to shard files, e.g. {"weight_map": {"fc.weight": '
            '"model-00001-of-00002.safetensors"}}'
        )
    for name in dict.fromkeys(weight_map.values()):
        if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
            raise CheckpointError(
                f"{p!r} names shard {name!r} outside its own directory; refusing to follow it"
            )
        if not name.lower().endswith((".safetensors", *CHECKPOINT_SUFFIXES)):
            raise CheckpointError(
                f"{p!r} names shard {name!r} of an unknown kind; shards must be .safetensors "
                f"or torch files ({', '.join(CHECKPOINT_SUFFIXES)})"
            )
    metadata = index.get("metadata") or {}
    return ShardedSource(
        p, dict(weight_map), metadata if isinstance(metadata, dict) else {}, mmap=mmap
    )


_SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})(?P<ext>\.[A-Za-z]+)$")


def refuse_lone_shard(path: str) -> None:
    """Refuse to read one shard of a sharded checkpoint as if it were the whole checkpoint.

    Raises:
        CheckpointError: ``path`` is named like ``model-00001-of-00003.safetensors``;
            the message names the index to load instead (and says when it is missing).
    """
    m = _SHARD_NAME.match(os.path.basename(path))
    if m is None:
        return
    folder = os.path.dirname(path)
    index_names = [
        f"{m['stem']}{m['ext']}.index.json",
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    ]
    index = next(
        (os.path.join(folder, n) for n in index_names if os.path.isfile(os.path.join(folder, n))),
        None,
    )
    if index is not None:
        hint = f"load its index {index!r} instead"
    else:
        hint = (
            f"its index ({os.path.join(folder, index_names[0])!r}) is missing, so the "
            "checkpoint is incomplete (an interrupted save?)"
        )
    raise CheckpointError(
        f"{path!r} is shard {int(m['i'])} of {int(m['n'])} of a sharded checkpoint, not a whole "
        f"checkpoint; {hint}",
        file=path,
    )
