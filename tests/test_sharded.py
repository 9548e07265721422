"""Sharded checkpoints (``*.index.json``): lazy shards, bytes read, errors that name the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import surgery
from surgery import CheckpointError, LoadError
from surgery.checkpoint import open_source
from surgery.checkpoint._sharded import ShardedSource, open_sharded_index


def _stack(n: int = 4, width: int = 8) -> nn.Module:
    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(width, width)
            self.layers = nn.ModuleList(
                nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width)) for _ in range(n)
            )
            self.head = nn.Linear(width, 3)

    torch.manual_seed(0)
    return Stack()


def write_sharded(
    sd: dict[str, torch.Tensor], root: Path, groups: list[list[str]], kind: str = "safetensors"
) -> Path:
    """One shard per group of keys, plus the index, the way save_pretrained lays them out."""
    root.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    n = len(groups)
    for i, keys in enumerate(groups):
        if kind == "safetensors":
            name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            save_file({k: sd[k].contiguous() for k in keys}, str(root / name))
        else:
            name = f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin"
            torch.save({k: sd[k].clone() for k in keys}, root / name)
        weight_map.update(dict.fromkeys(keys, name))
    index = (
        "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
    )
    total = sum(sd[k].nbytes for k in weight_map)
    (root / index).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return root / index


def _by_layer(sd: dict[str, torch.Tensor]) -> list[list[str]]:
    """embed+layers.0 | layers.1 | layers.2 | layers.3+head."""
    groups: list[list[str]] = [[], [], [], []]
    for k in sd:
        if k.startswith("layers."):
            groups[int(k.split(".")[1])].append(k)
        elif k.startswith("embed"):
            groups[0].append(k)
        else:
            groups[3].append(k)
    return groups


@pytest.fixture(params=["safetensors", "bin"])
def sharded(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = {k: v.detach().clone() for k, v in _stack().state_dict().items()}
    return write_sharded(sd, tmp_path / "ckpt", _by_layer(sd), request.param), sd


def test_opening_reads_only_the_index(sharded: tuple[Path, dict[str, torch.Tensor]]) -> None:
    index, sd = sharded
    with open_sharded_index(index) as src:
        assert isinstance(src, ShardedSource)
        assert src.keys() == list(sd)
        assert len(src) == len(sd) and "head.weight" in src and "nope" not in src
        assert src.opened == [] and src.bytes_read == 0
        assert len(src.shard_files) == 4
        assert src.metadata == {"total_size": sum(v.nbytes for v in sd.values())}


def test_info_and_read_open_only_the_shard_that_holds_the_key(
    sharded: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    index, sd = sharded
    with open_sharded_index(index) as src:
        info = src.info("layers.2.0.weight")
        assert (info.shape, info.dtype) == ((8, 8), torch.float32)
        assert len(src.opened) == 1 and "00003-of-00004" in src.opened[0]
        assert src.bytes_read == 0  # shapes come from the header / the mapped file
        t = src.read("layers.2.0.weight")
        assert torch.equal(t, sd["layers.2.0.weight"])
        assert src.bytes_read == sd["layers.2.0.weight"].nbytes
        src.read("layers.2.1.bias")  # same shard: not opened again
        assert len(src.opened) == 1
        assert src.bytes_read == sd["layers.2.0.weight"].nbytes + sd["layers.2.1.bias"].nbytes
        for k in sd:
            assert torch.equal(src.read(k), sd[k]), k
        assert len(src.opened) == 4


def test_open_source_dispatches_index_files_and_directories(
    sharded: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    index, sd = sharded
    for where in (index, str(index), index.parent):
        with open_source(where) as src:
            assert isinstance(src, ShardedSource)
            assert src.keys() == list(sd)


def test_load_partial_opens_only_the_selected_shards(
    sharded: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    index, sd = sharded
    model = _stack()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    src = open_sharded_index(index)
    report = surgery.load_partial(src, into=model, include=["layers.1", "layers.2"])
    assert sorted(report.loaded) == sorted(
        k for k in sd if k.startswith(("layers.1.", "layers.2."))
    )
    assert sorted(src.opened) == sorted(src.shard_files[1:3])
    assert src.bytes_read == sum(
        v.nbytes for k, v in sd.items() if k.startswith(("layers.1.", "layers.2."))
    )
    msd = model.state_dict()
    for k in sd:
        expected = sd[k] if k.startswith(("layers.1.", "layers.2.")) else torch.zeros_like(sd[k])
        assert torch.equal(msd[k], expected), k
    src.close()


def test_load_partial_by_path_opens_only_the_shards_it_needs(
    sharded: tuple[Path, dict[str, torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    index, sd = sharded
    opened: list[str] = []
    real_init = ShardedSource._open_shard

    def spy(self: ShardedSource, name: str) -> object:
        opened.append(name)
        return real_init(self, name)

    monkeypatch.setattr(ShardedSource, "_open_shard", spy)
    model = _stack()
    rename = [(r"^layers\.(\d+)\.", lambda m: f"layers.{int(m[1]) - 3}.")]
    report = surgery.load_partial(index, into=model, include="layers.3", rename=rename)
    assert len(report.loaded) == 4
    assert len(opened) == 1 and "00004-of-00004" in opened[0]
    assert torch.equal(model.layers[0][0].weight, sd["layers.3.0.weight"])


def test_without_into_reads_lazily(sharded: tuple[Path, dict[str, torch.Tensor]]) -> None:
    index, sd = sharded
    src = open_sharded_index(index)
    out = surgery.load_partial(src, include="head")
    assert sorted(out) == ["head.bias", "head.weight"]
    assert torch.equal(out["head.weight"], sd["head.weight"])
    assert len(src.opened) == 1
    src.close()


# -- errors ---------------------------------------------------------------------------------


def test_missing_index(tmp_path: Path) -> None:
    with pytest.raises(
        CheckpointError, match=r"sharded index '.*nothing\.index\.json' does not exist"
    ):
        open_sharded_index(tmp_path / "nothing.index.json")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"cannot read sharded index .*JSONDecodeError"),
        ('{"metadata": {}}', r"is not a sharded checkpoint index: it needs a \"weight_map\""),
        ('{"weight_map": {"a": 3}}', r"is not a sharded checkpoint index"),
        ("[1, 2]", r"is not a sharded checkpoint index"),
        (
            '{"weight_map": {"a": "../x.safetensors"}}',
            r"names shard '\.\./x\.safetensors' outside its own directory",
        ),
        ('{"weight_map": {"a": "/etc/x.safetensors"}}', r"outside its own directory"),
        ('{"weight_map": {"a": "x.npz"}}', r"names shard 'x\.npz' of an unknown kind"),
    ],
)
def test_bad_index(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "model.safetensors.index.json"
    p.write_text(text)
    with pytest.raises(CheckpointError, match=message):
        open_sharded_index(p)


def test_missing_shard_is_named_when_first_used(
    sharded: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    index, _ = sharded
    with open_sharded_index(index) as src:
        missing = src.shard_files[2]
        os.remove(index.parent / missing)
        src.info("layers.0.0.weight")  # other shards still work
        with pytest.raises(
            CheckpointError, match=rf"shard '.*{missing}' named by .* does not exist"
        ):
            src.info("layers.2.0.weight")


def test_missing_shard_fails_load_partial_before_any_write(
    sharded: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    from tests.snapshot import assert_unchanged, snapshot

    index, _ = sharded
    os.remove(index.parent / open_sharded_index(index).shard_files[3])
    model = _stack()
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=r"does not exist"):
        surgery.load_partial(index, into=model)
    assert_unchanged(model, before)


def test_index_and_shard_disagree(tmp_path: Path) -> None:
    save_file({"a": torch.ones(2)}, str(tmp_path / "s.safetensors"))
    idx = tmp_path / "model.safetensors.index.json"
    idx.write_text(json.dumps({"weight_map": {"a": "s.safetensors", "b": "s.safetensors"}}))
    with open_sharded_index(idx) as src:
        assert torch.equal(src.read("a"), torch.ones(2))
        with pytest.raises(
            CheckpointError,
            match=r"maps 'b' to shard 's\.safetensors', but that file has no such tensor",
        ):
            src.read("b")


def test_unknown_key_suggests_the_closest(sharded: tuple[Path, dict[str, torch.Tensor]]) -> None:
    index, _ = sharded
    with (
        open_sharded_index(index) as src,
        pytest.raises(
            LoadError, match=r"has no tensor 'head\.weigth'; did you mean 'head\.weight'"
        ),
    ):
        src.read("head.weigth")
    assert src.opened == []


def test_corrupt_safetensors_shard(tmp_path: Path) -> None:
    (tmp_path / "s.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    idx = tmp_path / "model.safetensors.index.json"
    idx.write_text(json.dumps({"weight_map": {"a": "s.safetensors"}}))
    with (
        open_sharded_index(idx) as src,
        pytest.raises(CheckpointError, match=r"cannot read '.*s\.safetensors' as safetensors"),
    ):
        src.info("a")


def test_pickle_payload_in_a_bin_shard_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    torch.save({"a": torch.ones(2), "evil": Payload()}, tmp_path / "s.bin")
    idx = tmp_path / "pytorch_model.bin.index.json"
    idx.write_text(json.dumps({"weight_map": {"a": "s.bin"}}))
    with (
        open_sharded_index(idx) as src,
        pytest.raises(CheckpointError, match=r"'.*s\.bin'.*weights_only"),
    ):
        src.read("a")
    assert not marker.exists()


@pytest.mark.slow
def test_layer_ranges_recipe_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """recipes/layer_ranges.py checks itself and exits non-zero on a failed check."""
    import runpy
    import sys

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    monkeypatch.syspath_prepend(str(recipes))
    monkeypatch.delitem(sys.modules, "_common", raising=False)  # fresh list of checks
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(recipes / "layer_ranges.py"), run_name="__main__")
    out = capsys.readouterr().out
    monkeypatch.delitem(sys.modules, "_common", raising=False)
    assert done.value.code == 0, out
    assert "layer_ranges: all 12 checks passed" in out
