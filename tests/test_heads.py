"""replace_head, adapt_input, create_head: every torchvision family, timm, unknown models."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import surgery
from surgery import AdaptiveConcatPool2d
from surgery.trace._meta import meta_copy
from surgery.trace._tree import output_shapes
from tests.snapshot import assert_unchanged, snapshot


def meta_model(name: str, **kwargs: object) -> nn.Module:
    """A torchvision model on the meta device (built on CPU first where meta init fails)."""
    try:
        with torch.device("meta"):
            return torchvision.models.get_model(name, weights=None, **kwargs)
    except NotImplementedError:  # regnet computes its widths with real tensors
        return meta_copy(torchvision.models.get_model(name, weights=None, **kwargs))


# name, builder kwargs, head paths, input size
FAMILIES = [
    ("alexnet", {}, ["classifier.6"], 224),
    ("vgg11", {}, ["classifier.6"], 224),
    ("resnet18", {}, ["fc"], 224),
    ("squeezenet1_1", {}, ["classifier.1"], 224),
    pytest.param("mobilenet_v2", {}, ["classifier.1"], 224, marks=pytest.mark.slow),
    ("mobilenet_v3_small", {}, ["classifier.3"], 224),
    ("mnasnet0_5", {}, ["classifier.1"], 224),
    ("shufflenet_v2_x0_5", {}, ["fc"], 224),
    ("efficientnet_b0", {}, ["classifier.1"], 224),
    ("regnet_y_400mf", {}, ["fc"], 224),
    ("convnext_tiny", {}, ["classifier.2"], 224),
    ("vit_b_16", {}, ["heads.head"], 224),
    ("swin_t", {}, ["head"], 224),
    pytest.param("resnext50_32x4d", {}, ["fc"], 224, marks=pytest.mark.slow),
    pytest.param("wide_resnet50_2", {}, ["fc"], 224, marks=pytest.mark.slow),
    pytest.param("squeezenet1_0", {}, ["classifier.1"], 224, marks=pytest.mark.slow),
    pytest.param("densenet121", {}, ["classifier"], 224, marks=pytest.mark.slow),
    pytest.param("efficientnet_v2_s", {}, ["classifier.1"], 224, marks=pytest.mark.slow),
    pytest.param("maxvit_t", {}, ["classifier.5"], 224, marks=pytest.mark.slow),
    pytest.param(
        "inception_v3",
        {"aux_logits": True, "init_weights": False},
        ["fc", "AuxLogits.fc"],
        299,
        marks=pytest.mark.slow,
    ),
    pytest.param(
        "googlenet",
        {"aux_logits": True, "init_weights": False},
        ["fc", "aux1.fc2", "aux2.fc2"],
        224,
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "heads", "res"), FAMILIES)
def test_replace_head_every_torchvision_family(
    name: str, kwargs: dict, heads: list[str], res: int
) -> None:
    m = meta_model(name, **kwargs)
    old = {h: surgery.get(m, h) for h in heads}
    assert surgery.replace_head(m, 7) is m
    for h in heads:
        new = surgery.get(m, h)
        assert new is not old[h]
        assert (new.out_features if isinstance(new, nn.Linear) else new.out_channels) == 7
        if isinstance(new, nn.Linear):
            assert new.in_features == old[h].in_features
        assert new.weight.device.type == "meta"
        assert (new.bias is None) == (old[h].bias is None)
    _, out = output_shapes(m, (2, 3, res, res))
    assert out == [2, 7]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "res"), [("inception_v3", 299), ("googlenet", 224)])
def test_aux_heads_produce_the_new_classes_in_training(name: str, res: int) -> None:
    m = meta_model(name, aux_logits=True, init_weights=False)
    surgery.replace_head(m, 5)
    m.train()
    with torch.no_grad():
        out = m(torch.empty(2, 3, res, res, device="meta"))
    shapes = [tuple(t.shape) for t in out]
    assert shapes == [(2, 5)] * len(shapes) and len(shapes) == (2 if name == "inception_v3" else 3)


def test_squeezenet_conv_head_keeps_its_geometry() -> None:
    m = meta_model("squeezenet1_1")
    surgery.replace_head(m, 12)
    conv = m.classifier[1]
    assert isinstance(conv, nn.Conv2d)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (512, 12, (1, 1))
    assert m.num_classes == 12


def test_new_head_matches_device_dtype_bias_and_mode() -> None:
    m = torchvision.models.resnet18(weights=None).to(torch.float64).eval()
    surgery.replace_head(m, 3)
    assert m.fc.weight.dtype == torch.float64 and m.fc.weight.device.type == "cpu"
    assert not m.fc.training
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4, bias=False))
    surgery.replace_head(net, 2)
    assert net[1].bias is None and net[1].in_features == 12


def test_num_classes_zero_returns_features() -> None:
    m = meta_model("resnet18")
    surgery.replace_head(m, 0)
    assert isinstance(m.fc, nn.Identity)
    assert output_shapes(m, (2, 3, 224, 224))[1] == [2, 512]
    sq = meta_model("squeezenet1_1")
    surgery.replace_head(sq, 0)  # pooled features: flatten(avgpool(relu(features(x))))
    assert isinstance(sq.classifier[1], nn.Identity)
    assert output_shapes(sq, (2, 3, 224, 224))[1] == [2, 512]
    vit = meta_model("vit_b_16")
    surgery.replace_head(vit, 0)
    assert output_shapes(vit, (2, 3, 224, 224))[1] == [2, 768]


# ----------------------------------------------------------------------------- timm


def timm_meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False)


@pytest.mark.parametrize(
    ("name", "heads", "features"),
    [
        ("resnet18", ["fc"], 512),
        pytest.param("vit_tiny_patch16_224", ["head"], 192, marks=pytest.mark.slow),
        ("deit_tiny_distilled_patch16_224", ["head", "head_dist"], 192),
    ],
)
def test_timm_declared_heads(name: str, heads: list[str], features: int, caplog) -> None:
    m = timm_meta(name)
    with caplog.at_level(logging.INFO, logger="surgery"):
        surgery.replace_head(m, 9)
    assert "pretrained_cfg['classifier']" in caplog.text
    for h in heads:
        head = surgery.get(m, h)
        assert head.out_features == 9 and head.in_features == features
        assert head.weight.device.type == "meta"
    assert m.num_classes == 9
    assert output_shapes(m, (2, 3, 224, 224))[1] == [2, 9]
    surgery.replace_head(m, 0)
    assert all(isinstance(surgery.get(m, h), nn.Identity) for h in heads)
    assert output_shapes(m, (2, 3, 224, 224))[1] == [2, features]


def test_failing_reset_classifier_runs_on_a_copy_then_heads_replaced(caplog) -> None:
    class Declares(nn.Module):
        pretrained_cfg = {"classifier": "fc"}  # noqa: RUF012

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 3)
            self.num_classes = 3

        def reset_classifier(self, num_classes: int) -> None:
            self.body = nn.Identity()  # a half-done reset (on the meta copy) must not leak
            self.fc = nn.Linear(4, num_classes)
            raise RuntimeError("boom")

    m = Declares()
    body = m.body
    with caplog.at_level(logging.INFO, logger="surgery"):
        surgery.replace_head(m, 5)
    assert "reset_classifier(5) failed (RuntimeError: boom)" in caplog.text
    assert m.body is body and m.fc.out_features == 5 and m.num_classes == 5


# ----------------------------------------------------------------------------- unknown models


class Custom(nn.Module):
    """Never seen before: the head is only known from the data flow."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.proj = nn.Linear(8, 16)
        self.logits = nn.Linear(16, 4)
        self.unused = nn.Linear(16, 4)  # registered last, never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x)).mean((2, 3))
        return torch.softmax(self.logits(torch.relu(self.proj(x))), dim=-1)


