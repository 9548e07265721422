"""get / find / replace / delete / insert on real torchvision models."""

from __future__ import annotations

import copy
import fnmatch
import re
import warnings
from collections import OrderedDict

import pytest
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import surgery
from surgery import ArgumentError, PathNotFoundError, PathSyntaxError, SharedModuleWarning
from tests.snapshot import assert_unchanged, snapshot


def build(name: str, *, meta: bool = True, **kwargs) -> nn.Module:
    if meta:
        with torch.device("meta"):
            return torchvision.models.get_model(name, weights=None, **kwargs)
    return torchvision.models.get_model(name, weights=None, **kwargs)


ZOO = [
    "resnet18",
    "vgg16_bn",
    "densenet121",
    "vit_b_16",
    "mobilenet_v3_small",
    "swin_t",
    "inception_v3",
]


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    return {name: build(name) for name in ZOO}


@pytest.mark.parametrize("name", ZOO)
def test_get_agrees_with_get_submodule_everywhere(zoo: dict[str, nn.Module], name: str) -> None:
    model = zoo[name]
    for path, module in model.named_modules():
        assert surgery.get(model, path) is model.get_submodule(path) is module
        # bracketed integer segments name the same module
        bracketed = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", path)
        assert surgery.get(model, bracketed) is module


@pytest.mark.parametrize("name", ZOO)
def test_find_all_is_named_modules(zoo: dict[str, nn.Module], name: str) -> None:
    model = zoo[name]
    assert surgery.find(model, "**") == [n for n, _ in model.named_modules() if n]


@given(
    st.sampled_from(ZOO),
    st.sampled_from(
        ["*", "*.*", "**.0", "**.*conv*", "**.bn?", "*.1.*", "**.fc", "re:.*\\.[0-9]+"]
    ),
)
def test_find_agrees_with_fnmatch_loop(name: str, pattern: str) -> None:
    model = _ZOO_CACHE.setdefault(name, build(name))
    names = [n for n, _ in model.named_modules() if n]
    if pattern.startswith("re:"):
        expected = [n for n in names if re.fullmatch(pattern[3:], n)]
    elif "**" in pattern:
        tail = pattern.split("**.", 1)[1]
        expected = [n for n in names if fnmatch.fnmatchcase(n.rsplit(".", 1)[-1], tail)]
    else:
        depth = pattern.count(".") + 1
        expected = [
            n for n in names if n.count(".") + 1 == depth and fnmatch.fnmatchcase(n, pattern)
        ]
    if expected:
        assert surgery.find(model, pattern) == expected
    else:
        with pytest.raises(PathNotFoundError, match="matches no module"):
            surgery.find(model, pattern)


_ZOO_CACHE: dict[str, nn.Module] = {}


def test_find_examples_on_resnet_and_vgg() -> None:
    r = build("resnet18")
    assert surgery.find(r, "layer*.*.bn*")[:4] == [
        "layer1.0.bn1",
        "layer1.0.bn2",
        "layer1.1.bn1",
        "layer1.1.bn2",
    ]
    assert len(surgery.find(r, "layer*.*.bn*")) == 16
    assert surgery.find(r, "**.downsample") == [
        "layer2.0.downsample",
        "layer3.0.downsample",
        "layer4.0.downsample",
    ]
    assert surgery.find(r, "re:layer[12]\\.0") == ["layer1.0", "layer2.0"]
    assert surgery.find(r, "layer3") == ["layer3"]
    v = build("vgg16_bn")
    assert surgery.find(v, "features[7:14]") == [f"features.{i}" for i in range(7, 14)]
    assert surgery.find(v, "features[-1]") == ["features.43"]
    with pytest.raises(PathNotFoundError, match="matches no module"):
        surgery.find(r, "**.nothing_like_this")


