"""find() vs a plain fnmatch / re loop over named_modules() on a model with >= 10,000 modules.

Goal (issue 2): find stays linear and within 1.5x of the bare loop.

    python benchmarks/bench_paths.py
"""

from __future__ import annotations

import fnmatch
import re
import timeit
from collections import OrderedDict

import torch
from torch import nn

import surgery


def build(blocks: int = 2500) -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(
            OrderedDict(
                (
                    f"stage{i}",
                    nn.Sequential(
                        OrderedDict(conv=nn.Conv2d(8, 8, 3), bn1=nn.BatchNorm2d(8), act=nn.ReLU())
                    ),
                )
                for i in range(blocks)
            )
        )


def best(fn, repeat: int = 7, number: int = 3) -> float:
    return min(timeit.repeat(fn, repeat=repeat, number=number)) / number


def main() -> None:
    model = build()
    n = sum(1 for _ in model.named_modules())
    print(f"model: {n:,} modules")

    glob = "**.bn*"

    # the anchor: what users write by hand (fnmatch's '*' crosses dots, so '*.bn*' is the loop's glob)
    def anchor_glob() -> list[str]:
        return [name for name, _ in model.named_modules() if fnmatch.fnmatchcase(name, "*.bn*")]

    def ours_glob() -> list[str]:
        return surgery.find(model, glob)

    assert anchor_glob() == ours_glob()

    rx_text = r"stage1\d*\.conv"
    rx = re.compile(rx_text)

    def anchor_re() -> list[str]:
        return [name for name, _ in model.named_modules() if rx.fullmatch(name)]

    def ours_re() -> list[str]:
        return surgery.find(model, "re:" + rx_text)

    assert anchor_re() == ours_re()

    rows = []
    for label, anchor, ours in [
        ("glob '**.bn*'", anchor_glob, ours_glob),
        ("re: pattern", anchor_re, ours_re),
    ]:
        a, o = best(anchor), best(ours)
        rows.append((label, a, o))
    print(f"{'case':<16} {'anchor loop':>12} {'surgery.find':>13} {'ratio':>7}   goal <= 1.5x")
    for label, a, o in rows:
        print(f"{label:<16} {a * 1e3:>10.2f}ms {o * 1e3:>11.2f}ms {o / a:>6.2f}x")

    # linearity: time per module at 1x and 4x the size
    small, big = build(625), build(2500)
    t_small = best(lambda: surgery.find(small, glob)) / sum(1 for _ in small.modules())
    t_big = best(lambda: surgery.find(big, glob)) / sum(1 for _ in big.modules())
    print(
        f"per-module time, 2.5k vs 10k modules: {t_small * 1e9:.0f} ns vs {t_big * 1e9:.0f} ns "
        f"(ratio {t_big / t_small:.2f}, 1.0 = linear)"
    )


if __name__ == "__main__":
    main()
