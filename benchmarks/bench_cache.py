"""Feature cache vs training through the frozen body, in the same run.

Anchor: the usual feature-extraction loop, every epoch running the frozen body
(``surgery.freeze(body)``, BN in eval) on every batch before the head.
Ours: ``surgery.precompute(body, data)`` once, then epochs on the cache.

Reports: one plain epoch, building the cache, one cached epoch, and the ratios
(goals: cached epoch >= 20x faster than a plain one; building <= 1.2x a plain epoch).

    python benchmarks/bench_cache.py                      # resnet18, 64x64, CPU, 2048 images
    python benchmarks/bench_cache.py --arch resnet50 --size 224 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surgery


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--plain-epochs", type=int, default=2)
    ap.add_argument("--cached-epochs", type=int, default=5)
    ap.add_argument("--disk", action="store_true", help="also time a cache_dir build and reuse")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = torchvision.models.get_model(args.arch, weights=None)
    dim = model.fc.in_features
    model.fc = nn.Identity()
    body = model.to(device)
    surgery.freeze(body)  # BN statistics fixed (bn="eval")
    data = TensorDataset(
        torch.randn(args.n, 3, args.size, args.size), torch.randint(0, args.classes, (args.n,))
    )

    def new_head() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(1)
        head = nn.Linear(dim, args.classes).to(device)
        return head, torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)

    def epoch(
        loader: DataLoader, head: nn.Module, opt: torch.optim.Optimizer, through_body: bool
    ) -> float:
        sync(device)
        t0 = time.perf_counter()
        body.train()  # what a training loop does; the frozen BN stays in eval
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if through_body:
                with torch.no_grad():
                    x = body(x)
            loss = nn.functional.cross_entropy(head(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - t0

    # warm-up (allocator, cudnn autotune, thread pools)
    with torch.no_grad():
        body.eval()(data.tensors[0][: args.batch_size].to(device))
    sync(device)

    head, opt = new_head()
    plain_loader = DataLoader(data, batch_size=args.batch_size, shuffle=True)
    plain = [epoch(plain_loader, head, opt, True) for _ in range(args.plain_epochs)]

    sync(device)
    t0 = time.perf_counter()
    cache = surgery.precompute(body, data, batch_size=args.batch_size, progress=False)
    sync(device)
    build = time.perf_counter() - t0

    head, opt = new_head()
    cached_loader = DataLoader(cache, batch_size=args.batch_size, shuffle=True)
    cached = [epoch(cached_loader, head, opt, False) for _ in range(args.cached_epochs)]

    # FeatureCache.loader: batches straight from the feature tensor, on the device
    head, opt = new_head()
    batches = cache.loader(args.batch_size, shuffle=True, device=device)
    perm_times = [epoch(batches, head, opt, False) for _ in range(args.cached_epochs)]  # type: ignore[arg-type]

    result: dict[str, float | str | int] = {
        "arch": args.arch,
        "size": args.size,
        "n": args.n,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "plain_epoch_s": statistics.median(plain),
        "build_cache_s": build,
        "cached_epoch_s": statistics.median(cached),
        "cached_tensor_epoch_s": statistics.median(perm_times),
    }
    result["speedup_cached_epoch"] = result["plain_epoch_s"] / result["cached_epoch_s"]  # type: ignore[operator]
    result["speedup_tensor_epoch"] = result["plain_epoch_s"] / result["cached_tensor_epoch_s"]  # type: ignore[operator]
    result["build_over_plain"] = build / result["plain_epoch_s"]  # type: ignore[operator]

    if args.disk:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            surgery.precompute(
                body, data, batch_size=args.batch_size, cache_dir=tmp, progress=False
            )
            sync(device)
            result["build_disk_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            again = surgery.precompute(
                body, data, batch_size=args.batch_size, cache_dir=tmp, progress=False
            )
            result["reuse_disk_s"] = time.perf_counter() - t0
            assert again.reused
            head, opt = new_head()
            result["disk_cached_epoch_s"] = epoch(
                DataLoader(again, batch_size=args.batch_size, shuffle=True), head, opt, False
            )

    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{args.arch} body, {args.n} images {args.size}x{args.size}, batch {args.batch_size}, "
        f"{device}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"  plain epoch through the frozen body : {result['plain_epoch_s']:.3f} s (anchor)")
    print(
        f"  build the cache (precompute)        : {build:.3f} s  "
        f"-> {result['build_over_plain']:.2f}x a plain epoch (goal <= 1.2x)"
    )
    print(
        f"  epoch on the cache (DataLoader)     : {result['cached_epoch_s']:.4f} s  "
        f"-> {result['speedup_cached_epoch']:.1f}x faster (goal >= 20x)"
    )
    print(
        f"  epoch on cache.loader(device=...)   : {result['cached_tensor_epoch_s']:.4f} s  "
        f"-> {result['speedup_tensor_epoch']:.1f}x faster"
    )
    if args.disk:
        print(
            f"  build with cache_dir / reuse        : {result['build_disk_s']:.3f} s / "
            f"{result['reuse_disk_s']:.3f} s; epoch on the memory-mapped cache "
            f"{result['disk_cached_epoch_s']:.4f} s"
        )


if __name__ == "__main__":
    main()