def test_get_slices_are_like_torch_slicing() -> None:
    v = build("vgg16_bn")
    block = surgery.get(v, "features[7:14]")
    assert type(block) is nn.Sequential
    assert list(block) == list(v.features[7:14])
    assert all(a is b for a, b in zip(block, v.features[7:14]))
    assert surgery.get(v, "features[-1]") is v.features[-1]
    assert len(surgery.get(v, "features[::2]")) == len(v.features[::2])
    assert surgery.get(v, "features[7:14][0]") is v.features[7]
    vit = build("vit_b_16")
    layers = surgery.get(vit, "encoder.layers[:-1]")
    assert type(layers) is nn.Sequential and len(layers) == 11
    ml = nn.ModuleList([nn.ReLU(), nn.Tanh(), nn.GELU()])
    assert type(surgery.get(ml, "[1:]")) is nn.ModuleList
    assert surgery.get(ml, "[-1]") is ml[2]


def test_positional_index_into_named_sequential_and_moduledict() -> None:
    seq = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3), relu=nn.ReLU()))
    assert surgery.get(seq, "0") is seq.conv
    assert surgery.get(seq, "[-1]") is seq.relu
    d = nn.ModuleDict({"a": nn.ReLU(), "b": nn.Tanh()})
    assert surgery.get(d, "1") is d["b"]
    assert surgery.get(d, "b") is d["b"]


NOT_FOUND = [
    (
        "resnet18",
        "layer5",
        [
            "'layer5' not found under the root",
            "did you mean 'layer4'",
            "children there: conv1, bn1",
            "surgery.tree",
        ],
    ),
    (
        "resnet18",
        "layer3.0.conv9",
        [
            "not found under 'layer3.0' \\(BasicBlock\\)",
            "did you mean 'layer3.0.conv[12]'",
            "children there: conv1, bn1, relu, conv2, bn2, downsample",
        ],
    ),
    ("resnet18", "layer3.5", ["index 5 out of range", "'layer3' is a Sequential of length 2"]),
    ("resnet18", "layer3[-3]", ["index -3 out of range"]),
    ("resnet18", "conv1.weight", ["'weight' not found under 'conv1'", "has no children"]),
    ("resnet18", "conv1[0:2]", ["cannot slice 'conv1'", "only Sequential and ModuleList"]),
    ("resnet18", "fc.0", ["integers are names here"]),
    ("vgg16_bn", "featurs[7:14]", ["did you mean 'features'"]),
]


@pytest.mark.parametrize(("name", "path", "messages"), NOT_FOUND)
def test_not_found_messages(name: str, path: str, messages: list[str]) -> None:
    model = build(name)
    with pytest.raises(PathNotFoundError) as info:
        surgery.get(model, path)
    for m in messages:
        assert re.search(m, str(info.value)), (m, str(info.value))
    assert info.value.path == path


def test_replace_delete_insert_on_resnet() -> None:
    m = build("resnet18", meta=False).eval()
    x = torch.randn(1, 3, 64, 64)
    old_fc = surgery.replace(m, "fc", nn.Linear(512, 10))
    assert old_fc.out_features == 1000
    assert m(x).shape == (1, 10)
    removed = surgery.delete(m, "layer4.1")
    assert type(removed).__name__ == "BasicBlock" and len(m.layer4) == 1
    assert m(x).shape == (1, 10)
    removed = surgery.delete(m, "maxpool")
    assert isinstance(m.maxpool, nn.Identity) and isinstance(removed, nn.MaxPool2d)
    assert m(x).shape == (1, 10)
    new_path = surgery.insert(m, "layer4.0", nn.Identity())
    assert new_path == "layer4.0" and isinstance(m.layer4[0], nn.Identity) and len(m.layer4) == 2
    new_path = surgery.insert(m, "layer4[-1]", nn.ReLU(), after=True)
    assert new_path == "layer4.2" and isinstance(m.layer4[2], nn.ReLU)
    assert list(m.layer4._modules) == ["0", "1", "2"]
    assert m(x).shape == (1, 10)


