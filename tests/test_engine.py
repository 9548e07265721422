"""The edit engine: dry runs, the alias policy, cycles, exactly-once, atomic commits, timm heads."""

from __future__ import annotations

import copy
import json
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest
import timm
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import surgery
from surgery import ArgumentError, EditPlan, SharedModuleWarning, SurgeryError
from surgery.edit._engine import Planner
from tests.snapshot import assert_unchanged, snapshot


def resnet() -> nn.Module:
    return torchvision.models.resnet18(weights=None)


def small() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)),
        nn.Flatten(),
        nn.LazyLinear(3),
    )


def shared_model() -> tuple[nn.Module, nn.Module]:
    """``a`` and ``c`` are one Linear; ``blocks.0`` and ``again`` one Sequential."""
    lin = nn.Linear(4, 4)
    block = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model = nn.Sequential(
        OrderedDict(a=lin, b=nn.ReLU(), c=lin, blocks=nn.ModuleList([block]), again=block)
    )
    return model, lin


# ----------------------------------------------------------------------------- dry runs

DRY_RUNS: list[tuple[str, Callable[[nn.Module], Any], list[tuple[str, str]], int]] = [
    # (name, call, [(action, path)], number of settings)
    (
        "replace",
        lambda m: surgery.replace(m, "fc", nn.Identity(), dry_run=True),
        [("replace", "fc")],
        0,
    ),
    ("delete", lambda m: surgery.delete(m, "layer4[0]", dry_run=True), [("delete", "layer4.0")], 0),
    (
        "delete-slice",
        lambda m: surgery.delete(m, "layer1[0:2]", dry_run=True),
        [("delete", "layer1.0"), ("delete", "layer1.1")],
        0,
    ),
    (
        "insert",
        lambda m: surgery.insert(m, "layer1[1]", nn.ReLU(), dry_run=True),
        [("insert", "layer1.1")],
        0,
    ),
    ("replace_head", lambda m: surgery.replace_head(m, 7, dry_run=True), [("replace", "fc")], 0),
    ("adapt_input", lambda m: surgery.adapt_input(m, 1, dry_run=True), [("replace", "conv1")], 0),
    ("freeze", lambda m: surgery.freeze(m, "layer1", dry_run=True), [], 12 + 4),
    (
        "freeze-frozen",
        lambda m: surgery.freeze(m, "layer1.0", bn="frozen", dry_run=True),
        [("replace", "layer1.0.bn1"), ("replace", "layer1.0.bn2")],
        6 + 2,
    ),
    ("unfreeze", lambda m: surgery.unfreeze(m, dry_run=True), [], 0),
    (
        "freeze_to",
        lambda m: surgery.freeze_to(m, -1, split_at=["layer4", "fc"], dry_run=True),
        [],
        60 + 20,
    ),
]


