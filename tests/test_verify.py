"""summary and verify: torchinfo statistics on the meta device, expectations checked at once."""

from __future__ import annotations

import pytest
import torch
import torchinfo
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import surgery
from surgery.trace._meta import meta_copy
from surgery.trace._shapes import MetaClone, Repeat
from surgery.trace._tree import output_shapes
from surgery.trace._verify import VerifiedStatistics
from tests.snapshot import assert_unchanged, snapshot


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return torchvision.models.resnet18(weights=None)


def pretrained_hybrid() -> nn.Module:
    """Seed MyNet_pretrained: frozen resnet18 stem..layer2, fresh layer3/layer4, Linear(512, 10)."""
    src = torchvision.models.resnet18(weights=None)
    fresh = torchvision.models.resnet18(weights=None)
    frozen = nn.Sequential(src.conv1, src.bn1, src.relu, src.maxpool, src.layer1, src.layer2)
    for p in frozen.parameters():
        p.requires_grad_(False)
    return nn.Sequential(
        frozen, fresh.layer3, fresh.layer4, fresh.avgpool, nn.Flatten(), nn.Linear(512, 10)
    )


# ----------------------------------------------------------------------------- summary


def test_summary_runs_on_meta_and_never_moves_the_model(resnet18: nn.Module) -> None:
    resnet18.layer2.eval()  # mixed modes are restored as they were
    before = snapshot(resnet18)
    stats = surgery.summary(resnet18, (2, 3, 224, 224))
    assert isinstance(stats, torchinfo.ModelStatistics)
    assert stats.total_params == 11_689_512 and stats.trainable_params == 11_689_512
    assert stats.summary_list[-1].output_size == [2, 1000]
    assert_unchanged(resnet18, before)
    resnet18.train()


def test_summary_passes_torchinfo_options(resnet18: nn.Module) -> None:
    stats = surgery.summary(
        resnet18, (1, 3, 64, 64), depth=1, col_names=("output_size", "num_params")
    )
    assert "Total params: 11,689,512" in str(stats)
    assert stats.formatting.max_depth == 1


def test_summary_real_run_on_request_restores_modes() -> None:
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.1)).train()
    m[2].eval()
    before = snapshot(m)
    stats = surgery.summary(m, (2, 3, 8, 8), device="cpu")
    assert stats.total_params == 3 * 4 * 9 + 4 + 8
    assert stats.summary_list[-1].output_size == [2, 4, 6, 6]
    assert_unchanged(m, before)


def test_summary_of_a_meta_model_cannot_run_on_cpu() -> None:
    m = meta_copy(nn.Linear(3, 2))
    with pytest.raises(surgery.ArgumentError, match=r"lives on the meta device.*drop device="):
        surgery.summary(m, (1, 3), device="cpu")


def test_summary_failure_says_why() -> None:
    with pytest.raises(
        surgery.SurgeryError, match=r"torchinfo could not run Sequential .*\(1, 5\).*RuntimeError"
    ):
        surgery.summary(nn.Sequential(nn.Linear(3, 2)), (1, 5))


# ----------------------------------------------------------------------------- verify


def test_verify_seed_counts(resnet18: nn.Module) -> None:
    stats = surgery.verify(
        resnet18,
        (10, 3, 224, 224),
        output_shape=(10, 1000),
        total_params=11_689_512,
        trainable_params=11_689_512,
    )
    assert isinstance(stats, torchinfo.ModelStatistics) and isinstance(stats, VerifiedStatistics)
    assert stats.output_size == (10, 1000)


def test_verify_pretrained_hybrid_seed_table() -> None:
    m = pretrained_hybrid()
    stats = surgery.verify(
        m,
        (10, 3, 224, 224),
        output_shape=(10, 10),
        total_params=11_181_642,
        trainable_params=10_498_570,
    )
    assert stats.total_params - stats.trainable_params == 683_072


def test_verify_lists_every_failure(resnet18: nn.Module) -> None:
    before = snapshot(resnet18)
    with pytest.raises(surgery.VerificationError) as info:
        surgery.verify(
            resnet18,
            (2, 3, 224, 224),
            output_shape=[2, 10],
            total_params=11_181_642,
            trainable_params=10_498_570,
        )
    assert str(info.value) == (
        "verify(ResNet, input_size=(2, 3, 224, 224)): 3 failed expectations\n"
        "  output_shape: expected (2, 10), got (2, 1000)\n"
        "  total_params: expected 11,181,642, got 11,689,512 (difference +507,870)\n"
        "  trainable_params: expected 10,498,570, got 11,689,512 (difference +1,190,942)"
    )
    assert_unchanged(resnet18, before)


def test_verify_reports_a_failing_forward_with_the_counts() -> None:
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(
        surgery.VerificationError,
        match=r"(?s)2 failed expectations\n  forward: fails on the meta device: RuntimeError: .*\n  total_params: expected 1, got 246",
    ):
        surgery.verify(m, (1, 3, 8, 8), output_shape=(1, 2), total_params=1)


