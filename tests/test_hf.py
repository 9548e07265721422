"""Hugging Face transformers models, untouched: re-head, split, verify and prune layers.

Every model is built from a tiny local config (no download).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import surgery
from surgery.testing import split_points

from .snapshot import assert_unchanged, snapshot

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

BERT = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37)
TOKENS = dict(vocab_size=99, bos_token_id=0, eos_token_id=0, pad_token_id=0)
LLAMA = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=37,
    **TOKENS,
)


def _ids(n: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 99, (2, n), generator=g)
    mask = torch.ones_like(ids)
    mask[1, n - 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def bert_cls(**kw: Any) -> nn.Module:
    return transformers.BertForSequenceClassification(
        transformers.BertConfig(**BERT, vocab_size=99, **kw)
    ).eval()


def gpt2_lm() -> nn.Module:
    cfg = transformers.GPT2Config(n_embd=32, n_layer=3, n_head=2, n_positions=64, **TOKENS)
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama_lm() -> nn.Module:
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).eval()


def qwen2_lm() -> nn.Module:
    cfg = transformers.Qwen2Config(
        **LLAMA,
        layer_types=["full_attention", "full_attention", "sliding_attention", "sliding_attention"],
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=2,
    )
    return transformers.Qwen2ForCausalLM(cfg).eval()


def _pixels() -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}


VISION = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    image_size=32,
    patch_size=8,
)

WHISPER = dict(
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=37,
    decoder_ffn_dim=37,
    num_mel_bins=8,
    max_source_positions=16,
    **TOKENS,
)

# name -> (model factory, example inputs, a layer to split after)
ZOO: dict[str, tuple[Callable[[], nn.Module], Callable[[], dict[str, Any]], str]] = {
    "bert": (bert_cls, _ids, "bert.encoder.layer.1"),
    "roberta": (
        lambda: transformers.RobertaForSequenceClassification(
            transformers.RobertaConfig(**BERT, vocab_size=99)
        ).eval(),
        _ids,
        "roberta.encoder.layer.2",
    ),
    "gpt2": (gpt2_lm, _ids, "transformer.h.1"),
    "llama": (llama_lm, _ids, "model.layers.1"),
    "t5-encoder": (
        lambda: transformers.T5EncoderModel(
            transformers.T5Config(d_model=32, d_ff=37, num_layers=2, num_heads=2, d_kv=16, **TOKENS)
        ).eval(),
        _ids,
        "encoder.block.0",
    ),
    "vit": (
        lambda: transformers.ViTForImageClassification(
            transformers.ViTConfig(**VISION, num_labels=3)
        ).eval(),
        _pixels,
        "vit.layers.0",
    ),
    "whisper-encoder": (
        lambda: (
            transformers.WhisperModel(transformers.WhisperConfig(**WHISPER)).get_encoder().eval()
        ),
        lambda: {
            "input_features": torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(0))
        },
        "layers.0",
    ),
    "clip-vision": (
        lambda: transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION)).eval(),
        _pixels,
        "encoder.layers.0",
    ),
}


def _main(out: Any) -> torch.Tensor:
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    raise AssertionError(f"no logits or last_hidden_state in {type(out).__name__}")


# ----------------------------------------------------------------------------- re-heading


@pytest.mark.parametrize(
    "factory, path",
    [
        (bert_cls, "classifier"),
        (
            lambda: transformers.BertForTokenClassification(
                transformers.BertConfig(**BERT, vocab_size=99)
            ),
            "classifier",
        ),
        (
            lambda: transformers.RobertaForSequenceClassification(
                transformers.RobertaConfig(**BERT, vocab_size=99)
            ),
            "classifier.out_proj",
        ),
        (ZOO["vit"][0], "classifier"),
        (
            lambda: transformers.LlamaForSequenceClassification(transformers.LlamaConfig(**LLAMA)),
            "score",
        ),
        (
            lambda: transformers.GPT2ForSequenceClassification(
                transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, **TOKENS)
            ),
            "score",
        ),
    ],
)
def test_replace_head_classification_updates_config(
    factory: Callable[[], nn.Module], path: str
) -> None:
    model = factory().eval()
    old = model.get_submodule(path)
    surgery.replace_head(model, 7)
    new = model.get_submodule(path)
    assert new is not old and isinstance(new, nn.Linear)
    assert (new.in_features, new.out_features) == (old.in_features, 7)
    assert (new.bias is None) == (old.bias is None)
    assert model.config.num_labels == 7 and model.num_labels == 7
    assert model.config.id2label == {i: f"LABEL_{i}" for i in range(7)}
    assert model.config.label2id == {f"LABEL_{i}": i for i in range(7)}
    inputs = _pixels() if model.main_input_name == "pixel_values" else _ids()
    with torch.no_grad():
        assert _main(model(**inputs)).shape[-1] == 7


def test_replace_head_keeps_labels_when_count_is_unchanged() -> None:
    model = bert_cls(num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    surgery.replace_head(model, 2)
    assert model.config.id2label == {0: "neg", 1: "pos"}


def test_replace_head_zero_gives_pooled_features() -> None:
    model = bert_cls()
    surgery.replace_head(model, 0)
    assert isinstance(model.classifier, nn.Identity)
    with torch.no_grad():
        logits = model(**_ids()).logits
        pooled = model.bert(**_ids()).pooler_output
    assert logits.shape == (2, 32)
    torch.testing.assert_close(logits, pooled)


def test_replace_head_lm_tied_stays_tied_and_keeps_rows() -> None:
    model = gpt2_lm()
    old = model.transformer.wte.weight.detach().clone()
    with pytest.warns(surgery.SurgeryWarning, match="stays tied to the input embedding"):
        surgery.replace_head(model, 120)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.shape == (120, 32)
    torch.testing.assert_close(model.transformer.wte.weight[:99].detach(), old)
    assert model.config.vocab_size == 120 and model.config.tie_word_embeddings
    with torch.no_grad():
        assert model(torch.randint(0, 120, (1, 5))).logits.shape == (1, 5, 120)


def test_replace_head_lm_untie() -> None:
    model = gpt2_lm()
    wte = model.transformer.wte
    old = wte.weight.detach().clone()
    with pytest.warns(surgery.SurgeryWarning, match="untied from 'transformer.wte'"):
        surgery.replace_head(model, 5, tie=False)
    assert model.transformer.wte is wte and wte.weight.shape == (99, 32)
    assert model.lm_head.weight is not wte.weight and model.lm_head.weight.shape == (5, 32)
    torch.testing.assert_close(model.lm_head.weight.detach(), old[:5])
    assert model.config.tie_word_embeddings is False
    with torch.no_grad():
        assert model(torch.randint(0, 99, (1, 5))).logits.shape == (1, 5, 5)


def test_replace_head_unknown_head_lists_candidates() -> None:
    model = transformers.BertModel(transformers.BertConfig(**BERT, vocab_size=99))
    before = snapshot(model)
    with pytest.raises(surgery.LayerNotFoundError, match=r"(?s)base model.*path=") as info:
        surgery.replace_head(model, 3)
    assert "'pooler.dense' Linear(32 -> 32)" in str(info.value)
    assert_unchanged(model, before)


def test_replace_head_ambiguous_head_is_refused() -> None:
    model = transformers.RobertaForSequenceClassification(
        transformers.RobertaConfig(**BERT, vocab_size=99, num_labels=32)
    )
    before = snapshot(model)
    with pytest.raises(
        surgery.LayerNotFoundError, match=r"2 layers have config\.num_labels=32"
    ) as e:
        surgery.replace_head(model, 3)
    assert "'classifier.dense'" in str(e.value) and "'classifier.out_proj'" in str(e.value)
    assert_unchanged(model, before)
    assert model.config.num_labels == 32


def test_replace_head_explicit_path_syncs_labels() -> None:
    model = bert_cls()
    surgery.replace_head(model, 4, path="classifier")
    assert model.classifier.out_features == 4 and model.config.num_labels == 4


def test_tie_is_only_for_transformers_lm_heads() -> None:
    import torchvision

    m = torchvision.models.resnet18(weights=None)
    with pytest.raises(surgery.ArgumentError, match="tie= is for"):
        surgery.replace_head(m, 3, tie=False)
    model = bert_cls()
    before = snapshot(model)
    with pytest.raises(surgery.ArgumentError, match="tie= is for an LM head"):
        surgery.replace_head(model, 3, tie=True)
    assert_unchanged(model, before)


# ----------------------------------------------------------------------------- export engine


@pytest.mark.parametrize("name", list(ZOO))
def test_split_is_lossless_through_torch_export(name: str) -> None:
    factory, example, path = ZOO[name]
    model = factory()
    inputs = example()
    before = snapshot(model)
    head, tail = surgery.split(model, path, example_inputs=inputs)
    assert head.meta["surgery_engine"] == tail.meta["surgery_engine"] == "torch.export"
    with torch.no_grad():
        expected = _main(model(**inputs))
        actual = _main(tail(head(**inputs)))
    torch.testing.assert_close(actual, expected)
    params = {id(p) for p in model.parameters()}
    assert not any(id(p) in params for p in (*head.parameters(), *tail.parameters()))
    assert_unchanged(model, before)


def test_cut_points_and_cut_through_torch_export() -> None:
    model = bert_cls()
    points = split_points(model, example_inputs=_ids())
    assert points[:2] == ["bert", "bert.embeddings"]
    assert {f"bert.encoder.layer.{i}" for i in range(4)} <= set(points)
    # an iterated ModuleList is a cut point too: after its last entry (as with torch.fx)
    assert points.index("bert.encoder.layer") < points.index("bert.encoder.layer.0")
    assert surgery.cut_points(model, example_inputs=_ids()) == points
    body = surgery.cut(model, "bert.encoder.layer.1", example_inputs=_ids())
    whole = surgery.cut(model, "bert.encoder.layer", example_inputs=_ids())
    assert body.meta["surgery_engine"] == "torch.export"
    with torch.no_grad():
        hidden, last = body(**_ids()), whole(**_ids())
        ref = model.bert(**_ids(), output_hidden_states=True).hidden_states
    torch.testing.assert_close(hidden, ref[2])
    torch.testing.assert_close(last, ref[4])


def test_split_shares_with_copy_false() -> None:
    model = gpt2_lm()
    head, _ = surgery.split(model, "transformer.h.0", example_inputs=_ids(), copy=False)
    shared = {id(p) for p in model.parameters()}
    assert {id(p) for p in head.parameters()} <= shared


def test_tree_and_verify_with_example_inputs() -> None:
    model = bert_cls()
    before = snapshot(model)
    t = surgery.tree(model, example_inputs=_ids(), depth=2)
    shapes = {r.path: r.output_shape for r in t.rows}
    assert shapes["bert.embeddings"] == [2, 7, 32]
    assert shapes[""] == {"logits": [2, 2]}
    stats = surgery.verify(model, example_inputs=_ids(), output_shape={"logits": (2, 2)})
    assert stats.output_size == {"logits": (2, 2)}
    with pytest.raises(surgery.VerificationError, match=r"expected \{'logits': \(2, 3\)\}"):
        surgery.verify(model, example_inputs=_ids(), output_shape={"logits": (2, 3)})
    assert surgery.summary(model, example_inputs=_ids(), device="cpu").total_params == sum(
        p.numel() for p in model.parameters()
    )
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: surgery.split(m, "bert.encoder.layer.1", example_inputs=x),
        lambda m, x: surgery.cut(m, "bert.encoder.layer.1", example_inputs=x),
        lambda m, x: surgery.tree(m, example_inputs=x),
        lambda m, x: surgery.verify(m, example_inputs=x),
        lambda m, x: surgery.summary(m, example_inputs=x),
        lambda m, x: split_points(m, example_inputs=x),
        lambda m, x: surgery.cut_points(m, example_inputs=x),
    ],
)
def test_wrong_example_keys_name_the_parameters(call: Callable[..., Any]) -> None:
    model = bert_cls()
    before = snapshot(model)
    with pytest.raises(surgery.ArgumentError, match=r"'ids'.*its parameters are: input_ids, "):
        call(model, {"ids": torch.zeros(1, 3, dtype=torch.long)})
    assert_unchanged(model, before)


def test_engine_is_checked_and_fx_alone_fails_on_bert() -> None:
    model = bert_cls()
    before = snapshot(model)
    with pytest.raises(surgery.ArgumentError, match="engine must be 'auto', 'fx' or 'export'") as e:
        surgery.split(model, "bert.encoder.layer.1", engine="jit")
    assert e.value.op == "split"
    with pytest.raises(surgery.TraceError, match=r"torch\.fx cannot trace") as t:
        surgery.cut(model, "bert.encoder.layer.1", example_inputs=_ids(), engine="fx")
    assert "torch.export" not in str(t.value)
    assert_unchanged(model, before)


def test_example_inputs_of_a_wrong_type() -> None:
    with pytest.raises(surgery.ArgumentError, match="example_inputs must be a tensor"):
        surgery.cut(bert_cls(), "bert", example_inputs="input_ids")


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:  # data-dependent control flow: neither engine can trace it
            return x
        return self.conv(x)


def test_both_engines_failing_name_both_failures() -> None:
    model = _Branchy()
    before = snapshot(model)
    with pytest.raises(surgery.TraceError) as info:
        surgery.split(model, "conv")
    assert "torch.fx cannot trace _Branchy.forward" in str(info.value)
    assert "torch.export cannot trace it either: it needs example inputs" in str(info.value)
    with pytest.raises(surgery.TraceError, match=r"(?s)torch\.fx.*torch\.export cannot trace"):
        surgery.split(model, "conv", example_inputs=torch.randn(1, 3, 8, 8))
    assert_unchanged(model, before)


def test_import_surgery_does_not_import_transformers() -> None:
    code = "import sys, surgery; sys.exit('transformers' in sys.modules)"
    root = Path(__file__).resolve().parent.parent
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


# ----------------------------------------------------------------------------- config sync


def test_delete_top_layers_of_bert_round_trips(tmp_path: Path) -> None:
    model = bert_cls()
    surgery.delete(model, "bert.encoder.layer[2:]")
    assert model.config.num_hidden_layers == 2
    model.save_pretrained(tmp_path)
    again = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert len(again.bert.encoder.layer) == 2
    with torch.no_grad():
        torch.testing.assert_close(again(**_ids()).logits, model(**_ids()).logits)


def test_delete_middle_layer_of_qwen2_syncs_layer_types_and_cache(tmp_path: Path) -> None:
    model = qwen2_lm()
    surgery.delete(model, "model.layers[0]")
    assert model.config.num_hidden_layers == 3
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    model = qwen2_lm()
    surgery.delete(model, "model.layers.1")
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    ids = _ids()["input_ids"][:1]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
        ref = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(out, ref)
    model.save_pretrained(tmp_path)
    again = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits)


def test_delete_gpt2_block_updates_n_layer() -> None:
    model = gpt2_lm()
    surgery.delete(model, "transformer.h.1")
    assert model.config.n_layer == 2
    assert [b.attn.layer_idx for b in model.transformer.h] == [0, 1]
    ids = _ids()["input_ids"][:1]
    with torch.no_grad():
        assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 10)


def test_insert_copy_of_a_layer_syncs_config() -> None:
    model = qwen2_lm()
    surgery.insert(model, "model.layers[3]", copy.deepcopy(model.model.layers[1]))
    assert model.config.num_hidden_layers == 5
    assert model.config.layer_types[3] == "full_attention"
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3, 4]


def test_insert_unreconcilable_layer_is_refused() -> None:
    model = qwen2_lm()
    before = snapshot(model)
    config = model.config.to_dict()
    with pytest.raises(surgery.ArgumentError, match=r"config\.layer_types has one entry per layer"):
        surgery.insert(model, "model.layers[1]", nn.Identity())
    assert_unchanged(model, before)
    assert model.config.to_dict() == config


def test_delete_outside_the_layer_list_leaves_config_alone() -> None:
    model = bert_cls()
    config = model.config.to_dict()
    surgery.delete(model, "bert.pooler")
    assert model.config.to_dict() == config


def test_delete_whisper_encoder_layer_updates_encoder_count_only() -> None:
    factory, example, _ = ZOO["whisper-encoder"]
    encoder = factory()
    surgery.delete(encoder, "layers[1]")
    assert encoder.config.encoder_layers == 1 and encoder.config.decoder_layers == 2
    with torch.no_grad():
        assert encoder(**example()).last_hidden_state.shape == (2, 16, 32)


def test_replace_head_lm_refusals_change_nothing() -> None:
    model = gpt2_lm()
    before = snapshot(model)
    config = model.config.to_dict()
    with pytest.raises(surgery.ArgumentError, match="cannot stay tied"):
        surgery.replace_head(model, 0, tie=True)
    with pytest.raises(surgery.ArgumentError, match="tie must be True, False or None"):
        surgery.replace_head(model, 5, tie="yes")  # type: ignore[arg-type]
    assert_unchanged(model, before)
    assert model.config.to_dict() == config
    assert model.lm_head.weight is model.transformer.wte.weight


def test_replace_head_lm_zero_returns_hidden_states() -> None:
    model = gpt2_lm()
    with pytest.warns(surgery.SurgeryWarning, match="no longer tied"):
        surgery.replace_head(model, 0)
    assert isinstance(model.lm_head, nn.Identity) and model.config.tie_word_embeddings is False
    with torch.no_grad():
        assert model(_ids()["input_ids"]).logits.shape == (2, 7, 32)


# ----------------------------------------------------------------------------- dry runs on the engine


def _settings(plan: Any) -> dict[tuple[str, str], tuple[Any, Any]]:
    return {(s.path, s.attribute): (s.old, s.new) for s in plan.settings}


def test_replace_head_dry_run_shows_config_settings_and_changes_nothing() -> None:
    model = bert_cls()
    before = snapshot(model)
    config = model.config.to_dict()
    plan = surgery.replace_head(model, 7, dry_run=True)
    assert isinstance(plan, surgery.EditPlan)
    assert [(e.action, e.path, e.new.out_features) for e in plan.edits] == [
        ("replace", "classifier", 7)
    ]
    settings = _settings(plan)
    assert settings[("", "config.num_labels")] == (2, 7)
    assert settings[("", "num_labels")] == (2, 7)
    assert settings[("", "config.id2label")][1] == {i: f"LABEL_{i}" for i in range(7)}
    assert settings[("", "config.label2id")][1] == {f"LABEL_{i}": i for i in range(7)}
    assert "config.num_labels" in str(plan)
    assert {"path": "", "attribute": "config.num_labels", "old": 2, "new": 7} in plan.to_dict()[
        "settings"
    ]
    assert_unchanged(model, before)
    assert model.config.to_dict() == config
    # the real run commits exactly the plan
    surgery.replace_head(model, 7)
    assert model.config.num_labels == 7 and model.classifier.out_features == 7


def test_replace_head_lm_dry_run_shows_resize_without_warning_or_change() -> None:
    model = gpt2_lm()
    before = snapshot(model)
    config = model.config.to_dict()
    plan = surgery.replace_head(model, 120, dry_run=True)  # filterwarnings=error: no warning
    assert [e.path for e in plan.edits] == ["transformer.wte", "lm_head"]
    assert plan.edits[1].new.weight is plan.edits[0].new.weight  # planned tied
    assert _settings(plan)[("", "config.vocab_size")] == (99, 120)
    assert_unchanged(model, before)
    assert model.config.to_dict() == config
    assert model.lm_head.weight is model.transformer.wte.weight
    untie = surgery.replace_head(model, 5, tie=False, dry_run=True)
    assert [e.path for e in untie.edits] == ["lm_head"]
    assert _settings(untie)[("", "config.tie_word_embeddings")] == (True, False)
    assert_unchanged(model, before)
    assert model.config.to_dict() == config


def test_replace_head_refused_late_leaves_model_and_config_unchanged() -> None:
    model = bert_cls()
    model.extra = model.classifier  # a shared head: aliases="error" refuses at finish
    before = snapshot(model)
    config = model.config.to_dict()
    with pytest.raises(surgery.ArgumentError, match="also reachable at 'extra'"):
        surgery.replace_head(model, 7, aliases="error")
    assert_unchanged(model, before)
    assert model.config.to_dict() == config


def test_delete_layer_dry_run_shows_config_sync_and_changes_nothing() -> None:
    model = qwen2_lm()
    before = snapshot(model)
    config = model.config.to_dict()
    plan = surgery.delete(model, "model.layers.1", dry_run=True)
    assert [(e.action, e.path) for e in plan.edits] == [("delete", "model.layers.1")]
    settings = _settings(plan)
    assert settings[("", "config.num_hidden_layers")] == (4, 3)
    assert settings[("", "config.layer_types")][1] == [
        "full_attention",
        "sliding_attention",
        "sliding_attention",
    ]
    # paths after the edit: old layers 2 and 3 move to 1 and 2
    assert settings[("model.layers.1.self_attn", "layer_idx")] == (2, 1)
    assert settings[("model.layers.2.self_attn", "layer_idx")] == (3, 2)
    assert_unchanged(model, before)
    assert model.config.to_dict() == config
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]


def test_insert_layer_dry_run_shows_config_sync_and_changes_nothing() -> None:
    model = qwen2_lm()
    layer = copy.deepcopy(model.model.layers[1])
    before = snapshot(model)
    config = model.config.to_dict()
    plan = surgery.insert(model, "model.layers[3]", layer, dry_run=True)
    assert [(e.action, e.path) for e in plan.edits] == [("insert", "model.layers.3")]
    settings = _settings(plan)
    assert settings[("", "config.num_hidden_layers")] == (4, 5)
    assert settings[("", "config.layer_types")][1][3] == "full_attention"
    # paths after the edit: the new layer at 3, the old layer 3 now at 4
    assert settings[("model.layers.3.self_attn", "layer_idx")] == (1, 3)
    assert settings[("model.layers.4.self_attn", "layer_idx")] == (3, 4)
    assert_unchanged(model, before)
    assert model.config.to_dict() == config
    assert layer.self_attn.layer_idx == 1


def test_delete_refused_late_leaves_config_unchanged() -> None:
    model = gpt2_lm()
    model.alias = model.transformer.h[1]
    before = snapshot(model)
    config = model.config.to_dict()
    with pytest.raises(surgery.ArgumentError, match="aliases='error'"):
        surgery.delete(model, "transformer.h.1", aliases="error")
    assert_unchanged(model, before)
    assert model.config.to_dict() == config


# ----------------------------------------------------------------------------- other sizes, zoo fixes


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "t5-encoder"])
def test_split_runs_on_other_batch_sizes_and_lengths(name: str) -> None:
    """The export engine keeps input sizes free (Dim.AUTO): trace on (2, 7), run (3, 11)."""
    factory, example, path = ZOO[name]
    model = factory()
    head, tail = surgery.split(model, path, example_inputs=example())
    g = torch.Generator().manual_seed(1)
    for batch, length in ((3, 11), (2, 4), (5, 7)):
        ids = torch.randint(1, 99, (batch, length), generator=g)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.no_grad():
            torch.testing.assert_close(_main(tail(head(**inputs))), _main(model(**inputs)))


def test_split_without_example_uses_what_forward_takes() -> None:
    """T5EncoderModel's dummy inputs hold decoder ids its forward does not name: left out."""
    factory, _example, path = ZOO["t5-encoder"]
    model = factory()
    head, tail = surgery.split(model, path)  # the model's own dummy_inputs
    ids = torch.randint(1, 99, (1, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(_main(tail(head(input_ids=ids))), _main(model(input_ids=ids)))


@pytest.mark.parametrize("name", ["vit", "clip-vision"])
def test_adapt_input_keeps_the_config_in_step(name: str) -> None:
    model = ZOO[name][0]()
    pixels = _pixels()["pixel_values"][:, :1]
    with torch.no_grad():
        expected = _main(model(pixel_values=pixels.expand(-1, 3, -1, -1).contiguous()))
    before = snapshot(model)
    plan = surgery.adapt_input(model, 1, dry_run=True)
    assert ("", "config.num_channels") in _settings(plan)
    assert_unchanged(model, before)
    surgery.adapt_input(model, 1)
    assert model.config.num_channels == 1
    for m in model.modules():  # ViTPatchEmbeddings checks its own count
        if "num_channels" in m.__dict__:
            assert m.__dict__["num_channels"] == 1
    with torch.no_grad():
        torch.testing.assert_close(_main(model(pixel_values=pixels)), expected)


def test_replace_head_of_a_head_class_without_base_model_attribute() -> None:
    """WhisperForAudioClassification keeps its encoder under .encoder, not base_model_prefix."""
    cfg = transformers.WhisperConfig(**WHISPER, classifier_proj_size=24)
    model = transformers.WhisperForAudioClassification(cfg).eval()
    surgery.replace_head(model, 7)
    assert model.classifier.out_features == 7 and model.config.num_labels == 7
    features = torch.randn(2, 8, 32)
    assert model(input_features=features).logits.shape == (2, 7)
    # a true base model is still refused
    base = ZOO["clip-vision"][0]()
    with pytest.raises(surgery.LayerNotFoundError, match="base model"):
        surgery.replace_head(base, 7)


@pytest.mark.parametrize("call", [surgery.tree, surgery.summary, surgery.verify])
def test_input_size_on_token_ids_names_example_inputs(call: Callable[..., Any]) -> None:
    model = bert_cls()
    with pytest.raises(surgery.SurgeryError) as err:
        call(model, input_size=(2, 7))
    assert "example_inputs={'input_ids': torch.zeros((2, 7), dtype=torch.long)}" in str(err.value)
