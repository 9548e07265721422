"""split / cut of resnet152 vs torchvision's create_feature_extractor, same run.

Goal (issue 3): ``surgery.split`` / ``surgery.cut`` of resnet152 under 2 s.
The anchor is ``create_feature_extractor(model, {path: "out"})``, which gives
the head only (no tail) and shares the model's parameters; ``cut`` and
``split`` copy them by default, so ``copy=False`` rows are shown too.

    python benchmarks/bench_split.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

import surgery


def best(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet152(weights=None).eval()
    n = sum(p.numel() for p in model.parameters())
    print(f"resnet152: {n:,} parameters, {sum(1 for _ in model.modules())} modules")
    x = torch.randn(1, 3, 64, 64)
    rows = []
    for path in ("layer3", "layer3.17.bn2"):
        anchor = best(lambda p=path: create_feature_extractor(model, {p: "out"}))
        cases = {
            "cut": lambda p=path: surgery.cut(model, p),
            "cut copy=False": lambda p=path: surgery.cut(model, p, copy=False),
            "split": lambda p=path: surgery.split(model, p),
            "split copy=False": lambda p=path: surgery.split(model, p, copy=False),
        }
        for name, fn in cases.items():
            t = best(fn)
            rows.append((path, name, anchor, t))
    # correctness, once
    head, tail = surgery.split(model, "layer3.17.bn2")
    with torch.no_grad():
        torch.testing.assert_close(tail(head(x)), model(x))
    print(f"{'path':<16}{'ours':<18}{'anchor (cfe)':>14}{'ours':>10}{'ratio':>9}  goal < 2 s")
    for path, name, anchor, t in rows:
        print(
            f"{path:<16}{name:<18}{anchor:>12.3f} s{t:>8.3f} s{t / anchor:>8.2f}x  "
            f"{'met' if t < 2.0 else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
