"""The source contract: a read-only, ordered collection of named tensors.

A :class:`TensorSource` lists its keys in checkpoint order, tells each tensor's
shape and dtype without reading its data where the format allows, and reads
one tensor at a time. Formats live in their own modules
(:mod:`._torchfile`, :mod:`._safetensors`, :mod:`._sharded`, :mod:`._dcp`);
:func:`surgery.checkpoint._open.open_source` picks one for a path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .._errors import CheckpointError, LoadError, SaveError

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "MappingSource",
    "TensorInfo",
    "TensorSource",
    "check_file",
    "describe_layout",
    "is_dense",
    "reject_non_tensors",
]

#: File suffixes read as torch files (zip, or legacy pickle).
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


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
    * ``read(key)`` returns a CPU tensor: a private copy for file sources
      (a memory-mapped view with ``mmap=True``), the mapping's own tensor for a
      mapping; the caller never writes into it. ``read_into(key, out)`` fills
      a caller's tensor (file sources read straight into its memory).
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
        """The tensor ``key`` (CPU; do not write into it)."""
        raise NotImplementedError

    def read_into(self, key: str, out: torch.Tensor) -> None:
        """Write the tensor ``key`` into ``out`` (same shape; cast to ``out.dtype``).

        File sources read straight into ``out``'s memory (no intermediate copy).
        """
        out.copy_(self.read(key))

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
        odd = [k for k, v in mapping.items() if not is_dense(v)]
        if odd:
            shown = ", ".join(f"{k!r} ({describe_layout(mapping[k])})" for k in odd[:10])
            raise LoadError(
                f"{description} holds tensors that are not dense: {shown}; load_partial "
                "loads dense (strided) tensors only: convert them first (tensor.to_dense(), "
                "tensor.dequantize(), nested.to_padded_tensor(0.0))"
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


def is_dense(t: torch.Tensor) -> bool:
    """A plain strided tensor: not sparse, quantized or nested."""
    return t.layout == torch.strided and not t.is_quantized and not t.is_nested


def describe_layout(t: torch.Tensor) -> str:
    """``"sparse_coo"``, ``"quantized"``, ``"nested"``: why :func:`is_dense` said no."""
    if t.is_quantized:
        return "quantized"
    if t.is_nested:
        return "nested"
    return str(t.layout).removeprefix("torch.")


def check_file(path: str) -> None:
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


def reject_non_tensors(state: Mapping[Any, Any]) -> None:
    """Raise SaveError naming the keys that are not strings or whose values are not tensors."""
    nonstr = [k for k in state if not isinstance(k, str)]
    if nonstr:
        raise SaveError(
            f"cannot save keys that are not strings: {', '.join(map(repr, nonstr[:10]))}; a "
            "state dict maps names (str) to tensors"
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise SaveError(
            f"cannot save non-tensor values: {', '.join(map(repr, bad[:10]))}; "
            "save_state_dict writes a mapping of names to tensors"
        )
    meta = [k for k, v in state.items() if v.is_meta]
    if meta:
        raise SaveError(
            f"cannot save {', '.join(map(repr, meta[:10]))}: on the meta device (no data); "
            "load or initialize them first"
        )
