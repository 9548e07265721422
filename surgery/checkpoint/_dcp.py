"""``torch.distributed.checkpoint`` (DCP) directories as sources, and the DCP writer.

A DCP checkpoint is a directory with a ``.metadata`` file (every key's shape,
dtype and where its chunks live) and one or more ``*.distcp`` data files. It is
read through DCP's own engine: :class:`torch.distributed.checkpoint.FileSystemReader`
and ``torch.distributed.checkpoint.load``, key by key, into tensors allocated
here. Shapes and dtypes come from the metadata alone.

Distributed targets: :meth:`DCPSource.read_like` with a ``DTensor`` template
(an FSDP2 / tensor-parallel parameter) allocates only this rank's shard and
lets DCP read just the chunks that overlap it, so each rank reads what it owns.
No collective is issued (``no_dist=True``), so ranks may load different keys.

Safety. DCP pickles its ``.metadata`` file, and reads non-tensor entries with
``torch.load(weights_only=False)``. Checkpoints are untrusted here, so
:class:`SafeFileSystemReader` unpickles the metadata with an allow-list of DCP's
own metadata classes (anything else is refused, naming the global), and never
reads a non-tensor entry. Tensor data is read by DCP with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from .._errors import CheckpointError, LoadError, SaveError
from .._hints import Hint
from ._source import TensorInfo, TensorSource, reject_non_tensors

__all__ = ["DCPSource", "SafeFileSystemReader", "open_dcp", "save_dcp"]

_DCP_MD = "torch.distributed.checkpoint.metadata"
_ALLOWED_GLOBALS = {
    (_DCP_MD, "Metadata"),
    (_DCP_MD, "TensorStorageMetadata"),
    (_DCP_MD, "TensorProperties"),
    (_DCP_MD, "ChunkStorageMetadata"),
    (_DCP_MD, "BytesStorageMetadata"),
    (_DCP_MD, "MetadataIndex"),
    (_DCP_MD, "StorageMeta"),
    (_DCP_MD, "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata: DCP's metadata dataclasses, dtypes and paths only."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence DCP's "assuming the intent is to load in a single process" notice."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"torch\.distributed is disabled", category=UserWarning
        )
        yield


def _filesystem_reader() -> type:
    from torch.distributed.checkpoint import FileSystemReader

    class _Reader(FileSystemReader):  # type: ignore[misc, valid-type]
        """FileSystemReader with a safe metadata unpickler and a byte counter."""

        def __init__(self, path: str | os.PathLike[str]) -> None:
            super().__init__(path)
            self.bytes_read = 0
            self._metadata: Any = None

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("rank") is not None:  # per-rank metadata: not written by save
                raise FileNotFoundError("no per-rank metadata")
            if self._metadata is None:
                path = os.path.join(os.fspath(self.path), ".metadata")
                with open(path, "rb") as f:
                    self._metadata = _MetadataUnpickler(f).load()
                from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

                if not isinstance(self._metadata, Metadata):
                    raise pickle.UnpicklingError(
                        f"expected DCP Metadata, found {type(self._metadata).__name__}"
                    )
                if getattr(self._metadata, "storage_meta", None) is None:
                    self._metadata.storage_meta = StorageMeta()
            metadata: Any = self._metadata
            metadata.storage_meta.load_id = self.load_id
            return metadata

        def read_data(self, plan: Any, planner: Any) -> Any:
            from torch.distributed.checkpoint.planner import LoadItemType

            seen = set()
            for item in plan.items:
                if item.type == LoadItemType.BYTE_IO:  # DCP would torch.load it unsafely
                    raise CheckpointError(
                        f"refusing to read non-tensor entry {item.storage_index.fqn!r}: DCP "
                        "reads those with torch.load(weights_only=False)"
                    )
                if item.storage_index not in seen:
                    seen.add(item.storage_index)
                    self.bytes_read += int(self.storage_data[item.storage_index].length)
            return super().read_data(plan, planner)

    return _Reader


def SafeFileSystemReader(path: str | os.PathLike[str]) -> Any:
    """A :class:`~torch.distributed.checkpoint.FileSystemReader` that is safe on untrusted input.

    Its ``read_metadata`` unpickles ``.metadata`` with an allow-list (DCP's
    metadata classes, dtypes, ``torch.Size``, paths) and caches it; ``read_data``
    refuses non-tensor entries and counts ``bytes_read`` (the stored length of
    every chunk read). Pass it as ``storage_reader=`` to ``dcp.load``.
    """
    return _filesystem_reader()(path)


class DCPSource(TensorSource):
    """A DCP checkpoint directory, read through DCP's reader and planner.

    ``keys()`` lists the tensor entries; a checkpoint saved as
    ``{"model": state_dict, "step": 3, ...}`` is unwrapped (``unwrapped ==
    "model"``) and its other entries are ignored. ``bytes_read`` counts the
    stored bytes of the chunks read.

    Attributes:
        path: the directory.
        metadata: DCP's ``Metadata`` (read once, safely).
    """

    def __init__(self, path: str, key: str | None = None) -> None:
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.path = path
        self.description = path
        self._reader = SafeFileSystemReader(path)
        try:
            with _quiet():
                self.metadata = self._reader.read_metadata()
        except FileNotFoundError:
            raise CheckpointError(f"DCP checkpoint {path!r} has no .metadata file") from None
        except Exception as exc:
            raise CheckpointError(
                f"cannot read the DCP metadata of {path!r}: {type(exc).__name__}: {exc}"
            ) from None
        entries = self.metadata.state_dict_metadata
        tensors = {k for k, v in entries.items() if isinstance(v, TensorStorageMetadata)}
        prefix, self.unwrapped = _unwrap(
            list(entries), tensors, self.metadata.planner_data or {}, key, path
        )
        inside = [k for k in entries if k.startswith(prefix)]
        bad = [k for k in inside if k not in tensors]
        if bad:
            shown = ", ".join(repr(k[len(prefix) :]) for k in bad[:10])
            where = f" under {self.unwrapped!r}" if self.unwrapped else ""
            raise LoadError(
                f"{path}{where} holds non-tensor entries: {shown}; a state dict maps names to "
                "tensors (pass key= to pick the entry that holds the state dict)"
            )
        self._prefix = prefix
        self._keys = [k[len(prefix) :] for k in inside]
        self._key_set = set(self._keys)

    @property
    def bytes_read(self) -> int:  # type: ignore[override]
        """Stored bytes of the chunks read so far."""
        return int(self._reader.bytes_read)

    def keys(self) -> list[str]:
        return list(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._key_set

    def info(self, key: str) -> TensorInfo:
        md = self._entry(key)
        return TensorInfo(tuple(int(d) for d in md.size), md.properties.dtype)

    def read(self, key: str) -> torch.Tensor:
        info = self.info(key)
        dest = torch.empty(info.shape, dtype=info.dtype)
        self._load({self._prefix + key: dest})
        return dest

    def read_like(self, key: str, template: torch.Tensor) -> torch.Tensor:
        """Read ``key`` laid out like ``template``: for a ``DTensor``, only this rank's shard.

        The result has the checkpoint's dtype and ``template``'s mesh and
        placements; a plain ``template`` gives the same as :meth:`read`.
        """
        from torch.distributed.tensor import DTensor

        if not isinstance(template, DTensor):
            return self.read(key)
        import torch.distributed.tensor as dt

        info = self.info(key)
        dest = dt.empty(
            info.shape,
            dtype=info.dtype,
            device_mesh=template.device_mesh,
            placements=template.placements,
        )
        self._load({self._prefix + key: dest})
        return dest

    def close(self) -> None:
        pass

    def _entry(self, key: str) -> Any:
        if key not in self._key_set:
            raise self._unknown(key)
        return self.metadata.state_dict_metadata[self._prefix + key]

    def _load(self, state_dict: dict[str, torch.Tensor]) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import CheckpointException

        try:
            with _quiet():
                dcp.load(state_dict, storage_reader=self._reader, no_dist=True)
        except (Exception, CheckpointException) as exc:
            cause: BaseException = exc
            if isinstance(exc, CheckpointException) and exc.failures:
                cause = next(iter(exc.failures.values()))[0]  # (exception, traceback)
            if isinstance(cause, CheckpointError):
                raise cause from None
            text = str(cause).strip().splitlines()
            raise CheckpointError(
                f"cannot read {', '.join(map(repr, state_dict))} from DCP checkpoint "
                f"{self.path!r}: {type(cause).__name__}: {text[-1] if text else ''}"
            ) from None


def _unwrap(
    keys: list[str],
    tensors: set[str],
    planner_data: Mapping[str, Any],
    key: str | None,
    path: str,
) -> tuple[str, str | None]:
    """The key prefix of the state dict inside a (possibly wrapped) DCP checkpoint."""
    if key is not None:
        prefix = key + "."
        if not any(k.startswith(prefix) for k in tensors):
            cands = _dcp_candidates(keys, tensors, planner_data)
            raise LoadError(
                f"{path} has no entry {key!r} holding tensors; entries that hold tensors: "
                f"{', '.join(map(repr, cands)) or '(none)'}"
            )
        return prefix, key
    top_level = [k for k in tensors if len(planner_data.get(k, (k,))) <= 1]
    if top_level or not tensors:
        return "", None
    cands = _dcp_candidates(keys, tensors, planner_data)
    if len(cands) == 1:
        return cands[0] + ".", cands[0]
    pick = Hint("key", cands[0])
    raise LoadError(
        f"{path} wraps several state dicts: {', '.join(map(repr, cands))}; pick one with {pick}",
        hints=(pick,),
    )


def _dcp_candidates(
    keys: list[str], tensors: set[str], planner_data: Mapping[str, Any]
) -> list[str]:
    """Top-level entries (as saved) that hold tensors, in checkpoint order."""
    out: dict[str, None] = {}
    for k in keys:
        if k in tensors:
            parts = planner_data.get(k, (k,))
            if len(parts) > 1:
                out[str(parts[0])] = None
    return list(out)


def open_dcp(path: str | os.PathLike[str], key: str | None = None) -> DCPSource:
    """Open a ``torch.distributed.checkpoint`` directory as a source; reads only metadata.

    Args:
        path: a directory written by ``torch.distributed.checkpoint.save`` (it
            holds ``.metadata``), e.g. by ``save_state_dict(..., format="dcp")``.
        key: the entry that holds the state dict when several entries do
            (``{"model": ..., "ema": ...}``).

    Returns:
        A :class:`DCPSource`.

    Raises:
        CheckpointError: no readable ``.metadata``, or it holds objects other
            than DCP metadata.
        LoadError: several wrapped state dicts without ``key``.

    Example:
        >>> import tempfile, torchvision, surgery
        >>> from surgery.checkpoint._dcp import open_dcp
        >>> d = tempfile.mkdtemp()
        >>> path = surgery.save_state_dict(torchvision.models.resnet18(weights=None), d, format="dcp")
        >>> src = open_dcp(path)
        >>> src.info("fc.weight"), src.read("fc.bias").shape
        (TensorInfo(shape=(1000, 512), dtype=torch.float32), torch.Size([1000]))
    """
    p = os.fspath(path)
    if not os.path.isdir(p):
        raise CheckpointError(f"DCP checkpoint {p!r} is not a directory")
    return DCPSource(p, key)


def save_dcp(state_dict: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """Write ``state_dict`` as a DCP checkpoint directory with ``torch.distributed.checkpoint.save``.

    In a process group (``torch.distributed`` initialized) this is a collective:
    every rank calls it, and each writes its own shards of ``DTensor`` values
    (FSDP2). Otherwise the directory is written by this process alone. Views
    into larger storages are written compactly.

    Returns:
        The directory written.

    Raises:
        SaveError: a value is not a tensor or is on the meta device, or the
            directory cannot be written.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    reject_non_tensors(state_dict)
    sd: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        t = v.detach()
        if type(t) is torch.Tensor and t.untyped_storage().nbytes() != t.nbytes:
            t = t.clone()  # torch.save would otherwise write the whole storage
        sd[k] = t
    p = os.fspath(path)
    distributed = dist.is_available() and dist.is_initialized()
    try:
        os.makedirs(p, exist_ok=True)
        with _quiet():
            dcp.save(sd, checkpoint_id=p, no_dist=not distributed)
    except OSError as exc:
        raise SaveError(f"cannot write DCP checkpoint {p!r}: {exc}", file=p) from exc
    return p
