"""match_keys / load_partial(rename="auto") / check_transfer: twins, bad input, invariants."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import surgery
from surgery import ArgumentError, LoadError, VerificationError, check_transfer, match_keys
from surgery.cli import main
from tests.snapshot import assert_unchanged, snapshot

timm = pytest.importorskip("timm")


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if not t.is_floating_point():
                continue
            if t.ndim <= 1:  # norms, biases, statistics: near 1, positive
                t.copy_(torch.rand(t.shape, generator=g) * 0.2 + 0.9)
            else:  # weights: variance-preserving
                t.copy_(torch.randn(t.shape, generator=g) / max(1, t[0].numel()) ** 0.5)
    return model


def transfer(a: nn.Module, b: nn.Module, x: torch.Tensor, **kw: object) -> surgery.LoadReport:
    """Load a's state dict into b with rename='auto' and prove it by outputs."""
    report = surgery.load_partial(a.state_dict(), into=b, rename="auto", **kw)  # type: ignore[arg-type]
    check_transfer(a, b, x, rtol=1e-3, atol=1e-4)
    return report


# -- timm <-> torchvision twins ------------------------------------------------

SAME_SHAPES = [
    ("resnet50", "resnet50", 64),
    ("efficientnet_b0", "efficientnet_b0", 64),
    ("densenet121", "densenet121", 64),
    ("vit_b_16", "vit_base_patch16_224", 224),
    ("regnet_y_400mf", "regnety_004", 64),
    ("regnet_x_400mf", "regnetx_004_tv", 64),
]
RESHAPED = [  # twins that store some tensors in other shapes (same values): loaded reshaped
    ("mobilenet_v3_large", "mobilenetv3_large_100", 64, 1),  # Linear vs 1x1 conv_head
    ("convnext_tiny", "convnext_tiny", 64, 18),  # layer scale (C, 1, 1) vs gamma (C,)
    ("vgg16_bn", "vgg16_bn", 224, 2),  # Linear(25088, 4096) vs Conv2d(512, 4096, 7); 1x1
]


@pytest.mark.slow
@pytest.mark.parametrize("tv_name,timm_name,size", SAME_SHAPES)
def test_timm_torchvision_twins_both_ways(tv_name: str, timm_name: str, size: int) -> None:
    tv = torchvision.models.get_model(tv_name, weights=None).eval()
    tm = timm.create_model(timm_name, pretrained=False).eval()
    x = torch.randn(1, 3, size, size)
    for a, b in ((tv, tm), (tm, tv)):
        randomize(a, seed=1)
        km = match_keys(a, b)
        assert km.ambiguous == [] and km.mismatched == {}
        assert km.unmatched_model == [] and km.unmatched_checkpoint == []
        assert len(km.mapping) == len(b.state_dict())
        report = transfer(a, b, x)
        assert len(report.loaded) == len(b.state_dict())
        assert set(report.how.values()) <= {"name", "structure"}


def test_vit_names_from_the_issue() -> None:
    with torch.device("meta"):
        tv = torchvision.models.vit_b_16(weights=None)
        tm = timm.create_model("vit_base_patch16_224", pretrained=False)
    km = match_keys(tv, tm)
    assert km.mapping["patch_embed.proj.weight"] == "conv_proj.weight"
    assert km.mapping["cls_token"] == "class_token"
    assert km.mapping["pos_embed"] == "encoder.pos_embedding"  # registered elsewhere
    assert km.mapping["blocks.3.mlp.fc1.weight"] == "encoder.layers.encoder_layer_3.mlp.0.weight"
    assert km.mapping["blocks.3.mlp.fc2.bias"] == "encoder.layers.encoder_layer_3.mlp.3.bias"
    assert km.mapping["blocks.0.attn.qkv.weight"] == (
        "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"
    )
    assert all(km.how[k] == "structure" for k in km.mapping)
    # the table is grouped by module, the rules reproduce the mapping
    text = str(km)
    assert "  blocks.3.mlp.fc1\n" in text and "[structure]" in text
    rules = km.rules()
    assert len(rules) <= 14, rules
    with torch.device("meta"):
        fresh = timm.create_model("vit_base_patch16_224", pretrained=False)
    pinned = match_keys(tv, fresh, rename=rules)
    assert pinned.mapping == km.mapping and set(pinned.how.values()) == {"rename"}


