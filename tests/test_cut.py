"""cut / split: lossless at every cut point, agreement with torchvision, atomic failures."""

from __future__ import annotations

import functools
import operator

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision.models import convnext, densenet, swin_transformer, vision_transformer
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import surgery
from surgery.testing import cut_points
from surgery.trace._fx import trace
from surgery.trace._points import split_points

# --------------------------------------------------------------------------- zoo
# Real torchvision classes; the larger families in small configurations (the
# forward code, which is what cut/split trace, is the same).


def _zoo(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "resnet18":
        return torchvision.models.resnet18(weights=None), torch.randn(2, 3, 64, 64)
    if name == "mobilenet_v3_small":
        return torchvision.models.mobilenet_v3_small(weights=None), torch.randn(2, 3, 64, 64)
    if name == "densenet":
        m = densenet.DenseNet(growth_rate=8, block_config=(2, 3), num_init_features=16, bn_size=2)
        return m, torch.randn(2, 3, 64, 64)
    if name == "convnext":
        cfg = convnext.CNBlockConfig
        m = convnext.ConvNeXt([cfg(16, 32, 2), cfg(32, None, 1)], stochastic_depth_prob=0.1)
        return m, torch.randn(2, 3, 64, 64)
    if name == "vit":
        m = vision_transformer.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
        )
        return m, torch.randn(2, 3, 32, 32)
    if name == "swin":
        m = swin_transformer.SwinTransformer(
            patch_size=[4, 4], embed_dim=16, depths=[2, 1], num_heads=[1, 2], window_size=[2, 2]
        )
        return m, torch.randn(1, 3, 32, 32)
    raise KeyError(name)


ZOO = ["resnet18", "densenet", "convnext", "vit", "mobilenet_v3_small", "swin"]


@functools.cache
def zoo(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, st.SearchStrategy[str]]:
    """(model in eval mode, input, expected output, cut-point strategy), built once."""
    m, x = _zoo(name)
    m.eval()
    with torch.no_grad():
        y = m(x)
    return m, x, y, cut_points(m)


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "modes": [(n, m.training) for n, m in model.named_modules()],
        "ids": [(n, id(m)) for n, m in model.named_modules()],
        "attrs": sorted(model.__dict__),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["attrs"] == before["attrs"]
    assert after["ids"] == before["ids"]
    assert after["modes"] == before["modes"]
    assert after["grad"] == before["grad"]
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("name", ZOO)
@settings(max_examples=4)
@given(data=st.data())
def test_split_is_lossless_at_every_cut_point(name: str, data: st.DataObject) -> None:
    model, x, expected, points = zoo(name)
    path = data.draw(points, label="path")
    head, tail = surgery.split(model, path, copy=False)
    with torch.no_grad():
        torch.testing.assert_close(tail(head(x)), expected)


@pytest.mark.parametrize("name", ["resnet18", "densenet", "mobilenet_v3_small", "vit"])
@settings(max_examples=3)
@given(data=st.data())
def test_cut_agrees_with_create_feature_extractor(name: str, data: st.DataObject) -> None:
    model, x, _, points = zoo(name)
    path = data.draw(points, label="path")
    try:
        reference = create_feature_extractor(model, {path: "out"})
    except ValueError:  # torchvision treats torchvision.ops modules as leaves: no node there
        return
    ours = surgery.cut(model, path, copy=False)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x)["out"])


@pytest.mark.parametrize("name", ["resnet18", "vit"])
@settings(max_examples=4)
@given(data=st.data())
def test_cut_accepts_torchvision_node_names(name: str, data: st.DataObject) -> None:
    model, x, _, _ = zoo(name)
    nodes = get_graph_node_names(model)[1][1:]  # without the input
    node = data.draw(st.sampled_from(nodes), label="node")
    reference = create_feature_extractor(model, {node: "out"})
    with torch.no_grad():
        torch.testing.assert_close(surgery.cut(model, node, copy=False)(x), reference(x)["out"])


def test_node_names_cut_after_functional_ops() -> None:
    model, x, expected, _ = zoo("resnet18")
    with torch.no_grad():
        assert surgery.cut(model, "flatten")(x).shape == (2, 512)
        for node in ("flatten", "layer1.0.relu_1", "layer2.0.add"):
            head, tail = surgery.split(model, node, copy=False)
            torch.testing.assert_close(tail(head(x)), expected)


def test_every_module_of_resnet18_is_a_cut_point() -> None:
    model = zoo("resnet18")[0]
    points = split_points(model)
    assert points == [n for n, _ in model.named_modules() if n]
    assert len(points) == 67


