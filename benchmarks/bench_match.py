"""match_keys against loading the same checkpoint (issue 13), from one run.

Goals: ``match_keys`` <= 1 s and <= 0.2x the time of ``load_partial`` of the same
checkpoint into the same model, on

* **vit_h_14**: torchvision's state dict (meta shapes; 632M parameters, 2.5 GB in
  float32) against a twin whose containers are renamed (``encoder.layers.
  encoder_layer_N`` -> ``trunk.blocks.N``, ``mlp.0`` -> ``mlp.fc1``, ...), so
  every key is matched by structure, not by name;
* **synthetic**: a 10,000-tensor model (stages of Linear + LayerNorm blocks)
  against a twin with renamed, flattened containers.

The anchor is loading the same checkpoint: ``load_partial(path, into=model)`` from a
safetensors file of the same tensors into the model it was saved from (page cache
warm). Best of ``--repeat`` runs.

    python benchmarks/bench_match.py [--repeat 3] [--dir /tmp/somewhere] [--skip-vit-load]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

import surgery


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def renamed_vit(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vit_h_14 keys in another zoo's names (same order, same shapes)."""
    out = {}
    for k, v in sd.items():
        k2 = (
            k.replace("encoder.layers.encoder_layer_", "trunk.blocks.")
            .replace(".mlp.0.", ".mlp.fc1.")
            .replace(".mlp.3.", ".mlp.fc2.")
            .replace(".ln_1.", ".norm1.")
            .replace(".ln_2.", ".norm2.")
            .replace("self_attention.in_proj_", "attn.qkv_")
            .replace("self_attention.out_proj", "attn.proj")
            .replace("conv_proj", "patch_embed")
            .replace("heads.head", "classifier")
        )
        out[k2] = v
    return out


class Twin(nn.Module):
    """A module tree built from a flat {key: tensor} dict (meta or real)."""

    def __init__(self, sd: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for k, v in sd.items():
            *path, leaf = k.split(".")
            mod: nn.Module = self
            for p in path:
                if not hasattr(mod, p):
                    mod.add_module(p, nn.Module())
                mod = getattr(mod, p)
            mod.register_parameter(leaf, nn.Parameter(torch.empty_like(v), requires_grad=False))


def synthetic(n_tensors: int, device: str) -> tuple[nn.Module, nn.Module]:
    """Stages of (Linear, LayerNorm) blocks, and a twin with renamed flat containers."""
    blocks_per_stage = 25
    n_blocks = n_tensors // 4
    widths = [8 + 4 * (s % 7) for s in range(n_blocks // blocks_per_stage + 2)]
    with torch.device(device):
        a = nn.Module()
        a.stages = nn.ModuleList()
        b = nn.Module()
        b.layers = nn.ModuleList()
        for i in range(n_blocks):
            s, d = divmod(i, blocks_per_stage)
            if d == 0:
                a.stages.append(nn.ModuleList())
            cin = widths[s] if d == 0 else widths[s + 1]
            blk = nn.Module()
            blk.fc, blk.norm = nn.Linear(cin, widths[s + 1]), nn.LayerNorm(widths[s + 1])
            a.stages[s].append(blk)
            twin = nn.Module()
            twin.dense, twin.ln = nn.Linear(cin, widths[s + 1]), nn.LayerNorm(widths[s + 1])
            b.layers.append(twin)
    return a, b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--skip-vit-load", action="store_true", help="no 2.5 GB file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    rows = []

    # -- vit_h_14 ---------------------------------------------------------------
    with torch.device("meta"):
        vit = torchvision.models.vit_h_14(weights=None)
    meta_sd = vit.state_dict()
    twin_meta = Twin(renamed_vit(meta_sd))
    km = surgery.match_keys(meta_sd, twin_meta)
    assert len(km.mapping) == len(meta_sd) and not km.ambiguous, str(km)[:500]
    assert sum(h == "structure" for h in km.how.values()) > 0.95 * len(meta_sd)
    t_match = best(lambda: surgery.match_keys(meta_sd, twin_meta), args.repeat)
    t_load = float("nan")
    if not args.skip_vit_load:
        real = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in meta_sd.items()}
        path = surgery.save_state_dict(real, os.path.join(tmp.name, "vit_h_14.safetensors"))
        del real
        model = Twin(meta_sd).to_empty(device="cpu")
        surgery.load_partial(path, into=model)  # warm the page cache
        t_load = best(lambda: surgery.load_partial(path, into=model), args.repeat)
        del model
        os.remove(path)
    rows.append(("vit_h_14 (meta) vs renamed twin", len(meta_sd), t_match, t_load))

    # -- 10,000 tensors ---------------------------------------------------------
    a, b = synthetic(10_000, "cpu")
    sd = a.state_dict()
    km = surgery.match_keys(sd, b)
    assert len(km.mapping) == len(sd) == 10_000 and not km.ambiguous, str(km)[:500]
    t_match = best(lambda: surgery.match_keys(sd, b), args.repeat)
    path = surgery.save_state_dict(a, os.path.join(tmp.name, "synthetic.safetensors"))
    surgery.load_partial(path, into=a)
    t_load = best(lambda: surgery.load_partial(path, into=a), args.repeat)
    rows.append(("synthetic, renamed containers", len(sd), t_match, t_load))

    print(f"{'case':<36} {'tensors':>8} {'match_keys':>11} {'load_partial':>13} {'ratio':>7}")
    for name, n, tm, tl in rows:
        ratio = tm / tl if tl == tl else float("nan")
        print(f"{name:<36} {n:>8} {tm:>10.3f}s {tl:>12.3f}s {ratio:>7.3f}")
    ok = all(tm <= 1.0 and (tl != tl or tm <= 0.2 * tl) for _n, _c, tm, tl in rows)
    print("goals (<= 1 s, <= 0.2x load):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