class TwoHeads(nn.Module):
    def __init__(self, a: int = 4, b: int = 4) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.a = nn.Linear(8, a)
        self.b = nn.Linear(8, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        if self.a.out_features == self.b.out_features:
            return (self.a(x) + self.b(x)) / 2
        return torch.cat([self.a(x), self.b(x)], 1)


class NoHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.side = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).flatten(1)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # branches on data: torch.fx cannot trace this
            x = -x
        return self.fc(x)


def test_unknown_model_head_found_by_tracing(caplog) -> None:
    m = Custom()
    unused = m.unused
    with caplog.at_level(logging.INFO, logger="surgery"):
        surgery.replace_head(m, 10)
    assert "'logits' (Linear(16 -> 4)) found by tracing" in caplog.text
    assert m.logits.out_features == 10 and m.unused is unused
    assert m(torch.rand(2, 3, 8, 8)).shape == (2, 10)


def test_parallel_heads_are_both_replaced() -> None:
    m = TwoHeads()
    surgery.replace_head(m, 6)
    assert (m.a.out_features, m.b.out_features) == (6, 6)
    assert m(torch.rand(3, 6)).shape == (3, 6)


def test_ambiguous_head_lists_candidates() -> None:
    m = TwoHeads(4, 5)
    before = snapshot(m)
    with pytest.raises(
        surgery.LayerNotFoundError,
        match=r"(?s)ambiguous classifier in TwoHeads.*'a' Linear\(8 -> 4\).*'b' Linear\(8 -> 5\).*path='a'",
    ):
        surgery.replace_head(m, 3)
    assert_unchanged(m, before)
    surgery.replace_head(m, 3, path=["a", "b"])  # the fix the message shows
    assert (m.a.out_features, m.b.out_features) == (3, 3)


