"""surgery.testing: the strategy and the lossless-split assertion users build on."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from hypothesis import given, settings
from torch import nn

import surgery
from surgery.testing import assert_split_lossless, cut_points, split_points


@functools.cache
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None)


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.block(x) + x)
        return self.head(x.mean((2, 3)))


SMALL = Small()


@settings(max_examples=12)
@given(path=cut_points(SMALL))
def test_users_property_test_passes_on_a_residual_model(path: str) -> None:
    assert path in dict(SMALL.named_modules())
    assert_split_lossless(SMALL, path, torch.randn(2, 3, 8, 8))


@settings(max_examples=5)
@given(path=cut_points(resnet18()))
def test_resnet18_with_explicit_tolerances(path: str) -> None:
    assert_split_lossless(resnet18(), path, torch.randn(1, 3, 32, 32), atol=1e-5, rtol=1e-4)


def test_split_points_golden_resnet18() -> None:
    points = split_points(resnet18())
    assert points[:6] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer1.0"]
    assert points[-3:] == ["layer4.1.bn2", "avgpool", "fc"]
    assert len(points) == 67


def test_assertion_names_the_path_when_not_lossless() -> None:
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) + torch.rand_like(x)

    with pytest.raises(AssertionError, match=r"split\(Noisy, 'a'\) is not lossless"):
        assert_split_lossless(Noisy(), "a", torch.randn(2, 4))


def test_one_tolerance_is_enough() -> None:
    assert_split_lossless(SMALL, "block", torch.randn(1, 3, 8, 8), atol=1e-4)


def test_modes_are_restored_and_inputs_are_not_modified() -> None:
    model = Small().train()
    model.block.eval()
    x = torch.randn(2, 3, 8, 8)
    x0 = x.clone()
    assert_split_lossless(model, "stem.2", x)
    assert model.training and model.stem.training and not model.block.training
    assert torch.equal(x, x0)


def test_invalid_arguments() -> None:
    with pytest.raises(surgery.ArgumentError, match="no cut point"):
        cut_points(nn.Linear(2, 2))
    with pytest.raises(surgery.ArgumentError, match="needs at least one input"):
        assert_split_lossless(SMALL, "head")
    with pytest.raises(surgery.PathNotFoundError, match="did you mean 'head'"):
        assert_split_lossless(SMALL, "heads", torch.randn(1, 3, 8, 8))
