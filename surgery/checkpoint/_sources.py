"""Checkpoint sources: one read-only view of "named tensors" over every format.

A :class:`TensorSource` lists its keys in checkpoint order, tells each tensor's
shape and dtype without reading its data where the format allows (safetensors
headers, memory-mapped torch zip files), and reads one tensor at a time.
:func:`open_source` picks the right one for a path, a directory, a mapping or
an ``nn.Module``.

Formats and engines::

    Mapping[str, Tensor]          MappingSource (values read as they are, detached)
    nn.Module                     its state_dict(keep_vars=False)
    .pt .pth .bin .ckpt (zip)     torch.load(weights_only=True, mmap=True, map_location="cpu")
    legacy (non-zip) torch file   torch.load(weights_only=True) (cannot be memory-mapped)
    .safetensors                  safetensors.safe_open(framework="pt"), zero-copy mmap
    *.index.json                  surgery.checkpoint._sharded.open_sharded_index (opens only needed shards)
    directory with .metadata      surgery.checkpoint._dcp.open_dcp (torch.distributed.checkpoint)
    other directory               the one checkpoint it holds (ambiguous -> CheckpointError)

Checkpoints are untrusted: pickles are only ever read with
``weights_only=True``, never retried unsafely.

A checkpoint that wraps its weights (``{"model": sd, "epoch": 3}``,
``{"state_dict": sd}``, ``{"module": sd}``, ``{"model_state_dict": sd}``, or any
single entry that holds the tensors) is unwrapped by :func:`unwrap_state_dict`;
``source.unwrapped`` names the key. Several candidates are ambiguous: the
error lists them and ``key=`` picks one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._errors import ArgumentError, CheckpointError, LoadError
from .._hints import Hint

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "MappingSource",
    "SafetensorsSource",
    "TensorInfo",
    "TensorSource",
    "open_source",
    "safetensors_dtype",
    "torch_load",
    "unwrap_state_dict",
]

#: File suffixes read with ``torch.load(weights_only=True)``.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

#: Wrapper keys that commonly hold the state dict of a training checkpoint.
WRAPPER_KEYS = ("model", "state_dict", "module", "model_state_dict")


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of one checkpoint tensor (known without reading its data)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * _itemsize(self.dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


class TensorSource:
    """Base class: a read-only, ordered collection of named tensors.

    Subclasses implement :meth:`keys`, :meth:`info` and :meth:`read` (and
    :meth:`close` when they hold files). They set:

    Attributes:
        description: what the source is, for messages: the file or directory
            path, ``"<mapping>"`` or ``"<module ResNet>"``.
        unwrapped: the wrapper key that was unwrapped (``"model"``,
            ``"state_dict"``, ``"model.state_dict"`` for nested ones), or None.
        bytes_read: bytes of tensor data actually read so far (benchmarks);
            :meth:`read` adds ``tensor.nbytes``.

    Contract for implementers (``surgery.checkpoint._sharded``, ``surgery.checkpoint._dcp``):

    * ``keys()`` is in checkpoint order and has no duplicates.
    * ``info(key)`` must not read tensor data when the format has a header.
    * ``read(key)`` returns a CPU tensor (memory-mapped where possible, no
      extra copy); the caller never writes into it.
    * unknown keys raise ``LoadError`` naming the key and ``description``;
      unreadable data raises ``CheckpointError`` naming the file.
    * sources are context managers; ``close()`` is idempotent.
    """

    description: str = "<source>"
    unwrapped: str | None = None
    bytes_read: int = 0

    def keys(self) -> list[str]:
        """The tensor names, in checkpoint order."""
        raise NotImplementedError

    def info(self, key: str) -> TensorInfo:
        """Shape and dtype of ``key``, without reading its data where possible."""
        raise NotImplementedError

    def read(self, key: str) -> torch.Tensor:
        """The tensor ``key`` (CPU, memory-mapped where possible; do not write into it)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release files and maps (idempotent)."""

    def __contains__(self, key: object) -> bool:
        return key in set(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        extra = f", unwrapped={self.unwrapped!r}" if self.unwrapped else ""
        return f"{type(self).__name__}({self.description!r}{extra})"

    def _unknown(self, key: str) -> LoadError:
        import difflib

        close = difflib.get_close_matches(key, self.keys(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return LoadError(f"{self.description} has no tensor {key!r}{hint}")


class MappingSource(TensorSource):
    """A source over an in-memory mapping of tensors (validated on construction).

    Raises:
        LoadError: a value is not a tensor (the message names the key).
    """

    def __init__(
        self,
        mapping: Mapping[str, Any],
        description: str = "<mapping>",
        unwrapped: str | None = None,
    ) -> None:
        self.description = description
        self.unwrapped = unwrapped
        self.bytes_read = 0
        bad = [k for k, v in mapping.items() if not isinstance(v, torch.Tensor)]
        if bad:
            shown = ", ".join(f"{k!r} ({type(mapping[k]).__name__})" for k in bad[:10])
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            where = f" under {unwrapped!r}" if unwrapped else ""
            raise LoadError(
                f"{description}{where} holds non-tensor values: {shown}{more}; a state dict "
                "maps names to tensors (drop those entries, or pass key= to pick the entry "
                "that holds the state dict)"
            )
        nonstr = [k for k in mapping if not isinstance(k, str)]
        if nonstr:
            raise LoadError(
                f"{description} has non-string keys such as {nonstr[0]!r}: not a state dict"
            )
        self._tensors: dict[str, torch.Tensor] = dict(mapping)

    def keys(self) -> list[str]:
        return list(self._tensors)

    def info(self, key: str) -> TensorInfo:
        t = self._get(key)
        return TensorInfo(tuple(t.shape), t.dtype)

    def read(self, key: str) -> torch.Tensor:
        t = self._get(key).detach()
        self.bytes_read += t.nbytes
        return t

    def _get(self, key: str) -> torch.Tensor:
        try:
            return self._tensors[key]
        except KeyError:
            raise self._unknown(key) from None

    def close(self) -> None:
        pass


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
        _check_file(self.path)
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


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        hint = ""
        if os.path.isdir(parent):
            import difflib

            close = difflib.get_close_matches(os.path.basename(path), os.listdir(parent), n=1)
            if close:
                hint = f" (did you mean {os.path.join(os.path.dirname(path), close[0])!r}?)"
        raise CheckpointError(f"checkpoint file {path!r} does not exist{hint}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} is not a regular file")


def torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` for untrusted files: ``weights_only=True``, memory-mapped, on CPU.

    A legacy (non-zip) file cannot be memory-mapped and is read whole, still with
    ``weights_only=True``. There is never an unsafe fallback.

    Raises:
        CheckpointError: missing, corrupt, or holding objects other than tensors
            and plain containers (a pickle payload never runs).
    """
    p = os.fspath(path)
    _check_file(p)
    mmap = zipfile.is_zipfile(p)
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        msg = str(exc)
        glob = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
        if glob:
            raise CheckpointError(
                f"refusing to load {p!r}: it holds objects other than tensors and plain "
                f"containers (it would call {glob.group(1)}). surgery only reads checkpoints "
                "with torch.load(weights_only=True) and never runs pickled code; convert a "
                "trusted file yourself with torch.load(weights_only=False) + "
                "surgery.save_state_dict"
            ) from None
        lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
        detail = next(
            (
                ln
                for ln in lines
                if ln.startswith(("Unsupported", "Unpickler", "Weights"))
                and not ln.startswith("Weights only load failed")
            ),
            lines[0] if lines else type(exc).__name__,
        )
        if "WeightsUnpickler error" in msg and len(lines) > 2:
            detail = lines[2] if not lines[2].startswith("Check the doc") else lines[1]
        raise CheckpointError(
            f"cannot read {p!r} with torch.load(weights_only=True): the file is corrupt, "
            f"truncated or not a torch checkpoint ({type(exc).__name__}: {detail[:200]})"
        ) from None


