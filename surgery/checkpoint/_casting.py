"""Casting rules of :func:`surgery.load_partial` (numpy's names, checked before any write)."""

from __future__ import annotations

import torch

from ._report import dtype_name

__all__ = ["CASTING", "cast_problem", "is_safe_cast", "value_problem"]

#: numpy's casting names, from strictest to most permissive.
CASTING = ("no", "equiv", "safe", "same_kind", "unsafe")


def _kind(dtype: torch.dtype) -> int:
    if dtype == torch.bool:
        return 0
    if dtype.is_complex:
        return 3
    if dtype.is_floating_point:
        return 2
    return 1


def is_safe_cast(src: torch.dtype, dst: torch.dtype) -> bool:
    """numpy-style "safe": every value of ``src`` is representable in ``dst``."""
    if src == dst or src == torch.bool:
        return True
    ks, kd = _kind(src), _kind(dst)
    if ks > kd or kd == 0:
        return False
    if ks == 1 and kd == 1:
        si, di = torch.iinfo(src), torch.iinfo(dst)
        return di.min <= si.min and di.max >= si.max
    if ks == 1:  # int -> float/complex: the mantissa must hold every integer
        bits = torch.iinfo(src).bits
        real = dst if kd == 2 else (torch.float32 if dst == torch.complex64 else torch.float64)
        mant = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24, torch.float64: 53}
        return mant.get(real, 0) >= bits or (bits == 64 and real == torch.float64)
    if ks == 2 and kd == 3:
        real = torch.float32 if dst == torch.complex64 else torch.float64
        return is_safe_cast(src, real)
    if ks == 3:
        return src == torch.complex64 and dst == torch.complex128
    fs, fd = torch.finfo(src), torch.finfo(dst)
    return fd.max >= fs.max and fd.eps <= fs.eps and fd.tiny <= fs.tiny


def cast_problem(src: torch.dtype, dst: torch.dtype, casting: str) -> str | None:
    """Why ``src -> dst`` is refused under ``casting`` (dtype level), or None."""
    if src == dst or casting == "unsafe":
        return None
    if casting in ("no", "equiv"):
        return f"casting={casting!r} allows no dtype change"
    if casting == "safe":
        return None if is_safe_cast(src, dst) else "not a safe cast (values may change)"
    if _kind(src) > _kind(dst):
        names = {0: "bool", 1: "integer", 2: "float", 3: "complex"}
        return f"a {names[_kind(src)]} would become {names[_kind(dst)]}"
    return None


def value_problem(value: torch.Tensor, dst: torch.dtype) -> str | None:
    """For same_kind casts that may lose range: do finite values overflow ``dst``?"""
    if _kind(dst) == 1:
        if value.numel() == 0 or value.dtype == torch.bool:
            return None
        info = torch.iinfo(dst)
        lo, hi = value.min().item(), value.max().item()
        if lo < info.min or hi > info.max:
            return f"values in [{lo}, {hi}] do not fit {dtype_name(dst)}"
        return None
    if _kind(dst) >= 2 and value.numel():
        converted = value.to(dst)
        src_finite = (
            torch.isfinite(value) if value.is_floating_point() or value.is_complex() else None
        )
        bad = ~torch.isfinite(converted)
        if src_finite is not None:
            bad &= src_finite
        n = int(bad.sum())
        if n:
            worst = value[bad].abs().max().item() if n else 0
            return f"{n} finite value(s) (up to {worst:g}) overflow {dtype_name(dst)} to inf/nan"
    return None