@pytest.mark.parametrize(
    ("name", "call", "edits", "n_settings"), DRY_RUNS, ids=[d[0] for d in DRY_RUNS]
)
def test_dry_run_returns_the_plan_and_changes_nothing(
    name: str, call: Callable[[nn.Module], Any], edits: list, n_settings: int
) -> None:
    m = resnet()
    m.layer2.register_forward_hook(lambda *a: None)
    before = snapshot(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = call(m)
    assert isinstance(plan, EditPlan)
    assert [(e.action, e.path) for e in plan.edits] == edits
    assert len(plan.settings) == n_settings
    assert_unchanged(m, before)
    data = plan.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["model_type"] == "ResNet" and data["op"] == name.split("-")[0]
    text = str(plan)
    assert text.startswith(f"{data['op']}(ResNet): {len(edits)} edit")
    for _, path in edits:
        assert path in text


def test_dry_run_of_freeze_describes_flips_and_policies() -> None:
    m = resnet()
    plan = surgery.freeze(m, "layer1.0", dry_run=True)
    flips = [(s.path, s.new) for s in plan.settings if s.attribute == "requires_grad"]
    assert flips[:2] == [("layer1.0.conv1.weight", False), ("layer1.0.bn1.weight", False)]
    policies = [(s.path, s.old, s.new) for s in plan.settings if s.attribute == "bn_policy"]
    assert policies == [("layer1.0.bn1", "train", "eval"), ("layer1.0.bn2", "train", "eval")]
    surgery.freeze(m, "layer1.0")
    assert surgery.freeze(m, "layer1.0", dry_run=True).settings == []  # already so: nothing
    plan = surgery.unfreeze(m, "layer1.0", dry_run=True)
    assert {s.new for s in plan.settings} == {True, "train"}
    assert not m.layer1[0].conv1.weight.requires_grad


def test_dry_run_plan_equals_the_committed_plan() -> None:
    m = resnet()
    plan = surgery.replace_head(m, 9, dry_run=True)
    new = plan.edits[0].new
    assert isinstance(new, nn.Linear) and new.out_features == 9 and m.fc.out_features == 1000
    surgery.replace_head(m, 9)
    assert m.fc.out_features == 9


def test_plan_table_and_json() -> None:
    m, lin = shared_model()
    plan = surgery.replace(m, "a", nn.Tanh(), dry_run=True)
    assert plan.edits[0].aliases == ("c",)
    assert plan.to_dict() == {
        "op": "replace",
        "model_type": "Sequential",
        "edits": [
            {"action": "replace", "path": "a", "old": "Linear", "new": "Tanh", "aliases": ["c"]}
        ],
        "settings": [],
    }
    assert str(plan).splitlines() == [
        "replace(Sequential): 1 edit, 0 settings",
        "  action   path  old     new   aliases",
        "  replace  a     Linear  Tanh  c",
    ]
    assert m.a is lin and m.c is lin


# ----------------------------------------------------------------------------- alias policy

ALIASED: list[tuple[str, Callable[..., Any], str, list[str]]] = [
    ("replace", lambda m, **kw: surgery.replace(m, "a", nn.Tanh(), **kw), "a", ["c"]),
    ("delete", lambda m, **kw: surgery.delete(m, "c", **kw), "c", ["a"]),
    (
        "replace-inside",
        lambda m, **kw: surgery.replace(m, "again.0", nn.Tanh(), **kw),
        "again.0",
        ["blocks.0.0"],
    ),
    (
        "insert",
        lambda m, **kw: surgery.insert(m, "again.1", nn.ReLU(), **kw),
        "blocks.0.1",
        ["again.1"],
    ),
    ("replace_head", lambda m, **kw: surgery.replace_head(m, 2, path="a", **kw), "a", ["c"]),
    (
        "freeze-frozen",
        lambda m, **kw: surgery.freeze(m, "again", bn="frozen", **kw),
        "again.1",
        ["blocks.0.1"],
    ),
]


@pytest.mark.parametrize(("name", "call", "path", "others"), ALIASED, ids=[a[0] for a in ALIASED])
def test_alias_policy_is_the_same_everywhere(
    name: str, call: Callable[..., Any], path: str, others: list[str]
) -> None:
    m, _ = shared_model()
    before = snapshot(m)
    with pytest.raises(ArgumentError, match="aliases='error'") as info:
        call(m, aliases="error")
    for p in [path, *others]:
        assert repr(p) in str(info.value)
    assert_unchanged(m, before)
    plan = call(m, dry_run=True)  # a dry run shows the aliases, warns nothing
    assert any(e.path == path and list(e.aliases) == others for e in plan.edits)
    with pytest.warns(SharedModuleWarning) as record:
        call(m)
    assert len(record) == 1
    message = str(record[0].message)
    assert all(repr(p) in message for p in [path, *others])
    assert record[0].filename == __file__  # points at the caller's line
    # every path sees the change: the paths still hold one object
    if name != "delete":
        assert m.get_submodule(path) is m.get_submodule(others[0])


def test_alias_edits_every_location() -> None:
    m, _ = shared_model()
    with pytest.warns(SharedModuleWarning):
        surgery.delete(m, "a")
    assert list(m._modules) == ["b", "blocks", "again"]  # both locations removed
    with pytest.warns(SharedModuleWarning):
        surgery.adapt_input(nn.Sequential(conv := nn.Conv2d(3, 3, 1), conv), 1)


def test_bad_aliases_value() -> None:
    m = resnet()
    before = snapshot(m)
    for call in (
        lambda: surgery.replace(m, "fc", nn.Identity(), aliases="ignore"),
        lambda: surgery.freeze(m, aliases=None),
        lambda: surgery.replace_head(m, 3, aliases="silent"),
    ):
        with pytest.raises(ArgumentError, match="aliases must be one of 'warn'"):
            call()
    assert_unchanged(m, before)


# ----------------------------------------------------------------------------- cycles


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: surgery.replace(m, "features.3", m), r"'features.3'.*the model itself"),
        (lambda m: surgery.replace(m, "features.3", nn.Sequential(m.features)), r"'features'"),
        (lambda m: surgery.insert(m, "features[0]", m.features), r"cycle"),
        (lambda m: surgery.replace(m, "features.3", m.classifier), r"nothing"),
    ],
    ids=["self", "ancestor-inside", "insert-container", "no-cycle"],
)
def test_cycles_are_refused(call: Callable[[nn.Module], Any], match: str) -> None:
    m = torchvision.models.vgg11(weights=None)
    before = snapshot(m)
    if match == "nothing":  # a sibling is no cycle (it becomes shared): allowed
        call(m)
        assert m.features[3] is m.classifier
        return
    with pytest.raises(ArgumentError, match=match) as info:
        call(m)
    assert "cycle" in str(info.value) and info.value.op in ("replace", "insert")
    assert_unchanged(m, before)
    m.state_dict()  # still finite


