"""What a load did: :class:`LoadReport` (the plan, as data) and :class:`StateDictView`.

``LoadReport`` is the plan of :func:`surgery.load_partial` seen by the caller: the
keys loaded, missing, unexpected, renamed, skipped and cast. ``StateDictView``
is what ``load_partial`` returns without ``into``: a lazy, read-only mapping of
the selected, renamed keys that reads each tensor from the source on access.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ._source import TensorInfo, TensorSource

__all__ = ["LoadReport", "StateDictView", "dtype_name", "listing", "quoted"]

MAX_LISTED = 50
_MAX_LOADED_SHOWN = 20


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def quoted(keys: Sequence[str], limit: int | None = None) -> str:
    ordered = sorted(keys)
    if limit is not None and len(ordered) > limit:
        return ", ".join(map(repr, ordered[:limit])) + f", ... and {len(ordered) - limit} more"
    return ", ".join(map(repr, ordered))


@dataclass
class LoadReport:
    """What :func:`load_partial` loaded (or, with ``dry_run=True``, would load).

    Keys of the model are full paths in ``into`` (``at`` included); checkpoint
    keys are as stored in the checkpoint, before renaming.

    Attributes:
        loaded: model keys that received a checkpoint value (model order; both
            keys of tied parameters).
        missing: model keys (under ``at``) that received nothing, mismatched
            ones excepted.
        unexpected: selected checkpoint keys that have no target in the model.
        renamed: model key -> checkpoint key, for loaded keys whose names differ.
        mismatched: model key -> (checkpoint shape, model shape), for keys skipped
            with ``on_mismatch="skip"``.
        cast: model key -> (checkpoint dtype, model dtype), for every cast.
        unused_rules: rename rules (the old prefix or the regex) that renamed no
            selected key.
        source: the source's description (path, ``"<mapping>"``, ...).
        unwrapped: the wrapper entry the state dict was taken from, if any.
        dry_run: True when nothing was written.
        initialized: model keys that were on the meta device, received no value
            and were materialized on CPU by their module's initializer
            (``init_missing=True``); they are in ``missing`` too.
        how: with ``rename="auto"``: loaded model key -> how its checkpoint key
            was found (``"name"``, ``"rename"`` or ``"structure"``, see
            :func:`surgery.match_keys`); empty otherwise.
        reshaped: model key -> (checkpoint shape, model shape), for keys loaded
            reshaped (same values, another shape: ``rename="auto"`` or
            ``on_mismatch="reshape"``).

    Example:
        >>> import torchvision, surgery
        >>> model = torchvision.models.resnet18(weights=None)
        >>> ddp = {"module." + k: v for k, v in model.state_dict().items()}
        >>> report = surgery.load_partial(ddp, into=model, rename={"module.": ""},
        ...                               include="module.layer4", dry_run=True)
        >>> len(report.loaded), len(report.missing), report.dry_run
        (30, 92, True)
        >>> report.renamed["layer4.0.conv1.weight"]
        'module.layer4.0.conv1.weight'
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    cast: dict[str, tuple[torch.dtype, torch.dtype]] = field(default_factory=dict)
    unused_rules: list[str] = field(default_factory=list)
    source: str = ""
    unwrapped: str | None = None
    dry_run: bool = False
    initialized: list[str] = field(default_factory=list)
    how: dict[str, str] = field(default_factory=dict)
    reshaped: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (shapes as lists, dtypes as names)."""
        return {
            "loaded": list(self.loaded),
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "renamed": dict(self.renamed),
            "mismatched": {k: [list(a), list(b)] for k, (a, b) in self.mismatched.items()},
            "cast": {k: [dtype_name(a), dtype_name(b)] for k, (a, b) in self.cast.items()},
            "unused_rules": list(self.unused_rules),
            "source": self.source,
            "unwrapped": self.unwrapped,
            "dry_run": self.dry_run,
            "initialized": list(self.initialized),
            "how": dict(self.how),
            "reshaped": {k: [list(a), list(b)] for k, (a, b) in self.reshaped.items()},
        }

    def to_json(self, **kwargs: Any) -> str:
        """``json.dumps(self.to_dict(), **kwargs)``."""
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        verb = "would load" if self.dry_run else "loaded"
        where = f" from {self.source}" if self.source else ""
        if self.unwrapped:
            where += f" [{self.unwrapped!r}]"
        lines = [
            f"LoadReport{where}: {verb} {len(self.loaded)}, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, mismatched {len(self.mismatched)}, "
            f"cast {len(self.cast)}, renamed {len(self.renamed)}"
        ]
        if self.loaded:
            lines.append(f"  {verb} ({len(self.loaded)}): {quoted(self.loaded, _MAX_LOADED_SHOWN)}")
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): {quoted(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}): {quoted(self.unexpected)}")
        if self.mismatched:
            lines.append(f"  mismatched, skipped ({len(self.mismatched)}):")
            for k in sorted(self.mismatched):
                a, b = self.mismatched[k]
                lines.append(f"    {k!r}: checkpoint {tuple(a)} vs model {tuple(b)}")
        if self.reshaped:
            lines.append(f"  reshaped ({len(self.reshaped)}):")
            for k in sorted(self.reshaped):
                a, b = self.reshaped[k]
                lines.append(f"    {k!r}: checkpoint {tuple(a)} -> model {tuple(b)}")
        if self.cast:
            lines.append(f"  cast ({len(self.cast)}):")
            for k in sorted(self.cast):
                a2, b2 = self.cast[k]
                lines.append(f"    {k!r}: {dtype_name(a2)} -> {dtype_name(b2)}")
        if self.renamed:
            lines.append(f"  renamed ({len(self.renamed)}, model <- checkpoint):")
            for k in sorted(self.renamed)[:_MAX_LOADED_SHOWN]:
                how = f"  [{self.how[k]}]" if k in self.how else ""
                lines.append(f"    {k!r} <- {self.renamed[k]!r}{how}")
            if len(self.renamed) > _MAX_LOADED_SHOWN:
                lines.append(f"    ... and {len(self.renamed) - _MAX_LOADED_SHOWN} more")
        if self.unused_rules:
            lines.append(f"  unused rename rules: {', '.join(map(repr, self.unused_rules))}")
        if self.initialized:
            lines.append(
                f"  initialized on CPU by their modules ({len(self.initialized)}): "
                f"{quoted(self.initialized)}"
            )
        return "\n".join(lines)


class StateDictView(Mapping[str, torch.Tensor]):
    """A read-only mapping of (renamed) keys to tensors, read from the checkpoint on access.

    Returned by :func:`surgery.load_partial` without ``into`` and by
    :func:`surgery.open_checkpoint`. Nothing is read until a value is asked for;
    each ``view[key]`` is a fresh private copy read from the file (unless the
    view was opened with ``mmap=True``), and a file that changed size since it
    was opened raises :class:`~surgery.CheckpointError`. ``info(key)`` tells the
    shape and dtype without reading. The view holds the file open: close it (or
    use ``with``) when done.

    Attributes:
        source: the underlying :class:`~surgery.checkpoint._source.TensorSource`.
        key_map: new key -> checkpoint key.
        unused_rules: rename rules that renamed no selected key.

    Example:
        >>> import torchvision, surgery
        >>> sd = torchvision.models.resnet18(weights=None).state_dict()
        >>> view = surgery.load_partial(sd, include="fc", rename={"fc.": "head."})
        >>> list(view), view.info("head.weight").shape, view.unwrapped
        (['head.weight', 'head.bias'], (1000, 512), None)
    """

    def __init__(self, source: TensorSource, key_map: dict[str, str], unused_rules: list[str]):
        self.source = source
        self.key_map = key_map
        self.unused_rules = unused_rules

    @property
    def unwrapped(self) -> str | None:
        """The wrapper entry the state dict was taken from (``"model"``), or None."""
        return self.source.unwrapped

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            ckpt_key = self.key_map[key]
        except KeyError:
            raise KeyError(key) from None
        return self.source.read(ckpt_key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.key_map)

    def __len__(self) -> int:
        return len(self.key_map)

    def __contains__(self, key: object) -> bool:
        return key in self.key_map

    def info(self, key: str) -> TensorInfo:
        """Shape and dtype of ``key`` without reading it."""
        return self.source.info(self.key_map[key])

    def close(self) -> None:
        """Release the checkpoint file (idempotent)."""
        self.source.close()

    def __enter__(self) -> StateDictView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StateDictView({self.source.description!r}, {len(self)} keys)"


def listing(title: str, entries: Sequence[str]) -> str:
    """``title`` then one indented line per entry (at most :data:`MAX_LISTED`)."""
    shown = list(entries[:MAX_LISTED])
    more = f"\n    ... and {len(entries) - len(shown)} more" if len(entries) > len(shown) else ""
    return title + "".join(f"\n    {e}" for e in shown) + more
