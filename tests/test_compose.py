"""take / compose: the seed hybrids, sharing rules, junction checks, atomic failures."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import surgery


@functools.cache
def vgg16_bn() -> nn.Module:
    return torchvision.models.vgg16_bn(weights=None)


@functools.cache
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None)


def n_params(m: nn.Module, trainable: bool | None = None) -> int:
    return sum(
        p.numel() for p in m.parameters() if trainable is None or p.requires_grad == trainable
    )


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "modes": [(n, m.training) for n, m in model.named_modules()],
        "ids": [(n, id(m)) for n, m in model.named_modules()],
        "devices": {p.device.type for p in model.parameters()},
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for key in ("grad", "modes", "ids", "devices"):
        assert after[key] == before[key], key
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k


def mynet1(**kw: object) -> nn.Sequential:
    return surgery.compose(
        conv1=nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU()),
        block2=(vgg16_bn(), "features[7:14]"),
        block3=(resnet18(), "layer3"),
        avgpool=(resnet18(), "avgpool"),
        flatten=nn.Flatten(),
        fc=nn.Linear(256, 10),
        **kw,  # type: ignore[arg-type]
    )


def vgg_block(cin: int, cout: int, n: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [
            nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        ]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


# --------------------------------------------------------------------------- seed tables


def test_mynet1() -> None:
    net = mynet1(input_size=(10, 1, 32, 32))
    assert list(dict(net.named_children())) == [
        "conv1",
        "block2",
        "block3",
        "avgpool",
        "flatten",
        "fc",
    ]
    assert n_params(net) == 2_325_002
    assert net(torch.randn(10, 1, 32, 32)).shape == (10, 10)


def test_mynet_pretrained() -> None:
    pretrained = torchvision.models.resnet18(weights=None)  # stands in for pretrained weights
    fresh = torchvision.models.resnet18(weights=None)
    net = surgery.compose(
        conv1=(pretrained, "conv1"),
        bn1=(pretrained, "bn1"),
        relu=(pretrained, "relu"),
        maxpool=(pretrained, "maxpool"),
        layer1=(pretrained, "layer1"),
        layer2=(pretrained, "layer2"),
        layer3=(fresh, "layer3"),
        layer4=(fresh, "layer4"),
        avgpool=(fresh, "avgpool"),
        flatten=nn.Flatten(),
        fc=nn.Linear(512, 10),
        input_size=(10, 3, 224, 224),
    )
    surgery.freeze(net, "conv1", "bn1", "layer1", "layer2")
    assert (n_params(net), n_params(net, True), n_params(net, False)) == (
        11_181_642,
        10_498_570,
        683_072,
    )
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert all(p.requires_grad for p in pretrained.parameters())  # the source is untouched
    assert torch.equal(net.layer2[0].conv1.weight, pretrained.layer2[0].conv1.weight)


def test_mynet2() -> None:
    net = surgery.compose(
        block1=vgg_block(1, 48, 1),
        block2=vgg_block(48, 96, 1),
        block3=vgg_block(96, 192, 3),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        fc1=nn.Linear(192, 256),
        relu=nn.ReLU(),
        dropout=nn.Dropout(0.5),
        fc2=nn.Linear(256, 10),
        input_size=(10, 1, 32, 32),
    )
    assert n_params(net) == 925_482
    assert net.eval()(torch.randn(10, 1, 32, 32)).shape == (10, 10)


# --------------------------------------------------------------------------- sharing


def test_two_hybrids_from_one_source_share_no_parameter() -> None:
    a, b = mynet1(), mynet1()
    src = [*vgg16_bn().parameters(), *resnet18().parameters()]
    ptrs = {p.data_ptr() for p in src}
    pa, pb = list(a.parameters()), list(b.parameters())
    assert not {id(p) for p in pa} & {id(p) for p in pb}
    assert not {p.data_ptr() for p in pa} & {p.data_ptr() for p in pb}
    assert not ({p.data_ptr() for p in pa} | {p.data_ptr() for p in pb}) & ptrs
    with torch.no_grad():
        a.block3[0].conv1.weight.add_(1.0)
    assert not torch.equal(a.block3[0].conv1.weight, b.block3[0].conv1.weight)
    assert torch.equal(b.block3[0].conv1.weight, resnet18().layer3[0].conv1.weight)


def test_the_same_block_taken_twice_gives_two_blocks() -> None:
    net = surgery.compose(a=(resnet18(), "layer1"), b=(resnet18(), "layer1"))
    assert net.a is not net.b
    assert net.a[0].conv1.weight is not net.b[0].conv1.weight


def test_copy_false_shares_on_purpose() -> None:
    net = surgery.compose(block3=(resnet18(), "layer3"), copy=False)
    assert net.block3 is resnet18().layer3
    fc = nn.Linear(256, 10)
    assert surgery.compose(fc=fc).fc is fc  # modules given directly are used as they are


def test_take_copies_by_default() -> None:
    model = resnet18()
    block = surgery.take(model, "layer2.0")
    assert type(block).__name__ == "BasicBlock"
    assert block.conv1.weight is not model.layer2[0].conv1.weight
    assert torch.equal(block.conv1.weight, model.layer2[0].conv1.weight)
    assert surgery.take(model, "layer2.0", copy=False) is model.layer2[0]
    sliced = surgery.take(vgg16_bn(), "features[7:14]")
    assert type(sliced) is nn.Sequential and len(sliced) == 7
    assert sliced[0].weight is not vgg16_bn().features[7].weight


def test_take_keeps_modes_and_requires_grad() -> None:
    model = torchvision.models.resnet18(weights=None)
    model.layer1.eval()
    model.layer1[0].conv1.weight.requires_grad_(False)
    part = surgery.take(model, "layer1")
    assert not part.training and not part[0].conv1.weight.requires_grad
    assert part[0].conv2.weight.requires_grad


@settings(max_examples=10)
@given(data=st.data())
def test_take_equals_get_without_sharing(data: st.DataObject) -> None:
    model = resnet18()
    path = data.draw(st.sampled_from([n for n, m in model.named_modules() if n]))
    taken, original = surgery.take(model, path), surgery.get(model, path)
    assert type(taken) is type(original)
    a, b = taken.state_dict(), original.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k])
        assert a[k].data_ptr() != b[k].data_ptr() or not a[k].numel()


# --------------------------------------------------------------------------- junctions


def test_shape_mismatch_names_the_junction_and_both_sides() -> None:
    with pytest.raises(surgery.ShapeMismatchError) as info:
        surgery.compose(
            conv1=nn.Conv2d(1, 64, 3, padding=1),
            block2=(vgg16_bn(), "features[7:14]"),
            block3=(resnet18(), "layer2"),
            input_size=(10, 1, 32, 32),
        )
    assert str(info.value) == (
        "compose: parts do not fit at 'block2 -> block3': 'block2' produces (10, 128, 16, 16), "
        "but 'block3' expects 64 input channels (Conv2d in_channels=64) (its layer '0.conv1' "
        "received (10, 128, 16, 16))\n"
        "  fix: insert an adapter between them, e.g. compose(block2=..., adapt=nn.Conv2d(128, 64, 1), "
        "block3=...), or make 'block3' take 128 channels"
    )


def test_shape_mismatch_at_a_linear_layer() -> None:
    with pytest.raises(
        surgery.ShapeMismatchError,
        match=r"(?s)'pool -> fc': 'pool' produces \(2, 512, 1, 1\), but 'fc' expects last dimension 256 "
        r"\(Linear in_features=256\).*flatten=nn.Flatten\(\) before 'fc'",
    ):
        surgery.compose(
            layer4=(resnet18(), "layer4"),
            pool=nn.AdaptiveAvgPool2d(1),
            fc=nn.Linear(256, 10),
            input_size=(2, 256, 8, 8),
        )


def test_shape_mismatch_at_the_input() -> None:
    with pytest.raises(
        surgery.ShapeMismatchError,
        match=r"'input -> block3': the input is \(2, 3, 32, 32\), but 'block3' expects 128 input channels",
    ):
        surgery.compose(block3=(resnet18(), "layer3"), input_size=(2, 3, 32, 32))


def test_junction_check_never_touches_the_callers_modules() -> None:
    fc = nn.Linear(256, 10).train()
    before = snapshot(fc)
    net = mynet1(input_size=[(4, 1, 32, 32)])
    assert {p.device.type for p in net.parameters()} == {"cpu"}
    surgery.compose(fc=fc, input_size=(3, 256))
    assert_unchanged(fc, before)


# --------------------------------------------------------------------------- failures


def test_bad_part_leaves_every_model_unchanged() -> None:
    vgg, res = vgg16_bn(), resnet18()
    before = [snapshot(vgg), snapshot(res)]
    with pytest.raises(
        surgery.PathNotFoundError,
        match=r"(?s)^compose: part 'block3': no module at 'layer9'.*did you mean",
    ):
        surgery.compose(block2=(vgg, "features[7:14]"), block3=(res, "layer9"))
    with pytest.raises(surgery.PathSyntaxError):
        surgery.compose(block2=(vgg, "features[7:"))
    assert_unchanged(vgg, before[0])
    assert_unchanged(res, before[1])


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ({}, r"compose\(\) needs at least one part"),
        ({"a": 3}, r"part 'a' is a int; a part is an nn.Module or a \(model, path\) pair"),
        (
            {"a": ("layer3", nn.Linear(2, 2))},
            r"part 'a': the first item of the pair must be an nn.Module, got str",
        ),
        (
            {"a": (nn.Linear(2, 2), 3)},
            r"part 'a': the second item of the pair must be a path string, got int",
        ),
        ({"a": (nn.Linear(2, 2), "", "x")}, r"part 'a' is a tuple"),
        ({"forward": nn.ReLU()}, r"part name 'forward' cannot name a child"),
        ({"a.b": nn.ReLU()}, r"part name 'a.b' cannot name a child"),
    ],
)
def test_invalid_parts(parts: dict, message: str) -> None:
    with pytest.raises(surgery.ArgumentError, match=message):
        surgery.compose(**parts)


def test_invalid_options() -> None:
    with pytest.raises(surgery.ArgumentError, match="copy must be True or False"):
        surgery.compose(a=nn.ReLU(), copy=None)  # type: ignore[arg-type]
    with pytest.raises(surgery.ArgumentError, match="input_size must be a tuple of ints"):
        surgery.compose(a=nn.ReLU(), input_size="224")
    with pytest.raises(surgery.ArgumentError, match="copy must be True or False"):
        surgery.take(resnet18(), "fc", copy=1)  # type: ignore[arg-type]
