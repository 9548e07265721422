"""swap: selection by pattern and type, factories, nesting, sharing, placement, bad input."""

from __future__ import annotations

import copy
import json
from collections import OrderedDict

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import surgery
from surgery import ArgumentError, PathNotFoundError, SharedModuleWarning, SurgeryError
from tests.snapshot import assert_unchanged, snapshot


def resnet() -> nn.Module:
    return torchvision.models.resnet18(weights=None)


def test_batchnorm_to_groupnorm_keeps_affine_weights() -> None:
    m = resnet()
    with torch.no_grad():
        m.layer1[0].bn1.weight.uniform_()
    w = m.layer1[0].bn1.weight.clone()
    bns = surgery.find(m, "**", types=nn.BatchNorm2d)
    report = surgery.swap(m, "**", surgery.layers.group_norm(32), types="BatchNorm2d")
    assert list(report.swapped) == bns and len(bns) == 20
    assert all(v == ("BatchNorm2d", "GroupNorm") for v in report.swapped.values())
    assert torch.equal(m.layer1[0].bn1.weight, w)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 1000)
    assert json.loads(json.dumps(report.to_dict()))["swapped"]["bn1"] == [
        "BatchNorm2d",
        "GroupNorm",
    ]


def test_relu_to_silu_keeps_inplace_and_factories_get_the_path() -> None:
    m = resnet()
    seen: list[str] = []

    def factory(module: nn.Module, path: str) -> nn.Module:
        seen.append(path)
        return surgery.layers.activation(nn.SiLU)(module)

    surgery.swap(m, "layer1.**", factory, types=nn.ReLU)
    assert seen == ["layer1.0.relu", "layer1.1.relu"]
    assert m.layer1[0].relu.inplace is True and isinstance(m.relu, nn.ReLU)


def test_frozen_and_sync_batchnorm_factories() -> None:
    m = resnet()
    surgery.swap(m, "layer1.**", surgery.layers.frozen_batchnorm, types="BatchNorm2d")
    assert type(m.layer1[0].bn1) is FrozenBatchNorm2d
    surgery.unfreeze(m)  # the same conversion as freeze(bn="frozen"): undone by unfreeze
    assert type(m.layer1[0].bn1) is nn.BatchNorm2d
    surgery.swap(m, "layer2.**", surgery.layers.sync_batchnorm, types="BatchNorm2d")
    assert type(m.layer2[0].bn1) is nn.SyncBatchNorm


def test_kept_and_nested() -> None:
    m = resnet()
    report = surgery.swap(m, "layer1.**", lambda mod: nn.Identity() if mod is m.layer1[0] else mod)
    assert report.swapped == {"layer1.0": ("BasicBlock", "Identity")}
    assert report.kept == ["layer1.1"]
    assert report.skipped_nested == [
        p for p in surgery.find(resnet(), "layer1.**") if p.startswith(("layer1.0.", "layer1.1."))
    ]
    assert "nested: not visited" in str(report)


def test_shared_module_passed_once_installed_everywhere() -> None:
    lin = nn.Linear(2, 2)
    m = nn.Sequential(OrderedDict(a=lin, b=nn.ReLU(), c=lin))
    calls: list[nn.Module] = []

    def factory(module: nn.Module) -> nn.Module:
        calls.append(module)
        return nn.Linear(2, 2)

    with pytest.warns(SharedModuleWarning, match=r"'a' is also reachable at 'c'"):
        report = surgery.swap(m, "*", factory, types=nn.Linear)
    assert calls == [lin] and m.a is m.c and m.a is not lin
    assert report.shared == {"a": ["c"]}
    assert "shared with c" in str(report)


def test_placement_mode_device_and_dtype() -> None:
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).double().eval()
    surgery.swap(m, "1", lambda mod: nn.LayerNorm(2))
    assert m[1].weight.dtype == torch.float64 and not m[1].training
    surgery.swap(m, "0", lambda mod: nn.Linear(2, 2), keep_dtype=True)
    assert m[0].weight.dtype == torch.float32


