"""Failures the zoo run found (issue 14), each pinned on the model that showed it (weights=None)."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
import torchvision
from torch import nn

import surgery
from tests.snapshot import assert_unchanged, snapshot


def lraspp() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None
    ).eval()


# ----------------------------------------------------------------------------- replace_head(m, 0)


def test_lraspp_head0_refuses_and_leaves_the_model_unchanged() -> None:
    m = lraspp()
    before = snapshot(m)
    with pytest.raises(
        surgery.ArgumentError,
        match=r"(?s)cannot remove the heads 'classifier.low_classifier', "
        r"'classifier.high_classifier' of LRASPP.*no longer runs.*128.*40"
        r".*no lossless features output.*replace_head\(model, n\)",
    ) as info:
        surgery.replace_head(m, 0)
    assert info.value.path == "classifier.low_classifier"
    assert_unchanged(m, before)
    with pytest.raises(surgery.ArgumentError):
        surgery.replace_head(m, 0, dry_run=True)  # a dry run refuses the same way
    assert_unchanged(m, before)
    with torch.no_grad():
        assert m(torch.rand(1, 3, 64, 64))["out"].shape == (1, 21, 64, 64)


def test_lraspp_head7_runs_with_seven_channels() -> None:
    m = lraspp()
    surgery.replace_head(m, 7)
    assert m.classifier.low_classifier.out_channels == 7
    assert m.classifier.high_classifier.out_channels == 7
    assert m.classifier.low_classifier.in_channels == 40
    assert m.classifier.high_classifier.in_channels == 128
    with torch.no_grad():
        assert m(torch.rand(2, 3, 64, 64))["out"].shape == (2, 7, 64, 64)


class SummedHeads(nn.Module):
    """Two heads of different widths whose logits are added: no features output exists."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.low = nn.Linear(8, 5)
        self.proj = nn.Linear(8, 4)
        self.high = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x).mean((2, 3))
        return self.low(f) + self.high(torch.relu(self.proj(f)))


def test_head0_refusal_is_general_and_head0_still_works_where_it_runs() -> None:
    m = SummedHeads().eval()
    before = snapshot(m)
    with pytest.raises(
        surgery.ArgumentError, match=r"(?s)'low', 'high' of SummedHeads.*length 4.*\[1, 8\]"
    ):
        surgery.replace_head(m, 0)
    assert_unchanged(m, before)
    with pytest.raises(surgery.ArgumentError, match=r"no longer runs"):
        surgery.replace_head(m, 0, path=["low", "high"])  # path= is checked too
    assert_unchanged(m, before)
    surgery.replace_head(m, 3)
    assert m(torch.rand(2, 3, 9, 9)).shape == (2, 3)
    r = torchvision.models.resnet18(weights=None).eval()
    surgery.replace_head(r, 0)
    assert isinstance(r.fc, nn.Identity)
    assert r(torch.rand(1, 3, 64, 64)).shape == (1, 512)


# ----------------------------------------------------------------------------- adapt_input


@pytest.mark.parametrize("builder", ["raft_small", "raft_large"])
def test_raft_adapt_input_adapts_both_image_encoders(builder: str, caplog) -> None:
    torch.manual_seed(0)
    m = getattr(torchvision.models.optical_flow, builder)(weights=None).eval()
    if builder == "raft_large":  # only the plan on the big one: the grey check runs on small
        plan = surgery.adapt_input(m, 1, dry_run=True)
        assert [e.path for e in plan.edits] == [
            "feature_encoder.convnormrelu.0",
            "context_encoder.convnormrelu.0",
        ]
        return
    x1, x2 = torch.rand(1, 1, 128, 128), torch.rand(1, 1, 128, 128)
    with torch.no_grad():
        expected = m(x1.repeat(1, 3, 1, 1), x2.repeat(1, 3, 1, 1), num_flow_updates=2)[-1]
    with caplog.at_level(logging.INFO, logger="surgery"):
        surgery.adapt_input(m, 1)
    assert "'feature_encoder.convnormrelu.0', 'context_encoder.convnormrelu.0'" in caplog.text
    assert "found by tracing the input's consumers" in caplog.text
    assert m.feature_encoder.convnormrelu[0].in_channels == 1
    assert m.context_encoder.convnormrelu[0].in_channels == 1
    with torch.no_grad():
        got = m(x1, x2, num_flow_updates=2)[-1]
    assert got.shape == expected.shape == (1, 2, 128, 128)
    scale = expected.abs().max().item()
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * max(scale, 1e-6))


def test_csatv2_adapt_input_refuses_naming_the_other_consumer() -> None:
    name = "csatv2"  # the smaller of timm's two csatv2 models
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False).eval()
    before = snapshot(m)
    with pytest.raises(
        surgery.LayerNotFoundError,
        match=r"(?s)cannot adapt .*input is also read by mul\(\.\.\.\) in 'stem_dct'"
        r".*path=",
    ):
        surgery.adapt_input(m, 1)
    assert_unchanged(m, before)
    with pytest.raises(surgery.LayerNotFoundError):
        surgery.adapt_input(m, 1, dry_run=True)
    assert_unchanged(m, before)


