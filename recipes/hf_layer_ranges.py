"""Stack layer ranges of two Hugging Face Llamas into a new model, from sharded checkpoints.

A "passthrough" merge of two ``LlamaForCausalLM`` (tiny configs, distinct weights,
saved with ``save_pretrained`` as sharded safetensors): the new 6-layer model takes
layers 0-2 of A as its layers 0-2 and layers 1-3 of B as its layers 3-5, A's token
embedding, and B's final norm and LM head. It is built on the meta device from a
config with ``num_hidden_layers=6`` and filled by ``surgery.load_partial`` (``include``
patterns, a regex ``rename`` shifting B's layer indices by +2), all or nothing. The
rotary embedding's ``inv_freq`` is a non-persistent buffer (in no checkpoint): it is
rebuilt from the config, not left on meta. Then every tensor is checked against the
files, ``save_pretrained`` -> ``from_pretrained`` round-trips, and ``generate`` runs
with a KV cache.

Run: python recipes/hf_layer_ranges.py   (seconds; exits 1 if a check fails)
"""

from __future__ import annotations

import os
import tempfile

from _common import check, finish, require, section

require("transformers")

import torch  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402

import surgery  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
CONFIG = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=37,
    vocab_size=99,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
SHIFT = [(r"^model\.layers\.(\d+)\.", lambda m: f"model.layers.{int(m[1]) + 2}.")]


def source_of(key: str) -> tuple[str, str]:
    """Which model a hybrid key comes from, and its key there."""
    if key.startswith("model.layers."):
        i, rest = key.split(".", 3)[2:]
        return ("A", key) if int(i) < 3 else ("B", f"model.layers.{int(i) - 2}.{rest}")
    return ("A", key) if key.startswith("model.embed_tokens") else ("B", key)


def main() -> None:
    tmp = tempfile.TemporaryDirectory(prefix="hf_layer_ranges-")
    root = tmp.name

    section("two tiny Llamas with distinct weights, saved as sharded safetensors")
    models = {}
    for seed, name in enumerate("AB"):
        torch.manual_seed(seed)
        models[name] = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).eval()
        models[name].save_pretrained(os.path.join(root, name), max_shard_size="40KB")
    shards = {
        n: [f for f in os.listdir(os.path.join(root, n)) if f.endswith(".safetensors")]
        for n in "AB"
    }
    check(all(len(s) > 1 for s in shards.values()), f"sharded: {len(shards['A'])} shards each")
    check(
        not torch.equal(
            models["A"].model.layers[1].mlp.up_proj.weight,
            models["B"].model.layers[1].mlp.up_proj.weight,
        ),
        "A and B have different weights",
    )

    section("the 6-layer hybrid, built on meta, filled by load_partial")
    config = transformers.LlamaConfig(**{**CONFIG, "num_hidden_layers": 6})
    with torch.device("meta"):
        hybrid = transformers.LlamaForCausalLM(config)
    part_a = surgery.load_partial(
        os.path.join(root, "A"), include=["model.embed_tokens", "model.layers[0:3]"]
    )
    part_b = surgery.load_partial(
        os.path.join(root, "B"),
        include=["model.layers[1:4]", "model.norm", "lm_head"],
        rename=SHIFT,
    )
    layers_b = sorted({k.split(".")[2] for k in part_b if k.startswith("model.layers.")})
    check(layers_b == ["3", "4", "5"], "the regex rename maps B's layers 1-3 to 3-5")
    report = surgery.load_partial({**part_a, **part_b}, into=hybrid, strict=True)
    check(not report.missing, f"strict load filled all {len(report.loaded)} checkpoint tensors")

    # non-persistent buffers (rotary inv_freq) are in no checkpoint: rebuild their modules
    for name, module in list(hybrid.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            surgery.replace(hybrid, name, type(module)(config=hybrid.config))
    rotary = hybrid.model.rotary_emb
    check(
        not rotary.inv_freq.is_meta
        and torch.equal(rotary.inv_freq, models["A"].model.rotary_emb.inv_freq),
        "rotary inv_freq rebuilt from the config (equal to the sources')",
    )
    check(
        not any(t.is_meta for t in (*hybrid.parameters(), *hybrid.buffers())),
        "no parameter or buffer is left on meta",
    )
    check(
        [layer.self_attn.layer_idx for layer in hybrid.model.layers] == list(range(6)),
        "each attention layer knows its own KV-cache slot (layer_idx 0-5)",
    )

    section("every tensor equals its source, read back from the files")
    files = {n: surgery.load_partial(os.path.join(root, n)) for n in "AB"}
    state = hybrid.state_dict()
    same = sum(
        torch.equal(value, files[source_of(key)[0]][source_of(key)[1]])
        for key, value in state.items()
    )
    check(same == len(state), f"{same} of {len(state)} tensors equal their source tensor")

    section("it computes what the same stack assembled by hand computes")
    by_hand = transformers.LlamaForCausalLM(config).eval()
    a, b = models["A"], models["B"]
    by_hand.model.embed_tokens = a.model.embed_tokens
    by_hand.model.layers = nn.ModuleList([*a.model.layers[:3], *b.model.layers[1:4]])
    by_hand.model.norm, by_hand.lm_head = b.model.norm, b.lm_head
    ids = torch.randint(3, 99, (2, 9), generator=torch.Generator().manual_seed(1))
    hybrid.eval()
    with torch.no_grad():
        logits = hybrid(ids, use_cache=False).logits
        check(
            torch.allclose(logits, by_hand(ids, use_cache=False).logits, atol=1e-6), "logits match"
        )

    section("save_pretrained -> from_pretrained round-trips; generate runs with a KV cache")
    hybrid.save_pretrained(os.path.join(root, "hybrid"))
    again = transformers.LlamaForCausalLM.from_pretrained(os.path.join(root, "hybrid")).eval()
    with torch.no_grad():
        check(len(again.model.layers) == 6, "the reloaded model has 6 layers")
        check(torch.equal(again(ids).logits, logits), "the reloaded model gives the same logits")
        cached = hybrid.generate(ids[:1], max_new_tokens=6, do_sample=False, use_cache=True)
        plain = hybrid.generate(ids[:1], max_new_tokens=6, do_sample=False, use_cache=False)
    check(
        cached.shape == (1, 15) and torch.equal(cached, plain),
        "greedy generate: 6 new tokens, cache or not",
    )
    tmp.cleanup()
    finish("hf_layer_ranges")


if __name__ == "__main__":
    main()
