"""precompute / FeatureCache: equality with the body, reuse from disk, staleness, warnings."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import surgery


class Counting(nn.Module):
    """A small conv body that counts how many batches it has seen."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


@pytest.fixture
def body() -> Counting:
    torch.manual_seed(0)
    b = Counting()
    with torch.no_grad():
        b.train()(torch.randn(16, 3, 12, 12) * 2 + 1)  # non-trivial BN statistics
    b.calls = 0
    return b


@pytest.fixture
def data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(37, 3, 12, 12, generator=g), torch.arange(37) % 5)


def expected(body: nn.Module, x: torch.Tensor) -> torch.Tensor:
    mode = body.training
    with torch.no_grad():
        out = body.eval()(x)
    body.train(mode)
    return out


# ---------------------------------------------------------------------------
# what the cache holds
# ---------------------------------------------------------------------------


def test_cache_equals_body_output(body: Counting, data: TensorDataset) -> None:
    body.train()
    cache = surgery.precompute(body, data, batch_size=8, progress=False)
    assert len(cache) == 37 and body.calls == 5
    assert cache.features.shape == (37, 8) and cache.targets is not None
    torch.testing.assert_close(cache.features, expected(body, data.tensors[0]))
    assert torch.equal(cache.targets, data.tensors[1])
    feats, target = cache[4]
    torch.testing.assert_close(feats, cache.features[4])
    assert int(target) == 4
    # modes restored: every submodule as before (the body was in train mode)
    assert all(m.training for m in body.modules())
    assert "FeatureCache(37 items, features (8,)" in repr(cache)


def test_resnet18_body_matches() -> None:
    m = torchvision.models.resnet18(weights=None)
    m.fc = nn.Identity()
    surgery.freeze(m)
    x = torch.randn(6, 3, 32, 32)
    cache = surgery.precompute(m, x, batch_size=4, progress=False)  # a tensor of inputs
    assert cache.targets is None
    torch.testing.assert_close(torch.stack([cache[i] for i in range(6)]), expected(m, x))


