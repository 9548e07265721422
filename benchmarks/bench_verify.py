"""verify vs torchinfo's real-tensor summary, same run.

Anchor: ``torchinfo.summary(model, input_size, device="cpu")`` (a real forward
with hooks). Ours: ``surgery.verify(model, input_size, output_shape=...,
total_params=...)`` (counts from the parameters, the output shape from a meta
copy with repeated blocks run once). Also shown: a plain meta forward
(``surgery.trace._meta.meta_copy`` + forward), the baseline the issue quotes.

Usage: python benchmarks/bench_verify.py [--repeat 3] [--models resnet152 vit_l_16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torchinfo
import torchvision

import surgery
from surgery.trace._meta import meta_copy

BATCH = 8
GOAL = 20.0


def _best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _plain_meta_forward(model: torch.nn.Module, size: tuple[int, ...]) -> Any:
    clone = meta_copy(model).eval()
    with torch.no_grad():
        return clone(torch.empty(size, device="meta"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="best of N for ours (default 3)")
    parser.add_argument("--anchor-repeat", type=int, default=1, help="best of N for torchinfo")
    parser.add_argument("--models", nargs="+", default=["resnet152", "vit_l_16"])
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    print(f"torch {torch.__version__}, torchinfo, {torch.get_num_threads()} threads, batch {BATCH}")
    header = f"{'model':<12} {'torchinfo cpu':>14} {'meta forward':>13} {'verify':>9} {'ratio':>8} {'goal':>6}"
    print(header)
    ratios = []
    for name in args.models:
        model = getattr(torchvision.models, name)(weights=None)
        size = (BATCH, 3, 224, 224)
        expected = sum(p.numel() for p in model.parameters())
        stats = surgery.verify(model, size, output_shape=(BATCH, 1000), total_params=expected)
        assert stats.total_params == expected and stats.output_size == (BATCH, 1000)
        anchor = _best(
            lambda m=model, size=size: torchinfo.summary(m, size, device="cpu", verbose=0),
            args.anchor_repeat,
        )
        plain = _best(lambda m=model, size=size: _plain_meta_forward(m, size), args.repeat)
        ours = _best(
            lambda m=model, n=expected, size=size: surgery.verify(
                m, size, output_shape=(BATCH, 1000), total_params=n
            ),
            args.repeat,
        )
        ratio = anchor / ours
        ratios.append(ratio)
        print(
            f"{name:<12} {anchor:>13.3f}s {plain:>12.3f}s {ours:>8.3f}s {ratio:>7.1f}x "
            f"{'ok' if ratio >= GOAL else 'MISS':>6}"
        )
        print(f"{'':<12} (torchinfo / plain meta forward: {anchor / plain:.1f}x)")
    print(
        f"geometric mean ratio: {statistics.geometric_mean(ratios):.1f}x (goal >= {GOAL:.0f}x each)"
    )


if __name__ == "__main__":
    main()