def test_cut_points_leave_out_modules_run_inside_another_step() -> None:
    model = zoo("vit")[0]
    missing = [n for n, _ in model.named_modules() if n and n not in split_points(model)]
    assert missing == [
        "encoder.layers.encoder_layer_0.self_attention.out_proj",
        "encoder.layers.encoder_layer_1.self_attention.out_proj",
    ]


# --------------------------------------------------------------------------- behaviour


def test_head_returns_the_feature_map_when_nothing_else_crosses() -> None:
    model, x, expected, _ = zoo("resnet18")
    head, tail = surgery.split(model, "layer2")
    with torch.no_grad():
        feats = head(x)
        assert isinstance(feats, torch.Tensor) and feats.shape == (2, 128, 8, 8)
        torch.testing.assert_close(tail(feats), expected)


def test_split_inside_a_residual_block_carries_the_skip() -> None:
    model, x, expected, _ = zoo("resnet18")
    for path in ("layer2.0.conv1", "layer2.0.bn2", "layer1.1.relu", "layer2.0.downsample.0"):
        head, tail = surgery.split(model, path, copy=False)
        with torch.no_grad():
            out = head(x)
            assert isinstance(out, tuple) and len(out) == 2, path
            torch.testing.assert_close(tail(out), expected)
    head, _ = surgery.split(model, "layer2.0.conv1", copy=False)
    with torch.no_grad():
        cut_value, skip = head(x)
    assert cut_value.shape == (2, 128, 8, 8) and skip.shape == (2, 64, 16, 16)


def test_cut_keeps_functional_ops() -> None:
    model, x, expected, _ = zoo("resnet18")
    fc_in = surgery.cut(model, "avgpool")
    logits = surgery.cut(model, "fc")  # torch.flatten between avgpool and fc is kept
    with torch.no_grad():
        assert fc_in(x).shape == (2, 512, 1, 1)
        torch.testing.assert_close(logits(x), expected)
    assert "flatten" in logits.code


def test_cut_after_first_call_of_a_reused_module() -> None:
    model, x, _, _ = zoo("resnet18")
    block = model.layer1[0]
    with torch.no_grad():
        expected = block.relu(
            block.bn1(block.conv1(model.maxpool(model.relu(model.bn1(model.conv1(x))))))
        )
        torch.testing.assert_close(surgery.cut(model, "layer1.0.relu")(x), expected)


def test_split_after_the_last_module_gives_an_identity_tail() -> None:
    model, x, expected, _ = zoo("resnet18")
    head, tail = surgery.split(model, "fc")
    with torch.no_grad():
        torch.testing.assert_close(head(x), expected)
    assert not list(tail.parameters())


def test_a_cut_can_be_cut_and_split_again() -> None:
    model, x, expected, _ = zoo("resnet18")
    body = surgery.cut(model, "fc")
    with torch.no_grad():
        torch.testing.assert_close(surgery.cut(body, "layer2")(x), surgery.cut(model, "layer2")(x))
        head, tail = surgery.split(body, "layer3.0")
        torch.testing.assert_close(tail(head(x)), expected)


def test_slice_cuts_after_its_last_member() -> None:
    model, x, _, _ = zoo("mobilenet_v3_small")
    with torch.no_grad():
        torch.testing.assert_close(surgery.cut(model, "features[:4]")(x), model.features[:4](x))


def test_copy_shares_nothing_and_copy_false_shares() -> None:
    model = zoo("resnet18")[0]
    head, tail = surgery.split(model, "layer3.0.bn1")
    source = {id(p) for p in [*model.parameters(), *model.buffers()]}
    ptrs = {t.data_ptr() for t in [*model.parameters(), *model.buffers()] if t.numel()}
    for part in (head, tail):
        for t in [*part.parameters(), *part.buffers()]:
            assert id(t) not in source and (t.data_ptr() not in ptrs or not t.numel())
    assert not {id(p) for p in head.parameters()} & {id(p) for p in tail.parameters()}
    shared_head, _ = surgery.split(model, "layer3.0.bn1", copy=False)
    assert shared_head.get_submodule("conv1").weight is model.conv1.weight
    assert surgery.cut(model, "layer1", copy=False).get_submodule("layer1.0.conv1") is (
        model.layer1[0].conv1
    )


