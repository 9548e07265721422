"""save_state_dict: safetensors files, shards with an index, tied tensors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

import surgery
from surgery import ArgumentError, SaveError, load_partial, save_state_dict
from surgery.checkpoint._save import parse_size


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.body = nn.Linear(16, 16)
        self.out = nn.Linear(16, 50, bias=False)
        self.out.weight = self.embed.weight


def test_single_file_roundtrip(tmp_path) -> None:
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    path = save_state_dict(m, tmp_path / "m.safetensors")
    assert path == str(tmp_path / "m.safetensors")
    with safe_open(path, framework="pt") as f:
        assert set(f.keys()) == set(m.state_dict()) and f.metadata() == {"format": "pt"}
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    report = load_partial(path, into=other, strict=True)
    assert len(report.loaded) == 7
    for k, v in m.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])


def test_mapping_with_non_contiguous_and_views(tmp_path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    sd = {"t": base.t(), "row": base[1], "whole": base}
    save_state_dict(sd, tmp_path / "x.safetensors")
    out = load_partial(tmp_path / "x.safetensors")
    for k, v in sd.items():
        assert torch.equal(out[k], v)


def test_ties_saved_once_and_restored(tmp_path) -> None:
    m = Tied()
    path = save_state_dict(m, tmp_path / "tied.safetensors")
    with safe_open(path, framework="pt") as f:
        assert "out.weight" not in list(f.keys())
        assert json.loads(f.metadata()["surgery.aliases"]) == {"out.weight": "embed.weight"}
    fresh = Tied()
    report = load_partial(path, into=fresh, strict=True)
    assert fresh.out.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, m.embed.weight)
    assert set(report.loaded) == set(m.state_dict())
    untied = nn.Module()
    untied.embed, untied.body = nn.Embedding(50, 16), nn.Linear(16, 16)
    untied.out = nn.Linear(16, 50, bias=False)
    load_partial(path, into=untied, strict=True)
    assert torch.equal(untied.out.weight, m.embed.weight)


def test_sharded_with_index(tmp_path) -> None:
    m = nn.Sequential(*[nn.Linear(64, 64) for _ in range(6)])  # 6 x 16.6 KB
    index = save_state_dict(m, tmp_path / "ckpt", max_shard_size="40KB")
    assert index == str(tmp_path / "ckpt" / "model.safetensors.index.json")
    data = json.loads(Path(index).read_text())
    total = sum(v.nbytes for v in m.state_dict().values())
    assert data["metadata"]["total_size"] == total
    shards = sorted(set(data["weight_map"].values()))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert set(data["weight_map"]) == set(m.state_dict())
    for name in shards:
        assert os.path.getsize(tmp_path / "ckpt" / name) < 40_000 + 1000
    fresh = nn.Sequential(*[nn.Linear(64, 64) for _ in range(6)])
    load_partial(index, into=fresh, strict=True)
    assert torch.equal(fresh[5].weight, m[5].weight)


def test_sharded_ties_and_named_index(tmp_path) -> None:
    m = Tied()
    index = save_state_dict(m, tmp_path / "tied.safetensors.index.json", max_shard_size=5000)
    assert os.path.basename(index) == "tied.safetensors.index.json"
    weight_map = json.loads(Path(index).read_text())["weight_map"]
    assert weight_map["out.weight"] == weight_map["embed.weight"]
    fresh = Tied()
    load_partial(index, into=fresh, strict=True)
    assert fresh.out.weight is fresh.embed.weight and torch.equal(fresh.out.weight, m.out.weight)


def test_one_tensor_larger_than_the_limit(tmp_path) -> None:
    sd = {"big": torch.zeros(1000), "small": torch.zeros(2)}
    index = save_state_dict(sd, tmp_path / "d", max_shard_size=100)
    assert len(set(json.loads(Path(index).read_text())["weight_map"].values())) == 2


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2GB", 2 * 10**9),
        ("10MB", 10**7),
        ("1GiB", 2**30),
        ("512KiB", 2**19),
        (1234, 1234),
        ("1.5GB", 1_500_000_000),
        ("100", 100),
    ],
)
def test_parse_size(text, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["2XB", "", "-1GB", 0, 1.5, True])
def test_parse_size_rejects(bad) -> None:
    with pytest.raises(ArgumentError, match="max_shard_size"):
        parse_size(bad)


def test_save_rejects_non_tensors_meta_and_bad_format(tmp_path) -> None:
    with pytest.raises(SaveError, match="non-tensor values: 'step'"):
        save_state_dict({"w": torch.ones(1), "step": 3}, tmp_path / "a.safetensors")
    with pytest.raises(SaveError, match=r"'w'.*meta device"):
        save_state_dict({"w": torch.ones(1, device="meta")}, tmp_path / "a.safetensors")
    with pytest.raises(ArgumentError, match=r"expected an nn\.Module or a mapping"):
        save_state_dict([torch.ones(1)], tmp_path / "a.safetensors")  # type: ignore[arg-type]
    assert not os.path.exists(tmp_path / "a.safetensors")


def test_public_names() -> None:
    assert surgery.save_state_dict is save_state_dict
