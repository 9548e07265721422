"""load_partial: selection, renaming, validation, casting, ties, atomicity, reports."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torchvision
from torch import nn

import surgery
from surgery import ArgumentError, CheckpointError, LoadError, LoadReport, load_partial
from tests.snapshot import assert_unchanged, snapshot


class Net(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3)
        )
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).mean((2, 3)))


def rand_sd(model: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            out[k] = torch.randn(v.shape, generator=g, dtype=v.dtype)
        else:
            out[k] = v + 7
    return out


# -- the basics ---------------------------------------------------------------


def test_full_load_matches_load_state_dict() -> None:
    src = rand_sd(Net())
    a, b = Net(), Net()
    report = load_partial(src, into=a)
    b.load_state_dict(src)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    assert report.loaded == list(Net().state_dict())
    assert report.missing == [] and report.unexpected == [] and report.renamed == {}
    assert report.cast == {} and report.mismatched == {} and report.unused_rules == []


def test_differential_strict_false_with_extra_and_missing_keys() -> None:
    src = rand_sd(Net())
    src["extra.weight"] = torch.ones(2)
    del src["head.bias"]
    a, b = Net(), Net()
    b.load_state_dict(src, strict=False)
    torch.manual_seed(0)
    ref = b.load_state_dict(src, strict=False)
    report = load_partial(src, into=a)
    assert sorted(report.missing) == sorted(ref.missing_keys) == ["head.bias"]
    assert report.unexpected == ref.unexpected_keys == ["extra.weight"]
    for k, v in a.state_dict().items():
        if k != "head.bias":
            assert torch.equal(v, b.state_dict()[k]), k


def test_parameter_identity_and_optimizer_survive() -> None:
    m = Net()
    params = list(m.parameters())
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    src = rand_sd(Net())
    load_partial(src, into=m)
    assert all(p is q for p, q in zip(params, m.parameters()))
    assert torch.equal(m.head.weight, src["head.weight"])
    m(torch.randn(1, 3, 8, 8)).sum().backward()
    before = m.head.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, m.head.weight)


def test_buffers_are_loaded() -> None:
    m = Net()
    src = rand_sd(Net())
    load_partial(src, into=m)
    assert torch.equal(m.backbone[1].running_mean, src["backbone.1.running_mean"])
    assert int(m.backbone[1].num_batches_tracked) == 7


def test_requires_grad_and_modes_kept() -> None:
    m = Net().eval()
    m.head.weight.requires_grad_(False)
    load_partial(rand_sd(Net()), into=m)
    assert not m.head.weight.requires_grad and m.head.bias.requires_grad
    assert not m.training and not m.backbone[1].training


def test_shared_storage_view_sees_the_new_values() -> None:
    m = Net()
    view = m.head.weight.detach()  # shares storage: must be copied in place
    src = rand_sd(Net())
    load_partial(src, into=m)
    assert torch.equal(view, src["head.weight"])


def test_lazy_mapping_without_into() -> None:
    src = rand_sd(Net())
    sd = load_partial(src, include="backbone", rename={"backbone.": "features."})
    assert list(sd) == [
        f"features.{k[len('backbone.') :]}" for k in src if k.startswith("backbone")
    ]
    assert torch.equal(sd["features.0.weight"], src["backbone.0.weight"])
    assert len(sd) == 9
    with pytest.raises(KeyError):
        sd["head.weight"]


def test_module_source() -> None:
    a, b = Net(), Net()
    report = load_partial(a, into=b)
    assert len(report.loaded) == 11 and torch.equal(a.head.weight, b.head.weight)


# -- wrappers and files ---------------------------------------------------------------


@pytest.mark.parametrize("wrapper", ["model", "state_dict", "module", "model_state_dict"])
def test_wrappers_unwrapped(tmp_path, wrapper: str) -> None:
    src = rand_sd(Net())
    path = tmp_path / "ckpt.pt"
    torch.save({wrapper: src, "epoch": 3, "optimizer": {"param_groups": [{"lr": 0.1}]}}, path)
    m = Net()
    report = load_partial(path, into=m)
    assert report.unwrapped == wrapper and report.source == str(path)
    assert torch.equal(m.head.weight, src["head.weight"])


def test_ambiguous_wrapper_lists_candidates_and_key_picks(tmp_path) -> None:
    a, b = rand_sd(Net(), 1), rand_sd(Net(), 2)
    path = tmp_path / "ckpt.pt"
    torch.save({"student": a, "teacher": b}, path)
    m = Net()
    before = snapshot(m)
    with pytest.raises(LoadError, match=r"several state dicts: 'student', 'teacher'.*key="):
        load_partial(path, into=m)
    assert_unchanged(m, before)
    report = load_partial(path, into=m, key="teacher")
    assert report.unwrapped == "teacher" and torch.equal(m.head.weight, b["head.weight"])
    with pytest.raises(LoadError, match=r"no entry 'ema'.*'student', 'teacher'"):
        load_partial(path, into=m, key="ema")


def test_nested_wrapper(tmp_path) -> None:
    src = rand_sd(Net())
    torch.save({"model": {"state_dict": src}, "epoch": 1}, tmp_path / "c.pt")
    r = load_partial(tmp_path / "c.pt", into=Net())
    assert r.unwrapped == "model.state_dict"


def test_non_tensor_values_rejected_naming_the_key() -> None:
    src = rand_sd(Net())
    src["head.scale"] = 3.0  # type: ignore[assignment]
    with pytest.raises(LoadError, match=r"non-tensor values: 'head.scale' \(float\)"):
        load_partial(src, into=Net())


def test_pickle_payload_never_runs(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2), "x": Payload()}, path)
    assert not marker.exists()
    m = Net()
    before = snapshot(m)
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil\.pt.*never runs pickled"):
        load_partial(path, into=m)
    assert not marker.exists()
    assert_unchanged(m, before)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a checkpoint at all", r"cannot read .*bad\.pt.*corrupt"),
        (b"", r"cannot read .*bad\.pt"),
    ],
)
def test_corrupt_file(tmp_path, content: bytes, match: str) -> None:
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_partial(tmp_path / "bad.pt", into=Net())


def test_truncated_zip(tmp_path) -> None:
    torch.save(rand_sd(Net()), tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "bad.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"bad\.pt"):
        load_partial(tmp_path / "bad.pt", into=Net())


def test_missing_file_names_it(tmp_path) -> None:
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(
        CheckpointError, match=r"modle\.pt' does not exist.*did you mean .*model\.pt"
    ):
        load_partial(tmp_path / "modle.pt", into=Net())


def test_legacy_non_zip_file(tmp_path) -> None:
    src = rand_sd(Net())
    torch.save(src, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    m = Net()
    load_partial(str(tmp_path / "old.pt"), into=m)
    assert torch.equal(m.head.weight, src["head.weight"])


def test_safetensors_source_reads_lazily(tmp_path) -> None:
    from safetensors.torch import save_file

    from surgery.checkpoint import open_source

    src = rand_sd(Net())
    save_file(src, tmp_path / "m.safetensors")
    with open_source(tmp_path / "m.safetensors") as s:
        assert s.info("head.weight").shape == (5, 8) and s.bytes_read == 0
        assert torch.equal(s.read("head.weight"), src["head.weight"])
        assert s.bytes_read == 5 * 8 * 4
    m = Net()
    report = load_partial(tmp_path / "m.safetensors", include="head", into=m)
    assert report.loaded == ["head.weight", "head.bias"]


def test_corrupt_safetensors(tmp_path) -> None:
    (tmp_path / "m.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad json}")
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*as safetensors"):
        load_partial(tmp_path / "m.safetensors", into=Net())


def test_directory_sources(tmp_path) -> None:
    src = rand_sd(Net())
    torch.save(src, tmp_path / "weights.pth")
    m = Net()
    load_partial(tmp_path, into=m)
    assert torch.equal(m.head.weight, src["head.weight"])
    torch.save(src, tmp_path / "other.bin")
    with pytest.raises(CheckpointError, match=r"several checkpoints.*other\.bin.*weights\.pth"):
        load_partial(tmp_path, into=m)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_partial(empty, into=m)


def test_bad_source_type() -> None:
    with pytest.raises(ArgumentError, match="cannot load from a int"):
        load_partial(3, into=Net())


# -- include / exclude ----------------------------------------------------------


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        ("backbone", None, 9),
        ("backbone.1", None, 5),
        ("backbone[0:2]", None, 7),
        ("backbone[-1]", None, 2),
        ("backbone.*.weight", None, 3),
        ("**.weight", None, 4),
        ("re:.*\\.bias", None, 4),
        (["head", "backbone.0"], None, 4),
        (None, "backbone", 2),
        (None, "**.num_batches_tracked", 10),
        ("backbone", ["backbone.1", "backbone.3.bias"], 3),
    ],
)
def test_include_exclude(include, exclude, expected: int) -> None:
    src = rand_sd(Net())
    sd = load_partial(src, include=include, exclude=exclude)
    assert len(sd) == expected
    m = Net()
    report = load_partial(src, into=m, include=include, exclude=exclude)
    assert len(report.loaded) == expected
    assert report.missing == [k for k in src if k not in sd]


def test_include_matching_nothing_errors() -> None:
    with pytest.raises(LoadError, match=r"include=\['encoder'\].*select none of the 11 keys"):
        load_partial(rand_sd(Net()), into=Net(), include="encoder")


def test_bad_pattern() -> None:
    with pytest.raises(surgery.PathSyntaxError):
        load_partial(rand_sd(Net()), into=Net(), include="backbone..0")
    with pytest.raises(ArgumentError, match="include must be a pattern"):
        load_partial(rand_sd(Net()), into=Net(), include=3)


# -- rename ---------------------------------------------------------------------


def test_module_prefix_hint_and_fix() -> None:
    src = {f"module.{k}": v for k, v in rand_sd(Net()).items()}
    m = Net()
    before = snapshot(m)
    with pytest.raises(
        LoadError, match=r"every checkpoint key starts with 'module\.': rename=\{'module\.': ''\}"
    ):
        load_partial(src, into=m)
    assert_unchanged(m, before)
    report = load_partial(src, into=m, rename={"module.": ""})
    assert len(report.loaded) == 11
    assert report.renamed["head.weight"] == "module.head.weight"


def test_at_hint() -> None:
    src = {k[len("backbone.") :]: v for k, v in rand_sd(Net()).items() if k.startswith("backbone")}
    with pytest.raises(LoadError, match=r"under 'backbone': at='backbone'"):
        load_partial(src, into=Net())


def test_prefix_rules_longest_wins_and_unused() -> None:
    src = rand_sd(Net())
    ckpt = {f"enc.{k}": v for k, v in src.items()}
    m = Net()
    report = load_partial(
        ckpt,
        into=m,
        rename={"enc": "", "enc.head": "head", "dec.": "", "enc.backbone.0": "backbone.0"},
    )
    assert len(report.loaded) == 11
    assert report.unused_rules == ["dec."]
    assert torch.equal(m.head.weight, src["head.weight"])


def test_prefix_rule_adds_prefix() -> None:
    src = rand_sd(Net())
    ckpt = {k[len("backbone.") :]: v for k, v in src.items() if k.startswith("backbone")}
    m = Net()
    report = load_partial(ckpt, into=m, rename={"": "backbone."})
    assert len(report.loaded) == 9 and report.renamed["backbone.0.weight"] == "0.weight"


def test_regex_rules_in_order_with_backrefs_and_callables() -> None:
    blocks = nn.Sequential(*[nn.Linear(2, 2) for _ in range(8)])
    src = {f"layers.{i}.w": torch.full((2, 2), float(i)) for i in range(4)}
    src.update({f"layers.{i}.b": torch.full((2,), float(i)) for i in range(4)})
    report = load_partial(
        src,
        into=blocks,
        rename=[
            (r"^layers\.(\d+)\.", lambda m: f"layers.{int(m[1]) + 4}."),
            (r"^layers\.", ""),
            (r"\.w$", ".weight"),
            (r"\.b$", r".bias"),
            (r"^never", "x"),
        ],
    )
    assert len(report.loaded) == 8
    assert torch.equal(blocks[5].weight, torch.full((2, 2), 1.0))
    assert torch.equal(blocks[0].weight, nn.Sequential(*[nn.Linear(2, 2)])[0].weight) is False
    assert report.unused_rules == ["^never"]
    assert report.renamed["5.weight"] == "layers.1.w"


def test_callable_rename_drops_none() -> None:
    src = rand_sd(Net())
    m = Net()
    report = load_partial(src, into=m, rename=lambda k: None if k.startswith("head") else k)
    assert report.missing == ["head.weight", "head.bias"] and report.unexpected == []


def test_rename_collision_names_both() -> None:
    src = rand_sd(Net())
    src["student.head.weight"] = src["head.weight"]
    m = Net()
    before = snapshot(m)
    with pytest.raises(LoadError, match=r"'head.weight' <- 'head.weight', 'student.head.weight'"):
        load_partial(src, into=m, rename={"student.": ""})
    assert_unchanged(m, before)


@pytest.mark.parametrize(
    ("rename", "match"),
    [
        (3, "rename must be a dict"),
        ([("a",)], "pairs"),
        ([("(", "")], "does not compile"),
        ({"a": 1}, "str prefixes"),
        ([("a", 3)], "must be a str or a callable"),
    ],
)
def test_bad_rename_specs(rename, match: str) -> None:
    with pytest.raises(ArgumentError, match=match):
        load_partial(rand_sd(Net()), into=Net(), rename=rename)


def test_rename_to_empty_or_bad_callable() -> None:
    src = {"head": torch.ones(1)}
    with pytest.raises(LoadError, match="empty key"):
        load_partial(src, into=Net(), rename={"head": ""})
    with pytest.raises(LoadError, match="must return a non-empty str or None, got 3"):
        load_partial(src, into=Net(), rename=lambda k: 3)
    with pytest.raises(LoadError, match="rename callable raised on key 'head'"):
        load_partial(src, into=Net(), rename=lambda k: 1 / 0)


# -- at -------------------------------------------------------------------------


def test_at_loads_relative_keys() -> None:
    src = rand_sd(Net())
    part = {k[len("backbone.") :]: v for k, v in src.items() if k.startswith("backbone.")}
    m = Net()
    report = load_partial(part, into=m, at="backbone")
    assert report.loaded[0] == "backbone.0.weight"
    assert report.missing == [] and report.renamed["backbone.0.weight"] == "0.weight"
    assert torch.equal(m.backbone[3].weight, src["backbone.3.weight"])
    with pytest.raises(surgery.PathNotFoundError):
        load_partial(part, into=m, at="bakbone")


def test_at_slice() -> None:
    src = rand_sd(Net())
    part = {"3.weight": src["backbone.3.weight"], "3.bias": src["backbone.3.bias"]}
    m = Net()
    report = load_partial(part, into=m, at="backbone[2:]")
    assert report.loaded == ["backbone.3.weight", "backbone.3.bias"]


def test_at_without_into() -> None:
    with pytest.raises(ArgumentError, match="pass into="):
        load_partial({}, at="backbone")


# -- validation -------------------------------------------------------------------


def test_zero_loaded_is_an_error() -> None:
    with pytest.raises(LoadError, match="nothing to load"):
        load_partial({"a.b": torch.ones(1)}, into=Net())
    with pytest.raises(LoadError, match="nothing to load"):
        load_partial({}, into=Net())


def test_strict_lists_everything() -> None:
    src = rand_sd(Net())
    del src["head.bias"]
    src["extra"] = torch.ones(1)
    m = Net()
    before = snapshot(m)
    with pytest.raises(
        LoadError,
        match=r"(?s)strict=True.*missing \(1\):\n    'head.bias'.*unexpected \(1\):\n    'extra'",
    ):
        load_partial(src, into=m, strict=True)
    assert_unchanged(m, before)
    with pytest.raises(LoadError, match=r"missing \(2\):\n    'head.weight'\n    'head.bias'"):
        load_partial(rand_sd(Net()), into=m, strict=True, include="backbone")


def test_strict_under_at() -> None:
    src = rand_sd(Net())
    part = {k[len("backbone.") :]: v for k, v in src.items() if k.startswith("backbone.")}
    report = load_partial(part, into=Net(), at="backbone", strict=True)
    assert len(report.loaded) == 9 and report.missing == []


def test_shape_mismatches_listed_then_skipped() -> None:
    src = rand_sd(Net(classes=10))
    src["backbone.0.bias"] = torch.zeros(7)
    m = Net()
    before = snapshot(m)
    with pytest.raises(
        LoadError,
        match=r"(?s)3 shape mismatch.*'backbone.0.bias': checkpoint \(7,\) vs model \(4,\).*'head.weight': checkpoint \(10, 8\) vs model \(5, 8\)",
    ):
        load_partial(src, into=m)
    assert_unchanged(m, before)
    report = load_partial(src, into=m, on_mismatch="skip")
    assert report.mismatched == {
        "backbone.0.bias": ((7,), (4,)),
        "head.weight": ((10, 8), (5, 8)),
        "head.bias": ((10,), (5,)),
    }
    assert "head.weight" not in report.missing and len(report.loaded) == 8


def test_resnet_1000_to_10_classes() -> None:
    ref = torchvision.models.resnet18(weights=None)
    m = torchvision.models.resnet18(weights=None, num_classes=10)
    with pytest.raises(
        LoadError, match=r"fc.weight': checkpoint \(1000, 512\) vs model \(10, 512\)"
    ):
        load_partial(ref, into=m)
    report = load_partial(ref, into=m, on_mismatch="skip")
    assert len(report.loaded) == 120 and set(report.mismatched) == {"fc.weight", "fc.bias"}
    assert torch.equal(m.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)


@pytest.mark.parametrize(
    ("casting", "src_dtype", "dst_dtype", "ok"),
    [
        ("no", torch.float32, torch.float32, True),
        ("no", torch.float16, torch.float32, False),
        ("equiv", torch.float16, torch.float32, False),
        ("safe", torch.float16, torch.float32, True),
        ("safe", torch.float32, torch.float16, False),
        ("safe", torch.bfloat16, torch.float16, False),
        ("safe", torch.int32, torch.int64, True),
        ("same_kind", torch.float32, torch.float16, True),
        ("same_kind", torch.float64, torch.bfloat16, True),
        ("same_kind", torch.int64, torch.float32, True),
        ("same_kind", torch.float32, torch.int64, False),
        ("unsafe", torch.float32, torch.int64, True),
    ],
)
def test_casting_rules(casting, src_dtype, dst_dtype, ok: bool) -> None:
    m = nn.Linear(2, 2).to(dst_dtype) if dst_dtype.is_floating_point else None
    if m is None:
        m = nn.Module()
        m.register_buffer("w", torch.zeros(2, 2, dtype=dst_dtype))
        src = {"w": torch.full((2, 2), 3, dtype=src_dtype)}
    else:
        src = {"weight": torch.full((2, 2), 3, dtype=src_dtype)}
    before = snapshot(m)
    if ok:
        report = load_partial(src, into=m, casting=casting)
        key = next(iter(src))
        if src_dtype != dst_dtype:
            assert report.cast == {key: (src_dtype, dst_dtype)}
        assert (dict(m.state_dict())[key] == 3).all()
        assert dict(m.state_dict())[key].dtype == dst_dtype
    else:
        with pytest.raises(LoadError, match=rf"casting='{casting}'"):
            load_partial(src, into=m, casting=casting)
        assert_unchanged(m, before)


def test_fp16_overflow_refused_but_unsafe_allows() -> None:
    m = nn.Linear(2, 2).half()
    src = {"weight": torch.tensor([[70000.0, 1.0], [1.0, 1.0]]), "bias": torch.zeros(2)}
    before = snapshot(m)
    with pytest.raises(
        LoadError,
        match=r"'weight': float32 -> float16: 1 finite value\(s\) \(up to 70000\) overflow",
    ):
        load_partial(src, into=m)
    assert_unchanged(m, before)
    report = load_partial(src, into=m, casting="unsafe")
    assert torch.isinf(m.weight[0, 0]) and report.cast["bias"] == (torch.float32, torch.float16)


def test_infinities_and_nans_are_not_overflow() -> None:
    m = nn.Linear(2, 1).half()
    src = {"weight": torch.tensor([[float("inf"), float("nan")]]), "bias": torch.zeros(1)}
    load_partial(src, into=m)
    assert torch.isinf(m.weight[0, 0]) and torch.isnan(m.weight[0, 1])


def test_integer_overflow_refused() -> None:
    m = nn.Module()
    m.register_buffer("idx", torch.zeros(2, dtype=torch.int8))
    with pytest.raises(LoadError, match=r"values in \[0, 300\] do not fit int8"):
        load_partial({"idx": torch.tensor([0, 300])}, into=m)
    load_partial({"idx": torch.tensor([0, 100])}, into=m)
    assert m.idx.tolist() == [0, 100]


# -- ties -----------------------------------------------------------------------


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 4)
        self.out = nn.Linear(4, 6, bias=False)
        self.out.weight = self.embed.weight


def test_tied_loads_from_one_key_and_stays_tied() -> None:
    m = Tied()
    w = torch.randn(6, 4)
    report = load_partial({"embed.weight": w}, into=m)
    assert m.out.weight is m.embed.weight and torch.equal(m.out.weight, w)
    assert report.loaded == ["embed.weight", "out.weight"]
    assert report.renamed == {"out.weight": "embed.weight"} and report.missing == []
    report = load_partial({"out.weight": w * 2}, into=m)
    assert torch.equal(m.embed.weight, w * 2) and m.out.weight is m.embed.weight


def test_tied_both_keys_equal_ok_different_error() -> None:
    m = Tied()
    w = torch.randn(6, 4)
    load_partial({"embed.weight": w, "out.weight": w.clone()}, into=m)
    assert m.out.weight is m.embed.weight
    before = snapshot(m)
    with pytest.raises(
        LoadError, match=r"'embed.weight' and 'out.weight' are one tied tensor.*differ"
    ):
        load_partial({"embed.weight": w, "out.weight": w + 1}, into=m)
    assert_unchanged(m, before)


def test_untied_model_from_tied_checkpoint() -> None:
    src = Tied()
    dst = nn.Module()
    dst.embed = nn.Embedding(6, 4)
    dst.out = nn.Linear(4, 6, bias=False)
    load_partial(src, into=dst)
    assert torch.equal(dst.out.weight, src.embed.weight)
    assert dst.out.weight is not dst.embed.weight


# -- atomicity --------------------------------------------------------------------


def _failing_copy(monkeypatch, after: int, error: BaseException | None = None) -> None:
    real = torch.Tensor.copy_
    calls = {"n": 0}

    def copy_(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise error if error is not None else RuntimeError("injected fault")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "copy_", copy_)


@pytest.mark.parametrize("shared_view", [False, True])
@pytest.mark.parametrize("after", [0, 4, 7])
def test_transactional_fault_leaves_model_unchanged(
    monkeypatch, shared_view: bool, after: int
) -> None:
    m = Net().eval()
    views = [p.detach() for p in m.parameters()] if shared_view else []
    before = snapshot(m)
    _failing_copy(monkeypatch, after=after)
    with pytest.raises(LoadError, match=r"injected fault.*left unchanged") as info:
        load_partial(rand_sd(Net()), into=m)
    assert type(info.value) is LoadError and isinstance(info.value.__cause__, RuntimeError)
    monkeypatch.undo()
    assert_unchanged(m, before)
    assert len(views) == (8 if shared_view else 0)


@pytest.mark.parametrize(
    "error",
    [KeyboardInterrupt(), OSError(5, "I/O error"), MemoryError(), RuntimeError("out of memory")],
    ids=["KeyboardInterrupt", "OSError", "MemoryError", "oom"],
)
@pytest.mark.parametrize("shared_view", [False, True])
def test_any_fault_while_committing_leaves_model_unchanged(
    monkeypatch, error: BaseException, shared_view: bool
) -> None:
    m = Net().eval()
    views = [p.detach() for p in m.parameters()] if shared_view else []
    before = snapshot(m)
    _failing_copy(monkeypatch, after=3, error=error)
    expected = KeyboardInterrupt if isinstance(error, KeyboardInterrupt) else LoadError
    with pytest.raises(expected) as info:
        load_partial(rand_sd(Net()), into=m)
    if expected is LoadError:
        assert info.value.__cause__ is error
    monkeypatch.undo()
    assert_unchanged(m, before)
    assert len(views) == (8 if shared_view else 0)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_a_fault_while_reading_a_file_leaves_model_unchanged(monkeypatch, tmp_path, fmt) -> None:
    from surgery.checkpoint import _fileio

    path = _save_fmt(rand_sd(Net()), tmp_path, fmt)
    m = Net().eval()
    before = snapshot(m)
    real = _fileio.CheckedFile.read_into
    calls = {"n": 0}

    def flaky(self, offset, out):
        calls["n"] += len(out) > 64  # tensor reads (and the pickle), not zip headers
        if calls["n"] > 2:
            raise MemoryError("injected out of memory")
        return real(self, offset, out)

    monkeypatch.setattr(_fileio.CheckedFile, "read_into", flaky)
    with pytest.raises(LoadError, match=r"MemoryError: injected out of memory.*left unchanged"):
        load_partial(path, into=m)
    monkeypatch.undo()
    assert_unchanged(m, before)


def _save_fmt(sd: dict, folder, fmt: str) -> str:
    if fmt == "pt":
        path = str(folder / "ckpt.pt")
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        path = str(folder / "ckpt.safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


def test_non_transactional_fault_names_written(monkeypatch) -> None:
    m = Net()
    _failing_copy(monkeypatch, after=2)
    with pytest.raises(
        LoadError,
        match=r"writing 'backbone.1.weight' failed.*partially loaded, 2 tensor\(s\) already written: 'backbone.0.bias', 'backbone.0.weight'",
    ):
        load_partial(rand_sd(Net()), into=m, transactional=False)


def test_non_transactional_loads_in_place() -> None:
    m = Net()
    ptr = m.head.weight.data_ptr()
    src = rand_sd(Net())
    load_partial(src, into=m, transactional=False)
    assert m.head.weight.data_ptr() == ptr and torch.equal(m.head.weight, src["head.weight"])


def test_dry_run_changes_nothing() -> None:
    m = Net()
    before = snapshot(m)
    report = load_partial(rand_sd(Net()), into=m, dry_run=True, include="head")
    assert report.dry_run and report.loaded == ["head.weight", "head.bias"]
    assert_unchanged(m, before)
    assert "would load 2" in str(report)


def test_dry_run_on_meta_model() -> None:
    with torch.device("meta"):
        m = torchvision.models.resnet18(weights=None)
    report = load_partial(torchvision.models.resnet18(weights=None), into=m, dry_run=True)
    assert len(report.loaded) == 122


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"on_mismatch": "ignore"}, "on_mismatch must be"),
        ({"casting": "loose"}, "casting must be one of"),
        ({"strict": 1}, "strict must be True or False"),
        ({"into": "resnet"}, "into must be an nn.Module"),
    ],
)
def test_bad_arguments(kwargs, match: str) -> None:
    kwargs.setdefault("into", Net())
    with pytest.raises(ArgumentError, match=match):
        load_partial(rand_sd(Net()), **kwargs)


# -- the report -------------------------------------------------------------------


def test_report_str_and_json() -> None:
    src = {f"module.{k}": v for k, v in rand_sd(Net(classes=3)).items()}
    src["module.extra"] = torch.ones(1)
    m = Net().half()
    report = load_partial(src, into=m, rename={"module.": "", "x.": ""}, on_mismatch="skip")
    text = str(report)
    assert text.startswith(
        "LoadReport from <mapping>: loaded 9, missing 0, unexpected 1, mismatched 2, cast 8"
    )
    assert "unexpected (1): 'module.extra'" in text
    assert "'head.bias': checkpoint (3,) vs model (5,)" in text
    assert "'backbone.0.weight': float32 -> float16" in text
    assert "unused rename rules: 'x.'" in text
    data = json.loads(report.to_json())
    assert data["mismatched"]["head.weight"] == [[3, 8], [5, 8]]
    assert data["cast"]["backbone.0.weight"] == ["float32", "float16"]
    assert data["unused_rules"] == ["x."] and data["unexpected"] == ["module.extra"]
    assert (
        isinstance(report, LoadReport)
        and data["renamed"]["backbone.0.bias"] == "module.backbone.0.bias"
    )


# -- the seed scenario ---------------------------------------------------------------


def test_seed_scenario_self_supervised_to_classifier(tmp_path) -> None:
    """backbone.* and projector.* under "model"; a classifier; the projector elsewhere."""
    backbone = torchvision.models.resnet18(weights=None)
    backbone.fc = nn.Identity()
    projector = nn.Sequential(nn.Linear(512, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32))
    ssl = nn.Module()
    ssl.backbone, ssl.projector = backbone, projector
    path = tmp_path / "ssl.pth"
    torch.save({"model": ssl.state_dict(), "epoch": 100, "config": {"lr": 0.3}}, path)

    clf = torchvision.models.resnet18(weights=None, num_classes=10)
    fc_before = clf.fc.weight.detach().clone()
    report = load_partial(
        path, into=clf, include="backbone", rename={"backbone.": ""}, strict=False
    )
    assert report.unwrapped == "model" and len(report.loaded) == 120
    assert report.missing == ["fc.weight", "fc.bias"] and report.unexpected == []
    assert torch.equal(clf.layer3[0].conv1.weight, backbone.layer3[0].conv1.weight)
    assert torch.equal(clf.fc.weight, fc_before)

    probe = nn.Module()
    probe.projector = nn.Sequential(
        nn.Linear(512, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32)
    )
    r2 = load_partial(
        path, into=probe, include="projector", rename={"projector.": "projector."}, strict=True
    )
    assert len(r2.loaded) == 9 and torch.equal(probe.projector[3].weight, projector[3].weight)

    # forgetting the rename: nothing matches, the hint shows the fix
    with pytest.raises(
        LoadError,
        match=r"every checkpoint key starts with 'backbone\.': rename=\{'backbone\.': ''\}",
    ):
        load_partial(path, into=clf, include="backbone")


def test_files_are_closed(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file(rand_sd(Net()), tmp_path / "m.safetensors")
    load_partial(tmp_path / "m.safetensors", into=Net())
    os.remove(tmp_path / "m.safetensors")


def test_docs_loading_examples_run() -> None:
    """The python blocks of docs/loading.md run in order (the seed scenario among them)."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "loading.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for block in blocks[1:]:  # the first block is the signature
        exec(compile(block, "docs/loading.md", "exec"), namespace)