def test_replace_delete_insert_on_vgg_densenet_vit() -> None:
    v = build("vgg16_bn")
    surgery.replace(v, "classifier[-1]", nn.Linear(4096, 5))
    assert v.classifier[6].out_features == 5
    removed = surgery.delete(v, "features[7:14]")
    assert len(removed) == 7 and len(v.features) == 37
    assert list(v.features._modules) == [str(i) for i in range(37)]
    d = build("densenet121")
    old = surgery.replace(d, "features.norm5", nn.Identity())
    assert isinstance(old, nn.BatchNorm2d)
    assert surgery.delete(d, "features.denseblock4.denselayer16") is not None
    assert (
        "denselayer16" not in d.features.denseblock4._modules
    )  # ModuleDict: removed, not re-indexed
    assert "denselayer15" in d.features.denseblock4._modules
    vit = build("vit_b_16")
    surgery.delete(vit, "encoder.layers[6:]")
    assert len(vit.encoder.layers) == 6
    surgery.insert(vit, "encoder.layers.encoder_layer_0", nn.Identity(), name="pre")
    assert list(vit.encoder.layers._modules)[:2] == ["pre", "encoder_layer_0"]
    surgery.insert(vit, "encoder.layers.encoder_layer_0", nn.Identity())
    assert list(vit.encoder.layers._modules)[:3] == ["pre", "identity", "encoder_layer_0"]
    with torch.device("meta"):
        out = vit(torch.empty(1, 3, 224, 224))
    assert out.shape == (1, 1000)


def test_delete_in_named_sequential_keeps_names() -> None:
    seq = nn.Sequential(OrderedDict(a=nn.ReLU(), b=nn.Tanh(), c=nn.GELU()))
    surgery.delete(seq, "b")
    assert list(seq._modules) == ["a", "c"]
    ml = nn.ModuleList([nn.ReLU(), nn.Tanh(), nn.GELU()])
    surgery.delete(ml, "0")
    assert list(ml._modules) == ["0", "1"] and isinstance(ml[0], nn.Tanh)


FAILURES = [
    (lambda m: surgery.replace(m, "layer5", nn.ReLU()), PathNotFoundError, "did you mean 'layer4'"),
    (lambda m: surgery.replace(m, "fc", "not a module"), ArgumentError, "must be an nn.Module"),
    (lambda m: surgery.replace(m, "", nn.ReLU()), ArgumentError, "cannot replace the root"),
    (
        lambda m: surgery.replace(m, "layer1[0:1]", nn.ReLU()),
        ArgumentError,
        "cannot replace the slice",
    ),
    (lambda m: surgery.replace(m, "layer1..0", nn.ReLU()), PathSyntaxError, "empty segment"),
    (lambda m: surgery.delete(m, "layer3.9"), PathNotFoundError, "out of range"),
    (lambda m: surgery.delete(m, ""), ArgumentError, "cannot delete the root"),
    (
        lambda m: surgery.insert(m, "fc", nn.ReLU()),
        ArgumentError,
        "(?s)not a Sequential or ModuleList.*nn.Sequential\\(new",
    ),
    (lambda m: surgery.insert(m, "layer1.0", nn.ReLU(), name="x"), ArgumentError, "name= is only"),
    (lambda m: surgery.insert(m, "layer1.0", 3), ArgumentError, "must be an nn.Module"),
    (lambda m: surgery.find(m, "re:("), PathSyntaxError, "bad regex"),
]


@pytest.fixture(scope="module")
def real_resnet18() -> nn.Module:
    return build("resnet18", meta=False)


@pytest.mark.parametrize(("op", "error", "message"), FAILURES)
def test_failed_operations_leave_the_model_unchanged(real_resnet18, op, error, message) -> None:
    m = copy.deepcopy(real_resnet18)
    m.layer1.eval()
    m.layer2[0].conv1.weight.requires_grad_(False)
    before = snapshot(m)
    with pytest.raises(error, match=message):
        op(m)
    assert_unchanged(m, before)


def test_shared_module_edit_applies_to_every_path_with_one_warning() -> None:
    shared = nn.Linear(2, 2)
    model = nn.Sequential(OrderedDict(a=shared, b=nn.ReLU(), c=shared))
    with pytest.warns(SharedModuleWarning, match="also reachable at 'c'") as record:
        assert surgery.replace(model, "a", nn.Tanh()) is shared
    assert len(record) == 1
    assert isinstance(model.a, nn.Tanh) and model.a is model.c
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        surgery.replace(model, "b", nn.GELU())  # not shared: no warning


def test_tree_marks_shared_modules_and_counts_once() -> None:
    shared = nn.Linear(2, 2)
    model = nn.Sequential(OrderedDict(a=shared, c=shared))
    t = surgery.tree(model)
    assert t.total == 6
    assert t.rows[1].shared_with == ("c",)
    assert "shared: c" in str(t)
