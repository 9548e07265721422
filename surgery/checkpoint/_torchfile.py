"""Torch files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``), read without ever running pickled code.

A torch zip file (``torch.save`` since 1.6) is read here, not by ``torch.load``:

* the zip's central directory is parsed with :mod:`zipfile`; every record must be
  stored uncompressed and lie inside the file;
* ``data.pkl`` is unpickled by torch's own weights-only unpickler
  (:class:`torch._weights_only_unpickler.Unpickler`, the one behind
  ``torch.load(weights_only=True)``), with a ``persistent_load`` that builds each
  storage on the meta device and records its record name, dtype and size instead
  of reading it;
* every storage's record must hold exactly the bytes the pickle says it has, and
  every tensor must lie inside its storage (stricter than
  ``torch.load(weights_only=True, mmap=True)``, which maps past a short record);
* tensor bytes are then read on demand with ``preadv`` (:mod:`._fileio`).

A legacy (non-zip) torch file cannot be read lazily: it is loaded whole with
``torch.load(weights_only=True)`` into private memory. There is never an unsafe
fallback. Every failure is one :class:`~surgery.CheckpointError` naming the file
and saying what is wrong.
"""

from __future__ import annotations

import io
import os
import re
import sys
import zipfile
from typing import Any

import torch

from .._errors import CheckpointError, LoadError
from ._fileio import CheckedFile, FileSource, Record
from ._source import MappingSource, TensorInfo, TensorSource, check_file, describe_layout, is_dense
from ._unwrap import unwrap_state_dict

__all__ = ["TorchFileSource", "open_torch_file", "torch_load"]

_ZIP_MAGIC = b"PK\x03\x04"
_LOCAL_HEADER = 30
_MAX_PICKLE = 1 << 30  # a data.pkl larger than this is not a state dict


def _refused_global(msg: str, path: str) -> CheckpointError | None:
    glob = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", msg)
    if not glob:
        return None
    return CheckpointError(
        f"refusing to load {path!r}: it holds objects other than tensors and plain "
        f"containers (it would call {glob.group(1)}). surgery only reads checkpoints "
        "with torch.load(weights_only=True) and never runs pickled code; convert a "
        "trusted file yourself with torch.load(weights_only=False) + "
        "surgery.save_state_dict",
        file=path,
    )


def _detail(exc: BaseException) -> str:
    """A readable one-line reason for a low-level failure."""
    if isinstance(exc, EOFError):
        return "the pickle ends early (truncated)"
    text = str(exc).strip().splitlines()
    line = next((ln.strip() for ln in text if ln.strip()), "")
    return f"{type(exc).__name__}: {line[:200]}" if line else type(exc).__name__


def torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` of a legacy (non-zip) file, into private memory.

    Raises:
        CheckpointError: missing, corrupt, or holding objects other than tensors
            and plain containers (a pickle payload never runs).
    """
    p = os.fspath(path)
    check_file(p)
    if os.path.getsize(p) == 0:
        raise CheckpointError(f"cannot read {p!r}: the file is empty", file=p)
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:
        refused = _refused_global(str(exc), p)
        if refused is not None:
            raise refused from None
        cause: BaseException = exc
        msg = str(exc)
        lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
        if "WeightsUnpickler error" in msg and len(lines) > 2:
            detail = lines[2] if not lines[2].startswith("Check the doc") else lines[1]
        else:
            detail = _detail(cause)
        raise CheckpointError(
            f"cannot read {p!r} with torch.load(weights_only=True): the file is corrupt, "
            f"truncated or not a torch checkpoint ({detail[:200]})",
            file=p,
        ) from None


class _MetaStorages:
    """``persistent_load`` for torch's weights-only unpickler: meta storages, recorded."""

    def __init__(self) -> None:
        self.by_key: dict[str, tuple[torch.UntypedStorage, torch.dtype, int]] = {}
        self.key_of: dict[int, str] = {}  # untyped storage _cdata -> record key

    def __call__(self, saved_id: Any) -> Any:
        if not isinstance(saved_id, tuple) or len(saved_id) != 5:
            raise ValueError(f"unexpected persistent id {saved_id!r}")
        typename, storage_type, key, _location, numel = saved_id
        if isinstance(typename, bytes):
            typename = typename.decode("ascii", "replace")
        if typename != "storage":
            raise ValueError(f"persistent id of kind {typename!r}, expected 'storage'")
        dtype: Any = (
            torch.uint8
            if storage_type is torch.UntypedStorage
            else getattr(storage_type, "dtype", None)
        )
        if not isinstance(dtype, torch.dtype) or not isinstance(key, str):
            raise ValueError(f"bad storage record {saved_id!r}")
        if type(numel) is not int or numel < 0:
            raise ValueError(f"storage {key!r} has a bad size {numel!r}")
        if key in self.by_key:
            untyped, dtype0, numel0 = self.by_key[key]
            if (dtype0, numel0) != (dtype, numel):
                raise ValueError(f"storage {key!r} is described twice, differently")
        else:
            itemsize = torch.empty((), dtype=dtype, device="meta").element_size()
            untyped = torch.UntypedStorage(numel * itemsize, device="meta")
            self.by_key[key] = (untyped, dtype, numel)
            self.key_of[untyped._cdata] = key
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


class TorchFileSource(FileSource):
    """A torch zip checkpoint: pickle read safely, records checked, tensors read on demand.

    Attributes:
        path: the file.
        unwrapped: the wrapper entry the state dict was taken from, if any.

    Raises:
        CheckpointError: the file is not a valid torch zip checkpoint, holds
            objects other than tensors and plain containers, or a storage's record
            does not match it (the message says which and why).
    """

    def __init__(self, path: str, *, key: str | None = None, mmap: bool = False) -> None:
        super().__init__(path, mmap=mmap)
        try:
            self._parse(key)
        except BaseException:
            self.close()
            raise

    def _bad(self, what: str) -> CheckpointError:
        return CheckpointError(
            f"cannot read {self.path!r} as a torch checkpoint: {what}", file=self.path
        )

    def _records_of_zip(self) -> tuple[str, dict[str, tuple[int, int]]]:
        """(archive prefix, record name -> (data offset, size)), every record checked."""
        size = self._file.size
        raw = _ReaderAt(self._file)
        try:
            with zipfile.ZipFile(raw) as zf:
                infos = zf.infolist()
        except CheckpointError:
            raise
        except Exception as exc:  # BadZipFile, EOFError, struct.error, UnicodeDecodeError, ...
            raise self._bad(f"the zip directory is corrupt ({_detail(exc)})") from None
        pkl = [i.filename for i in infos if i.filename.endswith("/data.pkl")]
        top = [n for n in pkl if n.count("/") == 1]
        if len(top) != 1:
            raise self._bad(
                "the archive has no data.pkl" if not top else "the archive has several data.pkl"
            )
        prefix = top[0][: -len("data.pkl")]
        records: dict[str, tuple[int, int]] = {}
        for info in infos:
            if not info.filename.startswith(prefix):
                continue
            name = info.filename[len(prefix) :]
            if name in records:
                raise self._bad(f"record {name!r} appears twice in the zip directory")
            if info.compress_type != zipfile.ZIP_STORED:
                raise self._bad(f"record {name!r} is compressed (torch stores records as is)")
            if info.header_offset < 0 or info.header_offset + _LOCAL_HEADER > size:
                raise self._bad(f"record {name!r} starts past the end of the file")
            local = self._file.read_bytes(info.header_offset, _LOCAL_HEADER)
            if local[:4] != _ZIP_MAGIC:
                raise self._bad(f"record {name!r} has no local header (corrupt zip)")
            n = int.from_bytes(local[26:28], "little")
            e = int.from_bytes(local[28:30], "little")
            start = info.header_offset + _LOCAL_HEADER + n + e
            if start + info.file_size > size:
                raise self._bad(
                    f"record {name!r} needs {info.file_size} bytes at offset {start}, past the "
                    f"end of the {size}-byte file (truncated)"
                )
            records[name] = (start, info.file_size)
        return prefix, records

    def _parse(self, key: str | None) -> None:
        if self._file.size == 0:
            raise self._bad("the file is empty")
        _prefix, records = self._records_of_zip()
        order = records.get(".data/byteorder") or records.get("byteorder")
        if order is not None:
            byteorder = self._file.read_bytes(*order).decode("ascii", "replace")
            if byteorder != sys.byteorder:
                raise self._bad(f"it was written {byteorder}-endian; this machine is not")
        start, nbytes = records["data.pkl"]
        if nbytes > _MAX_PICKLE:
            raise self._bad(f"data.pkl has {nbytes} bytes, far more than a state dict needs")
        pickle_bytes = self._file.read_bytes(start, nbytes)
        storages = _MetaStorages()
        obj = self._unpickle(pickle_bytes, storages)
        try:
            sd, self.unwrapped = unwrap_state_dict(obj, key=key, description=repr(self.path))
            MappingSource(sd, self.path, self.unwrapped)  # non-tensor values, non-str keys
        except CheckpointError:
            raise
        except LoadError as exc:
            raise CheckpointError(str(exc), file=self.path) from None
        for skey, (_u, dtype, numel) in storages.by_key.items():
            rec = records.get(f"data/{skey}")
            itemsize = torch.empty((), dtype=dtype, device="meta").element_size()
            if rec is None:
                raise self._bad(f"storage {skey!r} has no record data/{skey}")
            if rec[1] != numel * itemsize:
                raise self._bad(
                    f"the record of storage {skey!r} holds {rec[1]} bytes, but the pickle "
                    f"describes {numel} x {dtype} = {numel * itemsize} bytes"
                )
        for k, t in sd.items():
            self._records[k] = self._record_of(k, t, storages, records)
            self._keys.append(k)

    def _unpickle(self, data: bytes, storages: _MetaStorages) -> Any:
        from torch._weights_only_unpickler import Unpickler

        unpickler = Unpickler(io.BytesIO(data), encoding="utf-8")
        unpickler.persistent_load = storages  # type: ignore[method-assign]
        try:
            with torch.device("meta"):
                return unpickler.load()
        except CheckpointError:
            raise
        except Exception as exc:
            refused = _refused_global(str(exc), self.path)
            if refused is not None:
                raise refused from None
            raise self._bad(f"data.pkl is corrupt ({_detail(exc)})") from None

    def _record_of(
        self,
        key: str,
        t: torch.Tensor,
        storages: _MetaStorages,
        records: dict[str, tuple[int, int]],
    ) -> Record:
        if not is_dense(t):
            raise CheckpointError(
                f"{self.path!r}: tensor {key!r} is {describe_layout(t)}; load_partial loads "
                "dense (strided) tensors only: convert it (tensor.to_dense() / "
                "tensor.dequantize()) and save again",
                file=self.path,
                key=key,
            )
        if not t.is_meta:
            raise self._bad(f"tensor {key!r} is not backed by one of the archive's storages")
        skey = storages.key_of.get(t.untyped_storage()._cdata)
        if skey is None:
            raise self._bad(f"tensor {key!r} is not backed by one of the archive's storages")
        _u, dtype, numel = storages.by_key[skey]
        if t.dtype != dtype:
            raise self._bad(f"tensor {key!r} is {t.dtype} but its storage is {dtype}")
        info = TensorInfo(tuple(int(d) for d in t.shape), t.dtype)
        stride = tuple(int(s) for s in t.stride())
        off = int(t.storage_offset())
        if any(s < 0 for s in stride) or off < 0:
            raise self._bad(f"tensor {key!r} has negative strides or offset")
        extent = 0 if not info.numel else 1 + sum((n - 1) * s for n, s in zip(info.shape, stride))
        if off + extent > numel:
            raise self._bad(
                f"tensor {key!r} {info.shape} at offset {off} reaches element {off + extent} "
                f"of a storage of {numel}"
            )
        contiguous = torch.empty(info.shape, device="meta").stride()
        rec = Record(
            info,
            records[f"data/{skey}"][0],
            off,
            None if (stride == tuple(contiguous) or info.numel <= 1) else stride,
        )
        return rec


class _ReaderAt(io.RawIOBase):
    """A seekable, read-only file object over a :class:`CheckedFile` (for :mod:`zipfile`)."""

    def __init__(self, file: CheckedFile) -> None:
        self._file = file
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._file.size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), self._file.size - self._pos))
        if n:
            self._file.read_into(self._pos, memoryview(b).cast("B")[:n])
        self._pos += n
        return n


def open_torch_file(
    path: str | os.PathLike[str], *, key: str | None = None, mmap: bool = False
) -> TensorSource:
    """Open a torch file: a zip checkpoint lazily, a legacy one loaded whole.

    Raises:
        CheckpointError: missing, corrupt, unsafe, or not a state dict.
    """
    p = os.fspath(path)
    check_file(p)
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot open checkpoint {p!r}: {exc}", file=p) from None
    if not magic:
        raise CheckpointError(f"cannot read {p!r} as a torch checkpoint: the file is empty", file=p)
    if magic == _ZIP_MAGIC:
        return TorchFileSource(p, key=key, mmap=mmap)
    obj = torch_load(p)
    try:
        sd, unwrapped = unwrap_state_dict(obj, key=key, description=repr(p))
        return MappingSource(sd, p, unwrapped)
    except CheckpointError:
        raise
    except LoadError as exc:
        raise CheckpointError(str(exc), file=p) from None
