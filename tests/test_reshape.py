"""Loading tensors stored in another shape: on_mismatch="reshape", and the reshape rules."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

import surgery
from surgery import LoadError, load_partial
from surgery.checkpoint._reshape import reshape_kind, squeezed
from tests.snapshot import assert_unchanged, snapshot


@pytest.mark.parametrize(
    "a,b,kind",
    [
        ((96, 1, 1), (96,), "squeeze"),
        ((1280, 960), (1280, 960, 1, 1), "squeeze"),
        ((1, 197, 768), (197, 768), "squeeze"),
        ((4096, 25088), (4096, 512, 7, 7), "flatten"),
        ((64, 48), (64, 16, 3), "flatten"),  # a Conv1d kernel
        ((10, 512), (512, 10), None),  # a transpose holds the values in another order
        ((4096, 25088), (2048, 1024, 7, 7), None),  # other output size
        ((8, 3, 3, 3), (8, 27, 1), None),  # two kernels: no matrix
        ((6,), (6,), None),
        ((2, 3), (3, 2), None),
        ((0, 4), (0, 2, 2), None),
    ],
)
def test_reshape_kind(a: tuple[int, ...], b: tuple[int, ...], kind: str | None) -> None:
    assert reshape_kind(a, b) == kind
    assert reshape_kind(b, a) == kind


class ScaleModel(nn.Module):
    """A layer scale (C,), a 1x1 conv head and a 3x3 'classifier' convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.randn(4))
        self.head = nn.Conv2d(4, 6, 1)
        self.fc = nn.Conv2d(4, 5, 3)


def stored_elsewhere() -> dict[str, torch.Tensor]:
    """The same tensors as another implementation stores them."""
    g = torch.Generator().manual_seed(3)
    return {
        "gamma": torch.randn(4, 1, 1, generator=g),
        "head.weight": torch.randn(6, 4, generator=g),  # nn.Linear
        "head.bias": torch.randn(6, generator=g),
        "fc.weight": torch.randn(5, 36, generator=g),  # nn.Linear on the flattened input
        "fc.bias": torch.randn(5, generator=g),
    }


def check_values(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    for k, v in sd.items():
        t = model.state_dict()[k]
        assert torch.equal(t, v.reshape(t.shape)), k


@pytest.mark.parametrize("fmt", ["mapping", "pt", "safetensors"])
def test_on_mismatch_reshape(tmp_path: object, fmt: str) -> None:
    sd = stored_elsewhere()
    source: object = sd
    if fmt != "mapping":
        path = tmp_path / f"m.{fmt}"  # type: ignore[operator]
        (torch.save if fmt == "pt" else save_file)(sd, path)
        source = path
    model = ScaleModel()
    before = snapshot(model)
    with pytest.raises(LoadError, match=r"3 shape mismatch\(es\)") as err:
        load_partial(source, into=model)
    assert "'gamma': checkpoint (4, 1, 1) vs model (4,)" in str(err.value)
    assert_unchanged(model, before)
    report = load_partial(source, into=model, on_mismatch="reshape")
    assert report.reshaped == {
        "gamma": ((4, 1, 1), (4,)),
        "head.weight": ((6, 4), (6, 4, 1, 1)),
        "fc.weight": ((5, 36), (5, 4, 3, 3)),
    }
    assert report.mismatched == {} and len(report.loaded) == 5 and report.missing == []
    assert "reshaped (3):" in str(report) and report.to_dict()["reshaped"]["gamma"] == [
        [4, 1, 1],
        [4],
    ]
    check_values(model, sd)
    if fmt == "mapping":  # a private copy: the model does not alias the caller's tensors
        assert model.gamma.data_ptr() != sd["gamma"].data_ptr()
    # the fully connected layer as a convolution computes the same function
    x = torch.randn(2, 4, 3, 3)
    assert torch.allclose(model.fc(x).flatten(1), x.flatten(1) @ sd["fc.weight"].T + sd["fc.bias"])


def test_reshape_into_a_meta_model_and_dry_run(tmp_path: object) -> None:
    sd = stored_elsewhere()
    path = tmp_path / "m.safetensors"  # type: ignore[operator]
    save_file(sd, path)
    with torch.device("meta"):
        model = ScaleModel()
    plan = load_partial(path, into=model, on_mismatch="reshape", dry_run=True)
    assert plan.dry_run and len(plan.reshaped) == 3 and model.gamma.is_meta
    report = load_partial(path, into=model, on_mismatch="reshape", strict=True)
    assert len(report.reshaped) == 3 and not any(t.is_meta for t in model.state_dict().values())
    assert isinstance(model.gamma, nn.Parameter) and model.gamma.requires_grad
    check_values(model, sd)


def test_reshape_refuses_other_mismatches_and_changes_nothing() -> None:
    sd = stored_elsewhere()
    sd["head.bias"] = torch.randn(7)  # a real mismatch next to the reshapes
    model = ScaleModel()
    before = snapshot(model)
    with pytest.raises(LoadError, match=r"1 shape mismatch\(es\)") as err:
        load_partial(sd, into=model, on_mismatch="reshape")
    assert "'head.bias': checkpoint (7,) vs model (6,)" in str(err.value)
    assert "gamma" not in str(err.value)
    assert_unchanged(model, before)
    # transposed weights are never taken for a reshape
    sd = {"head.weight": torch.randn(4, 6, 1, 1), "head.bias": torch.randn(6)}
    with pytest.raises(LoadError, match="shape mismatch"):
        load_partial(sd, into=model, on_mismatch="reshape")
    assert_unchanged(model, before)


def test_skip_does_not_reshape() -> None:
    model = ScaleModel()
    report = load_partial(stored_elsewhere(), into=model, on_mismatch="skip")
    assert set(report.mismatched) == {"gamma", "head.weight", "fc.weight"}
    assert report.reshaped == {}


def test_tied_tensors_reshaped_once() -> None:
    model = nn.Module()
    model.a = nn.Linear(3, 3, bias=False)
    model.b = nn.Linear(3, 3, bias=False)
    model.b.weight = model.a.weight
    w = torch.randn(3, 3)
    report = load_partial(
        {"a.weight": w.reshape(3, 3, 1), "b.weight": w.reshape(3, 1, 3)},
        into=model,
        on_mismatch="reshape",
    )
    assert set(report.reshaped) == {"a.weight", "b.weight"}
    assert torch.equal(model.a.weight, w) and model.a.weight is model.b.weight


def test_auto_loads_reshapes_by_name() -> None:
    """rename="auto": a same-named tensor in another shape is a proven reshape."""
    model = ScaleModel()
    report = load_partial(stored_elsewhere(), into=model, rename="auto")
    assert len(report.reshaped) == 3 and set(report.how.values()) == {"name"}
    km = surgery.match_keys(stored_elsewhere(), ScaleModel())
    assert km.reshaped == report.reshaped and km.mismatched == {}


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(2, 5), min_size=1, max_size=3),
    ones=st.lists(st.integers(0, 3), min_size=1, max_size=3),
)
def test_singletons_anywhere_load_the_same_values(shape: list[int], ones: list[int]) -> None:
    stored = list(shape)
    for pos in ones:
        stored.insert(min(pos, len(stored)), 1)
    assert squeezed(tuple(stored)) == tuple(shape)
    value = torch.randn(stored)
    model = nn.Module()
    model.register_buffer("t", torch.zeros(shape))
    report = load_partial({"t": value}, into=model, on_mismatch="reshape")
    assert torch.equal(model.t, value.reshape(shape))
    assert report.reshaped == (
        {"t": (tuple(stored), tuple(shape))} if len(stored) != len(shape) else {}
    )
