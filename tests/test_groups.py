"""layer_groups / param_groups: fastai's semantics, validation, optimizers and schedulers."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import surgery
from surgery.train._groups import lr_per_group

SPLIT = ["layer3", "fc"]


@pytest.fixture(scope="module")
def meta_resnet() -> nn.Module:
    with torch.device("meta"):
        return torchvision.models.resnet18(weights=None)


@pytest.fixture
def resnet(meta_resnet: nn.Module) -> nn.Module:
    return copy.deepcopy(meta_resnet)


def names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


# ---------------------------------------------------------------------------
# layer_groups
# ---------------------------------------------------------------------------


def test_resnet18_issue_example(resnet: nn.Module) -> None:
    groups = surgery.layer_groups(resnet, SPLIT)
    assert [g[0] for g in groups] == ["conv1.weight", "layer3.0.conv1.weight", "fc.weight"]
    assert groups[0][-1] == "layer2.1.bn2.bias"
    assert groups[1][-1] == "layer4.1.bn2.bias"
    assert groups[2] == ["fc.weight", "fc.bias"]
    assert [n for g in groups for n in g] == names(resnet)


def test_no_split_is_one_group(resnet: nn.Module) -> None:
    assert surgery.layer_groups(resnet, []) == [names(resnet)]
    assert surgery.layer_groups(resnet, None) == [names(resnet)]
    assert surgery.layer_groups(resnet, "fc")[1] == ["fc.weight", "fc.bias"]  # one str = one path


def test_glob_starts_a_group_per_match(resnet: nn.Module) -> None:
    groups = surgery.layer_groups(resnet, ["layer*"])
    assert [g[0] for g in groups] == [
        "conv1.weight",
        "layer1.0.conv1.weight",
        "layer2.0.conv1.weight",
        "layer3.0.conv1.weight",
        "layer4.0.conv1.weight",
    ]
    assert groups[-1][-2:] == ["fc.weight", "fc.bias"]


def test_slice_path_starts_one_group() -> None:
    with torch.device("meta"):
        vgg = torchvision.models.vgg11_bn(weights=None)
    groups = surgery.layer_groups(vgg, ["features[8:]", "classifier"])
    assert len(groups) == 3
    assert groups[1][0] == "features.8.weight"
    assert groups[2][0] == "classifier.0.weight"


def test_shared_parameter_counted_where_it_first_appears() -> None:
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied
    model = nn.Sequential()
    model.add_module("emb", emb)
    model.add_module("mid", nn.Linear(4, 4))
    model.add_module("head", head)
    with pytest.raises(surgery.ArgumentError, match="'head' has no parameters of its own"):
        surgery.layer_groups(model, ["mid", "head"])
    groups = surgery.layer_groups(model, ["mid"])
    assert groups == [["emb.weight"], ["mid.weight", "mid.bias"]]
    assert sum(len(g) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize(
    ("split_at", "error", "match"),
    [
        (["layer9"], surgery.PathNotFoundError, r"no module at 'layer9'.*"),
        (
            ["fc", "layer3"],
            surgery.ArgumentError,
            r"out of order: 'layer3' .* does not come after 'fc'",
        ),
        (["layer3", "layer3"], surgery.ArgumentError, r"out of order"),
        (["layer3", "layer3.0.conv1"], surgery.ArgumentError, r"out of order"),
        (["relu"], surgery.ArgumentError, r"'relu' has no parameters of its own"),
        (
            ["conv1"],
            surgery.ArgumentError,
            r"'conv1' starts at the first parameter .* would be empty",
        ),
        (["relu*"], surgery.ArgumentError, r"matches only modules without parameters"),
        ([3], surgery.ArgumentError, r"split_at must hold module paths \(str\), got int 3"),
        (3, surgery.ArgumentError, r"split_at must be a list of module paths"),
    ],
)
def test_split_errors(resnet: nn.Module, split_at: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        surgery.layer_groups(resnet, split_at)  # type: ignore[arg-type]


@settings(max_examples=25)
@given(st.integers(2, 12).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(1, n - 1)))))
def test_groups_partition_parameters(case: tuple[int, set[int]]) -> None:
    n, cuts = case
    model = nn.Sequential(*[nn.Linear(2, 2, bias=i % 2 == 0) for i in range(n)])
    split = [str(i) for i in sorted(cuts)]
    groups = surgery.layer_groups(model, split)
    assert len(groups) == len(cuts) + 1
    assert all(groups)
    assert [n for g in groups for n in g] == names(
        model
    )  # consecutive, each parameter exactly once
    assert [g[0].split(".")[0] for g in groups[1:]] == split


# ---------------------------------------------------------------------------
# learning rates: fastai's semantics
# ---------------------------------------------------------------------------


def fastai_even_mults(start: float, stop: float, n: int) -> list[float]:
    """fastai.torch_core.even_mults, for the differential test."""
    mult = stop / start
    step = mult ** (1 / (n - 1))
    return [start * (step**i) for i in range(n)]


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_slice_rates_match_fastai(n: int) -> None:
    assert lr_per_group(slice(1e-6, 1e-3), n) == fastai_even_mults(1e-6, 1e-3, n)
    assert lr_per_group(slice(1e-3), n) == [1e-4] * (n - 1) + [1e-3]
    assert lr_per_group(3e-4, n) == [3e-4] * n


def test_one_group_rates() -> None:
    assert lr_per_group(slice(1e-5, 1e-3), 1) == [1e-3]
    assert lr_per_group(slice(1e-3), 1) == [1e-3]


@pytest.mark.parametrize(
    ("lr", "match"),
    [
        ([1e-3, 1e-2], r"lr has 2 rates but there are 3 layer groups"),
        ([1e-3] * 4, r"lr has 4 rates but there are 3 layer groups"),
        (slice(1e-5, 1e-3, 2), r"takes no step"),
        (slice(0, 1e-3), r"geometric rates need lo > 0.*lr=slice\(0\.001\)"),
        (slice(1e-3, 0), r"stop of lr=slice\(lo, hi\) must be a finite number > 0"),
        (-1.0, r"lr must be a finite number >= 0, got -1\.0"),
        (float("nan"), r"lr must be a finite number"),
        ("1e-3", r"lr must be a number, got str"),
        (True, r"lr must be a number, got bool"),
        ([1e-3, "x", 1e-2], r"lr\[1\] must be a number"),
    ],
)
def test_bad_rates(resnet: nn.Module, lr: object, match: str) -> None:
    with pytest.raises(surgery.ArgumentError, match=match):
        surgery.param_groups(resnet, lr, split_at=SPLIT)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# param_groups
# ---------------------------------------------------------------------------


@pytest.fixture
def small() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=4)


def test_param_groups_rates_and_contents(small: nn.Module) -> None:
    groups = surgery.param_groups(small, slice(1e-5, 1e-3), split_at=SPLIT)
    assert [g["lr"] for g in groups] == pytest.approx([1e-5, 1e-4, 1e-3])
    assert all(set(g) == {"params", "lr"} for g in groups)
    layer = surgery.layer_groups(small, SPLIT)
    params = dict(small.named_parameters())
    for g, nm in zip(groups, layer):
        assert [id(p) for p in g["params"]] == [id(params[n]) for n in nm]
    seq = surgery.param_groups(small, [1.0, 2.0, 3.0], split_at=SPLIT, weight_decay=0.05)
    assert [g["lr"] for g in seq] == [1.0, 2.0, 3.0]
    assert all(g["weight_decay"] == 0.05 for g in seq)


def test_layer_decay(small: nn.Module) -> None:
    groups = surgery.param_groups(small, 1e-3, split_at=["layer*", "fc"], layer_decay=0.5)
    n = 6
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 * 0.5 ** (n - 1 - i) for i in range(n)])
    with pytest.raises(surgery.ArgumentError, match=r"layer_decay scales a single rate.*lr=slice"):
        surgery.param_groups(small, slice(1e-3), split_at=SPLIT, layer_decay=0.5)
    with pytest.raises(surgery.ArgumentError, match=r"layer_decay must be a finite number > 0"):
        surgery.param_groups(small, 1e-3, split_at=SPLIT, layer_decay=0)


def test_frozen_parameters_and_groups_left_out(small: nn.Module) -> None:
    surgery.freeze_to(small, 1, split_at=SPLIT)
    surgery.freeze(small, "fc.bias")
    groups = surgery.param_groups(small, 1e-3, split_at=SPLIT, layer_decay=0.1)
    # the frozen first group is dropped, but still counts in n for layer_decay
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3])
    assert all(p.requires_grad for g in groups for p in g["params"])
    assert [len(g["params"]) for g in groups] == [30, 1]
    with pytest.raises(surgery.ArgumentError, match=r"lr has 2 rates but there are 3"):
        surgery.param_groups(small, [1e-4, 1e-3], split_at=SPLIT)
    surgery.freeze(small)
    with pytest.raises(surgery.ArgumentError, match="every parameter of ResNet is frozen"):
        surgery.param_groups(small, 1e-3, split_at=SPLIT)


def test_optimizers_and_step_lr_scale_every_group(small: nn.Module) -> None:
    groups = surgery.param_groups(small, slice(1e-4, 1e-2), split_at=SPLIT)
    opt = torch.optim.SGD(groups, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    start = [g["lr"] for g in opt.param_groups]
    small.train()
    small(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([x * 0.1 for x in start])
    for cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop):
        cls(surgery.param_groups(small, 1e-3, split_at=SPLIT, weight_decay=0.01))


def test_discriminative_rates_drive_updates(small: nn.Module) -> None:
    """With SGD, each group moves by exactly its own rate times its gradient."""
    groups = surgery.param_groups(small, [0.0, 0.0, 0.5], split_at=SPLIT)
    opt = torch.optim.SGD(groups)
    before = {n: p.detach().clone() for n, p in small.named_parameters()}
    small.eval()
    small(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    for n, p in small.named_parameters():
        if n.startswith("fc."):
            torch.testing.assert_close(p, before[n] - 0.5 * p.grad)
        else:
            assert torch.equal(p, before[n])
