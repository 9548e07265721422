"""Compose a model from layer ranges of two sharded checkpoints, out of core.

What mergekit calls a "passthrough" merge: a new 8-layer transformer stack takes
layers 0-3 of model A as its layers 0-3 and layers 2-5 of model B as its layers
4-7 (plus A's embedding and B's final norm and head). The new model is built on
the meta device (no memory), each source is a sharded safetensors checkpoint,
and only the shards that hold the selected layers are opened. Every tensor is
then checked against the source files, and the hybrid's forward against the
same hybrid assembled by hand from the two full models.

Run: python recipes/layer_ranges.py   (seconds; exits 1 if a check fails)
"""

from __future__ import annotations

import os
import tempfile

import torch
from _common import check, finish, fmt, section
from safetensors import safe_open
from torch import nn

import surgery
from surgery.checkpoint import open_source

D, HEADS, FF, VOCAB, CLASSES = 128, 4, 512, 1000, 10


class Stack(nn.Module):
    """A small transformer encoder: embedding, a ModuleList of layers, norm, head."""

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(dim=1))


def shift(by: int) -> list[tuple[str, object]]:
    """A regex rename moving ``layers.i.`` to ``layers.{i + by}.``."""
    return [(r"^layers\.(\d+)\.", lambda m: f"layers.{int(m[1]) + by}.")]


def main() -> None:
    tmp = tempfile.TemporaryDirectory(prefix="layer_ranges-")
    root = tmp.name

    section("two source models, saved as sharded safetensors checkpoints")
    torch.manual_seed(0)
    model_a, model_b = Stack(6), Stack(6)
    index_a = surgery.save_state_dict(model_a, os.path.join(root, "A"), max_shard_size="1MB")
    index_b = surgery.save_state_dict(model_b, os.path.join(root, "B"), max_shard_size="1MB")
    src_a, src_b = open_source(index_a), open_source(index_b)
    print(f"  A: {len(src_a.shard_files)} shards, B: {len(src_b.shard_files)} shards")

    section("the hybrid, built on meta: A's layers 0-3 as 0-3, B's layers 2-5 as 4-7")
    with torch.device("meta"):
        hybrid = Stack(8)
    check(all(p.is_meta for p in hybrid.parameters()), "the 8-layer hybrid holds no storage")

    # One load per source would leave the other half on meta (an error naming those
    # tensors), so select lazily from each source, then load once, all or nothing.
    part_a = surgery.load_partial(src_a, include=["embed", "layers[0:4]"])
    part_b = surgery.load_partial(src_b, include=["layers[2:6]", "norm", "head"], rename=shift(+2))
    check(
        sorted({k.split(".")[1] for k in part_b if k.startswith("layers.")}) == list("4567"),
        "the regex rename maps B's layers 2-5 to 4-7",
    )
    report = surgery.load_partial({**part_a, **part_b}, into=hybrid, strict=True)
    n_params = sum(p.numel() for p in hybrid.parameters())
    print(f"  {report}".splitlines()[0])
    check(
        len(report.loaded) == len(hybrid.state_dict()) and not report.missing,
        f"strict load filled all {len(report.loaded)} tensors ({fmt(n_params)} parameters)",
    )
    check(all(not t.is_meta for t in hybrid.state_dict().values()), "nothing is left on meta")

    section("only the shards holding the selected layers were opened")
    for name, src, part in (("A", src_a, part_a), ("B", src_b, part_b)):
        needed = {src.weight_map[ck] for ck in part.key_map.values()}
        needed_bytes = sum(src.info(ck).nbytes for ck in part.key_map.values())
        check(
            sorted(src.opened) == sorted(needed) and len(needed) < len(src.shard_files),
            f"{name}: opened {len(src.opened)} of {len(src.shard_files)} shards, exactly those "
            "holding selected keys",
        )
        check(
            src.bytes_read == needed_bytes,
            f"{name}: read {fmt(src.bytes_read)} bytes = the bytes of the selected tensors",
        )

    section("every tensor equals its source, read straight from the files")
    origin: dict[str, tuple[str, str]] = {}
    for key in hybrid.state_dict():
        if key.startswith("layers."):
            i = int(key.split(".")[1])
            rest = key.split(".", 2)[2]
            origin[key] = ("A", key) if i < 4 else ("B", f"layers.{i - 2}.{rest}")
        else:
            origin[key] = ("A", key) if key.startswith("embed") else ("B", key)
    same = 0
    for key, value in hybrid.state_dict().items():
        which, ck = origin[key]
        src = src_a if which == "A" else src_b
        with safe_open(os.path.join(os.path.dirname(src.path), src.weight_map[ck]), "pt") as f:
            same += torch.equal(value, f.get_tensor(ck))
    check(same == len(origin), f"{same} of {len(origin)} tensors equal their source tensor")

    section("the hybrid computes what the hand-assembled hybrid computes")
    by_hand = Stack(8)
    by_hand.embed = model_a.embed
    by_hand.layers = nn.ModuleList([*model_a.layers[:4], *model_b.layers[2:6]])
    by_hand.norm, by_hand.head = model_b.norm, model_b.head
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ok = torch.allclose(hybrid.eval()(tokens), by_hand.eval()(tokens), atol=1e-6)
    check(ok, "outputs match on a (2, 12) batch of tokens")

    section("a one-source load into the meta hybrid is refused, naming what would stay on meta")
    with torch.device("meta"):
        fresh = Stack(8)
    try:
        surgery.load_partial(index_a, into=fresh, include=["embed", "layers[0:4]"])
        check(False, "loading only A's part should raise")
    except surgery.LoadError as exc:
        first = str(exc).splitlines()
        check(
            "meta device" in first[0] and "'layers.4.linear1.weight'" in str(exc),
            f"LoadError: {first[0][:90]}...",
        )
    check(all(p.is_meta for p in fresh.parameters()), "and the model is unchanged")

    src_a.close()
    src_b.close()
    tmp.cleanup()
    finish("layer_ranges")


if __name__ == "__main__":
    main()