@pytest.mark.slow
@pytest.mark.parametrize("tv_name,timm_name,size,n_reshaped", RESHAPED)
def test_twins_with_reshaped_tensors(
    tv_name: str, timm_name: str, size: int, n_reshaped: int
) -> None:
    tv = torchvision.models.get_model(tv_name, weights=None).eval()
    tm = timm.create_model(timm_name, pretrained=False).eval()
    if tv_name.startswith("mobilenet"):  # the zoos differ in BatchNorm eps (1e-3 vs 1e-5)
        for m in tm.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = 1e-3
    x = torch.randn(1, 3, size, size)
    for a, b in ((tv, tm), (tm, tv)):
        randomize(a, seed=2)
        km = match_keys(a, b)
        assert km.ambiguous == [] and km.unmatched_model == [] and km.unmatched_checkpoint == []
        assert km.mismatched == {} and len(km.mapping) == len(b.state_dict())
        assert len(km.reshaped) == n_reshaped
        for m, (sa, sb) in km.reshaped.items():
            assert sa != sb and torch.Size(sa).numel() == torch.Size(sb).numel()
            assert tuple(b.state_dict()[m].shape) == sb
            assert tuple(a.state_dict()[km.mapping[m]].shape) == sa
        assert "reshaped" in str(km) and km.to_dict()["reshaped"]
        report = transfer(a, b, x)
        assert report.reshaped == km.reshaped and len(report.loaded) == len(b.state_dict())
        # the pinned rules reproduce it, with on_mismatch="reshape" for the reshapes
        rules = km.rules()
        with pytest.raises(LoadError, match="shape mismatch"):
            surgery.load_partial(a, into=b, rename=rules, dry_run=True)
        pinned = surgery.load_partial(a, into=b, rename=rules, on_mismatch="reshape")
        assert pinned.reshaped == km.reshaped and pinned.renamed == report.renamed


# -- flat <-> staged blocks, extras, heads ---------------------------------------


class Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self._conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self._bn1 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self._bn1(self._conv(x)))


class Named(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


STAGES = [[(3, 8), (8, 8)], [(8, 16), (16, 16), (16, 16)], [(16, 24)]]


class Flat(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self._blocks = nn.Sequential(*[Block(a, b) for stage in STAGES for a, b in stage])
        self._fc = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._blocks(x).mean((2, 3)))


class Staged(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[nn.Sequential(*[Named(a, b) for a, b in stage]) for stage in STAGES]
        )
        self.head = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).mean((2, 3)))


def test_flat_into_staged_and_back() -> None:
    x = torch.randn(2, 3, 8, 8)
    flat, staged = randomize(Flat()).eval(), Staged().eval()
    km = match_keys(flat, staged)
    assert km.mapping["blocks.1.2.bn.running_var"] == "_blocks.4._bn1.running_var"
    assert km.mapping["blocks.2.0.conv.weight"] == "_blocks.5._conv.weight"
    assert km.ambiguous == [] and km.unmatched_model == []
    transfer(flat, staged, x)
    back = Flat().eval()
    randomize(staged, seed=3)
    km2 = match_keys(staged, back)
    assert km2.mapping["_blocks.4._bn1.running_var"] == "blocks.1.2.bn.running_var"
    transfer(staged, back, x)


def test_extra_tensors_and_a_head_of_another_size() -> None:
    src = randomize(Flat(classes=1000))
    sd = dict(src.state_dict())
    sd["position_ids"] = torch.arange(77)[None]
    sd["projector.0.weight"] = torch.randn(128, 24)
    sd["projector.0.bias"] = torch.randn(128)
    model = Staged(classes=10)
    km = match_keys(sd, model)
    assert km.mismatched == {
        "head.weight": ("_fc.weight", (1000, 24), (10, 24)),
        "head.bias": ("_fc.bias", (1000,), (10,)),
    }
    assert sorted(km.unmatched_checkpoint) == [
        "position_ids",
        "projector.0.bias",
        "projector.0.weight",
    ]
    assert km.ambiguous == [] and km.unmatched_model == []
    before = snapshot(model)
    with pytest.raises(LoadError, match="diverge at 'head'"):
        surgery.load_partial(sd, into=model, rename="auto")
    assert_unchanged(model, before)
    report = surgery.load_partial(sd, into=model, rename="auto", on_mismatch="skip")
    assert set(report.mismatched) == {"head.weight", "head.bias"}
    assert torch.equal(model.blocks[1][2].bn.running_var, sd["_blocks.4._bn1.running_var"])
    assert report.how["blocks.0.0.conv.weight"] == "structure"
    assert report.renamed["blocks.0.0.conv.weight"] == "_blocks.0._conv.weight"
    assert "[structure]" in str(report) and report.to_dict()["how"] == report.how


