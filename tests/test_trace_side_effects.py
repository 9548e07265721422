"""Analysis has no side effects: tracing and shape inference never touch the caller's model.

Every module's whole ``__dict__`` (parameters, buffers, hooks, caches such as
timm's ``attention_bias_cache``, modes, any attribute) is compared before and
after each analysis function (tests/snapshot.py: snapshot).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import surgery
import surgery.testing
from tests.snapshot import assert_unchanged, snapshot

timm = pytest.importorskip("timm")

SIZE = (1, 3, 224, 224)
MODELS = [  # the fast suite keeps resnet18; CI's slow step runs the timm models with caches
    pytest.param("efficientformerv2_s0", marks=pytest.mark.slow),
    pytest.param("efficientformer_l1", marks=pytest.mark.slow),
    pytest.param("levit_128s", marks=pytest.mark.slow),
    "resnet18",
    pytest.param("vit_b_16", marks=pytest.mark.slow),
]


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if hasattr(torchvision.models, name):
        return getattr(torchvision.models, name)(weights=None).eval()
    return timm.create_model(name, pretrained=False).eval()


def _middle(points: list[str]) -> str:
    return points[len(points) // 2]


def _operations(model: nn.Module) -> dict[str, Callable[[], Any]]:
    points = surgery.cut_points(model)
    return {
        "cut": lambda: surgery.cut(model, _middle(points)),
        "cut copy=False": lambda: surgery.cut(model, points[-1], copy=False),
        "split": lambda: surgery.split(model, _middle(points)),
        "split copy=False": lambda: surgery.split(model, points[1], copy=False),
        "cut_points": lambda: surgery.cut_points(model),
        "split_points": lambda: surgery.testing.split_points(model),
        "verify": lambda: surgery.verify(model, SIZE),
        "summary": lambda: surgery.summary(model, SIZE),
        "summary cpu": lambda: surgery.summary(model, SIZE, device="cpu"),
        "tree": lambda: surgery.tree(model, input_size=SIZE),
    }


@pytest.mark.parametrize("name", MODELS)
def test_analysis_leaves_every_module_dict_unchanged(name: str) -> None:
    model = _build(name)
    before = snapshot(model)
    for op, run in _operations(model).items():
        run()
        try:
            assert_unchanged(model, before)
        except AssertionError as e:
            raise AssertionError(f"{op} changed {name}: {e}") from None


@pytest.mark.parametrize("name", ["efficientformerv2_s0", "efficientformer_l1", "levit_128s"])
def test_split_twice_and_the_model_still_runs(name: str) -> None:
    model = _build(name)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)  # fills timm's attention_bias_cache with a real tensor
        path = _middle(surgery.cut_points(model))
        for _ in range(2):
            head, tail = surgery.split(model, path)
            torch.testing.assert_close(tail(head(x)), expected)
        torch.testing.assert_close(model(x), expected)
        torch.testing.assert_close(copy.deepcopy(model)(x), expected)


def test_cut_copies_are_fresh_objects_with_their_own_caches() -> None:
    model = _build("levit_128s")
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    cache_owner = next(n for n, m in model.named_modules() if getattr(m, "attention_bias_cache", 0))
    body = surgery.cut(model, "stages.1")
    sources = {id(m) for m in model.modules()}
    assert not sources & {id(m) for m in body.modules()}
    shared = surgery.cut(model, "stages.1", copy=False)
    assert shared.get_submodule(cache_owner + ".qkv.linear") is (
        model.get_submodule(cache_owner + ".qkv.linear")
    )


def test_forward_hooks_and_attributes_of_the_model_survive_tracing() -> None:
    model = _build("resnet18")
    seen: list[str] = []
    model.layer1.register_forward_hook(lambda m, i, o: seen.append("hook"))
    model.layer2.notes = {"cache": []}  # a user attribute the forward does not use
    before = snapshot(model)
    surgery.split(model, "layer3")
    surgery.verify(model, SIZE)
    surgery.tree(model, input_size=SIZE)
    assert_unchanged(model, before)
    assert model.layer2.notes == {"cache": []}


def test_snapshot_detects_a_cache_write() -> None:  # the helper itself can fail
    model = _build("levit_128s")
    before = snapshot(model)
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    with pytest.raises(AssertionError, match="attention_bias_cache"):
        assert_unchanged(model, before)
