"""Cut-point discovery and the cut points issue 14 found missing (hiera, ModuleLists,
timm's BatchNormAct2d, feature stages), against torchvision's create_feature_extractor."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import find
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

import surgery
import surgery.testing
from tests.snapshot import assert_unchanged, snapshot

timm = pytest.importorskip("timm")


def _lossless(model: nn.Module, path: str, x: torch.Tensor) -> None:
    with torch.no_grad():
        head, tail = surgery.split(model, path)
        expected, actual = model(x), tail(head(x))
    if isinstance(expected, dict):
        assert expected.keys() == actual.keys()
        for k in expected:
            torch.testing.assert_close(actual[k], expected[k])
    else:
        torch.testing.assert_close(actual, expected)


def test_cut_points_is_public_and_the_testing_strategy_draws_from_it() -> None:
    model = torchvision.models.resnet18(weights=None)
    points = surgery.cut_points(model)
    assert points == surgery.testing.split_points(model)
    assert points == [n for n, _ in model.named_modules() if n]
    assert find(surgery.testing.cut_points(model), lambda p: p.startswith("layer4")) == "layer4"


def test_not_found_errors_point_to_cut_points() -> None:
    model = torchvision.models.resnet18(weights=None)
    with pytest.raises(surgery.PathNotFoundError, match=r"surgery\.cut_points\(model\)") as info:
        surgery.cut(model, "layer7")
    assert (info.value.op, info.value.path) == ("cut", "layer7")


# --------------------------------------------------------------------------- hiera


@pytest.mark.slow
def test_hiera_optional_mask_is_absent() -> None:
    torch.manual_seed(0)
    model = timm.create_model("hiera_tiny_224", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    for path in ("blocks.0", "blocks.0.drop_path1", "blocks.11.drop_path1"):
        _lossless(model, path, x)
    head, _ = surgery.split(model, "blocks.0")
    assert [n.target for n in head.graph.nodes if n.op == "placeholder"] == ["x"]


def test_optional_arguments_take_their_defaults() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 2.0):
            y = self.a(x)
            if mask is not None:
                y = y * mask
            return self.b(y * scale)

    model = Net()
    x = torch.randn(3, 4)
    _lossless(model, "a", x)
    torch.testing.assert_close(surgery.cut(model, "b")(x), model(x))


# --------------------------------------------------------------------------- iterated containers


@pytest.mark.slow
def test_ssdlite_backbone_features_and_extra_are_cut_points() -> None:
    torch.manual_seed(0)
    ssd = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None
    )
    backbone = ssd.backbone.eval()
    points = surgery.cut_points(backbone)
    assert {"features", "extra"} <= set(points)
    x = torch.randn(1, 3, 320, 320)
    reference = create_feature_extractor(backbone, {"features": "f", "extra": "e"})
    with torch.no_grad():
        ref = reference(x)
        assert torch.equal(surgery.cut(backbone, "features")(x), ref["f"])
        assert torch.equal(surgery.cut(backbone, "extra")(x), ref["e"])
    for path in ("features", "extra"):
        _lossless(backbone, path, x)


def _small_maxvit() -> nn.Module:
    from torchvision.models.maxvit import MaxVit

    torch.manual_seed(0)
    return MaxVit(
        input_size=(32, 32),
        stem_channels=8,
        partition_size=2,
        block_channels=[8, 16],
        block_layers=[1, 1],
        head_dim=4,
        stochastic_depth_prob=0.0,
        num_classes=5,
    ).eval()


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(_small_maxvit, id="small"),
        pytest.param(
            lambda: torchvision.models.maxvit_t(weights=None).eval(),
            id="maxvit_t",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_maxvit_blocks_is_a_cut_point(build) -> None:  # type: ignore[no-untyped-def]
    model = build()
    size = 32 if model.classifier[-1].out_features == 5 else 224
    x = torch.randn(1, 3, size, size)
    assert "blocks" in surgery.cut_points(model)
    with torch.no_grad():
        ref = create_feature_extractor(model, {"blocks": "b"})(x)["b"]
        torch.testing.assert_close(surgery.cut(model, "blocks")(x), ref)
    _lossless(model, "blocks", x)


# --------------------------------------------------------------------------- BatchNormAct2d


def test_timm_batchnorm_act_children_are_cut_points() -> None:
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False).eval()
    points = surgery.cut_points(model)
    assert {"bn1", "bn1.drop", "bn1.act", "bn2.act", "blocks.0.0.bn1.act"} <= set(points)
    x = torch.randn(2, 3, 64, 64)
    for path in ("bn1.act", "blocks.1.0.bn2.drop", "bn2.act"):
        _lossless(model, path, x)
    with torch.no_grad():
        act = model.bn1(model.conv_stem(x))  # BatchNormAct2d: norm, drop, act
        torch.testing.assert_close(surgery.cut(model, "bn1.act")(x), act)


def test_batchnorm_act_step_follows_the_mode_of_the_result() -> None:
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False).eval()
    head, _ = surgery.split(model, "bn1.act")
    x = torch.randn(2, 3, 64, 64)
    stats = head.get_submodule("bn1").running_mean.clone()
    with torch.no_grad():
        head(x)
        assert torch.equal(head.get_submodule("bn1").running_mean, stats)  # eval: frozen
        head.train()
        head(x)
    assert not torch.equal(head.get_submodule("bn1").running_mean, stats)  # train: updated
    assert torch.equal(model.bn1.running_mean, stats)  # a copy: the model is untouched


# --------------------------------------------------------------------------- summary


def test_summary_counts_shared_parameters_once() -> None:
    model = timm.create_model("coat_tiny", pretrained=False)
    unique = sum(p.numel() for p in model.parameters())
    assert unique == 5_498_540
    stats = surgery.summary(model, (1, 3, 224, 224))
    assert stats.total_params == unique == surgery.verify(model, (1, 3, 224, 224)).total_params
    assert stats.trainable_params == unique
    assert "Total params: 5,498,540" in str(stats)


# --------------------------------------------------------------------------- stages


@pytest.mark.slow
def test_stage_paths_resolve_through_feature_info() -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for n, info in enumerate(model.feature_info):
            torch.testing.assert_close(
                surgery.cut(model, f"stage:{n}")(x), surgery.cut(model, info["module"])(x)
            )
        features = timm.create_model("resnet18", features_only=True, out_indices=(2,))
        features.load_state_dict(model.state_dict(), strict=False)
        torch.testing.assert_close(surgery.cut(model, "stage:2")(x), features.eval()(x)[0])
    _lossless(model, "stage:3", x)


def test_bad_stage_lists_the_stages_and_changes_nothing() -> None:
    model = timm.create_model("resnet18", pretrained=False)
    before = snapshot(model)
    with pytest.raises(
        surgery.PathNotFoundError,
        match=r"'stage:5' names no feature stage of ResNet: it has 5 .*stage:4 = 'layer4'",
    ) as info:
        surgery.split(model, "stage:5")
    assert (info.value.op, info.value.path) == ("split", "stage:5")
    with pytest.raises(surgery.PathNotFoundError, match="stage:0 = 'act1'"):
        surgery.cut(model, "stage:x")
    with pytest.raises(surgery.PathNotFoundError, match="declares none"):
        surgery.cut(torchvision.models.resnet18(weights=None), "stage:1")
    assert_unchanged(model, before)