def test_num_batches_tracked_only_in_checkpoint() -> None:
    src = randomize(Flat())
    sd = src.state_dict()
    model = Staged()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = True
            m.register_buffer("num_batches_tracked", None)
    km = match_keys(sd, model)
    assert km.ambiguous == [] and km.unmatched_model == []
    assert sorted(km.unmatched_checkpoint) == sorted(k for k in sd if "num_batches" in k)


def test_ema_copy_under_another_prefix() -> None:
    src = randomize(Flat())
    sd = {**src.state_dict(), **{f"ema.{k}": v + 1 for k, v in src.state_dict().items()}}
    # the same names: the live weights load by name, the EMA copy is left over
    km = match_keys(sd, Flat())
    assert set(km.how.values()) == {"name"}
    assert km.unmatched_checkpoint == [k for k in sd if k.startswith("ema.")]
    # other names: both copies fit; the structure cannot choose, so nothing is guessed
    km2 = match_keys(sd, Staged())
    assert km2.mapping == {} or all(not c.startswith("ema.") for c in km2.mapping.values())
    assert km2.ambiguous or km2.mapping
    with pytest.raises(LoadError, match="could take more than one"):
        surgery.load_partial(sd, into=Staged(), rename="auto")
    # ... until the user picks one
    model = Staged().eval()
    surgery.load_partial(sd, into=model, rename="auto", exclude="ema")
    check_transfer(src.eval(), model, torch.randn(1, 3, 8, 8))


def test_identical_blocks_in_unknown_order_are_ambiguous() -> None:
    a = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 8))
    sd = a.state_dict()
    del sd["1.weight"], sd["1.bias"]  # one of two identical layers is missing
    km = match_keys(sd, nn.ModuleDict({"x": nn.Linear(4, 4), "y": nn.Linear(4, 4)}))
    assert km.mapping == {}
    assert km.ambiguous  # x or y: either could be the checkpoint's only 4x4 layer
    b = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model = nn.Module()
    model.fc = b
    with pytest.raises(LoadError, match="could take more than one"):
        surgery.load_partial(sd, into=model, rename="auto")
    with pytest.raises(LoadError, match="nothing to load"):  # skipping leaves nothing
        surgery.load_partial(sd, into=model, rename="auto", on_ambiguous="skip")


# -- bad input -------------------------------------------------------------------


def test_resnet34_into_resnet50_diverges() -> None:
    with torch.device("meta"):
        r34 = torchvision.models.resnet34(weights=None)
    r50 = torchvision.models.resnet50(weights=None)
    before = snapshot(r50)
    with pytest.raises(LoadError, match=r"diverge at 'layer1\.0\.conv1'") as err:
        surgery.load_partial(r34.state_dict(), into=r50, rename="auto")
    assert "(64, 64, 3, 3)" in str(err.value) and "nothing was loaded" in str(err.value)
    assert err.value.op == "load_partial"
    assert_unchanged(r50, before)


@pytest.mark.parametrize(
    "rename,match",
    [
        ("automatic", "got the string 'automatic'"),
        (["auto", "auto"], "more than once"),
        (["auto", 3], "combines 'auto'"),
        (["auto", {"a": "b"}, {"c": "d"}], "combines 'auto'"),
    ],
)
def test_auto_with_a_wrong_rule(rename: object, match: str) -> None:
    m = Net()
    before = snapshot(m)
    with pytest.raises(ArgumentError, match=match):
        surgery.load_partial(Net().state_dict(), into=m, rename=rename)  # type: ignore[arg-type]
    assert_unchanged(m, before)


def test_auto_argument_checks() -> None:
    with pytest.raises(ArgumentError, match="pass into="):
        surgery.load_partial(Net().state_dict(), rename="auto")
    with pytest.raises(ArgumentError, match="on_ambiguous"):
        surgery.load_partial(Net().state_dict(), into=Net(), rename="auto", on_ambiguous="guess")
    with pytest.raises(ArgumentError, match=r"nn\.Module"):
        match_keys({}, "resnet")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="belongs to load_partial"):
        match_keys(Net(), Net(), rename="auto")  # type: ignore[arg-type]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


