"""ModuleIndex: one walk equals named_modules (first paths) and named_modules(remove_duplicate=False)."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import surgery
from surgery.paths._index import ModuleIndex


def _all_paths(model: nn.Module) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        out.setdefault(id(mod), []).append(name)
    return out


def _check(model: nn.Module) -> None:
    index = ModuleIndex(model)
    assert index.named() == list(model.named_modules())[1:]
    assert {id(m): index.paths(m) for m in model.modules()} == _all_paths(model)
    for m in model.modules():
        for loc in index.locations(m):
            assert loc.parent._modules[loc.key] is m
            assert surgery.get(model, loc.path) is m
            assert id(loc.parent) in loc.ancestors and id(model) in loc.ancestors


def test_resnet_and_shared_modules() -> None:
    _check(torchvision.models.resnet18(weights=None))
    block = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    m = nn.Sequential(OrderedDict(a=block, b=nn.Sequential(block), c=nn.Identity(), d=None))
    _check(m)
    index = ModuleIndex(m)
    assert index.paths(block[0]) == ["a.0", "b.0.0"]
    assert index.paths(m) == [""] and index.locations(m) == []
    assert index.paths(nn.ReLU()) == [] and nn.ReLU() not in index and block in index
    assert len(index) == len(list(m.modules()))


def test_an_existing_cycle_is_not_followed() -> None:
    m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU()))
    m[1]._modules["back"] = m  # a cycle (named_modules would recurse forever without memo)
    index = ModuleIndex(m)
    assert [p for p, _ in index.named()] == ["0", "1", "1.0"]
    assert index.paths(m) == [""]


def test_garbage_collection_is_restored() -> None:
    import gc

    assert gc.isenabled()
    ModuleIndex(nn.Sequential(nn.ReLU()))
    assert gc.isenabled()
    gc.disable()
    try:
        ModuleIndex(nn.Sequential(nn.ReLU()))
        assert not gc.isenabled()
    finally:
        gc.enable()


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_random_models_with_shared_modules(data: st.DataObject) -> None:
    pool: list[nn.Module] = []

    def block(depth: int) -> nn.Module:
        if pool and data.draw(st.booleans()):
            return data.draw(st.sampled_from(pool))  # reuse: a shared module
        if depth == 0 or data.draw(st.booleans()):
            made: nn.Module = data.draw(st.sampled_from([nn.ReLU, lambda: nn.Linear(2, 2)]))()
        else:
            made = nn.Sequential(*[block(depth - 1) for _ in range(data.draw(st.integers(1, 3)))])
        pool.append(made)
        return made

    _check(nn.Sequential(block(3), block(2)))


def test_swap_leaves_a_wrapped_original_and_moves_only_new_tensors() -> None:
    m = nn.Sequential(nn.Linear(2, 2).double(), nn.ReLU()).eval()
    base = m[0]

    class Wrap(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.extra = nn.Linear(2, 2)  # float32, training mode

    report = surgery.swap(m, "0", lambda mod: Wrap(mod))
    assert report.swapped == {"0": ("Linear", "Wrap")}
    assert m[0].inner is base and base.weight.dtype == torch.float64
    assert m[0].extra.weight.dtype == torch.float64 and not m[0].training
    assert not m[0].extra.training