def test_dataloader_input_and_training_loop(body: Counting, data: TensorDataset) -> None:
    loader = DataLoader(data, batch_size=10)
    cache = surgery.precompute(body, loader, progress=False)
    assert body.calls == 4  # the loader's own batching
    head = nn.Linear(8, 5)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    seen = 0
    for _ in range(2):
        for f, y in DataLoader(cache, batch_size=16, shuffle=True):
            loss = nn.functional.cross_entropy(head(f), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            seen += len(y)
    assert seen == 74


def test_unlabelled_dataset(body: Counting) -> None:
    class Inputs(Dataset):
        def __len__(self) -> int:
            return 5

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.full((3, 8, 8), float(i))

    cache = surgery.precompute(body, Inputs(), batch_size=2, progress=False)
    assert cache.targets is None and cache[2].shape == (8,)
    batch = next(iter(DataLoader(cache, batch_size=5)))
    assert isinstance(batch, torch.Tensor) and batch.shape == (5, 8)


def test_iterable_dataset_in_memory(body: Counting, data: TensorDataset) -> None:
    class Stream(IterableDataset):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield from (data[i] for i in range(len(data)))

    cache = surgery.precompute(body, Stream(), batch_size=16, progress=False)
    torch.testing.assert_close(cache.features, expected(body, data.tensors[0]))
    with pytest.raises(surgery.ArgumentError, match="cache_dir needs map-style data"):
        surgery.precompute(body, Stream(), cache_dir="unused", progress=False)


def test_device_argument_restores_body(body: Counting, data: TensorDataset) -> None:
    cache = surgery.precompute(body, data, device="cpu", progress=False)
    assert len(cache) == 37
    with pytest.raises(surgery.ArgumentError, match="device 'nowhere' is not a torch device"):
        surgery.precompute(body, data, device="nowhere", progress=False)


# ---------------------------------------------------------------------------
# the disk cache
# ---------------------------------------------------------------------------


def test_disk_cache_is_reused_without_running_the_body(
    body: Counting, data: TensorDataset, tmp_path: Path
) -> None:
    first = surgery.precompute(body, data, batch_size=16, cache_dir=tmp_path, progress=False)
    assert body.calls == 3 and not first.reused
    assert first.path == tmp_path / first.key
    assert sorted(p.name for p in first.path.iterdir()) == [
        "features.bin",
        "meta.json",
        "targets.safetensors",
    ]
    meta = json.loads((first.path / "meta.json").read_text())
    assert meta["n"] == 37 and meta["feature_shape"] == [8] and meta["dtype"] == "float32"
    second = surgery.precompute(body, data, batch_size=16, cache_dir=tmp_path, progress=False)
    assert body.calls == 3  # not run again
    assert second.reused and second.key == first.key
    assert torch.equal(second.features, first.features)
    assert torch.equal(second.targets, data.tensors[1])
    torch.testing.assert_close(second.features, expected(body, data.tensors[0]))
    if sys.platform.startswith("linux"):  # memory-mapped, not read into RAM
        maps = Path("/proc/self/maps").read_text()
        assert str(first.path / "features.bin") in maps


def test_disk_cache_key_changes_with_weights_and_data(
    body: Counting, data: TensorDataset, tmp_path: Path
) -> None:
    a = surgery.precompute(body, data, cache_dir=tmp_path, progress=False)
    other_data = TensorDataset(data.tensors[0] + 1, data.tensors[1])
    b = surgery.precompute(body, other_data, cache_dir=tmp_path, progress=False)
    with torch.no_grad():
        body.net[0].weight.mul_(2)
    c = surgery.precompute(body, data, cache_dir=tmp_path, progress=False)
    assert len({a.key, b.key, c.key}) == 3
    assert not b.reused and not c.reused and body.calls == 3
    torch.testing.assert_close(c.features, expected(body, data.tensors[0]))


def test_corrupt_disk_cache_is_rebuilt(body: Counting, data: TensorDataset, tmp_path: Path) -> None:
    first = surgery.precompute(body, data, cache_dir=tmp_path, progress=False)
    assert first.path is not None
    (first.path / "features.bin").write_bytes(b"truncated")
    with pytest.warns(surgery.SurgeryWarning, match="incomplete or corrupt.*computing it again"):
        again = surgery.precompute(body, data, cache_dir=tmp_path, progress=False)
    assert not again.reused and body.calls == 2
    torch.testing.assert_close(again.features, expected(body, data.tensors[0]))


def test_disk_cache_pickles_by_path(body: Counting, data: TensorDataset, tmp_path: Path) -> None:
    cache = surgery.precompute(body, data, cache_dir=tmp_path, progress=False)
    twin = pickle.loads(pickle.dumps(cache))
    assert torch.equal(twin.features, cache.features) and twin.path == cache.path
    batches = list(DataLoader(cache, batch_size=20, num_workers=0))
    assert [len(b[1]) for b in batches] == [20, 17]


# ---------------------------------------------------------------------------
# staleness
# ---------------------------------------------------------------------------


def test_stale_after_optimizer_step(body: Counting, data: TensorDataset) -> None:
    cache = surgery.precompute(body, data, progress=False)
    cache[0]
    assert not cache.is_stale
    opt = torch.optim.AdamW(body.parameters(), lr=1e-3, weight_decay=0.1)
    body.train()(data.tensors[0][:4]).sum().backward()
    opt.step()
    with pytest.raises(
        surgery.StaleCacheError,
        match=r"(?s)FeatureCache in memory is stale: the Counting's 'net\.\d\.\w+' changed.*surgery\.precompute",
    ):
        cache[1]
    with pytest.raises(surgery.StaleCacheError):
        next(iter(DataLoader(cache, batch_size=4)))
    assert cache.is_stale


def test_stale_after_load_state_dict_on_a_reused_cache(
    body: Counting, data: TensorDataset, tmp_path: Path
) -> None:
    surgery.precompute(body, data, cache_dir=tmp_path, progress=False)
    cache = surgery.precompute(body, data, cache_dir=tmp_path, progress=False)
    assert cache.reused
    for _ in DataLoader(cache, batch_size=8):  # an epoch reads fine
        pass
    state = {k: v + 1 if v.is_floating_point() else v for k, v in body.state_dict().items()}
    body.load_state_dict(state)
    with pytest.raises(surgery.StaleCacheError, match=f"at '{tmp_path}"):
        cache[0]


def test_stale_after_running_statistics_change(body: Counting, data: TensorDataset) -> None:
    cache = surgery.precompute(body, data, progress=False)
    with torch.no_grad():
        body.train()(data.tensors[0][:8])  # BN statistics move
    with pytest.raises(
        surgery.StaleCacheError, match=r"'net\.1\.(running_\w+|num_batches_tracked)'"
    ):
        cache[0]


def test_stale_after_replacing_a_parameter_or_data_edit(
    body: Counting, data: TensorDataset
) -> None:
    cache = surgery.precompute(body, data, progress=False)
    body.net[0].weight = nn.Parameter(body.net[0].weight.detach().clone())
    with pytest.raises(surgery.StaleCacheError, match=r"net\.0\.weight"):
        cache.check()  # a thorough check: the first read, every epoch of reads, or check()
    cache2 = surgery.precompute(body, data, progress=False)
    cache2[0]
    body.net[1].bias.data.add_(1.0)  # .data bumps no version counter: a probed element moves
    with pytest.raises(surgery.StaleCacheError, match=r"net\.1\.bias"):
        cache2[1]
    assert cache2.is_stale
    cache3 = surgery.precompute(body, data, progress=False)
    cache3[0]
    body.net[0].weight.data = body.net[0].weight.data * 2  # new storage
    with pytest.raises(surgery.StaleCacheError, match=r"net\.0\.weight"):
        cache3[1]


def test_thorough_check_catches_an_edit_between_probes(body: Counting, data: TensorDataset) -> None:
    cache = surgery.precompute(body, data, progress=False)
    cache[0]  # the first read is thorough, the next ones light
    body.net[0].weight.data.view(-1)[27] += 1.0  # sampled by check(), not probed per read
    cache[1]
    with pytest.raises(surgery.StaleCacheError, match=r"'net\.0\.weight' changed"):
        cache.check()


def test_stale_after_fused_optimizer_step(body: Counting, data: TensorDataset) -> None:
    cache = surgery.precompute(body, data, progress=False)
    cache[0]
    opt = torch.optim.AdamW(body.parameters(), lr=1e-2, fused=True)  # bumps no version counter
    body.eval()(data.tensors[0][:4]).sum().backward()
    opt.step()
    with pytest.raises(surgery.StaleCacheError, match=r"'net\.0\.weight' changed"):
        cache[1]


def test_not_stale_when_only_the_head_trains(body: Counting, data: TensorDataset) -> None:
    surgery.freeze(body)
    cache = surgery.precompute(body, data, progress=False)
    head = nn.Linear(8, 5)
    opt = torch.optim.AdamW(head.parameters(), weight_decay=0.1)
    for _ in range(3):
        for f, y in DataLoader(cache, batch_size=8, shuffle=True):
            nn.functional.cross_entropy(head(f), y).backward()
            opt.step()
            opt.zero_grad()
    assert not cache.is_stale


def test_loader_batches(body: Counting, data: TensorDataset) -> None:
    cache = surgery.precompute(body, data, progress=False)
    batches = cache.loader(16, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(batches) == 3
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == sorted(data.tensors[1].tolist())
    f, y = next(iter(cache.loader(5)))
    assert torch.equal(f, cache.features[:5]) and torch.equal(y, cache.targets[:5])  # type: ignore[index]
    assert len(cache.loader(16, drop_last=True)) == 2
    with torch.no_grad():
        body.net[0].weight.add_(1)
    with pytest.raises(surgery.StaleCacheError):
        next(iter(batches))
    with pytest.raises(surgery.ArgumentError, match="batch_size must be a positive int"):
        cache.loader(0)


def test_plain_feature_cache_never_stale() -> None:
    cache = surgery.FeatureCache(torch.ones(3, 2), torch.zeros(3))
    assert len(cache) == 3 and not cache.is_stale
    with pytest.raises(
        surgery.ArgumentError,
        match=r"targets must be a tensor with one entry per item \(3\), got Tensor of length 2",
    ):
        surgery.FeatureCache(torch.ones(3, 2), torch.zeros(2))


# ---------------------------------------------------------------------------
# warnings and errors
# ---------------------------------------------------------------------------


class Augmented(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.rand(3, 8, 8), i


def test_random_augmentation_warns(body: Counting) -> None:
    with pytest.warns(
        surgery.SurgeryWarning, match=r"data\[0\] gave different inputs.*freezes one random draw"
    ):
        cache = surgery.precompute(body, Augmented(), progress=False)
    assert len(cache) == 6


@pytest.mark.parametrize(
    ("data", "kwargs", "match"),
    [
        (42, {}, r"data must be a Dataset, a DataLoader or a tensor of inputs, got int"),
        ([1, 2, 3], {}, r"each item to be an input tensor or \(input, target\), got int"),
        (TensorDataset(torch.ones(0, 3, 8, 8)), {}, r"data is empty"),
        (
            TensorDataset(torch.ones(2, 3, 8, 8)),
            {"batch_size": 0},
            r"batch_size must be a positive int, got 0",
        ),
        (
            TensorDataset(torch.ones(2, 3, 8, 8), torch.ones(2), torch.ones(2)),
            {},
            r"input tensor or \(input, target\), got tuple of 3",
        ),
    ],
)
def test_bad_arguments(body: Counting, data: object, kwargs: dict, match: str) -> None:
    with pytest.raises(surgery.ArgumentError, match=match):
        surgery.precompute(body, data, progress=False, **kwargs)
    assert body.calls == 0


def test_body_must_return_one_tensor(data: TensorDataset, tmp_path: Path) -> None:
    class Two(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    with pytest.raises(surgery.ArgumentError, match="body must return one tensor, got tuple"):
        surgery.precompute(Two(), data, cache_dir=tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == []  # the partial cache was removed


def test_cache_dir_must_be_a_folder(body: Counting, data: TensorDataset, tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(surgery.ArgumentError, match="exists and is not a folder"):
        surgery.precompute(body, data, cache_dir=file, progress=False)


def test_progress_bar_is_quiet_on_short_runs(
    body: Counting, data: TensorDataset, capsys: pytest.CaptureFixture[str]
) -> None:
    surgery.precompute(body, data, progress=True)
    surgery.precompute(body, data, progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
