"""freeze / unfreeze / freeze_to / trainable: paths, globs, BatchNorm policies, atomicity."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import surgery
from surgery import FrozenBatchNormNd
from surgery.train._batchnorm import bn_policy
from tests.snapshot import assert_unchanged, snapshot

SPLIT = ["layer3", "fc"]


@pytest.fixture(scope="module")
def _resnet() -> nn.Module:
    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None, num_classes=10)
    # non-trivial statistics, so that "unchanged" means something
    with torch.no_grad():
        m.train()(torch.randn(8, 3, 32, 32))
    return m.eval()


@pytest.fixture
def resnet(_resnet: nn.Module) -> nn.Module:
    return copy.deepcopy(_resnet)


def flags(model: nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------
# selecting what to freeze
# ---------------------------------------------------------------------------


def test_freeze_path_freezes_every_parameter_under_it(resnet: nn.Module) -> None:
    out = surgery.freeze(resnet, "layer1")
    assert out is resnet
    for name, flag in flags(resnet).items():
        assert flag == (not name.startswith("layer1.")), name


def test_freeze_whole_model_then_unfreeze_one_path(resnet: nn.Module) -> None:
    surgery.freeze(resnet)
    assert not any(flags(resnet).values())
    surgery.unfreeze(resnet, "fc")
    assert [n for n, f in flags(resnet).items() if f] == ["fc.weight", "fc.bias"]


def test_freeze_glob_and_several_patterns(resnet: nn.Module) -> None:
    surgery.freeze(resnet, "layer*.*.bn?", "conv1")
    frozen = sorted(n for n, f in flags(resnet).items() if not f)
    assert len(frozen) == 1 + 2 * 16  # conv1 + 16 block BNs (weight, bias)
    assert "layer2.0.downsample.1.weight" not in frozen  # not matched by bn?
    assert all(
        bn_policy(resnet.get_submodule(n[: n.rindex(".")])) == "eval" for n in frozen if "bn" in n
    )


def test_freeze_accepts_a_list_of_patterns(resnet: nn.Module) -> None:
    surgery.freeze(resnet, ["layer1", "layer2"])
    frozen = {n.split(".")[0] for n, f in flags(resnet).items() if not f}
    assert frozen == {"layer1", "layer2"}


def test_freeze_slice_of_sequential() -> None:
    with torch.device("meta"):
        m = torchvision.models.vgg11_bn(weights=None)
    surgery.freeze(m, "features[0:4]")
    assert flags(m)["features.0.weight"] is False and flags(m)["features.1.weight"] is False
    assert flags(m)["features.4.weight"] is True
    assert bn_policy(m.features[1]) == "eval" and bn_policy(m.features[5]) == "train"


def test_freeze_parameters_by_name_and_glob(resnet: nn.Module) -> None:
    surgery.freeze(resnet, "fc.bias")
    assert [n for n, f in flags(resnet).items() if not f] == ["fc.bias"]
    surgery.unfreeze(resnet)
    surgery.freeze(resnet, "**.bias")
    frozen = [n for n, f in flags(resnet).items() if not f]
    assert frozen and all(n.endswith(".bias") for n in frozen)
    assert len(frozen) == sum(1 for n, _ in resnet.named_parameters() if n.endswith(".bias"))
    # a parameter pattern sets no BatchNorm policy
    assert not any(h for m in resnet.modules() for h in m._forward_pre_hooks.values())


def test_unknown_path_leaves_model_untouched(resnet: nn.Module) -> None:
    before = snapshot(resnet)
    with pytest.raises(
        surgery.PathNotFoundError, match=r"'layer9'.*\n.*children there.*\n.*did you mean 'layer4'"
    ):
        surgery.freeze(resnet, "layer1", "layer9")
    assert_unchanged(resnet, before)
    with pytest.raises(surgery.PathNotFoundError):
        surgery.unfreeze(resnet, "fc", "nope.*")
    assert_unchanged(resnet, before)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bn": "sometimes"}, r"bn must be one of 'eval'.*'train'.*'frozen'.*got 'sometimes'"),
        ({"bn": None}, r"bn must be one of .* got None"),
    ],
)
def test_bad_bn_policy(resnet: nn.Module, kwargs: dict, match: str) -> None:
    before = snapshot(resnet)
    with pytest.raises(surgery.ArgumentError, match=match):
        surgery.freeze(resnet, "layer1", **kwargs)
    assert_unchanged(resnet, before)


def test_not_a_module() -> None:
    with pytest.raises(surgery.ArgumentError, match=r"freeze expects an nn\.Module, got dict"):
        surgery.freeze({}, "x")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# BatchNorm statistics and optimizer steps
# ---------------------------------------------------------------------------


def _train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    model.train()
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()


def test_bn_eval_statistics_and_frozen_weights_bit_for_bit(resnet: nn.Module) -> None:
    surgery.freeze(resnet, bn="eval")
    surgery.unfreeze(resnet, "fc")
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    groups = surgery.param_groups(resnet, 1e-2, split_at=SPLIT, weight_decay=0.1)
    opt = torch.optim.AdamW(groups)
    for _ in range(2):
        _train_step(resnet, opt)  # model.train(), forward, backward, AdamW step with decay
    after = resnet.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["fc.bias", "fc.weight"]


def test_frozen_weights_unchanged_even_with_all_parameters_in_adamw(resnet: nn.Module) -> None:
    surgery.freeze(resnet, "layer1", "layer2")
    before = {k: v.clone() for k, v in resnet.state_dict().items() if k.startswith("layer1")}
    opt = torch.optim.AdamW(resnet.parameters(), lr=1e-2, weight_decay=0.5)
    _train_step(resnet, opt)
    assert all(torch.equal(v, resnet.state_dict()[k]) for k, v in before.items())


def test_bn_train_policy_keeps_updating_statistics(resnet: nn.Module) -> None:
    surgery.freeze(resnet, "layer1", bn="train")
    mean = resnet.layer1[0].bn1.running_mean.clone()
    weight = resnet.layer1[0].bn1.weight.clone()
    opt = torch.optim.SGD(surgery.param_groups(resnet, 0.1, split_at=[]))
    _train_step(resnet, opt)
    assert not torch.equal(mean, resnet.layer1[0].bn1.running_mean)
    assert torch.equal(weight, resnet.layer1[0].bn1.weight)
    assert bn_policy(resnet.layer1[0].bn1) == "train"


def test_eval_policy_survives_parent_train_and_unfreeze_restores_mode(resnet: nn.Module) -> None:
    surgery.freeze(resnet, "layer1")
    bn = resnet.layer1[0].bn1
    assert bn.training is False
    resnet.train()
    mean = bn.running_mean.clone()
    resnet(torch.randn(2, 3, 32, 32))
    assert torch.equal(mean, bn.running_mean)
    assert resnet.layer1[0].bn2.training is False
    surgery.unfreeze(resnet, "layer1")
    assert bn.training is True and len(bn._forward_pre_hooks) == 0
    resnet(torch.randn(2, 3, 32, 32))
    assert not torch.equal(mean, bn.running_mean)


def test_policy_survives_deepcopy_and_pickle(resnet: nn.Module) -> None:
    surgery.freeze(resnet, "layer1")
    for twin in (copy.deepcopy(resnet), pickle.loads(pickle.dumps(resnet))):
        bn = twin.layer1[0].bn1
        mean = bn.running_mean.clone()
        twin.train()(torch.randn(2, 3, 32, 32))
        assert torch.equal(mean, bn.running_mean)
        assert bn_policy(bn) == "eval"


def test_bn_frozen_converts_and_unfreeze_converts_back(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    originals = {n: m for n, m in resnet.named_modules() if isinstance(m, nn.BatchNorm2d)}
    weights = {n: m.weight for n, m in originals.items()}
    with torch.no_grad():
        expected = resnet.eval()(x)
    surgery.freeze(resnet, bn="frozen")
    assert all(type(resnet.get_submodule(n)) is FrozenBatchNorm2d for n in originals)
    resnet.train()
    with torch.no_grad():
        torch.testing.assert_close(resnet(x), expected, rtol=1e-4, atol=1e-5)
    surgery.unfreeze(resnet)
    for n, m in originals.items():
        restored = resnet.get_submodule(n)
        assert restored is m and restored.weight is weights[n]
        assert restored.weight.requires_grad and restored.training
        assert restored.num_batches_tracked.dtype == torch.long
    with torch.no_grad():
        torch.testing.assert_close(resnet.eval()(x), expected)


def test_refreeze_frozen_with_eval_restores_original_frozen(resnet: nn.Module) -> None:
    bn = resnet.layer2[0].bn1
    surgery.freeze(resnet, "layer2", bn="frozen")
    surgery.freeze(resnet, "layer2", bn="eval")
    assert resnet.layer2[0].bn1 is bn
    assert bn.weight.requires_grad is False and bn_policy(bn) == "eval"


def test_frozen_state_dict_round_trip(resnet: nn.Module) -> None:
    fresh = torchvision.models.resnet18(weights=None, num_classes=10)
    surgery.freeze(fresh, bn="frozen")
    fresh.load_state_dict(resnet.state_dict())  # num_batches_tracked is dropped
    surgery.unfreeze(fresh)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), resnet.eval()(x))


@pytest.mark.parametrize(
    ("bn", "x"),
    [
        (nn.BatchNorm1d(6), torch.randn(5, 6)),
        (nn.BatchNorm1d(6), torch.randn(5, 6, 7)),
        (nn.BatchNorm3d(6), torch.randn(2, 6, 3, 4, 5)),
    ],
)
def test_bn_frozen_1d_3d(bn: nn.Module, x: torch.Tensor) -> None:
    model = nn.Sequential(bn)
    bn.train()(x * 3 + 1)
    with torch.no_grad():
        expected = model.eval()(x)
    surgery.freeze(model, bn="frozen")
    assert type(model[0]) is FrozenBatchNormNd
    with torch.no_grad():
        torch.testing.assert_close(model.train()(x), expected, rtol=1e-5, atol=1e-5)
    surgery.unfreeze(model)
    assert model[0] is bn


def test_bn_frozen_timm_bn_act() -> None:
    from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d

    model = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4))
    x = torch.randn(2, 3, 8, 8)
    model.train()(x)
    with torch.no_grad():
        expected = model.eval()(x)
    surgery.freeze(model, bn="frozen")
    assert type(model[1]) is FrozenBatchNormAct2d
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    surgery.unfreeze(model)
    assert type(model[1]) is BatchNormAct2d


def test_bn_frozen_refuses_without_statistics_and_custom_forward() -> None:
    class MyBN(nn.BatchNorm2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.BatchNorm2d(4, track_running_stats=False)
    )
    before = snapshot(model)
    with pytest.raises(surgery.ArgumentError, match=r"(?s)'2' .*no running statistics.*bn='eval'"):
        surgery.freeze(model, bn="frozen")
    assert_unchanged(model, before)
    custom = nn.Sequential(MyBN(4))
    with pytest.raises(surgery.ArgumentError, match=r"(?s)MyBN has its own forward.*bn='eval'"):
        surgery.freeze(custom, bn="frozen")
    surgery.freeze(custom, bn="eval")  # eval works for any BatchNorm
    assert bn_policy(custom[0]) == "eval"


def test_bn_frozen_root_is_refused() -> None:
    bn = nn.BatchNorm2d(3)
    with pytest.raises(surgery.ArgumentError, match=r"root module .* bn='eval'"):
        surgery.freeze(bn, bn="frozen")
    assert bn.weight.requires_grad


def test_shared_bn_converted_at_every_path() -> None:
    bn = nn.BatchNorm2d(3)
    model = nn.Sequential(bn, nn.ReLU(), bn)
    before = snapshot(model)
    with pytest.raises(surgery.ArgumentError, match=r"'0' is also reachable at '2'"):
        surgery.freeze(model, bn="frozen", aliases="error")
    assert_unchanged(model, before)
    with pytest.warns(surgery.SharedModuleWarning, match=r"'0' is also reachable at '2'") as rec:
        surgery.freeze(model, bn="frozen")
    assert len(rec) == 1
    assert model[0] is model[2] and type(model[0]) is FrozenBatchNorm2d
    with pytest.warns(surgery.SharedModuleWarning, match=r"'0' is also reachable at '2'"):
        surgery.unfreeze(model)
    assert model[0] is bn and model[2] is bn


def test_freeze_on_meta_device() -> None:
    with torch.device("meta"):
        m = torchvision.models.resnet18(weights=None)
    surgery.freeze(m, "layer1", bn="frozen")
    assert type(m.layer1[0].bn1) is FrozenBatchNorm2d
    assert m.layer1[0].bn1.running_mean.device.type == "meta"


# ---------------------------------------------------------------------------
# freeze_to
# ---------------------------------------------------------------------------


def test_freeze_to_last_group(resnet: nn.Module) -> None:
    surgery.freeze_to(resnet, -1, split_at=SPLIT)
    assert [n for n, f in flags(resnet).items() if f] == ["fc.weight", "fc.bias"]
    assert bn_policy(resnet.layer4[1].bn2) == "eval"


def test_freeze_to_semantics(resnet: nn.Module) -> None:
    groups = surgery.layer_groups(resnet, SPLIT)
    for n in (0, 1, 2, -1, -2, -3):
        surgery.freeze_to(resnet, n, split_at=SPLIT)
        k = n % 3
        frozen = {name for g in groups[:k] for name in g}
        assert {name for name, f in flags(resnet).items() if not f} == frozen
        assert bn_policy(resnet.bn1) == ("eval" if k >= 1 else "train")
        assert bn_policy(resnet.layer3[0].bn1) == ("eval" if k >= 2 else "train")


def test_freeze_to_frozen_bn_then_back(resnet: nn.Module) -> None:
    surgery.freeze_to(resnet, -1, split_at=SPLIT, bn="frozen")
    assert type(resnet.layer4[0].bn1) is FrozenBatchNorm2d
    surgery.freeze_to(resnet, 1, split_at=SPLIT, bn="frozen")
    assert type(resnet.layer3[0].bn1) is nn.BatchNorm2d
    assert resnet.layer3[0].bn1.weight.requires_grad
    assert type(resnet.layer2[0].bn1) is FrozenBatchNorm2d
    surgery.freeze_to(resnet, 0, split_at=SPLIT)
    assert all(flags(resnet).values())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in resnet.modules())


@pytest.mark.parametrize(
    ("n", "split_at", "match"),
    [
        (3, SPLIT, r"n=3 is out of range for 3 layer groups: use 0\.\.2 or -3\.\.-1"),
        (-4, SPLIT, r"n=-4 is out of range"),
        (0, [], r"at least two layer groups.*gives 1"),
        (True, SPLIT, r"n must be an int"),
        (1.0, SPLIT, r"n must be an int"),
        (1, ["fc", "layer3"], r"out of order"),
    ],
)
def test_freeze_to_errors(resnet: nn.Module, n: object, split_at: list, match: str) -> None:
    before = snapshot(resnet)
    with pytest.raises(surgery.ArgumentError, match=match):
        surgery.freeze_to(resnet, n, split_at=split_at)  # type: ignore[arg-type]
    assert_unchanged(resnet, before)


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------


def test_trainable_report(resnet: nn.Module) -> None:
    surgery.freeze(resnet, "layer1", "bn1")
    surgery.freeze(resnet, "layer2", bn="frozen")
    report = surgery.trainable(resnet)
    assert report["layer1"].frozen == 147968 and report["layer1"].trainable == 0
    assert report["layer1"].bn == {"eval": 4}
    assert report["layer2"].bn == {"frozen": 5}
    assert report["layer3"].bn == {"train": 5} and report["layer3"].state == "trainable"
    assert report["relu"].state == "-"
    total = sum(p.numel() for p in resnet.parameters())
    assert report.trainable + report.frozen == total
    data = json.loads(report.to_json())
    assert data["frozen"] == report.frozen
    assert [r["name"] for r in data["rows"]][:2] == ["conv1", "bn1"]
    text = str(report)
    assert text.splitlines()[0].startswith("ResNet: ")
    assert "4 eval" in text and "5 frozen" in text
    with pytest.raises(surgery.ArgumentError, match=r"no row 'layer9'.*rows: conv1, bn1"):
        report["layer9"]


def test_trainable_counts_shared_and_root_parameters_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.a = nn.Linear(3, 3)
            self.b = nn.Sequential(self.a)

    m = Tied()
    report = surgery.trainable(m)
    assert [r.name for r in report.rows] == ["", "a", "b"]
    assert (report[""].trainable, report["a"].trainable, report["b"].trainable) == (3, 12, 0)
    assert "(root)" in str(report)


@settings(max_examples=10)
@given(st.sets(st.sampled_from(["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"])))
def test_freeze_unfreeze_round_trip(_resnet: nn.Module, names: set[str]) -> None:
    model = copy.deepcopy(_resnet)
    before = snapshot(model, values=False)
    surgery.freeze(model, *sorted(names))
    report = surgery.trainable(model)
    expected = (
        sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in names)
        if names
        else sum(p.numel() for p in model.parameters())
    )
    assert report.frozen == expected
    surgery.unfreeze(model, *sorted(names))
    assert_unchanged(model, before)
