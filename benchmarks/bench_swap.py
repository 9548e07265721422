"""swap vs the hand-written recursive ``setattr`` loop, side by side in one run.

Anchor: the loop users write today (``named_children`` recursion, ``isinstance``,
``setattr``), converting every ``BatchNorm2d`` to ``GroupNorm``-free
``FrozenBatchNorm2d``-style cheap module (``nn.Identity``, so that module
construction does not dominate). Ours: ``surgery.swap(model, "**", factory,
types=nn.BatchNorm2d)``, which also validates, plans and reports.

Models: a synthetic 10,000-module model and resnet152 (on meta: no weights).
Goal (issue 12): ours <= 1.5x the loop.

    python benchmarks/bench_swap.py
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

import surgery


def synthetic(n_blocks: int = 2500) -> nn.Module:
    """4 modules per block (Sequential, Conv, BatchNorm, ReLU): 10,000 modules."""
    return nn.Sequential(
        *[nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.ReLU()) for _ in range(n_blocks)]
    )


def resnet152() -> nn.Module:
    with torch.device("meta"):
        return torchvision.models.resnet152(weights=None)


def hand_loop(model: nn.Module, factory: Callable[[nn.Module], nn.Module]) -> int:
    count = 0
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, factory(child))
            count += 1
        else:
            count += hand_loop(child, factory)
    return count


def ours(model: nn.Module, factory: Callable[[nn.Module], nn.Module]) -> int:
    return len(surgery.swap(model, "**", factory, types=nn.BatchNorm2d).swapped)


def timed(build: Callable[[], nn.Module], fn: Callable, repeats: int) -> list[float]:
    """Seconds per call, each on a fresh model.

    The cyclic garbage collector is emptied before each call: a freshly built
    model leaves thousands of objects pending, and otherwise whichever function
    allocates first pays for collecting them (the hand loop allocates as much as
    it frees, so it never would).
    """
    times = []
    for _ in range(repeats):
        model = build()
        gc.collect()
        t = time.perf_counter()
        fn(model, lambda m: nn.Identity())
        times.append(time.perf_counter() - t)
        del model
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = {}
    for name, build in (("synthetic-10k", synthetic), ("resnet152", resnet152)):
        assert hand_loop(build(), lambda m: nn.Identity()) == ours(build(), lambda m: nn.Identity())
        loops, mines = [], []
        for _ in range(args.repeats):  # interleaved, so that load changes hit both alike
            loops += timed(build, hand_loop, 1)
            mines += timed(build, ours, 1)
        loop, mine = statistics.median(loops), statistics.median(mines)
        best = min(mines) / min(loops)
        results[name] = {
            "loop_s": loop,
            "swap_s": mine,
            "ratio": mine / loop,
            "loop_best_s": min(loops),
            "swap_best_s": min(mines),
            "ratio_best": best,
        }
        if not args.json:
            print(
                f"{name:14s} median: loop {loop * 1e3:8.2f} ms  swap {mine * 1e3:8.2f} ms  "
                f"ratio {mine / loop:5.2f}x   best: loop {min(loops) * 1e3:8.2f} ms  "
                f"swap {min(mines) * 1e3:8.2f} ms  ratio {best:5.2f}x (goal <= 1.5x)"
            )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
