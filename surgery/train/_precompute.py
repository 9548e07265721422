"""Run a frozen body once and train the head on its features: ``precompute``.

``precompute(body, data)`` returns a :class:`~surgery.train._cache.FeatureCache`.
With ``cache_dir`` the features go to disk (``<cache_dir>/<key>/``, written to a
temporary folder and moved into place when complete) and are memory-mapped
back; the key fingerprints the body (class, structure, every weight's bytes)
and the data (length and a deterministic sample of items), so a later call
with the same body and data reuses them without running the body.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path as FsPath
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from .._boundary import operation, user_call
from .._errors import ArgumentError, SurgeryWarning
from ..trace._meta import eval_mode
from ._cache import FeatureCache, open_features
from ._fingerprint import data_fingerprint, tensor_bytes, weights_fingerprint

__all__ = ["precompute"]

_FORMAT = 1

# ---------------------------------------------------------------------------
# disk layout: <cache_dir>/<key>/{meta.json, features.bin, targets.safetensors}
# ---------------------------------------------------------------------------


def _load(folder: FsPath, key: str) -> FeatureCache | None:
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != _FORMAT or meta.get("key") != key:
            raise OSError("format or key mismatch")
        features = open_features(folder, meta)
        targets = None
        if meta["has_targets"]:
            from safetensors.torch import load_file

            targets = load_file(str(folder / "targets.safetensors"))["targets"]
    except (OSError, ValueError, KeyError, AttributeError, RuntimeError) as exc:
        warnings.warn(
            f"the feature cache at {str(folder)!r} is incomplete or corrupt ({exc}); "
            f"computing it again",
            SurgeryWarning,
            stacklevel=3,
        )
        return None
    return FeatureCache(features, targets, path=folder, key=key, reused=True)


class _Writer:
    """Streams feature batches to a temporary folder, moved into place when complete."""

    def __init__(self, cache_dir: FsPath, key: str) -> None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.final = cache_dir / key
        self.tmp = FsPath(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
        self.fh = open(self.tmp / "features.bin", "wb")  # noqa: SIM115 (closed in finish/abort)
        self.n = 0

    def write(self, feats: torch.Tensor) -> None:
        self.fh.write(tensor_bytes(feats))
        self.n += len(feats)

    def finish(
        self,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        targets: torch.Tensor | None,
        meta: dict[str, Any],
    ) -> FsPath:
        self.fh.close()
        if targets is not None:
            from safetensors.torch import save_file

            save_file({"targets": targets.contiguous()}, str(self.tmp / "targets.safetensors"))
        meta.update(
            format=_FORMAT,
            n=self.n,
            feature_shape=list(shape),
            dtype=str(dtype).removeprefix("torch."),
            has_targets=targets is not None,
        )
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        if self.final.exists():
            shutil.rmtree(self.final, ignore_errors=True)
        try:
            os.replace(self.tmp, self.final)
        except OSError:  # another process finished first: use ours from the temp name
            return self.tmp
        return self.final

    def abort(self) -> None:
        self.fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# precompute
# ---------------------------------------------------------------------------


def _map_style(ds: Any) -> bool:
    return (
        not isinstance(ds, IterableDataset)
        and hasattr(ds, "__getitem__")
        and hasattr(ds, "__len__")
    )


def _split(batch: Any, where: str) -> tuple[torch.Tensor, Any]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and len(batch) in (1, 2):
        x = batch[0]
        y = batch[1] if len(batch) == 2 else None
        if isinstance(x, torch.Tensor):
            return x, y
    kind = f"{type(batch).__name__}" + (
        f" of {len(batch)}" if isinstance(batch, (list, tuple)) else ""
    )
    raise ArgumentError(
        f"precompute expects {where} to be an input tensor or (input, target), got {kind}; "
        f"wrap the data so that each item is (input, target) or the input alone"
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:
        return True  # cannot tell: do not warn


def _body_device(body: nn.Module) -> torch.device:
    for t in (*body.parameters(), *body.buffers()):
        return t.device
    return torch.device("cpu")


def precompute(
    body: nn.Module,
    data: Any,
    *,
    batch_size: int = 64,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> FeatureCache:
    """Run ``body`` once over ``data`` (eval mode, no grad) and keep its outputs.

    Train the head on the returned :class:`FeatureCache` instead of running the
    frozen body every epoch. ``body``'s train/eval modes (every submodule's) and
    device are restored afterwards.

    With ``cache_dir``, the features are written to ``cache_dir/<key>/`` and
    memory-mapped (not held in RAM); ``key`` fingerprints the body (class,
    structure, every weight) and the data (length and a sample of items), so a
    later call with the same body and data reads them back without running the
    body. Reading a cache after the body's weights changed raises
    :class:`surgery.StaleCacheError`.

    Args:
        body: the frozen feature extractor; it must return one tensor.
        data: a map-style ``Dataset`` (or tensor) of inputs or ``(input, target)``
            items, or a ``DataLoader`` (whose own batching is used).
        batch_size: batch size when ``data`` is not a ``DataLoader``.
        cache_dir: a folder for features on disk; None keeps them in memory.
        device: where to run the body; None means where its weights are.
        progress: show a progress bar (tqdm) on runs longer than two seconds.

    Returns:
        A ``Dataset`` of ``(features, target)``, or features alone for unlabelled data.

    Raises:
        ArgumentError: a bad argument, empty data, items that are not ``input``
            or ``(input, target)``, a body that does not return one tensor, or
            a body that fails on the data (the message names the batch index
            and the input shape; the original exception is the ``__cause__``).
            ``body`` is unchanged (modes and device restored).

    Warns:
        SurgeryWarning: two reads of the same item differ (random augmentation):
            the cache freezes one draw.

    Example:
        >>> import torch, torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> m.fc = torch.nn.Identity()
        >>> data = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.arange(8))
        >>> cache = surgery.precompute(m, data, batch_size=4)
        >>> features, target = cache[3]
        >>> features.shape, int(target)
        (torch.Size([512]), 3)
        >>> with torch.no_grad():
        ...     torch.allclose(features, m.eval()(data[3][0][None])[0], atol=1e-5)
        True
    """
    with operation("precompute", model=body):
        if not isinstance(body, nn.Module):
            raise ArgumentError(f"body must be an nn.Module, got {type(body).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
        dataset: Any
        if isinstance(data, DataLoader):
            loader, dataset = data, data.dataset
        elif _map_style(data) or isinstance(data, IterableDataset):
            loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
            dataset = data
        else:
            raise ArgumentError(
                f"data must be a Dataset, a DataLoader or a tensor of inputs, got {type(data).__name__}"
            )
        sized = _map_style(dataset)
        if sized and len(dataset) == 0:
            raise ArgumentError("data is empty: there is nothing to precompute")
        try:
            run_device = torch.device(device) if device is not None else _body_device(body)
        except (RuntimeError, TypeError) as exc:
            raise ArgumentError(f"device {device!r} is not a torch device: {exc}") from None

        first = None
        if sized:
            first = user_call(dataset.__getitem__, 0, what="reading data[0]", error=ArgumentError)
            _split(first, "each item")
            if not _same(first, dataset[0]):
                warnings.warn(
                    f"two reads of data[0] gave different inputs ({type(dataset).__name__} "
                    f"seems to apply random augmentation): the cache freezes one random draw "
                    f"per item (and, with cache_dir, is never reused). Precompute on "
                    f"un-augmented data, or train through the body to keep augmentation",
                    SurgeryWarning,
                    stacklevel=2,
                )

        key = ""
        folder = None
        if cache_dir is not None:
            if not sized:
                raise ArgumentError(
                    "cache_dir needs map-style data (a Dataset with __len__ and __getitem__) to "
                    "fingerprint it; drop cache_dir for an IterableDataset"
                )
            folder = FsPath(cache_dir)
            if folder.exists() and not folder.is_dir():
                raise ArgumentError(f"cache_dir {str(folder)!r} exists and is not a folder")
            h = hashlib.blake2b(digest_size=12)
            h.update(weights_fingerprint(body).encode())
            h.update(data_fingerprint(dataset, first).encode())
            if isinstance(data, DataLoader):
                h.update(f"{type(data.sampler).__name__}:{len(data)}:{data.drop_last}".encode())
            key = h.hexdigest()
            cached = _load(folder / key, key)
            if cached is not None:
                cached._track(body)
                return cached

        cache = _run(body, loader, run_device, folder, key, progress)
        cache._track(body)
        return cache


def _run(
    body: nn.Module,
    loader: DataLoader,
    device: torch.device,
    folder: FsPath | None,
    key: str,
    progress: bool,
) -> FeatureCache:
    from tqdm import tqdm

    home = _body_device(body)
    moved = home != device
    writer = _Writer(folder, key) if folder is not None else None
    feats: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    labelled: bool | None = None
    shape: tuple[int, ...] = ()
    dtype = torch.float32
    try:
        total = len(loader)
    except TypeError:
        total = None
    try:
        if moved:
            body.to(device)
        with eval_mode(body), torch.no_grad():
            bar = tqdm(
                loader,
                total=total,
                disable=not progress,
                delay=2.0,
                desc="precompute",
                unit="batch",
                leave=False,
            )
            for index, batch in enumerate(bar):
                x, y = _split(batch, "each batch")
                if labelled is None:
                    labelled = y is not None
                out = user_call(
                    body,
                    x.to(device, non_blocking=True),
                    what=f"{type(body).__name__} on batch {index} (inputs of shape "
                    f"{tuple(x.shape)}, {str(x.dtype).removeprefix('torch.')})",
                    error=ArgumentError,
                )
                if not isinstance(out, torch.Tensor):
                    raise ArgumentError(
                        f"body must return one tensor, got {type(out).__name__}; wrap it so "
                        f"that it returns the features (e.g. nn.Sequential(body, nn.Flatten()) "
                        f"or a module that picks one output)"
                    )
                out = out.detach().to("cpu")
                if not shape:
                    shape, dtype = tuple(out.shape[1:]), out.dtype
                if y is not None:
                    if not isinstance(y, torch.Tensor):
                        raise ArgumentError(
                            f"targets must collate to tensors (numbers or tensors), got "
                            f"{type(y).__name__}"
                        )
                    targets.append(y.detach().to("cpu"))
                if writer is not None:
                    writer.write(out)
                else:
                    feats.append(out)
            bar.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if moved:
            body.to(home)
    if labelled is None:
        raise ArgumentError("data is empty: there is nothing to precompute")
    tgt = torch.cat(targets) if labelled else None
    if writer is not None:
        meta = {"key": key, "body": type(body).__name__}
        path = writer.finish(shape, dtype, tgt, meta)
        meta_read = json.loads((path / "meta.json").read_text())
        return FeatureCache(open_features(path, meta_read), tgt, path=path, key=key)
    return FeatureCache(torch.cat(feats), tgt, key=key)
