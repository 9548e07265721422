"""split / cut of resnet152 vs torchvision's create_feature_extractor, same run;
split of a BERT-base-sized transformers model (on meta) vs torch.export alone.

Goal (issue 3): ``surgery.split`` / ``surgery.cut`` of resnet152 under 2 s.
The anchor is ``create_feature_extractor(model, {path: "out"})``, which gives
the head only (no tail) and shares the model's parameters; ``cut`` and
``split`` copy them by default, so ``copy=False`` rows are shown too.

Goal (issue 16): ``split`` through the torch.export engine (torch.fx fails on
transformers models: the fx attempt, the structural copy, the export, the plan
and the build) of a 12-layer BERT-base-sized model built on meta costs <= 2x
``torch.export.export(model, (), inputs, strict=False)`` alone.

    python benchmarks/bench_split.py         # both
    python benchmarks/bench_split.py hf      # the transformers rows only
"""

from __future__ import annotations

import sys
import time
import warnings
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


def bench_hf() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.BertConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    )
    with torch.device("meta"):
        model = transformers.BertForSequenceClassification(cfg).eval()
    n = sum(p.numel() for p in model.parameters())
    print(f"BertForSequenceClassification (BERT-base, on meta): {n:,} parameters")
    ids = torch.zeros(2, 128, dtype=torch.long, device="meta")
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def anchor() -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model, (), inputs, strict=False)

    def dynamic_anchor() -> object:  # what the engine asks for: every size Dim.AUTO
        auto = {k: {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO} for k in inputs}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model, (), inputs, dynamic_shapes=auto, strict=False)

    cases = {
        "split (fx fails, then export)": lambda: surgery.split(
            model, "bert.encoder.layer.5", example_inputs=inputs
        ),
        "split engine='export'": lambda: surgery.split(
            model, "bert.encoder.layer.5", example_inputs=inputs, engine="export"
        ),
    }
    anchor()  # warm-up: the first export pays for imports and caches
    base = best(anchor, repeat=2)
    dynamic = best(dynamic_anchor, repeat=2)
    print(
        f"torch.export alone: {base:.3f} s (static shapes); {dynamic:.3f} s with every size "
        f"Dim.AUTO ({dynamic / base:.2f}x), which the engine uses so the parts run on other sizes"
    )
    print(f"{'ours':<32}{'torch.export':>14}{'ours':>10}{'ratio':>9}  goal <= 2x (vs static)")
    for name, fn in cases.items():
        t = best(fn, repeat=2)
        ratio = t / base
        print(
            f"{name:<32}{base:>12.3f} s{t:>8.3f} s{ratio:>8.2f}x  {'met' if ratio <= 2 else 'MISSED'}"
            f"  ({t / dynamic:.2f}x the dynamic export)"
        )
    head, _ = surgery.split(model, "bert.encoder.layer.5", example_inputs=inputs)
    assert head.meta["surgery_engine"] == "torch.export"


def main() -> None:
    if sys.argv[1:] == ["hf"]:
        bench_hf()
        return
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
    print()
    bench_hf()


if __name__ == "__main__":
    main()