# ----------------------------------------------------------------------------- exactly once


def test_each_object_is_edited_exactly_once() -> None:
    m, lin = shared_model()
    planner = Planner(m, "test")
    planner.replace(lin, nn.Tanh(), path="a")
    with pytest.raises(ArgumentError, match=r"'c' is the same module object as 'a'.*exactly once"):
        planner.replace(lin, nn.GELU(), path="c")


def test_an_edit_inside_another_edit_is_refused() -> None:
    m = resnet()
    planner = Planner(m, "test")
    planner.replace(m.layer4, nn.Identity(), path="layer4")
    planner.replace(m.layer4[0].conv1, nn.Identity(), path="layer4.0.conv1")
    with pytest.raises(ArgumentError, match=r"'layer4.0.conv1' lies inside 'layer4'"):
        planner.finish()


def test_delete_slice_with_a_repeated_member_deletes_it_once() -> None:
    bn = nn.BatchNorm1d(2)
    m = nn.Sequential(nn.Sequential(bn, nn.ReLU(), bn), nn.Tanh())
    with pytest.warns(SharedModuleWarning, match=r"'0.0' is also reachable at '0.2'"):
        surgery.delete(m, "0[0:3]")
    assert len(m[0]) == 0 and isinstance(m[1], nn.Tanh)


def test_replace_head_edits_one_head_once_for_duplicate_paths() -> None:
    m = resnet()
    plan = surgery.replace_head(m, 4, path=["fc", "fc"], dry_run=True)
    assert [e.path for e in plan.edits] == ["fc"]


# ----------------------------------------------------------------------------- failures

FAILURES: list[tuple[Callable[[nn.Module], Any], type, str, str | None]] = [
    (
        lambda m: surgery.replace(m, "fc", 3),
        ArgumentError,
        r"^replace\(model, 'fc', 3\): module must be an nn.Module, got int",
        "fc",
    ),
    (
        lambda m: surgery.insert(m, "layer1[0]", "relu"),
        ArgumentError,
        r"insert\(model, 'layer1\[0\]', 'relu'\): module must be an nn.Module, got str",
        "layer1[0]",
    ),
    (
        lambda m: surgery.replace_head(m, 10**12),
        ArgumentError,
        r"replace_head\(ResNet\): cannot build the new head 'fc' .*RuntimeError",
        "fc",
    ),
    (lambda m: surgery.replace(m, "fc2", nn.ReLU()), surgery.PathNotFoundError, r"fc2", "fc2"),
    (lambda m: surgery.delete(m, ""), ArgumentError, r"root", None),
    (lambda m: surgery.freeze(m, "nope"), surgery.PathNotFoundError, r"nope", None),
]


@pytest.mark.parametrize(("call", "error", "match", "path"), FAILURES)
def test_failures_name_the_path_and_change_nothing(
    call: Callable[[nn.Module], Any], error: type, match: str, path: str | None
) -> None:
    m = resnet()
    before = snapshot(m)
    with pytest.raises(error, match=match) as info:
        call(m)
    assert isinstance(info.value, SurgeryError) and info.value.op is not None
    if path is not None:
        assert info.value.path == path
    assert_unchanged(m, before)


def test_unfreeze_inference_tensors_is_refused_before_any_change() -> None:
    with torch.inference_mode():
        m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    surgery.freeze(m)  # allowed: requires_grad=False
    before = snapshot(m)
    with pytest.raises(ArgumentError, match=r"'0.weight'.*inference tensor"):
        surgery.unfreeze(m)
    assert_unchanged(m, before)


# ----------------------------------------------------------------------------- atomicity