def test_missing_head_lists_candidates() -> None:
    m = NoHead()
    before = snapshot(m)
    with pytest.raises(
        surgery.LayerNotFoundError,
        match=r"(?s)produced by 'bn' \(BatchNorm2d\), not by a Linear.*'side' Linear\(8 -> 2\).*path='side'",
    ):
        surgery.replace_head(m, 3)
    assert_unchanged(m, before)


def test_untraceable_model_says_so() -> None:
    with pytest.raises(
        surgery.LayerNotFoundError, match=r"(?s)tracing failed.*'fc' Linear\(4 -> 2\).*path='fc'"
    ):
        surgery.replace_head(Untraceable(), 3)


def test_explicit_path_and_container_path() -> None:
    m = meta_model("vgg11")
    surgery.replace_head(m, 4, path="classifier")  # a container: its last Linear
    assert m.classifier[6].out_features == 4
    surgery.replace_head(m, 2, path="classifier.6")
    assert m.classifier[6].out_features == 2


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.pool = nn.Identity()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.bn1(self.conv1(x)).mean((2, 3))))


def test_failure_leaves_a_real_resnet_bit_for_bit_unchanged() -> None:
    m = torchvision.models.resnet18(weights=None)
    m.layer1.train(False)  # mixed modes must survive too
    before = snapshot(m)
    with pytest.raises(surgery.PathNotFoundError):
        surgery.replace_head(m, 3, path=["fc", "layer9"])
    with pytest.raises(surgery.ArgumentError):
        surgery.adapt_input(m, 2, path="bn1")
    assert_unchanged(m, before)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_classes": -1}, surgery.ArgumentError, r"num_classes must be an int >= 0, got -1"),
        ({"num_classes": True}, surgery.ArgumentError, r"num_classes must be an int >= 0"),
        ({"num_classes": 2.0}, surgery.ArgumentError, r"num_classes must be an int >= 0"),
        ({"num_classes": 3, "path": "fcc"}, surgery.PathNotFoundError, r"did you mean 'fc'"),
        (
            {"num_classes": 3, "path": "bn1"},
            surgery.ArgumentError,
            r"cannot re-head 'bn1': it is a BatchNorm2d",
        ),
        ({"num_classes": 3, "path": 5}, surgery.ArgumentError, r"path must be a module path"),
        (
            {"num_classes": 3, "path": "pool"},
            surgery.ArgumentError,
            r"(?s)'pool': it is an Identity .*surgery.replace\(model, 'pool', nn.Linear\(in_features, 3\)\)",
        ),
    ],
)
def test_replace_head_errors_leave_model_unchanged(kwargs: dict, error: type, match: str) -> None:
    m = Small()
    before = snapshot(m)
    n = kwargs.pop("num_classes")
    with pytest.raises(error, match=match):
        surgery.replace_head(m, n, **kwargs)
    assert_unchanged(m, before)


def test_grouped_conv_head_needs_divisible_classes() -> None:
    m = nn.Sequential(nn.Conv2d(4, 8, 1, groups=4))
    before = snapshot(m)
    with pytest.raises(surgery.ArgumentError, match=r"groups=4.*multiple of 4"):
        surgery.replace_head(m, 6, path="0")
    assert_unchanged(m, before)
    surgery.replace_head(m, 12, path="0")
    assert m[0].groups == 4 and m[0].out_channels == 12


# ----------------------------------------------------------------------------- adapt_input