def test_copy_keeps_requires_grad_and_modes() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.conv1.weight.requires_grad_(False)
    model.layer1.eval()
    head, tail = surgery.split(model, "layer2")
    assert head.training and tail.training
    assert not head.get_submodule("conv1").weight.requires_grad
    assert head.get_submodule("layer2.0.conv1").weight.requires_grad
    assert not head.get_submodule("layer1.0.bn1").training
    assert head.get_submodule("layer2.0.bn1").training


def test_childless_modules_stay_live_for_train_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 2)).eval()
    head, _ = surgery.split(model, "1")
    x = torch.randn(4, 8)
    assert torch.equal(head(x), head(x))
    head.train()
    assert not torch.equal(head(x), head(x))


def test_model_is_unchanged_by_cut_and_split() -> None:
    class Const(nn.Module):  # fx stows tensor constants on the traced root
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x) + torch.tensor([1.0, 2.0, 3.0, 4.0]))

    model = Const()
    before = snapshot(model)
    x = torch.randn(3, 4)
    head, tail = surgery.split(model, "a")
    torch.testing.assert_close(tail(head(x)), model(x))
    torch.testing.assert_close(surgery.cut(model, "b")(x), model(x))
    assert_unchanged(model, before)


def test_in_place_ops_before_the_cut_stay_with_the_head() -> None:
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.conv2 = nn.Conv2d(4, 4, 3)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            y.relu_()
            z = self.conv2(y)
            self.act(z)
            return z * 2

    torch.manual_seed(0)
    model = InPlace().eval()
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        expected_conv2 = model.conv2(model.conv(x).relu())
        torch.testing.assert_close(surgery.cut(model, "conv2")(x), expected_conv2)
        for path in ("conv", "conv2", "act"):
            head, tail = surgery.split(model, path)
            torch.testing.assert_close(tail(head(x)), model(x))