def test_verify_counts_shared_and_tied_parameters_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.block = nn.Linear(4, 4)
            self.again = self.block  # the same module at two paths
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.embed.weight  # tied weights

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.again(self.block(self.embed(x))))

    m = Tied()
    m.block.bias.requires_grad_(False)
    stats = surgery.verify(
        m,
        (2, 5),
        dtypes=[torch.long],
        output_shape=(2, 5, 10),
        total_params=40 + 20,
        trainable_params=56,
    )
    assert stats.total_params == 60  # torchinfo's own table counts the tied weight twice
    assert len(stats.summary_list) > 1


def test_verify_table_is_torchinfos(resnet18: nn.Module) -> None:
    stats = surgery.verify(resnet18, (1, 3, 224, 224))
    ref = torchinfo.summary(meta_copy(resnet18), (1, 3, 224, 224), device="meta", verbose=0)
    assert stats.total_mult_adds == ref.total_mult_adds
    assert [s.output_size for s in stats.summary_list] == [s.output_size for s in ref.summary_list]
    assert "Total params: 11,689,512" in str(stats)


def test_verify_multiple_inputs_and_nested_outputs() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(5, 4)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.a(x), self.b(y)

    stats = surgery.verify(Pair(), [(2, 3), (6, 5)], output_shape=((2, 4), (6, 4)))
    assert stats.output_size == ((2, 4), (6, 4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"total_params": -1}, r"total_params must be an int >= 0 or None, got -1"),
        ({"trainable_params": 1.5}, r"trainable_params must be an int >= 0 or None"),
        ({"output_shape": "big"}, r"output_shape must be a shape such as \(1, 1000\)"),
        ({"dtypes": [torch.float32, torch.float32]}, r"dtypes must hold one torch.dtype per input"),
    ],
)
def test_verify_argument_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(surgery.ArgumentError, match=match):
        surgery.verify(nn.Linear(2, 2), (1, 2), **kwargs)


# ----------------------------------------------------------------------------- shape shortcuts


def test_repeated_blocks_run_once(resnet18: nn.Module) -> None:
    clone = MetaClone(resnet18)
    repeats = [m for m in clone.done.values() if isinstance(m, Repeat)]
    assert repeats and all(r._real is None for r in repeats if r.__dict__["_sid"] in clone.repeated)
    out = clone.root(torch.empty(2, 3, 224, 224, device="meta"))
    assert out.shape == (2, 1000)
    skipped = [r for r in repeats if r.__dict__["_real"] is None]
    assert len(skipped) >= 3  # e.g. layer1.1, and BatchNorms/ReLUs seen before


class Block(nn.Module):
    def __init__(self, channels: int, pool: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.pool = pool  # a plain attribute that changes the output shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), self.pool)


@settings(max_examples=15)
@given(
    pools=st.lists(st.sampled_from([1, 2]), min_size=1, max_size=5),
    channels=st.sampled_from([2, 3]),
    size=st.integers(4, 20),
    batch=st.integers(1, 3),
)
def test_shape_cache_agrees_with_a_plain_meta_forward(
    pools: list[int], channels: int, size: int, batch: int
) -> None:
    """Identical parameters but different attributes or input shapes never share a cache entry;
    a forward that fails for real fails in verify too."""
    m = nn.Sequential(*(Block(channels, p) for p in pools), nn.Flatten())
    input_size = (batch, channels, size, size)
    try:
        _, expected = output_shapes(m, input_size)
    except surgery.SurgeryError:  # too many poolings for this size: verify must fail too
        with pytest.raises(surgery.VerificationError, match="forward: fails"):
            surgery.verify(m, input_size)
        return
    assert list(surgery.verify(m, input_size).output_size) == expected


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "mobilenet_v3_small",
        pytest.param("vit_b_16", marks=pytest.mark.slow),
        pytest.param("densenet121", marks=pytest.mark.slow),
        pytest.param("swin_t", marks=pytest.mark.slow),
    ],
)
def test_verify_agrees_with_torchinfo_on_torchvision(name: str) -> None:
    with torch.device("meta"):
        m = torchvision.models.get_model(name, weights=None)
    stats = surgery.verify(m, (2, 3, 224, 224))
    ref = torchinfo.summary(meta_copy(m), (2, 3, 224, 224), device="meta", verbose=0)
    assert list(stats.output_size) == ref.summary_list[0].output_size
    assert stats.total_params == ref.total_params
    assert stats.trainable_params == ref.trainable_params


def test_norm_shortcut_still_raises_on_wrong_channels() -> None:
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(5))
    with pytest.raises(surgery.VerificationError, match=r"forward: fails on the meta device"):
        surgery.verify(m, (1, 3, 4, 4))
    ln = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(5))
    with pytest.raises(surgery.VerificationError, match=r"forward: fails on the meta device"):
        surgery.verify(ln, (2, 3))


def test_summary_input_data_goes_to_meta_too() -> None:
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    stats = surgery.summary(m, input_data=[torch.rand(5, 3)])
    assert stats.summary_list[-1].output_size == [5, 4]
    assert m[0].weight.device.type == "cpu"