class ReadsInputTwice(nn.Module):
    """The image is read by a conv and, in forward, by a per-channel normalisation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("mean", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3)) + (x - self.mean).mean((1, 2, 3))[:, None]


class TwoStems(nn.Module):
    """Two convolutions read the input (and a batch concat, which keeps channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(3, 4, 5)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        both = self.a(torch.cat([x, y], dim=0) * 2.0)
        return both.mean((2, 3)).sum(0, keepdim=True) + self.b(x).mean((2, 3))


def test_adapt_input_refuses_any_non_conv_consumer() -> None:
    m = ReadsInputTwice()
    before = snapshot(m)
    with pytest.raises(
        surgery.LayerNotFoundError,
        match=r"(?s)also read by sub\(\.\.\.\) in the model's own forward.*"
        r"convolutions reading the input: 'conv'.*path='conv'",
    ):
        surgery.adapt_input(m, 1)
    assert_unchanged(m, before)
    surgery.adapt_input(m, 1, path="conv")  # path= is the caller's word: adapts that conv
    assert m.conv.in_channels == 1


def test_adapt_input_adapts_every_conv_reading_the_input() -> None:
    torch.manual_seed(0)
    m = TwoStems().eval()
    x, y = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        expected = m(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1))
    plan = surgery.adapt_input(m, 1, dry_run=True)
    assert [e.path for e in plan.edits] == ["a", "b"]
    surgery.adapt_input(m, 1)
    assert (m.a.in_channels, m.b.in_channels) == (1, 1)
    with torch.no_grad():
        assert torch.allclose(m(x, y), expected, atol=1e-5)


# ----------------------------------------------------------------------------- convs with their own forward


def _grey_equivalent(m: nn.Module, size: int = 64) -> float:
    x = torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = m(x.expand(-1, 3, -1, -1).contiguous())
        surgery.adapt_input(m, 1)
        return float((m(x) - expected).abs().max())


def test_scaled_std_conv_is_adapted_exactly() -> None:
    """NF-Nets standardize their weights (ScaledStdConv2d): fold the effective kernel, fix the gain."""
    torch.manual_seed(0)
    m = timm.create_model("nf_regnet_b0", pretrained=False).eval()
    assert type(m.stem.conv).__name__ == "ScaledStdConv2d"
    assert _grey_equivalent(m) < 1e-5
    assert m.stem.conv.in_channels == 1 and m.stem.conv.weight.shape[1] == 1


def test_std_conv_without_gain_is_refused_unchanged() -> None:
    """StdConv2d standardizes its weight with no gain: no folded weight gives the same outputs."""
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_r_s16_p8_224", pretrained=False).eval()
    before = snapshot(m)
    with pytest.raises(surgery.LayerNotFoundError, match="computes its own forward") as err:
        surgery.adapt_input(m, 1)
    assert "patch_embed.backbone.conv" in str(err.value) and "StdConv2dSame" in str(err.value)
    assert_unchanged(m, before)


def test_conv_with_its_own_forward_that_folds_is_adapted() -> None:
    """A conv subclass whose forward is still linear in the input (padding 'same' by hand)."""

    class PaddedConv(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"))

    m = nn.Sequential(PaddedConv(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    seen: list[torch.device] = []
    m[0].register_forward_hook(lambda _m, _a, out: seen.append(out.device))
    plan = surgery.adapt_input(m, 1, dry_run=True)
    # the caller's hook sees only the probe's meta copy, never the numeric proof's data
    assert seen and all(d.type == "meta" for d in seen) and len(plan.edits) == 1
    assert _grey_equivalent(m, 16) < 1e-5


class PadsFirst(nn.Module):
    """davit's stem pads the image, crossvit resizes it, before the first convolution."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "pad":
            x = nn.functional.pad(x, (1, 2, 0, 1), value=0.5)
        elif self.op == "interpolate":
            x = nn.functional.interpolate(x, scale_factor=1.5, mode="bilinear")
        elif self.op == "pool":
            x = nn.functional.avg_pool2d(x, 2)
        elif self.op == "pad-channels":  # pads the channel dimension: not per channel
            x = nn.functional.pad(x, (0, 0, 0, 0, 0, 1))[:, :3]
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("op", ["pad", "interpolate", "pool"])
def test_adapt_input_through_per_channel_spatial_ops(op: str) -> None:
    torch.manual_seed(0)
    assert _grey_equivalent(PadsFirst(op).eval(), 16) < 1e-5


def test_adapt_input_refuses_a_pad_of_the_channels() -> None:
    m = PadsFirst("pad-channels").eval()
    before = snapshot(m)
    with pytest.raises(surgery.LayerNotFoundError, match=r"pad\(\.\.\.\)"):
        surgery.adapt_input(m, 1)
    assert_unchanged(m, before)


def test_adapt_input_through_dropout_on_the_input() -> None:
    """efficientvit_b0's stem applies dropout to the image first (identity in eval)."""
    m = nn.Sequential(nn.Dropout(0.1), nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    assert _grey_equivalent(m, 12) < 1e-5


class NeedsLargeClips(nn.Module):
    """torchvision's MViT: the forward only runs on 16 x 224 x 224 clips."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 2, 1)
        self.fc = nn.Linear(2 * 16 * 224 * 224, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


def test_adapt_input_probes_a_larger_size_when_the_usual_one_fails() -> None:
    with torch.device("meta"):
        m = NeedsLargeClips()
    surgery.adapt_input(m, 1)
    assert m.conv.in_channels == 1 and m.conv.weight.shape == (2, 1, 1, 1, 1)
