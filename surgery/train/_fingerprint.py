"""Fingerprints and staleness checks for :mod:`surgery.train._cache`.

``weights_fingerprint`` / ``data_fingerprint`` key an on-disk feature cache;
``Watch`` remembers a body's tensors and tells, cheaply, whether they changed
since the features were computed (version counters and storage pointers on
every read, value digests on the first read and once per epoch).
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

import torch
from torch import nn

from .._errors import ArgumentError

__all__ = ["Watch", "data_fingerprint", "tensor_bytes", "weights_fingerprint"]

_SAMPLE_ITEMS = 16  # items hashed for the data fingerprint (all of them below this)

# ---------------------------------------------------------------------------
# fingerprints
# ---------------------------------------------------------------------------


def tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())  # type: ignore[arg-type]


def weights_fingerprint(body: nn.Module) -> str:
    """A hex digest of ``body``'s class, structure (``repr``) and every tensor of its state.

    BLAKE2b over the raw bytes: about a second per gigabyte of weights.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{type(body).__module__}.{type(body).__qualname__}\n{body!r}".encode())
    for name, t in body.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        if t.device.type == "meta":
            raise ArgumentError(
                f"cannot fingerprint {name!r}: it is on the meta device (no values)"
            )
        h.update(f"\n{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def _hash_obj(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        h.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(tensor_bytes(obj))
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _hash_obj(h, v)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _hash_obj(h, obj[k])
    elif hasattr(obj, "__array__"):
        import numpy as np

        arr = np.ascontiguousarray(np.asarray(obj))
        h.update(f"A{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    elif hasattr(obj, "tobytes"):  # PIL images
        h.update(f"B{getattr(obj, 'size', '')}{getattr(obj, 'mode', '')}".encode())
        h.update(obj.tobytes())
    else:
        h.update(repr(obj).encode())


def _sample_indices(n: int) -> list[int]:
    if n <= _SAMPLE_ITEMS:
        return list(range(n))
    return sorted({round(i * (n - 1) / (_SAMPLE_ITEMS - 1)) for i in range(_SAMPLE_ITEMS)})


def data_fingerprint(dataset: Any, first: Any = None) -> str:
    """A hex digest of a map-style dataset: its class, length and a sample of its items.

    Up to 16 evenly spaced items (all of them for small data) are hashed.
    ``first`` is item 0 if it was already loaded.
    """
    h = hashlib.blake2b(digest_size=16)
    n = len(dataset)
    h.update(f"{type(dataset).__module__}.{type(dataset).__qualname__}:{n}".encode())
    for i in _sample_indices(n):
        h.update(f"\n#{i}".encode())
        _hash_obj(h, first if (i == 0 and first is not None) else dataset[i])
    return h.hexdigest()


# ---------------------------------------------------------------------------
# staleness
# ---------------------------------------------------------------------------


def _state(body: nn.Module) -> list[tuple[str, torch.Tensor]]:
    seen: set[int] = set()
    out = []
    for name, t in [*body.named_parameters(), *body.named_buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            out.append((name, t))
    return out


_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> Any:
    """A flat numpy view of a contiguous CPU tensor's bits (shares its storage), or None."""
    if t.device.type != "cpu" or t.numel() == 0 or not t.is_contiguous():
        return None
    as_int = _INT_OF_SIZE.get(t.element_size())
    if as_int is None:
        return None
    try:
        return t.detach().reshape(-1).view(as_int).numpy()
    except (RuntimeError, TypeError):
        return None


def _sample(t: torch.Tensor) -> torch.Tensor:
    flat = t.detach().reshape(-1)
    picked = flat[:: max(1, flat.numel() // 8)][:8]
    return picked.to(torch.float64).cpu()


class Watch:
    """What the body looked like when the features were computed.

    Per read (:meth:`light`): version counters (optimizer steps,
    ``load_state_dict``, in-place edits), storage pointers (``.data = ...``,
    ``.to(...)``) and one element per CPU tensor (``.data`` edits in place),
    read through numpy views of the body's storage. Thorough (:meth:`thorough`):
    the body's tensors collected again (replaced parameters) and a digest of
    values: 8 strided elements per CPU tensor, the norm of every floating
    accelerator tensor (``torch._foreach_norm``, which also catches fused
    optimizers).
    """

    def __init__(self, body: nn.Module) -> None:
        self.ref = weakref.ref(body)
        self.body_type = type(body).__name__
        state = _state(body)
        self.keys = self._keys(state)
        self.names = [n for n, _ in state]
        self.tensors = [t for _, t in state]
        self.versions = [t._version for t in self.tensors]
        self.ptrs = [t.data_ptr() for t in self.tensors]
        self.probes: list[tuple[str, Any, int, int]] = []  # name, arr.item, index, bits
        self.views: list[tuple[str, Any, int, bytes]] = []  # name, arr, step, bits
        self.others: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # CPU, no view
        accel: list[tuple[str, torch.Tensor]] = []
        for name, t in state:
            if t.device.type == "meta":
                continue
            arr = _bits(t)
            if arr is not None:
                mid = len(arr) // 2
                self.probes.append((name, arr.item, mid, arr.item(mid)))
                step = max(1, len(arr) // 8)
                self.views.append((name, arr, step, arr[::step][:8].tobytes()))
            elif t.device.type == "cpu" or not t.is_floating_point():
                self.others.append((name, t, _sample(t)))
            else:
                accel.append((name, t))
        self.accel_names = [n for n, _ in accel]
        self.accel = [t.detach() for _, t in accel]
        self.norms = self._norms()

    @staticmethod
    def _keys(state: list[tuple[str, torch.Tensor]]) -> list[tuple[str, int, int, tuple[int, ...]]]:
        return [(n, id(t), t.data_ptr(), tuple(t.shape)) for n, t in state]

    def _norms(self) -> torch.Tensor | None:
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, t in enumerate(self.accel):
            groups.setdefault((t.device, t.dtype), []).append(i)
        if not groups:
            return None
        out = torch.empty(len(self.accel), dtype=torch.float64)
        for idx in groups.values():
            norms = torch._foreach_norm([self.accel[i] for i in idx])
            out[idx] = torch.stack(norms).to("cpu", torch.float64)
        return out

    def light(self) -> str | None:
        """The name of a tensor whose version, storage or probed element changed, or None."""
        now = [t._version for t in self.tensors]
        if now != self.versions:
            return next(n for n, a, b in zip(self.names, now, self.versions) if a != b)
        ptrs = [t.data_ptr() for t in self.tensors]
        if ptrs != self.ptrs:
            return next(n for n, a, b in zip(self.names, ptrs, self.ptrs) if a != b)
        for name, item, i, value in self.probes:
            if item(i) != value:
                return name
        return None

    def thorough(self) -> str | None:
        """:meth:`light`, then the body's tensors collected again and a digest of values."""
        changed = self.light()
        if changed is not None:
            return changed
        body = self.ref()
        if body is None:
            return None  # the body is gone: nothing can have changed it
        keys = self._keys(_state(body))
        if keys != self.keys:
            old = {k[0]: k for k in self.keys}
            for k in keys:
                if old.get(k[0]) != k:
                    return k[0]
            return next((k[0] for k in self.keys if k[0] not in {x[0] for x in keys}), "?")
        for name, arr, step, bits in self.views:
            if arr[::step][:8].tobytes() != bits:
                return name
        for name, t, sample in self.others:
            if not torch.equal(_sample(t).view(torch.int64), sample.view(torch.int64)):
                return name
        if self.norms is not None:
            now_norms = self._norms()
            assert now_norms is not None
            differ = (now_norms.view(torch.int64) != self.norms.view(torch.int64)).nonzero()
            if len(differ):
                return self.accel_names[int(differ[0])]
        return None

    def release(self) -> None:
        """Drop the views on the body's storage (once stale, they serve no purpose)."""
        self.probes, self.views, self.others, self.accel = [], [], [], []
