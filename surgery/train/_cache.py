"""The feature cache: :class:`FeatureCache`, a map-style ``Dataset`` of features.

What :func:`surgery.precompute` returns (see :mod:`surgery.train._precompute`).

Staleness: the cache remembers the body's tensors. Every read compares their
version counters (bumped by optimizer steps, ``load_state_dict`` and in-place
edits: a few microseconds per read, once per batch through a ``DataLoader``);
the first read, every ``len(cache)`` item reads and :meth:`FeatureCache.check`
also re-collect the body's tensors and compare a digest of their values
(norms on accelerators, strided samples on the CPU), which catches replaced
parameters, ``.data`` edits and fused optimizers (they bump no counter). A
stale cache raises :class:`surgery.StaleCacheError`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path as FsPath
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .._errors import ArgumentError, StaleCacheError
from ._fingerprint import Watch

__all__ = ["Batches", "FeatureCache", "open_features"]

# ---------------------------------------------------------------------------
# the dataset
# ---------------------------------------------------------------------------


class FeatureCache(Dataset):
    """Features computed once by a frozen body: a map-style ``Dataset``.

    Items are ``(features[i], targets[i])``, or ``features[i]`` when there are
    no targets. ``features`` and ``targets`` are whole tensors (memory-mapped
    from ``path`` when the cache lives on disk), handy for full-batch training.
    A cache made by :func:`precompute` raises :class:`surgery.StaleCacheError`
    when read after the body's weights changed (items, ``DataLoader`` batches,
    :meth:`loader`); reading the ``features`` attribute directly skips that
    check, so call :meth:`check` first.

    Attributes:
        features: ``(N, *feature_shape)`` tensor on the CPU.
        targets: ``(N, ...)`` tensor, or None.
        path: the cache directory on disk, or None when held in memory.
        key: the fingerprint of body and data (empty when not computed).
        reused: True when the features were read from an existing cache on disk.

    Example:
        >>> import torch, surgery
        >>> cache = surgery.FeatureCache(torch.randn(10, 4), torch.arange(10))
        >>> features, target = cache[3]
        >>> len(cache), features.shape, int(target)
        (10, torch.Size([4]), 3)
    """

    def __init__(
        self,
        features: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        key: str = "",
        reused: bool = False,
    ) -> None:
        if not isinstance(features, torch.Tensor) or features.dim() == 0:
            raise ArgumentError("features must be a tensor with a leading item dimension")
        if targets is not None and (
            not isinstance(targets, torch.Tensor) or len(targets) != len(features)
        ):
            raise ArgumentError(
                f"targets must be a tensor with one entry per item ({len(features)}), got "
                f"{type(targets).__name__}"
                + (f" of length {len(targets)}" if isinstance(targets, torch.Tensor) else "")
            )
        self.features = features
        self.targets = targets
        self.path = FsPath(path) if path is not None else None
        self.key = key
        self.reused = reused
        self._watch: Watch | None = None
        self._reads = 0
        self._stale: str | None = None

    def _track(self, body: nn.Module) -> None:
        self._watch = Watch(body)
        self._reads = -1  # the first read checks thoroughly

    # -- staleness ---------------------------------------------------------

    def _raise_stale(self, what: str) -> None:
        self._stale = what
        if self._watch is not None:
            self._watch.release()
        where = f"at {str(self.path)!r}" if self.path is not None else "in memory"
        body = self._watch.body_type if self._watch is not None else "body"
        raise StaleCacheError(
            f"FeatureCache {where} is stale: the {body}'s {what!r} changed after the features "
            f"were computed, so they no longer match the body.\n  recompute them: "
            f"cache = surgery.precompute(body, data, ...), or train through the body"
        )

    def check(self) -> None:
        """Compare the body with what it was when the features were computed.

        Raises:
            StaleCacheError: a weight or buffer changed (or was replaced) since.
        """
        if self._stale is not None:
            self._raise_stale(self._stale)
        if self._watch is not None:
            changed = self._watch.thorough()
            if changed is not None:
                self._raise_stale(changed)
            self._reads = 0

    @property
    def is_stale(self) -> bool:
        """Whether the body changed since the features were computed (a thorough check)."""
        try:
            self.check()
        except StaleCacheError:
            return True
        return False

    def _guard(self, n: int) -> None:
        if self._watch is None:
            return
        if self._stale is not None:
            self._raise_stale(self._stale)
        if self._reads < 0 or self._reads >= len(self):
            self.check()
        else:
            changed = self._watch.light()
            if changed is not None:
                self._raise_stale(changed)
        self._reads += n

    # -- Dataset -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> Any:
        self._guard(1)
        if self.targets is None:
            return self.features[index]
        return self.features[index], self.targets[index]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """Batched reads (``DataLoader`` calls this): one staleness check per batch."""
        self._guard(len(indices))
        idx = torch.as_tensor(indices, dtype=torch.long)
        feats = self.features.index_select(0, idx).unbind(0)
        if self.targets is None:
            return list(feats)
        return list(zip(feats, self.targets.index_select(0, idx).unbind(0)))

    def __iter__(self) -> Iterator[Any]:
        self._guard(len(self))  # once for the whole pass
        for i in range(len(self)):
            yield self.features[i] if self.targets is None else (self.features[i], self.targets[i])

    def loader(
        self,
        batch_size: int = 64,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        device: str | torch.device | None = None,
        generator: torch.Generator | None = None,
    ) -> Batches:
        """Batches straight from the feature tensor: a faster ``DataLoader`` for heads.

        No per-item work: each batch is one ``index_select``, and with ``device``
        the whole cache is copied there once (keep it on the CPU when it does not
        fit). Iterate it once per epoch; ``shuffle`` draws a new order each time.
        Staleness is checked once per batch, as through a ``DataLoader``.

        Example:
            >>> import torch, surgery
            >>> cache = surgery.FeatureCache(torch.randn(10, 4), torch.arange(10))
            >>> [len(y) for _, y in cache.loader(4, shuffle=True)]
            [4, 4, 2]
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
        return Batches(self, batch_size, shuffle, drop_last, device, generator)

    def __repr__(self) -> str:
        where = f"path={str(self.path)!r}" if self.path is not None else "in memory"
        shape = tuple(self.features.shape[1:])
        tgt = "none" if self.targets is None else f"{tuple(self.targets.shape[1:])}"
        return (
            f"FeatureCache({len(self)} items, features {shape} {self.features.dtype}, "
            f"targets {tgt}, {where}{', reused' if self.reused else ''})"
        )

    # -- pickling (DataLoader workers) ----------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_watch"] = None  # a weak reference to the body cannot travel
        if self.path is not None:
            state["features"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.features is None and self.path is not None:
            self.features = open_features(
                self.path, json.loads((self.path / "meta.json").read_text())
            )


class Batches:
    """What :meth:`FeatureCache.loader` returns: iterate it once per epoch."""

    def __init__(
        self,
        cache: FeatureCache,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        device: str | torch.device | None,
        generator: torch.Generator | None,
    ) -> None:
        self.cache = cache
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator
        dev = torch.device(device) if device is not None else cache.features.device
        self.features = cache.features.to(dev)
        self.targets = cache.targets.to(dev) if cache.targets is not None else None

    def __len__(self) -> int:
        n = len(self.cache)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        n = len(self.cache)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.features.device)
        else:
            order = torch.arange(n, device=self.features.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            self.cache._guard(len(idx))
            feats = self.features.index_select(0, idx)
            if self.targets is None:
                yield feats
            else:
                yield feats, self.targets.index_select(0, idx)


def open_features(folder: FsPath, meta: dict[str, Any]) -> torch.Tensor:
    dtype = getattr(torch, meta["dtype"])
    shape = [meta["n"], *meta["feature_shape"]]
    numel = math.prod(shape)
    file = folder / "features.bin"
    expected = numel * torch.empty((), dtype=dtype).element_size()
    if file.stat().st_size != expected:
        raise OSError(f"{file} has {file.stat().st_size} bytes, expected {expected}")
    return torch.from_file(str(file), shared=False, size=numel, dtype=dtype).view(shape)