def test_tuple_outputs_and_several_inputs() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.a(x), self.b(x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()
            self.out = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            p, q = self.pair(x)
            return self.out(p * q + y)

    torch.manual_seed(0)
    model = Net()
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    head, tail = surgery.split(model, "pair")
    value = head(x, y)
    assert isinstance(value, tuple) and isinstance(value[0], tuple)  # (pair output, y)
    torch.testing.assert_close(tail(value), model(x, y))
    torch.testing.assert_close(surgery.cut(model, "pair")(x, y), model.pair(x))


def test_trace_helper_records_module_outputs() -> None:
    model = zoo("resnet18")[0]
    gm = trace(model)
    assert gm.meta["surgery_calls"]["layer1.0.relu"][1].name == "layer1_0_relu_1"
    assert gm.get_submodule("fc") is model.fc
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"][-1] is torch.flatten


def test_split_timm_model() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        for path in ("patch_embed", "blocks.0.attn.qkv", "blocks.1.mlp.fc1", "norm", "head"):
            head, tail = surgery.split(model, path, copy=False)
            torch.testing.assert_close(tail(head(x)), expected)


# --------------------------------------------------------------------------- failures


def test_bad_path_leaves_the_model_unchanged() -> None:
    model = zoo("resnet18")[0]
    before = snapshot(model)
    with pytest.raises(
        surgery.PathNotFoundError, match=r"(?s)split\(ResNet, 'layer5'\).*did you mean 'layer4'"
    ):
        surgery.split(model, "layer5")
    with pytest.raises(surgery.PathNotFoundError, match=r"cut\(ResNet, 'layer1.9'\)"):
        surgery.cut(model, "layer1.9")
    with pytest.raises(surgery.PathSyntaxError):
        surgery.cut(model, "layer1..0")
    with pytest.raises(surgery.ArgumentError, match="cannot split at the root"):
        surgery.split(model, "")
    with pytest.raises(surgery.ArgumentError, match="copy must be True or False"):
        surgery.split(model, "layer1", copy="yes")  # type: ignore[arg-type]
    assert_unchanged(model, before)


def test_cut_inside_a_single_step_module() -> None:
    model = zoo("vit")[0]
    with pytest.raises(
        surgery.PathError,
        match=r"runs inside 'encoder.layers.encoder_layer_0.self_attention' \(MultiheadAttention\)",
    ):
        surgery.split(model, "encoder.layers.encoder_layer_0.self_attention.out_proj")


def test_module_never_called() -> None:
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
            self.spare = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return x

    model = Unused()
    with pytest.raises(surgery.PathError, match=r"never calls it \(in train mode\)"):
        surgery.cut(model, "spare")
    # a ModuleList iterated entry after entry is cut after its last entry
    assert split_points(model) == ["blocks", "blocks.0", "blocks.1"]
    x = torch.randn(2, 4)
    torch.testing.assert_close(surgery.cut(model, "blocks")(x), model(x))


def test_module_list_used_apart_is_not_a_cut_point() -> None:
    class Heads(nn.Module):  # entries applied to the same input: no "after the last entry"
        def __init__(self) -> None:
            super().__init__()
            self.heads = nn.ModuleList([nn.Linear(4, 2), nn.Linear(4, 2)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return sum(h(x) for h in self.heads)  # type: ignore[return-value]

    model = Heads()
    assert split_points(model) == ["heads.0", "heads.1"]
    with pytest.raises(
        surgery.PathError,
        match=r"(?s)never calls it.*entries run one after another.*e.g. 'heads.1'",
    ):
        surgery.split(model, "heads")


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow: not traceable
            return y
        return -y


def test_untraceable_forward_raises_trace_error_with_advice() -> None:
    model = _Branchy()
    before = snapshot(model)
    with pytest.raises(surgery.TraceError) as info:
        surgery.split(model, "conv")
    text = str(info.value)
    assert text.startswith("split(_Branchy, 'conv'): torch.fx cannot trace _Branchy.forward")
    assert "symbolically traced variables cannot be used as inputs to control flow" in text
    assert "surgery.take(model, 'conv')" in text
    assert_unchanged(model, before)


def test_untraceable_submodule_becomes_one_step() -> None:
    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 3, 1)
            self.inner = _Branchy()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(
                torch.flatten(nn.functional.adaptive_avg_pool2d(self.inner(self.stem(x)), 1), 1)
            )

    torch.manual_seed(0)
    model = Outer().eval()
    x = torch.randn(2, 3, 8, 8)
    for path in ("stem", "inner", "fc"):
        head, tail = surgery.split(model, path)
        torch.testing.assert_close(tail(head(x)), model(x))
    with pytest.raises(
        surgery.TraceError, match=r"cannot cut inside 'inner': torch.fx cannot trace its forward"
    ):
        surgery.cut(model, "inner.conv")
    assert trace(model).meta["surgery_opaque"].keys() == {"inner"}


@pytest.mark.slow
def test_inception_aux_head_is_not_a_cut_point_in_eval() -> None:
    torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False).eval()
    with pytest.raises(
        surgery.PathError, match=r"GoogLeNet.forward never calls it \(in eval mode\)"
    ):
        surgery.cut(model, "aux1")
    x = torch.randn(1, 3, 64, 64)
    head, tail = surgery.split(model, "inception4a")
    with torch.no_grad():
        torch.testing.assert_close(tail(head(x)), model(x))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "size", "paths"),
    [
        ("densenet121", 64, ["features.denseblock2.denselayer3.conv1", "features.transition3"]),
        ("convnext_tiny", 64, ["features.5.4.block.2", "classifier.1"]),
        ("vit_b_16", 224, ["encoder.layers.encoder_layer_5.mlp.1", "encoder.ln"]),
    ],
)
def test_split_is_lossless_on_full_size_models(name: str, size: int, paths: list[str]) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        for path in paths:
            head, tail = surgery.split(model, path, copy=False)
            torch.testing.assert_close(tail(head(x)), expected)
        reference = create_feature_extractor(model, {paths[-1]: "out"})
        torch.testing.assert_close(surgery.cut(model, paths[-1])(x), reference(x)["out"])


def test_getitem_unpacking_is_used_for_carried_values() -> None:
    model = zoo("resnet18")[0]
    _, tail = surgery.split(model, "layer2.0.conv1")
    calls = [n.target for n in tail.graph.nodes if n.op == "call_function"]
    assert calls.count(operator.getitem) == 2


def _add_into(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x.add_(y)  # the caller ignores the result: only the side effect matters
    return x


torch.fx.wrap("_add_into")


class SideEffect(nn.Module):
    """torchvision's MViT: a wrapped function adds into a value in place, its result unused."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.c = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        g = self.b(h)
        _add_into(g, h)
        return self.c(g)


@pytest.mark.parametrize("path", ["a", "b", "c"])
def test_split_keeps_a_side_effect_whose_result_is_unused(path: str) -> None:
    m = SideEffect().eval()
    x = torch.randn(3, 4)
    head, tail = surgery.split(m, path)
    with torch.no_grad():
        torch.testing.assert_close(tail(head(x)), m(x))
    if path == "b":  # cut at b returns b's own output, before the addition
        with torch.no_grad():
            torch.testing.assert_close(surgery.cut(m, "b")(x), m.b(m.a(x)))