def test_wrapping_keeps_the_original_untouched() -> None:
    m = nn.Sequential(nn.Linear(2, 2).double())
    inner = m[0]
    w = inner.weight

    class Adapter(nn.Module):
        def __init__(self, base: nn.Module) -> None:
            super().__init__()
            self.base = base
            self.down = nn.Linear(2, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.base(x)

    surgery.swap(m, "0", Adapter)
    assert m[0].base is inner and inner.weight is w and m[0].down.weight.dtype == torch.float64


def test_dry_run_runs_factories_and_installs_nothing() -> None:
    m = resnet()
    before = snapshot(m)
    report = surgery.swap(m, "**", surgery.layers.group_norm(32), types="BatchNorm2d", dry_run=True)
    assert report.dry_run and len(report.swapped) == 20 and report.plan is not None
    assert_unchanged(m, before)


class Boom(Exception):
    pass


def _raise(module: nn.Module) -> nn.Module:
    raise Boom("no")


@pytest.mark.parametrize(
    ("pattern", "factory", "kwargs", "error", "match"),
    [
        ("layer1.**", _raise, {}, SurgeryError, r"the factory for 'layer1.0' raised Boom: no"),
        ("fc", lambda m: 3, {}, ArgumentError, r"'fc' returned int, not an nn.Module"),
        ("fc", None, {}, ArgumentError, r"returned the model itself"),
        ("layer1.0.conv1", "ancestor", {}, ArgumentError, r"cycle"),
        ("nope.**", lambda m: m, {}, PathNotFoundError, r"nope"),
        ("**", lambda m: m, {"types": "Conv3d"}, PathNotFoundError, r"types present"),
        ("**", lambda m: m, {"types": 3}, ArgumentError, r"types must be"),
        ("**", lambda m: m, {"types": nn.ReLU()}, ArgumentError, r"module instance"),
        ("layer1[0:2]", lambda m: m, {}, ArgumentError, r"slice"),
        ("fc", "not callable", {}, ArgumentError, r"factory must be a callable"),
    ],
)
def test_bad_input_changes_nothing(pattern, factory, kwargs, error, match) -> None:
    m = resnet()
    if factory is None:
        factory = lambda mod: m  # noqa: E731
    elif factory == "ancestor":
        factory = lambda mod: m.layer1  # noqa: E731
    before = snapshot(m)
    with pytest.raises(error, match=match) as info:
        surgery.swap(m, pattern, factory, **kwargs)
    assert info.value.op == "swap"
    if factory is _raise:
        assert isinstance(info.value.__cause__, Boom) and info.value.path == "layer1.0"
    assert_unchanged(m, before)


PATTERNS = ["**", "*", "a.**", "b.*", "**.1", "re:.*x.*", "b"]


def _model(data: st.DataObject) -> nn.Module:
    def block(depth: int) -> nn.Module:
        if depth == 0 or data.draw(st.booleans()):
            return data.draw(st.sampled_from([nn.ReLU, nn.Tanh, lambda: nn.Linear(2, 2)]))()
        return nn.Sequential(*[block(depth - 1) for _ in range(data.draw(st.integers(1, 3)))])

    return nn.Sequential(OrderedDict(a=block(2), b=block(2), x=block(1)))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_swapped_paths_are_find_minus_nested(data: st.DataObject) -> None:
    m = _model(data)
    pattern = data.draw(st.sampled_from(PATTERNS))
    types = data.draw(st.sampled_from([None, nn.ReLU, "Sequential", (nn.Linear, nn.Tanh)]))
    keep = data.draw(st.frozensets(st.integers(0, 20)))
    reference = copy.deepcopy(m)
    try:
        found = surgery.find(m, pattern, types=types)
    except PathNotFoundError:
        with pytest.raises(PathNotFoundError):
            surgery.swap(m, pattern, lambda mod: mod, types=types)
        return
    order = {p: i for i, p in enumerate(found)}
    report = surgery.swap(
        m, pattern, lambda mod, path: mod if order[path] in keep else nn.Identity(), types=types
    )
    outer = [p for p in found if not any(p.startswith(q + ".") for q in found if q != p)]
    assert sorted([*report.swapped, *report.kept]) == sorted(outer)
    assert sorted(report.skipped_nested) == sorted(set(found) - set(outer))
    for p in report.swapped:
        assert isinstance(m.get_submodule(p), nn.Identity)
    changed = tuple(f"{p}." for p in report.swapped)
    for name, mod in reference.named_modules():
        if name and name not in report.swapped and not name.startswith(changed):
            assert type(m.get_submodule(name)) is type(mod)
