"""Every operation on a model built on the meta device: vit_h_14 (632 M parameters, 2.5 GB).

Nothing here may allocate the model's storage: each test checks that the
parameters stay on meta (new modules too), and that loading materializes
exactly the loaded tensors.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import surgery
from surgery import LoadError, VerificationError

VIT_H_PARAMS = 632_045_800
INPUT = (1, 3, 224, 224)
BLOCK_PARAMS = 19_677_440  # one encoder_layer of vit_h_14 (width 1280, mlp 5120)


def vit_h() -> nn.Module:
    with torch.device("meta"):
        return torchvision.models.vit_h_14(weights=None)


def _all_meta(model: nn.Module) -> bool:
    return all(t.is_meta for t in [*model.parameters(), *model.buffers()])


def _numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """A shared vit_h_14 on meta, for operations that do not change it."""
    return vit_h()


def test_built_on_meta_costs_no_storage(model: nn.Module) -> None:
    assert _numel(model) == VIT_H_PARAMS
    assert _all_meta(model)


def test_get_and_find(model: nn.Module) -> None:
    block = surgery.get(model, "encoder.layers.encoder_layer_31")
    assert _numel(block) == BLOCK_PARAMS and _all_meta(block)
    assert len(surgery.find(model, "encoder.layers.*.mlp")) == 32
    assert surgery.find(model, "encoder.layers.encoder_layer_3?.self_attention") == [
        f"encoder.layers.encoder_layer_{i}.self_attention" for i in range(30, 32)
    ]
    assert surgery.get(model, "heads.head").weight.shape == (1000, 1280)


def test_replace_delete_insert_stay_on_meta() -> None:
    m = vit_h()
    with torch.device("meta"):
        new_mlp = nn.Sequential(nn.Linear(1280, 640), nn.GELU(), nn.Linear(640, 1280))
    surgery.replace(m, "encoder.layers.encoder_layer_31.mlp", new_mlp)
    mlp_old = 2 * 1280 * 5120 + 5120 + 1280
    mlp_new = 2 * 1280 * 640 + 640 + 1280
    assert _numel(m) == VIT_H_PARAMS - mlp_old + mlp_new
    surgery.delete(m, "encoder.layers.encoder_layer_30")
    assert _numel(m) == VIT_H_PARAMS - mlp_old + mlp_new - BLOCK_PARAMS
    assert len(m.encoder.layers) == 31
    with torch.device("meta"):
        extra = nn.LayerNorm(1280)
    name = surgery.insert(m, "encoder.layers.encoder_layer_0", extra, after=True)
    assert surgery.get(m, name) is extra
    assert _all_meta(m)


def test_tree_with_shapes(model: nn.Module) -> None:
    t = surgery.tree(model, input_size=INPUT, depth=2)
    rows = {r.path: r for r in t.rows}
    assert t.total == VIT_H_PARAMS
    assert tuple(rows["conv_proj"].output_shape) == (1, 1280, 16, 16)
    assert tuple(rows["encoder"].output_shape) == (1, 257, 1280)
    assert tuple(rows["heads"].output_shape) == (1, 1000)
    assert rows["encoder.layers"].total == 32 * BLOCK_PARAMS
    assert _all_meta(model)


def test_cut_and_split(model: nn.Module) -> None:
    x = torch.empty(INPUT, device="meta")
    body = surgery.cut(model, "encoder.layers.encoder_layer_15")
    assert _all_meta(body)
    assert body(x).shape == (1, 257, 1280)
    head, tail = surgery.split(model, "encoder.layers.encoder_layer_15")
    assert _all_meta(head) and _all_meta(tail)
    assert tail(head(x)).shape == (1, 1000)
    assert _numel(head) + _numel(tail) == VIT_H_PARAMS


def test_take_and_compose(model: nn.Module) -> None:
    blocks = surgery.take(model, "encoder.layers[:2]")
    assert _all_meta(blocks) and _numel(blocks) == 2 * BLOCK_PARAMS
    hybrid = surgery.compose(
        blocks=(model, "encoder.layers[:2]"),
        ln=(model, "encoder.ln"),
        input_size=(1, 257, 1280),
    )
    assert list(hybrid._modules) == ["blocks", "ln"]
    assert _all_meta(hybrid)
    assert hybrid(torch.empty(1, 257, 1280, device="meta")).shape == (1, 257, 1280)
    with torch.device("meta"):
        wrong = nn.Linear(1000, 10)
    with pytest.raises(surgery.ShapeMismatchError, match=r"1280.*1000|1000.*1280"):
        surgery.compose(blocks=(model, "encoder.layers[:1]"), fc=wrong, input_size=(1, 257, 1280))


def test_replace_head_and_adapt_input_keep_new_modules_on_meta() -> None:
    m = vit_h()
    surgery.replace_head(m, 10)
    assert m.heads.head.weight.shape == (10, 1280) and m.heads.head.weight.is_meta
    surgery.adapt_input(m, 1)
    assert m.conv_proj.weight.shape == (1280, 1, 14, 14) and m.conv_proj.weight.is_meta
    assert _all_meta(m)
    assert m(torch.empty(1, 1, 224, 224, device="meta")).shape == (1, 10)


def test_freeze_unfreeze_and_trainable() -> None:
    m = vit_h()
    surgery.freeze(m, "conv_proj", "encoder.layers[:16]")
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    frozen = 753_920 + 16 * BLOCK_PARAMS
    assert trainable == VIT_H_PARAMS - frozen
    report = surgery.trainable(m)
    assert report.frozen == frozen and report.trainable == VIT_H_PARAMS - frozen
    surgery.unfreeze(m, "encoder.layers[8:16]")
    assert (
        sum(p.numel() for p in m.parameters() if not p.requires_grad) == frozen - 8 * BLOCK_PARAMS
    )
    assert _all_meta(m)


def test_layer_groups_and_param_groups() -> None:
    m = vit_h()
    split_at = ["encoder.layers.encoder_layer_16", "heads"]
    groups = surgery.layer_groups(m, split_at)
    # class_token, conv_proj (2), pos_embedding, 16 blocks | 16 blocks, encoder.ln | head
    assert [len(g) for g in groups] == [4 + 16 * 12, 16 * 12 + 2, 2]
    assert groups[2] == ["heads.head.weight", "heads.head.bias"]
    surgery.freeze(m, "conv_proj")
    pg = surgery.param_groups(m, slice(1e-5, 1e-3), split_at=split_at, weight_decay=0.05)
    assert [g["lr"] for g in pg] == pytest.approx([1e-5, 1e-4, 1e-3])
    assert sum(p.numel() for g in pg for p in g["params"]) == VIT_H_PARAMS - 753_920
    assert all(p.is_meta for g in pg for p in g["params"])


def test_summary_and_verify(model: nn.Module) -> None:
    stats = surgery.verify(model, INPUT, output_shape=(1, 1000), total_params=VIT_H_PARAMS)
    assert stats.total_params == VIT_H_PARAMS
    with pytest.raises(VerificationError, match=r"total_params.*632,?045,?800|632045800"):
        surgery.verify(model, INPUT, total_params=VIT_H_PARAMS + 1)
    assert surgery.summary(model, INPUT).total_params == VIT_H_PARAMS
    assert _all_meta(model)


# -- loading into the meta model: exactly the loaded tensors are materialized ---------------


@pytest.fixture(scope="module")
def head_and_last_block(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A real checkpoint of a few vit_h_14 tensors (the head, the final norm, one attention)."""
    ref = vit_h()
    g = torch.Generator().manual_seed(0)
    wanted = re.compile(r"^(heads\.|encoder\.ln\.|encoder\.layers\.encoder_layer_31\.ln_1\.)")
    sd = {
        k: torch.randn(v.shape, generator=g) for k, v in ref.state_dict().items() if wanted.match(k)
    }
    path = tmp_path_factory.mktemp("vit_h") / "part.safetensors"
    surgery.save_state_dict(sd, path)
    return path, sd


