"""Property: load_partial's report exactly describes the model afterwards, or it raises
and the model is bit-for-bit unchanged."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from surgery import SurgeryError, load_partial
from tests.snapshot import assert_unchanged, snapshot


def build_model(sizes: list[int], tie: bool, half: bool) -> nn.Module:
    m = nn.Module()
    m.body = nn.Sequential()
    for i in range(len(sizes) - 1):
        m.body.append(nn.Linear(sizes[i], sizes[i + 1]))
        m.body.append(nn.BatchNorm1d(sizes[i + 1]))
    m.embed = nn.Embedding(3, sizes[0])
    m.out = nn.Linear(sizes[0], 3, bias=False)
    if tie:
        m.out.weight = m.embed.weight
    return m.half() if half else m


@st.composite
def scenarios(draw):
    sizes = draw(st.lists(st.integers(1, 4), min_size=2, max_size=4))
    tie = draw(st.booleans())
    half = draw(st.integers(0, 3)) == 0
    model = build_model(sizes, tie, half)
    ckpt: dict[str, torch.Tensor] = {}
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    prefix = draw(st.sampled_from(["", "", "module.", "backbone."]))
    for k, v in model.state_dict().items():
        action = draw(st.sampled_from(["keep"] * 8 + ["drop", "drop", "shape", "dtype", "big"]))
        if action == "drop":
            continue
        shape = tuple(v.shape)
        if action == "shape":
            shape = (*shape[:-1], shape[-1] + 1) if shape else (2,)
        if v.is_floating_point():
            dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16]))
            value = torch.randn(shape, generator=g).to(
                dtype if action == "dtype" else torch.float32
            )
            if action == "big":
                value = value * 1e5
        else:
            value = torch.randint(0, 50, shape, generator=g)
            if action == "dtype":
                value = value.float()
        ckpt[prefix + k] = value
    for i in range(draw(st.integers(0, 2))):
        ckpt[f"{prefix}extra{i}.weight"] = torch.ones(2)
    rename = draw(
        st.sampled_from(
            [
                None,
                {"module.": ""},
                {"backbone.": "", "module.": ""},
                [(r"^(module|backbone)\.", "")],
                [(r"^module\.", ""), (r"^body\.(\d+)\.", lambda m: f"body.{int(m[1])}.")],
                lambda k: None if "bias" in k else k.removeprefix("module."),
                {"": "x."},
            ]
        )
    )
    if prefix and draw(st.integers(0, 3)):  # mostly the right fix for the prefix
        rename = draw(st.sampled_from([{prefix: ""}, [(rf"^{prefix[:-1]}\.", "")]]))
    include = draw(
        st.sampled_from(
            [None, None, None, None, "**.weight", f"{prefix}body", ["re:.*embed.*", "**.bias"]]
        )
    )
    exclude = draw(st.sampled_from([None, None, None, "**.num_batches_tracked", f"{prefix}out"]))
    options = {
        "strict": draw(st.integers(0, 3)) == 0,
        "on_mismatch": draw(st.sampled_from(["error", "skip"])),
        "casting": draw(st.sampled_from(["same_kind", "same_kind", "unsafe", "safe", "no"])),
        "transactional": draw(st.booleans()),
        "dry_run": draw(st.booleans()),
    }
    return model, ckpt, rename, include, exclude, options


@settings(max_examples=60)
@given(scenarios())
def test_report_describes_the_model_or_nothing_changes(scenario) -> None:
    model, ckpt, rename, include, exclude, options = scenario
    before = snapshot(model)
    old = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        report = load_partial(
            ckpt, into=model, include=include, exclude=exclude, rename=rename, **options
        )
    except SurgeryError:
        assert_unchanged(model, before)
        return
    now = model.state_dict()
    keys = list(now)
    # the report partitions the model's keys
    assert sorted(report.loaded + report.missing + list(report.mismatched)) == sorted(keys)
    assert len(set(report.loaded)) == len(report.loaded)
    assert report.loaded, "zero keys loaded must raise"
    assert set(report.unexpected) <= set(ckpt)
    assert set(report.renamed.values()) <= set(ckpt)
    if options["strict"]:
        assert report.missing == [] and report.unexpected == []
    for k in keys:
        if k in report.loaded and not options["dry_run"]:
            src = ckpt[report.renamed.get(k, k)]
            assert src.shape == now[k].shape
            assert torch.equal(now[k], src.to(now[k].dtype)), k
            if src.dtype != now[k].dtype:
                assert report.cast[k] == (src.dtype, now[k].dtype)
            else:
                assert k not in report.cast
        else:
            assert torch.equal(now[k], old[k]), f"{k} changed but is not reported as loaded"
    # identity, dtypes, requires_grad and modes are always kept
    after = snapshot(model)
    assert [p[:2] + p[3:] for p in after.params] == [p[:2] + p[3:] for p in before.params]
    assert after.modules == before.modules
    if hasattr(model.out, "weight") and model.out.weight is model.embed.weight:
        assert torch.equal(now["out.weight"], now["embed.weight"])