def _tensor_count(m: Mapping[Any, Any]) -> int:
    return sum(isinstance(v, torch.Tensor) for v in m.values())


def _holds_tensors(v: Any, depth: int = 0) -> bool:
    """A mapping with tensor values, directly or in a nested wrapper (2 levels)."""
    if not isinstance(v, Mapping) or depth > 2:
        return False
    if _tensor_count(v):
        return True
    return any(_holds_tensors(x, depth + 1) for x in v.values())


def unwrap_state_dict(
    obj: Any, *, key: str | None = None, description: str = "<mapping>"
) -> tuple[Mapping[str, Any], str | None]:
    """Find the state dict inside a loaded checkpoint object.

    A mapping with tensor values is the state dict itself. Otherwise the single
    entry that holds tensors (``"model"``, ``"state_dict"``, ...; nested
    wrappers are followed, e.g. ``"model.state_dict"``) is unwrapped; metadata
    next to it (epoch, optimizer, config) is ignored.

    Args:
        obj: what ``torch.load`` returned.
        key: the wrapper entry to use (dotted for nested ones); required when
            several entries hold tensors.
        description: the file, for messages.

    Returns:
        ``(state_dict, unwrapped_key_or_None)``.

    Raises:
        LoadError: not a mapping, no entry holds tensors, ``key`` names nothing,
            or several candidates and no ``key``.
    """
    if not isinstance(obj, Mapping):
        raise LoadError(
            f"{description} holds a {type(obj).__name__}, not a state dict (a mapping of "
            "names to tensors)"
        )
    if key is not None:
        if not isinstance(key, str):
            raise ArgumentError(f"key must be a str, got {type(key).__name__}")
        node: Any = obj
        if key in obj:
            node = obj[key]
        else:
            for part in key.split("."):
                if not isinstance(node, Mapping) or part not in node:
                    cands = _candidates(obj)
                    raise LoadError(
                        f"{description} has no entry {key!r}; entries that hold tensors: "
                        f"{', '.join(map(repr, cands)) or '(none)'}; top-level entries: "
                        f"{', '.join(map(repr, list(obj)[:20]))}"
                    )
                node = node[part]
        if not isinstance(node, Mapping):
            raise LoadError(f"{description}[{key!r}] is a {type(node).__name__}, not a state dict")
        return node, key
    if not obj or _tensor_count(obj):
        return obj, None
    cands = _candidates(obj)
    if len(cands) == 1:
        node = obj
        for part in _split_candidate(obj, cands[0]):
            node = node[part]
        return node, cands[0]
    if not cands:
        shown = ", ".join(f"{k!r} ({type(v).__name__})" for k, v in list(obj.items())[:20])
        raise LoadError(f"{description} holds no tensors: entries {shown}")
    pick = Hint("key", cands[0])
    raise LoadError(
        f"{description} wraps several state dicts: {', '.join(map(repr, cands))}; pick one "
        f"with {pick}",
        hints=(pick,),
    )