def real_features(name: str) -> nn.Module:
    """A torchvision model with random weights and no classifier (fast to build)."""
    torch.manual_seed(0)
    with torch.device("meta"):
        m = torchvision.models.get_model(name, weights=None)
    for attr in ("classifier", "fc"):
        if hasattr(m, attr):
            setattr(m, attr, nn.Identity())
    m.to_empty(device="cpu")
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.reset_running_stats()
        for p in m.parameters():
            p.normal_(0.0, 0.1)
    return m.eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = max(b.abs().max().item(), 1e-30)
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize(
    ("name", "first"),
    [
        ("resnet18", "conv1"),
        ("vgg11", "features.0"),
        ("efficientnet_b0", "features.0.0"),
        ("convnext_tiny", "features.0.0"),
    ],
)
def test_adapt_input_grey_equivalence(name: str, first: str, caplog) -> None:
    m = real_features(name)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = m(x.repeat(1, 3, 1, 1))
    old = surgery.get(m, first)
    with caplog.at_level(logging.INFO, logger="surgery"):
        surgery.adapt_input(m, 1)
    assert f"{first!r} found by tracing" in caplog.text
    conv = surgery.get(m, first)
    assert conv.in_channels == 1
    for attr in ("out_channels", "kernel_size", "stride", "padding", "dilation", "padding_mode"):
        assert getattr(conv, attr) == getattr(old, attr)
    assert (conv.bias is None) == (old.bias is None)
    with torch.no_grad():
        assert _close(m(x), expected)


def _cyclic(x: torch.Tensor, channels: int) -> torch.Tensor:
    idx = torch.arange(channels) % x.shape[1]
    return x.index_select(1, idx)


class TinyNet(nn.Module):
    def __init__(self, dim: int, in_channels: int = 3) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
        self.dim = dim
        self.conv = conv(in_channels, 4, 3, padding=1, bias=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.fc(x.flatten(2).mean(-1))


@settings(max_examples=20)
@given(
    dim=st.sampled_from([1, 2, 3]),
    original=st.integers(1, 4),
    channels=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_adapt_input_equivalence_property(
    dim: int, original: int, channels: int, seed: int
) -> None:
    torch.manual_seed(seed)
    m = TinyNet(dim, original).eval()
    w = m.conv.weight.detach().clone()
    spatial = (5,) * dim
    surgery.adapt_input(m, channels)
    assert m.conv.in_channels == channels and m.conv.weight.shape[1] == channels
    # the documented rule, weight by weight
    for j in range(channels):
        if channels <= original:
            expected = w[:, [i for i in range(original) if i % channels == j]].sum(1)
        else:
            expected = w[:, j % original] * original / channels
        assert torch.allclose(m.conv.weight[:, j], expected, atol=1e-6)
    ref = TinyNet(dim, original).eval()
    ref.load_state_dict({**m.state_dict(), "conv.weight": w})
    with torch.no_grad():
        if channels <= original:  # exact: the original on x repeated cyclically
            x = torch.randn(2, channels, *spatial)
            assert torch.allclose(m(x), ref(_cyclic(x, original)), atol=1e-5)
        elif channels % original == 0:  # exact: x repeated to the new channel count
            x = torch.randn(2, original, *spatial)
            assert torch.allclose(m(_cyclic(x, channels)), ref(x), atol=1e-5)


def test_adapt_input_keeps_dtype_device_and_meta() -> None:
    m = torchvision.models.resnet18(weights=None).to(torch.float64)
    surgery.adapt_input(m, 4)
    assert m.conv1.weight.dtype == torch.float64 and m.conv1.in_channels == 4
    meta = meta_model("resnet18")
    surgery.adapt_input(meta, 1)
    assert meta.conv1.weight.device.type == "meta" and meta.conv1.weight.shape == (64, 1, 7, 7)
    assert output_shapes(meta, (1, 1, 64, 64))[1] == [1, 1000]


def test_adapt_input_timm_declared_first_conv(caplog) -> None:
    m = timm_meta("resnet18")
    with caplog.at_level(logging.INFO, logger="surgery"):
        surgery.adapt_input(m, 2)
    assert "'conv1' found by pretrained_cfg['first_conv']" in caplog.text
    assert m.conv1.in_channels == 2


def test_adapt_input_same_count_is_a_no_op() -> None:
    m = torchvision.models.resnet18(weights=None)
    conv = m.conv1
    surgery.adapt_input(m, 3)
    assert m.conv1 is conv


def test_adapt_input_grouped_first_conv() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, groups=3), nn.Flatten())
    x = torch.rand(1, 1, 5, 5)
    with torch.no_grad():
        expected = m(x.repeat(1, 3, 1, 1))
    before = snapshot(m)
    with pytest.raises(surgery.ArgumentError, match=r"groups=3.*only be adapted to 1 channel"):
        surgery.adapt_input(m, 2)
    assert_unchanged(m, before)
    surgery.adapt_input(m, 1)
    assert m[0].groups == 1 and m[0].in_channels == 1
    with torch.no_grad():
        assert torch.allclose(m(x), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("model", "kwargs", "error", "match"),
    [
        (
            nn.Sequential(nn.Linear(3, 2)),
            {},
            surgery.LayerNotFoundError,
            r"(?s)has no Conv1d/Conv2d/Conv3d.*path=",
        ),
        (TinyNet(2), {"path": "fc"}, surgery.ArgumentError, r"path='fc' is a Linear, not a Conv"),
        (TinyNet(2), {"path": "conv2"}, surgery.PathNotFoundError, r"did you mean 'conv'"),
        (
            TinyNet(2),
            {"in_channels": 0},
            surgery.ArgumentError,
            r"in_channels must be an int >= 1, got 0",
        ),
    ],
)
def test_adapt_input_errors_leave_model_unchanged(
    model: nn.Module, kwargs: dict, error: type, match: str
) -> None:
    before = snapshot(model)
    n = kwargs.pop("in_channels", 1)
    with pytest.raises(error, match=match):
        surgery.adapt_input(model, n, **kwargs)
    assert_unchanged(model, before)