def test_load_materializes_exactly_the_loaded_tensors(
    head_and_last_block: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, sd = head_and_last_block
    m = vit_h()
    head_before = m.heads.head.weight
    report = surgery.load_partial(path, into=m, at="heads", rename={"heads.": ""}, include="heads")
    assert report.loaded == ["heads.head.weight", "heads.head.bias"]
    assert not m.heads.head.weight.is_meta and torch.equal(
        m.heads.head.weight, sd["heads.head.weight"]
    )
    assert m.heads.head.weight is not head_before  # a meta Parameter cannot keep its identity
    assert isinstance(m.heads.head.weight, nn.Parameter) and m.heads.head.weight.requires_grad
    materialized = [n for n, p in m.named_parameters() if not p.is_meta]
    assert materialized == ["heads.head.weight", "heads.head.bias"]


def test_tensors_left_on_meta_are_an_error_naming_them(
    head_and_last_block: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, _ = head_and_last_block
    m = vit_h()
    with pytest.raises(LoadError, match=r"(?s)would still be on the meta device.*'class_token'"):
        surgery.load_partial(path, into=m)
    assert _all_meta(m)  # nothing was loaded
    # scoped by at=: the rest of the model may stay on meta
    report = surgery.load_partial(
        path, into=m, at="encoder.ln", rename={"encoder.ln.": ""}, include="encoder.ln"
    )
    assert report.loaded == ["encoder.ln.weight", "encoder.ln.bias"]


def test_init_missing_names_modules_without_an_initializer(
    head_and_last_block: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, _ = head_and_last_block
    m = vit_h()
    with pytest.raises(
        LoadError,
        match=r"(?s)cannot initialize 2 module\(s\).*'\(root\)' \(VisionTransformer\) has no reset_parameters\(\) to initialize 'class_token'.*'encoder' \(Encoder\).*'encoder\.pos_embedding'",
    ):
        surgery.load_partial(path, into=m, init_missing=True)
    assert _all_meta(m)


def test_init_missing_on_a_submodule(
    head_and_last_block: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, sd = head_and_last_block
    m = vit_h()
    block = "encoder.layers.encoder_layer_31"
    torch.manual_seed(0)
    report = surgery.load_partial(
        path, into=m, at=block, include=f"{block}.ln_1", rename={f"{block}.": ""}, init_missing=True
    )
    assert report.loaded == [f"{block}.ln_1.weight", f"{block}.ln_1.bias"]
    assert report.initialized == [
        f"{block}.self_attention.in_proj_weight",
        f"{block}.self_attention.in_proj_bias",
        f"{block}.self_attention.out_proj.weight",
        f"{block}.self_attention.out_proj.bias",
        f"{block}.ln_2.weight",
        f"{block}.ln_2.bias",
        f"{block}.mlp.0.weight",
        f"{block}.mlp.0.bias",
        f"{block}.mlp.3.weight",
        f"{block}.mlp.3.bias",
    ]
    b = surgery.get(m, block)
    assert torch.equal(b.ln_1.weight, sd[f"{block}.ln_1.weight"])
    assert torch.equal(b.ln_2.weight, torch.ones(1280))  # LayerNorm.reset_parameters
    assert torch.equal(b.self_attention.in_proj_bias, torch.zeros(3840))  # MHA's own init
    assert b.mlp[0].weight.abs().max() <= 1 / 1280**0.5  # Linear.reset_parameters bound
    assert all(not t.is_meta for t in b.parameters())
    assert sum(not p.is_meta for p in m.parameters()) == 12  # nothing else materialized
    x = torch.randn(1, 5, 1280)
    assert b(x).shape == (1, 5, 1280)


# -- loading into meta models: assignment semantics (small models) ------------------------


def _meta_resnet(**kw: int) -> nn.Module:
    with torch.device("meta"):
        return torchvision.models.resnet18(weights=None, **kw)


def test_mapping_tensors_are_assigned_without_a_copy() -> None:
    sd = torchvision.models.resnet18(weights=None).state_dict()
    m = _meta_resnet()
    report = surgery.load_partial(sd, into=m)
    assert len(report.loaded) == 122 and report.initialized == []
    assert m.conv1.weight.data_ptr() == sd["conv1.weight"].data_ptr()
    assert m.bn1.running_mean.data_ptr() == sd["bn1.running_mean"].data_ptr()  # buffers too
    assert isinstance(m.conv1.weight, nn.Parameter) and m.conv1.weight.requires_grad


def test_a_module_source_is_copied_so_two_models_never_share_storage() -> None:
    src = torchvision.models.resnet18(weights=None)
    m = _meta_resnet()
    surgery.load_partial(src, into=m)
    assert torch.equal(m.conv1.weight, src.conv1.weight)
    assert m.conv1.weight.data_ptr() != src.conv1.weight.data_ptr()


def test_a_file_source_is_assigned_from_the_mapped_file(tmp_path: Path) -> None:
    src = torchvision.models.resnet18(weights=None)
    surgery.save_state_dict(src, tmp_path / "r18.safetensors")
    torch.save(src.state_dict(), tmp_path / "r18.pt")
    for name in ("r18.safetensors", "r18.pt"):
        m = _meta_resnet()
        surgery.load_partial(tmp_path / name, into=m)
        for (k, a), b in zip(src.state_dict().items(), m.state_dict().values()):
            assert torch.equal(a, b), (name, k)
        x = torch.randn(1, 3, 64, 64)
        assert torch.allclose(m.eval()(x), src.eval()(x), atol=1e-5), name


def test_requires_grad_casts_and_ties_on_meta() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.embed.weight
            self.norm = nn.LayerNorm(4)

    with torch.device("meta"):
        m = Tied()
    m.norm.weight.requires_grad_(False)
    w = torch.randn(10, 4, dtype=torch.float64)
    sd = {"embed.weight": w, "norm.weight": torch.ones(4), "norm.bias": torch.zeros(4)}
    report = surgery.load_partial(sd, into=m)
    assert report.loaded == ["embed.weight", "out.weight", "norm.weight", "norm.bias"]
    assert report.cast["embed.weight"] == (torch.float64, torch.float32)
    assert m.out.weight is m.embed.weight and m.embed.weight.dtype == torch.float32
    assert torch.equal(m.embed.weight, w.float())
    assert m.norm.weight.requires_grad is False and m.norm.bias.requires_grad is True


def test_the_same_memory_is_never_given_to_two_untied_parameters() -> None:
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    w, b = torch.randn(3, 3), torch.randn(3)
    report = surgery.load_partial({"0.weight": w, "0.bias": b, "1.weight": w, "1.bias": b}, into=m)
    assert len(report.loaded) == 4
    assert m[0].weight.data_ptr() != m[1].weight.data_ptr() and torch.equal(m[1].weight, w)


def test_dry_run_and_a_failing_load_leave_the_meta_model_unchanged() -> None:
    from tests.snapshot import assert_unchanged, snapshot

    sd = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    m = _meta_resnet()
    before = snapshot(m)
    report = surgery.load_partial(sd, into=m, exclude="fc", dry_run=True, init_missing=True)
    assert report.dry_run and report.initialized == ["fc.weight", "fc.bias"]
    assert_unchanged(m, before)
    with pytest.raises(
        LoadError, match=r"'fc\.weight': checkpoint \(10, 512\) vs model \(1000, 512\)"
    ):
        surgery.load_partial(sd, into=m, init_missing=True)
    assert_unchanged(m, before)


def test_a_fault_while_materializing_leaves_the_meta_model_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from surgery.checkpoint import _materialize
    from tests.snapshot import assert_unchanged, snapshot

    sd = torchvision.models.resnet18(weights=None).state_dict()
    m = _meta_resnet()
    before = snapshot(m)
    calls = {"n": 0}
    real = _materialize.read_for

    def flaky(source: object, key: str, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 50:
            raise OSError("disk went away")
        return real(source, key, target)  # type: ignore[arg-type]

    monkeypatch.setattr("surgery.checkpoint._commit.read_for", flaky)
    with pytest.raises(
        LoadError,
        match=r"materializing '.*' failed \(OSError: disk went away\); the model was left unchanged",
    ):
        surgery.load_partial(sd, into=m)
    assert_unchanged(m, before)


def test_init_missing_initializes_with_the_modules_own_initializer() -> None:
    sd = torchvision.models.resnet18(weights=None).state_dict()
    m = _meta_resnet(num_classes=7)
    report = surgery.load_partial(sd, into=m, exclude="fc", init_missing=True)
    assert report.initialized == ["fc.weight", "fc.bias"] and report.missing == [
        "fc.weight",
        "fc.bias",
    ]
    assert "initialized on CPU by their modules (2): 'fc.bias', 'fc.weight'" in str(report)
    assert report.to_dict()["initialized"] == ["fc.weight", "fc.bias"]
    assert m.fc.weight.shape == (7, 512) and m.fc.weight.abs().max() <= 1 / 512**0.5
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_init_missing_never_reinitializes_what_is_already_real() -> None:
    with torch.device("meta"):
        lin = nn.Linear(4, 4)
    lin.weight = nn.Parameter(torch.full((4, 4), 7.0))  # materialized by hand; bias still on meta
    m = nn.Sequential(lin, nn.LayerNorm(4))
    with torch.device("meta"):
        m[1] = nn.LayerNorm(4)
    report = surgery.load_partial(
        {"1.weight": torch.ones(4), "1.bias": torch.zeros(4)}, into=m, init_missing=True
    )
    assert report.initialized == ["0.bias"]
    assert torch.equal(m[0].weight, torch.full((4, 4), 7.0)) and not m[0].bias.is_meta


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_init_missing_must_be_a_bool(value: object) -> None:
    with pytest.raises(surgery.ArgumentError, match=r"init_missing must be True or False"):
        surgery.load_partial({"weight": torch.ones(1)}, into=nn.Linear(1, 1), init_missing=value)  # type: ignore[arg-type]