def _candidates(obj: Mapping[Any, Any], prefix: str = "", depth: int = 0) -> list[str]:
    out: list[str] = []
    for k, v in obj.items():
        if not isinstance(v, Mapping):
            continue
        name = f"{prefix}{k}"
        if _tensor_count(v):
            out.append(name)
        elif depth < 2:
            out.extend(_candidates(v, name + ".", depth + 1))
    return out


def _split_candidate(obj: Mapping[Any, Any], dotted: str) -> list[Any]:
    parts: list[Any] = []
    node: Any = obj
    rest = dotted
    while rest:
        if rest in node:
            parts.append(rest)
            break
        head, _, rest = rest.partition(".")
        parts.append(head)
        node = node[head]
    return parts


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


def _lazy_import(module: str, name: str, what: str) -> Any:
    import importlib

    try:
        mod = importlib.import_module(f"surgery.checkpoint.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"surgery.{module}":
            raise CheckpointError(f"{what} sources are not available in this build") from None
        raise
    return getattr(mod, name)


def open_source(source: Any, *, key: str | None = None) -> TensorSource:
    """Open anything that holds named tensors as a :class:`TensorSource`.

    Args:
        source: a Mapping of tensors, an ``nn.Module`` (its detached state dict),
            a path (str or ``os.PathLike``) to ``.pt``/``.pth``/``.bin``/``.ckpt``
            (torch zip or legacy), ``.safetensors``, a sharded ``*.index.json``, a
            torch.distributed.checkpoint directory, or a directory holding one
            checkpoint; an open ``TensorSource`` is returned as is.
        key: the wrapper entry that holds the state dict, when ambiguous.

    Returns:
        The source; close it (or use it as a context manager) when done.

    Raises:
        CheckpointError: the file is missing, unreadable, corrupt or unsafe.
        LoadError: the content is not a state dict (non-tensor values, several
            wrapped state dicts without ``key``).
        ArgumentError: ``source`` is none of the above.

    Example:
        >>> import torchvision
        >>> from surgery.checkpoint._sources import open_source
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
                return _lazy_import("_dcp", "open_dcp", "torch.distributed.checkpoint")(
                    path, key=key
                )
            path = _directory_checkpoint(path)
        lower = path.lower()
        if lower.endswith(".index.json"):
            _check_file(path)
            return _lazy_import("_sharded", "open_sharded_index", "sharded index")(path)
        if lower.endswith(".safetensors"):
            return SafetensorsSource(path)
        obj = torch_load(path)
        sd, unwrapped = unwrap_state_dict(obj, key=key, description=repr(path))
        return MappingSource(sd, path, unwrapped)
    raise ArgumentError(
        f"cannot load from a {type(source).__name__}: pass a checkpoint path, a directory, "
        "a mapping of tensors or an nn.Module"
    )
