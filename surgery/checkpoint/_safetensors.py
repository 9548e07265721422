"""``.safetensors`` files: shapes and dtypes from the header, tensor bytes read with ``preadv``."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import torch

from .._errors import CheckpointError, LoadError
from ._source import TensorInfo, TensorSource, check_file

__all__ = ["SafetensorsSource", "safetensors_dtype"]


_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "C64": "complex64",
    "C128": "complex128",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


def safetensors_dtype(code: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype code (``"F32"`` -> ``torch.float32``)."""
    name = _ST_DTYPES.get(code)
    dtype = getattr(torch, name, None) if name else None
    if not isinstance(dtype, torch.dtype):
        raise LoadError(f"safetensors dtype {code!r} has no torch equivalent")
    return dtype


class SafetensorsSource(TensorSource):
    """A ``.safetensors`` file through ``safetensors.safe_open`` (zero-copy mmap).

    ``info`` reads only the header; ``read`` returns a memory-mapped tensor.
    ``metadata`` is the file's string metadata (``{}`` when none). Tied tensors
    that :func:`surgery.save_state_dict` stored once are listed under every
    name again (``aliases``: alias -> stored key, from ``"surgery.aliases"``).

    Raises:
        CheckpointError: the file is missing or not a valid safetensors file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from safetensors import safe_open

        self.path = os.fspath(path)
        self.description = self.path
        self.unwrapped = None
        self.bytes_read = 0
        check_file(self.path)
        try:
            self._f: Any = safe_open(self.path, framework="pt")
            self._keys = list(self._f.keys())
            self.metadata: dict[str, str] = dict(self._f.metadata() or {})
        except Exception as exc:
            raise CheckpointError(
                f"cannot read {self.path!r} as safetensors: {type(exc).__name__}: {exc}"
            ) from None
        # tied tensors saved once by surgery.save_state_dict: {alias: stored key}
        self.aliases: dict[str, str] = {}
        raw = self.metadata.get("surgery.aliases")
        if raw:
            try:
                aliases = json.loads(raw)
            except ValueError:
                aliases = None
            if isinstance(aliases, dict):
                stored = set(self._keys)
                self.aliases = {
                    str(a): str(k) for a, k in aliases.items() if k in stored and a not in stored
                }
                self._keys += list(self.aliases)
        self._key_set = set(self._keys)
        self._infos: dict[str, TensorInfo] = {}

    def keys(self) -> list[str]:
        return list(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._key_set

    def info(self, key: str) -> TensorInfo:
        cached = self._infos.get(key)
        if cached is not None:
            return cached
        if key not in self._key_set:
            raise self._unknown(key)
        sl = self._f.get_slice(self.aliases.get(key, key))
        info = TensorInfo(tuple(int(d) for d in sl.get_shape()), safetensors_dtype(sl.get_dtype()))
        self._infos[key] = info
        return info

    def read(self, key: str) -> torch.Tensor:
        if key not in self._key_set:
            raise self._unknown(key)
        try:
            t = self._f.get_tensor(self.aliases.get(key, key))
        except Exception as exc:
            raise CheckpointError(
                f"cannot read tensor {key!r} from {self.path!r}: {type(exc).__name__}: {exc}"
            ) from None
        self.bytes_read += t.nbytes
        return t

    def close(self) -> None:
        f, self._f = getattr(self, "_f", None), None
        if f is not None:
            with contextlib.suppress(Exception):  # already closed
                f.__exit__(None, None, None)
