"""Torch files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``), read without ever running pickled code."""

from __future__ import annotations

import os
import re
import zipfile
from typing import Any

import torch

from .._errors import CheckpointError
from ._source import check_file

__all__ = ["torch_load"]


def torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` for untrusted files: ``weights_only=True``, memory-mapped, on CPU.

    A legacy (non-zip) file cannot be memory-mapped and is read whole, still with
    ``weights_only=True``. There is never an unsafe fallback.

    Raises:
        CheckpointError: missing, corrupt, or holding objects other than tensors
            and plain containers (a pickle payload never runs).
    """
    p = os.fspath(path)
    check_file(p)
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