def _paths(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules(remove_duplicate=False) if n]


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_edits_commit_fully_or_change_nothing(data: st.DataObject) -> None:
    lin = nn.Linear(3, 3)
    model = nn.Sequential(
        OrderedDict(
            a=lin,
            seq=nn.Sequential(nn.ReLU(), lin, nn.Sequential(nn.Tanh(), nn.GELU())),
            lst=nn.ModuleList([nn.Identity(), nn.ReLU()]),
            dct=nn.ModuleDict({"x": nn.Sigmoid()}),
        )
    )
    for _ in range(data.draw(st.integers(1, 5))):
        paths = _paths(model)
        path = data.draw(st.sampled_from([*paths, "", "missing"]))
        op = data.draw(st.sampled_from(["replace", "delete", "insert"]))
        kind = data.draw(st.sampled_from(["fresh", "existing", "model", "junk"]))
        new: Any = {
            "fresh": nn.Linear(3, 3),
            "existing": model.get_submodule(data.draw(st.sampled_from(paths))),
            "model": model,
            "junk": 3,
        }[kind]
        before = snapshot(model)
        old_paths = {}
        if path in paths:
            target = model.get_submodule(path)
            old_paths = {p for p in paths if model.get_submodule(p) is target}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SharedModuleWarning)
            try:
                if op == "replace":
                    surgery.replace(model, path, new)
                elif op == "delete":
                    surgery.delete(model, path)
                else:
                    surgery.insert(model, path, new)
            except SurgeryError:
                assert_unchanged(model, before)
                continue
        list(model.named_modules(remove_duplicate=False))  # no cycle: this ends
        model.state_dict()
        if op == "replace":  # fully: every path of the old object holds the new one
            assert all(model.get_submodule(p) is new for p in old_paths)
        if op == "delete":
            assert all(id(m) != id(target) for m in model.modules())
        if op == "insert":
            assert any(m is new for m in model.modules())


# ----------------------------------------------------------------------------- timm declarations


def _pair(name: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False).eval()
    return m, copy.deepcopy(m)


TIMM = [
    pytest.param("repvit_m1", marks=pytest.mark.slow),
    "deit_tiny_distilled_patch16_224",
    pytest.param("levit_128s", marks=pytest.mark.slow),
    pytest.param("volo_d1_224", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", TIMM)
def test_replace_head_follows_timm_reset_classifier(name: str) -> None:
    m, ref = _pair(name)
    ref7 = copy.deepcopy(ref)
    body = {n: p for n, p in m.named_parameters()}
    surgery.replace_head(m, 0)
    ref.reset_classifier(0)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out, expected = m(x), ref(x)
    assert out.shape == expected.shape and torch.equal(out, expected)
    assert [n for n, _ in m.named_modules()] == [n for n, _ in ref.named_modules()]
    assert all(body[n] is p for n, p in m.named_parameters())  # the body is the same tensors
    m7 = ref7
    timm7 = copy.deepcopy(ref7)
    surgery.replace_head(m7, 7)
    timm7.reset_classifier(7)
    assert {n: p.shape for n, p in m7.named_parameters()} == {
        n: p.shape for n, p in timm7.named_parameters()
    }
    assert m7.num_classes == 7
    with torch.no_grad():
        assert m7(x).shape == timm7(x).shape == (1, 7)


def test_volo_aux_head_is_removed_as_timm_does() -> None:
    with torch.device("meta"):
        m = timm.create_model("volo_d1_224", pretrained=False)
    plan = surgery.replace_head(m, 0, dry_run=True)
    assert [(e.action, e.path, e.new) for e in plan.edits if e.path == "aux_head"] == [
        ("delete", "aux_head", None)
    ]
    surgery.replace_head(m, 0)
    assert m.aux_head is None and isinstance(m.head, nn.Identity) and m.num_classes == 0


def test_repvit_distillation_head_is_dropped_as_timm_does() -> None:
    with torch.device("meta"):
        m = timm.create_model("repvit_m1", pretrained=False, distillation=True)
    assert hasattr(m.head, "head_dist")
    surgery.replace_head(m, 7)
    ref = timm.create_model("repvit_m1", pretrained=False, distillation=True, device="meta")
    ref.reset_classifier(7)
    assert [n for n, _ in m.named_modules()] == [n for n, _ in ref.named_modules()]
    assert not any("head_dist" in n for n, _ in m.named_modules())
    assert m.head.head.l.weight.device.type == "meta"


def test_timm_reset_never_touches_the_model() -> None:
    with torch.device("meta"):
        m = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    before = snapshot(m)
    plan = surgery.replace_head(m, 3, dry_run=True)
    assert [e.path for e in plan.edits] == ["head", "head_dist"]
    assert ("", "num_classes", 1000, 3) in [
        (s.path, s.attribute, s.old, s.new) for s in plan.settings
    ]
    assert_unchanged(m, before)