# ----------------------------------------------------------------------------- create_head


def test_create_head_fastai_layout() -> None:
    head = surgery.create_head(512, 10)
    kinds = [type(m).__name__ for m in head]
    assert kinds == [
        "AdaptiveConcatPool2d",
        "Flatten",
        "BatchNorm1d",
        "Dropout",
        "Linear",
        "ReLU",
        "BatchNorm1d",
        "Dropout",
        "Linear",
    ]
    assert head[2].num_features == 1024 and head[4].in_features == 1024
    assert head[4].out_features == 512 and head[8].out_features == 10
    assert [head[3].p, head[7].p] == [0.25, 0.5]
    assert head[4].bias is None and head[8].bias is None  # bias=not bn, as in fastai
    assert torch.all(head[2].bias == 1e-3)
    assert head.eval()(torch.rand(2, 512, 3, 3)).shape == (2, 10)


def test_create_head_options() -> None:
    head = surgery.create_head(64, 5, hidden=(), dropout=0.0, concat_pool=False, bn=False)
    assert [type(m).__name__ for m in head] == ["AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert head[2].in_features == 64 and head[2].bias is not None
    head = surgery.create_head(64, 5, hidden=(32, 16), dropout=(0.1, 0.2, 0.3))
    assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.1, 0.2, 0.3]
    assert [m.out_features for m in head if isinstance(m, nn.Linear)] == [32, 16, 5]
    head = surgery.create_head(64, 5, hidden=(32, 16), dropout=0.4)
    assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.2, 0.2, 0.4]


def test_adaptive_concat_pool_is_max_then_avg() -> None:
    x = torch.rand(2, 3, 4, 4)
    out = AdaptiveConcatPool2d()(x)
    assert torch.equal(out[:, :3], x.amax((2, 3), keepdim=True))
    assert torch.allclose(out[:, 3:], x.mean((2, 3), keepdim=True))


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((0, 10), {}, r"in_features must be an int >= 1, got 0"),
        ((8, 0), {}, r"num_classes must be an int >= 1, got 0"),
        ((8, 2), {"hidden": 5}, r"hidden must be a sequence"),
        ((8, 2), {"hidden": (0,)}, r"each hidden width must be an int >= 1"),
        ((8, 2), {"dropout": (0.1,)}, r"dropout must be a probability or a sequence of 2"),
        ((8, 2), {"dropout": 1.0}, r"dropout probabilities must be in \[0, 1\)"),
        ((8, 2), {"bn": "yes"}, r"bn must be True or False"),
    ],
)
def test_create_head_errors(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(surgery.ArgumentError, match=match):
        surgery.create_head(*args, **kwargs)
