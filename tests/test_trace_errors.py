"""Bad input to the analysis and feature-cache functions: SurgeryErrors with op/path set,
a message naming what is wrong, and the model unchanged (deep snapshot)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import surgery
from tests.snapshot import assert_unchanged, snapshot

MODEL = torchvision.models.resnet18(weights=None)

CASES: list[tuple[str, Callable[[nn.Module], Any], type[Exception], str]] = [
    (
        "compose",
        lambda m: surgery.compose(a=(m, "layer1"), input_size=(-1, 64, 8, 8)),
        surgery.ArgumentError,
        r"compose: input_size \(-1, 64, 8, 8\) has size -1 at dimension 0: every size must "
        r"be a positive int",
    ),
    (
        "verify",
        lambda m: surgery.verify(m, (1, 3, -224, 224)),
        surgery.ArgumentError,
        r"verify\(ResNet\): input_size \(1, 3, -224, 224\) has size -224 at dimension 2",
    ),
    (
        "verify",
        lambda m: surgery.verify(m, (0, 3, 224, 224)),
        surgery.ArgumentError,
        r"has size 0 at dimension 0",
    ),
    (
        "tree",
        lambda m: surgery.tree(m, input_size=(1, 0, 32, 32)),
        surgery.ArgumentError,
        r"tree\(ResNet\): input_size \(1, 0, 32, 32\) has size 0 at dimension 1",
    ),
    (
        "summary",
        lambda m: surgery.summary(m, [(1, 3, 32, 32), (1, -1)]),
        surgery.ArgumentError,
        r"summary\(ResNet\): input_size \(1, -1\) has size -1 at dimension 1",
    ),
    (
        "summary",
        lambda m: surgery.summary(m, (1, 3, 32, 32), device="nowhere"),
        surgery.ArgumentError,
        r"device 'nowhere' is not a torch device",
    ),
    (
        "take",
        lambda m: surgery.take(m, "layer9"),
        surgery.PathNotFoundError,
        r"take\(ResNet\): .*layer9",
    ),
    (
        "precompute",
        lambda m: surgery.precompute(m, torch.randn(6, 1, 32, 32), batch_size=4, progress=False),
        surgery.ArgumentError,
        r"precompute\(ResNet\): ResNet on batch 0 \(inputs of shape \(4, 1, 32, 32\), float32\) "
        r"raised RuntimeError: .*expected input\[4, 1, 32, 32\] to have 3 channels",
    ),
]


@pytest.mark.parametrize(("op", "call", "error", "match"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_surgery_error_and_changes_nothing(
    op: str, call: Callable[[nn.Module], Any], error: type[Exception], match: str
) -> None:
    MODEL.train()
    before = snapshot(MODEL)
    with pytest.raises(error, match=match) as info:
        call(MODEL)
    assert isinstance(info.value, surgery.SurgeryError)
    assert info.value.op == op
    assert_unchanged(MODEL, before)


def test_precompute_names_the_failing_batch_and_keeps_the_cause(tmp_path: Any) -> None:
    body = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).train()
    good = [torch.randn(4, 3, 2, 2)] * 2
    data = torch.utils.data.DataLoader([*good, torch.randn(4, 3, 2, 3)], batch_size=None)
    before = snapshot(body)
    with pytest.raises(
        surgery.ArgumentError,
        match=r"Sequential on batch 2 \(inputs of shape "
        r"\(4, 3, 2, 3\), float32\) raised RuntimeError",
    ) as info:
        surgery.precompute(body, data, cache_dir=tmp_path, progress=False)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert_unchanged(body, before)
    assert not list(tmp_path.iterdir()) or all(
        not p.name.startswith(".") for p in tmp_path.iterdir()
    )


def test_split_and_cut_fill_the_error_fields() -> None:
    with pytest.raises(surgery.PathNotFoundError) as info:
        surgery.split(MODEL, "layer1.7")
    assert (info.value.op, info.value.path) == ("split", "layer1.7")
    with pytest.raises(surgery.ArgumentError, match="path must be a module path string") as err:
        surgery.cut(MODEL, 3)  # type: ignore[arg-type]
    assert err.value.op == "cut"
    with pytest.raises(
        surgery.ArgumentError, match=r"cut_points expects an nn\.Module, got str"
    ) as bad:
        surgery.cut_points("resnet")  # type: ignore[arg-type]
    assert bad.value.op == "cut_points"
