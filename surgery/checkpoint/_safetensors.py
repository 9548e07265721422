"""``.safetensors`` files: the header is validated here, tensor bytes read with ``preadv``.

The format: 8 bytes (little-endian u64) giving the header's length, the header
(JSON: ``{key: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}``), then the data. Every entry is checked as strictly as the
``safetensors`` library does (known dtype, non-negative shape, ``end - begin``
equal to the tensor's size, entries tiling the data with no gap or overlap, the
data ending at the end of the file) before anything is read.
"""

from __future__ import annotations

import json
import os

import torch

from .._errors import CheckpointError, LoadError
from ._fileio import FileSource, Record
from ._source import TensorInfo, check_file

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


class SafetensorsSource(FileSource):
    """A ``.safetensors`` file: the header gives shapes and dtypes, ``read`` copies the bytes.

    ``info`` reads only the header; ``read`` returns a private copy (``mmap=True``:
    a zero-copy view of a memory map, which aliases the file). ``metadata`` is
    the file's string metadata (``{}`` when none). Tied tensors that
    :func:`surgery.save_state_dict` stored once are listed under every name
    again (``aliases``: alias -> stored key, from ``"surgery.aliases"``).

    Raises:
        CheckpointError: the file is missing or not a valid safetensors file
            (the message says what is wrong).
    """

    def __init__(self, path: str | os.PathLike[str], *, mmap: bool = False) -> None:
        p = os.fspath(path)
        check_file(p)
        super().__init__(p, mmap=mmap)
        try:
            self._parse()
        except BaseException:
            self.close()
            raise
        self.aliases: dict[str, str] = {}
        raw = self.metadata.get("surgery.aliases")
        if raw:
            try:
                aliases = json.loads(raw)
            except ValueError:
                aliases = None
            if isinstance(aliases, dict):
                for a, k in aliases.items():
                    if isinstance(a, str) and k in self._records and a not in self._records:
                        self.aliases[a] = k
                        self._records[a] = self._records[k]
                        self._keys.append(a)

    def _bad(self, what: str) -> CheckpointError:
        return CheckpointError(f"cannot read {self.path!r} as safetensors: {what}", file=self.path)

    def _parse(self) -> None:
        size = self._file.size
        if size == 0:
            raise self._bad("the file is empty")
        if size < 8:
            raise self._bad(f"the file has {size} bytes, too few for the 8-byte header length")
        n = int.from_bytes(self._file.read_bytes(0, 8), "little")
        if n > size - 8:
            raise self._bad(
                f"the header claims {n} bytes but only {size - 8} follow (truncated or not "
                "a safetensors file)"
            )
        try:
            header = json.loads(self._file.read_bytes(8, n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise self._bad(f"the header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise self._bad(f"the header is a JSON {type(header).__name__}, not an object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
        ):
            raise self._bad("__metadata__ must map strings to strings")
        self.metadata: dict[str, str] = dict(meta)
        data_start, data_len = 8 + n, size - 8 - n
        spans: list[tuple[int, int, str]] = []
        for key, entry in header.items():
            if not isinstance(entry, dict):
                raise self._bad(f"entry {key!r} is not an object")
            code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
            try:
                dtype = safetensors_dtype(code) if isinstance(code, str) else None
            except LoadError:
                dtype = None
            if dtype is None:
                raise self._bad(f"entry {key!r} has an unknown dtype {code!r}")
            if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
                raise self._bad(f"entry {key!r} has an invalid shape {shape!r}")
            if (
                not isinstance(offsets, list)
                or len(offsets) != 2
                or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_len
            ):
                raise self._bad(
                    f"entry {key!r} has data_offsets {offsets!r} outside the {data_len} data bytes"
                )
            info = TensorInfo(tuple(shape), dtype)
            if offsets[1] - offsets[0] != info.nbytes:
                raise self._bad(
                    f"entry {key!r} ({code} {tuple(shape)}) needs {info.nbytes} bytes but its "
                    f"data_offsets span {offsets[1] - offsets[0]}"
                )
            spans.append((offsets[0], offsets[1], key))
            self._records[key] = Record(info, data_start + offsets[0])
            self._keys.append(key)
        self._keys.sort()  # as safetensors.safe_open lists them
        end = 0
        for begin, stop, key in sorted(spans):
            if begin != end:
                raise self._bad(
                    f"entry {key!r} starts at data byte {begin}, expected {end} (entries must "
                    "tile the data with no gap or overlap)"
                )
            end = stop
        if end != data_len:
            raise self._bad(
                f"the entries cover {end} data bytes but the file has {data_len} (extra bytes "
                "at the end, or a truncated entry)"
            )