# -- a zoo of real models: differential against load_state_dict ---------------------

ZOO = [
    ("torchvision", "resnet18"),
    ("torchvision", "mobilenet_v3_small"),
    ("timm", "vit_tiny_patch16_224"),
    pytest.param("torchvision", "efficientnet_b0", marks=pytest.mark.slow),
    pytest.param("timm", "convnext_atto", marks=pytest.mark.slow),
]


def _build(lib: str, name: str) -> nn.Module:
    if lib == "timm":
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False)
    return torchvision.models.get_model(name, weights=None)


@pytest.mark.parametrize(("lib", "name"), ZOO)
def test_zoo_matches_load_state_dict(lib: str, name: str, tmp_path) -> None:
    torch.manual_seed(1)
    src = _build(lib, name)
    ref, ours = _build(lib, name), _build(lib, name)
    path = tmp_path / "w.safetensors"
    surgery.save_state_dict(src, path)
    ref.load_state_dict(src.state_dict())
    report = load_partial(path, into=ours, strict=True)
    assert len(report.loaded) == len(src.state_dict())
    for (k, a), (_, b) in zip(ref.state_dict().items(), ours.state_dict().items()):
        assert torch.equal(a, b), k


def test_frozen_batchnorm_strict_hint() -> None:
    from torchvision.ops.misc import FrozenBatchNorm2d

    src = torchvision.models.resnet18(weights=None)
    m = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    with pytest.raises(
        LoadError, match=r"(?s)unexpected \(20\).*hint: exclude='\*\*\.num_batches_tracked'"
    ):
        load_partial(src, into=m, strict=True)
    report = load_partial(src, into=m, strict=True, exclude="**.num_batches_tracked")
    assert len(report.loaded) == 102
    assert torch.equal(m.bn1.running_var, src.bn1.running_var)


def test_lazy_view_reads_only_what_is_accessed(tmp_path) -> None:
    from safetensors.torch import save_file

    src = rand_sd(Net())
    save_file(src, tmp_path / "m.safetensors")
    sd = load_partial(tmp_path / "m.safetensors", include="head", rename={"head.": "fc."})
    assert sd.source.bytes_read == 0 and sd.info("fc.weight").shape == (5, 8)
    assert torch.equal(sd["fc.bias"], src["head.bias"])
    assert sd.source.bytes_read == 5 * 4
    sd.source.close()