def test_explicit_rules_first_then_auto() -> None:
    src = randomize(Net())
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    sd["module.fc.weight"] = sd.pop("module.fc.weight")
    other = nn.Module()
    other.trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    other.fc = nn.Linear(4, 3)
    report = surgery.load_partial(sd, into=other, rename=["auto", {"module.": ""}])
    assert report.how["fc.bias"] == "rename" and report.how["trunk.0.weight"] == "structure"
    assert report.renamed["trunk.1.running_mean"] == "module.body.1.running_mean"
    assert report.unused_rules == []


def test_at_and_include() -> None:
    src = randomize(Net())
    model = nn.Module()
    model.enc = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    km = match_keys(src, model, at="enc", include="body")
    assert km.mapping["enc.0.weight"] == "body.0.weight"
    report = surgery.load_partial(src, into=model, at="enc", include="body", rename="auto")
    assert torch.equal(model.enc[1].running_var, src.body[1].running_var)
    assert report.loaded[0] == "enc.0.weight"


def test_match_keys_from_a_file_reads_headers_only(tmp_path: object) -> None:
    import os

    src = randomize(Net())
    path = os.path.join(str(tmp_path), "net.safetensors")
    surgery.save_state_dict(src, path)
    with torch.device("meta"):
        other = nn.Module()
        other.trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        other.head = nn.Linear(4, 3)
    km = match_keys(path, other)
    assert km.mapping["head.weight"] == "fc.weight"
    assert json.loads(json.dumps(km.to_dict()))["mapping"] == km.mapping


def test_fused_qkv_against_separate_is_never_forced() -> None:
    class Fused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(8, 24)
            self.proj = nn.Linear(8, 8)

    class Separate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
            self.out = nn.Linear(8, 8)

    km = match_keys(Fused(), Separate())
    assert km.mapping == {} and km.mismatched == {}
    assert km.unmatched_checkpoint == ["qkv.weight", "qkv.bias"]
    assert km.ambiguous == [
        (["q.weight", "k.weight", "v.weight", "out.weight"], ["proj.weight"]),
        (["q.bias", "k.bias", "v.bias", "out.bias"], ["proj.bias"]),
    ]
    # transposed weights: a (8, 4) against a (4, 8) is never mapped
    km2 = match_keys(nn.Linear(4, 8), nn.Linear(8, 4))
    assert km2.mapping == {} and set(km2.mismatched) == {"weight", "bias"}


# -- check_transfer --------------------------------------------------------------


def test_check_transfer_restores_modes_and_reports() -> None:
    a, b = Net(), Net()
    a.train()
    b.eval()
    b.body.train()
    surgery.load_partial(a, into=b)
    r = check_transfer(a, b, torch.randn(2, 3, 6, 6))
    assert a.training and not b.training and b.body.training and not b.fc.training
    assert r.ok and r.max_abs == 0.0 and r.outputs[0].shape == (2, 3)
    assert "outputs agree" in str(r) and r.to_dict()["ok"] is True


def test_check_transfer_failures() -> None:
    a, b = Net(), Net()
    with pytest.raises(VerificationError, match="outputs differ"):
        check_transfer(a, b, torch.randn(1, 3, 6, 6))
    with pytest.raises(VerificationError, match=r"shape \(1, 5\), the model \(1, 4\)"):
        check_transfer(nn.Linear(3, 5), nn.Linear(3, 4), torch.randn(1, 3))
    with pytest.raises(VerificationError, match="the model's forward raised RuntimeError"):
        check_transfer(nn.Linear(3, 5), nn.Linear(4, 5), torch.randn(1, 3))
    with pytest.raises(ArgumentError, match="rtol"):
        check_transfer(a, b, torch.randn(1, 3, 6, 6), rtol=-1)


def test_check_transfer_several_outputs() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"a": self.fc(x), "b": self.fc(x) * 2}

    a, b = Two(), Two()
    b.load_state_dict(a.state_dict())
    r = check_transfer(a, b, torch.randn(2, 3))
    assert [o.name for o in r.outputs] == ["['a']", "['b']"]


# -- CLI ---------------------------------------------------------------------------


