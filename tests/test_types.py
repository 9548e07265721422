"""Selection by type: ``types=`` on find, freeze and unfreeze."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import surgery
from surgery import ArgumentError, PathNotFoundError
from tests.snapshot import assert_unchanged, snapshot


def resnet() -> nn.Module:
    return torchvision.models.resnet18(weights=None)


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        (
            nn.Conv2d,
            [
                "layer3.0.conv1",
                "layer3.0.conv2",
                "layer3.0.downsample.0",
                "layer3.1.conv1",
                "layer3.1.conv2",
            ],
        ),
        (
            "Conv2d",
            [
                "layer3.0.conv1",
                "layer3.0.conv2",
                "layer3.0.downsample.0",
                "layer3.1.conv1",
                "layer3.1.conv2",
            ],
        ),
        ((nn.ReLU, nn.Linear), ["layer3.0.relu", "layer3.1.relu"]),
        (["ReLU"], ["layer3.0.relu", "layer3.1.relu"]),
        ("Module", None),  # every module: a name anywhere in the MRO
    ],
)
def test_find_by_type_equals_isinstance_filter(types: object, expected: list[str] | None) -> None:
    m = resnet()
    found = surgery.find(m, "layer3.**", types=types)
    everything = surgery.find(m, "layer3.**")
    if expected is None:
        assert found == everything
    else:
        assert found == expected
        assert found == [p for p in everything if p in expected]


def test_names_match_anywhere_in_the_mro() -> None:
    with torch.device("meta"):
        m = timm.create_model("resnet18", pretrained=False, norm_layer=timm.layers.BatchNormAct2d)
    by_name = surgery.find(m, "**", types="BatchNorm2d")
    assert by_name and all(isinstance(m.get_submodule(p), nn.BatchNorm2d) for p in by_name)
    assert type(m.get_submodule(by_name[0])).__name__ == "BatchNormAct2d"


@pytest.mark.parametrize(
    ("types", "error", "match"),
    [
        (3, ArgumentError, r"types must be a class.*got int 3"),
        (nn.ReLU(), ArgumentError, r"module instance: pass its class, types=nn.ReLU"),
        ([], ArgumentError, r"empty list"),
        (
            "BatchNorm3d",
            PathNotFoundError,
            r"no module of ResNet is a BatchNorm3d.*\n.*types present: .*BatchNorm2d",
        ),
        ("Linear", PathNotFoundError, r"'layer1.\*\*' matches \d+ module\(s\).*none is a Linear"),
    ],
)
def test_bad_types_are_refused_and_change_nothing(types: object, error: type, match: str) -> None:
    m = resnet()
    before = snapshot(m)
    with pytest.raises(error, match=match):
        surgery.find(m, "layer1.**", types=types)
    with pytest.raises(error, match=match.replace("find", "freeze")):
        surgery.freeze(m, "layer1.**", types=types)
    assert_unchanged(m, before)


def test_freeze_and_unfreeze_by_type() -> None:
    m = resnet()
    surgery.freeze(m, types="BatchNorm2d")  # no pattern: the whole model
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    bns = surgery.find(m, "**", types=nn.BatchNorm2d)
    assert frozen == {f"{b}.{k}" for b in bns for k in ("weight", "bias")}
    surgery.unfreeze(m, "layer1.**", types=nn.BatchNorm2d)
    assert m.layer1[0].bn1.weight.requires_grad and not m.layer2[0].bn1.weight.requires_grad
    plan = surgery.freeze(m, "layer4.**", types=nn.Conv2d, dry_run=True)
    assert {s.path.rsplit(".", 1)[0] for s in plan.settings} == set(
        surgery.find(m, "layer4.**", types=nn.Conv2d)
    )