def test_cli_match(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    src = {f"net.{k}": v for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}
    path = os.path.join(str(tmp_path), "r18.pt")
    torch.save(src, path)
    assert main(["match", path, "--into", "torchvision:resnet18"]) == 0
    out = capsys.readouterr().out
    assert "KeyMatch: 122 matched (122 by structure)" in out
    assert main(["match", path, "--into", "torchvision:resnet18", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["mapping"]["fc.bias"] == "net.fc.bias"
    assert main(["match", path, "--into", "torchvision:resnet18", "--rules", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [["^net\\.", ""]]


# -- the invariant -----------------------------------------------------------------


@st.composite
def twins(draw: st.DrawFn) -> tuple[nn.Module, nn.Module, dict[str, str]]:
    """A random stack of stages and its renamed twin (flat or nested, renamed containers,
    blocks of distinct shapes possibly registered in another order), with the true map."""
    n_stages = draw(st.integers(1, 3))
    widths = draw(st.lists(st.integers(1, 6), min_size=n_stages + 1, max_size=n_stages + 1))
    depths = draw(st.lists(st.integers(1, 3), min_size=n_stages, max_size=n_stages))
    flat_twin = draw(st.booleans())
    shuffle_heads = draw(st.booleans())
    a = nn.Module()
    a.stages = nn.ModuleList()
    b = nn.Module()
    b.layers = nn.ModuleList()
    truth: dict[str, str] = {}
    k = 0
    for s in range(n_stages):
        stage_a = nn.ModuleList()
        stage_b = nn.ModuleList()
        for d in range(depths[s]):
            cin = widths[s] if d == 0 else widths[s + 1]
            lin = nn.Linear(cin, widths[s + 1])
            norm = nn.LayerNorm(widths[s + 1])
            blk_a = nn.Module()
            blk_a.fc, blk_a.norm = lin, norm
            stage_a.append(blk_a)
            blk_b = nn.Module()
            blk_b.dense, blk_b.ln = nn.Linear(cin, widths[s + 1]), nn.LayerNorm(widths[s + 1])
            where = f"layers.{k}" if flat_twin else f"layers.{s}.{d}"
            pa = f"stages.{s}.{d}"
            if flat_twin:
                b.layers.append(blk_b)
            else:
                stage_b.append(blk_b)
            for x, y in (("fc", "dense"), ("norm", "ln")):
                for leaf in ("weight", "bias"):
                    truth[f"{where}.{y}.{leaf}"] = f"{pa}.{x}.{leaf}"
            k += 1
        a.stages.append(stage_a)
        if not flat_twin:
            b.layers.append(stage_b)
    # two heads of distinct shapes, maybe registered in the other order
    a.cls = nn.Linear(widths[-1], 7)
    a.box = nn.Linear(widths[-1], 4)
    if shuffle_heads:
        b.box_head = nn.Linear(widths[-1], 4)
        b.cls_head = nn.Linear(widths[-1], 7)
    else:
        b.cls_head = nn.Linear(widths[-1], 7)
        b.box_head = nn.Linear(widths[-1], 4)
    for x, y in (("cls", "cls_head"), ("box", "box_head")):
        for leaf in ("weight", "bias"):
            truth[f"{y}.{leaf}"] = f"{x}.{leaf}"
    return a, b, truth


@settings(max_examples=60, deadline=None)
@given(twins(), st.booleans(), st.integers(0, 100))
def test_match_recovers_the_true_mapping_or_says_ambiguous(
    pair: tuple[nn.Module, nn.Module, dict[str, str]], drop: bool, which: int
) -> None:
    a, b, truth = pair
    sd = a.state_dict()
    dropped: set[str] = set()
    if drop:  # one block of the checkpoint is missing: its keys must never be mapped
        blocks = sorted({".".join(k.split(".")[:3]) for k in sd if k.startswith("stages.")})
        gone = blocks[which % len(blocks)]
        sd = {k: v for k, v in sd.items() if not k.startswith(gone + ".")}
        dropped = {m for m, c in truth.items() if c.startswith(gone + ".")}
    with warnings.catch_warnings():
        km = match_keys(sd, b)
    for m, c in km.mapping.items():
        assert truth[m] == c, (m, c)  # never a wrong mapping
        assert m not in dropped
    ambiguous = {m for ms, _ in km.ambiguous for m in ms}
    assert set(km.mapping) | ambiguous | set(km.unmatched_model) | set(km.mismatched) == set(truth)
    if not drop:
        assert not km.mismatched
        if not ambiguous:
            assert km.mapping == truth


@pytest.mark.slow
def test_recipe_convert_between_zoos(monkeypatch: pytest.MonkeyPatch) -> None:
    """recipes/convert_between_zoos.py checks itself and exits 0 only when every check holds."""
    import runpy
    from pathlib import Path

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    monkeypatch.syspath_prepend(str(recipes))
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(recipes / "convert_between_zoos.py"), run_name="__main__")
    assert done.value.code == 0
