"""torchvision's resnet50 and convnext_tiny weights into timm's, and timm's ViT-B/16 into torchvision's.

The same network lives in several zoos under different key names. The usual way is a
hand-written rename table per architecture (timm's ``checkpoint_filter_fn``, HF's
conversion scripts). ``surgery.match_keys`` infers the mapping from the structure
(registration order, shapes, the module tree, leaf names) and refuses where it cannot
prove it; ``load_partial(rename="auto")`` loads through it, and ``check_transfer``
proves the result by comparing outputs. ``km.rules()`` gives a short rule list to pin.

Run: ``python recipes/convert_between_zoos.py``
"""

from __future__ import annotations

import os
import tempfile

import torch
import torchvision
from _common import check, finish, require, section

import surgery

require("timm")
import timm  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    tmp = tempfile.TemporaryDirectory()
    x = torch.randn(2, 3, 64, 64)

    section("torchvision resnet50 -> timm resnet50 (a checkpoint file)")
    tv = torchvision.models.resnet50(weights=None).eval()
    path = surgery.save_state_dict(tv, os.path.join(tmp.name, "tv_resnet50.safetensors"))
    tm = timm.create_model("resnet50", pretrained=False).eval()
    km = surgery.match_keys(path, tm)
    print("  " + str(km).splitlines()[0])
    check(len(km.mapping) == 320 and not km.ambiguous, "all 320 tensors matched, none ambiguous")
    report = surgery.load_partial(path, into=tm, rename="auto", strict=True)
    check(len(report.loaded) == 320, "load_partial(rename='auto', strict=True) loads 320 tensors")
    proof = surgery.check_transfer(tv, tm, x)
    print("  " + str(proof).replace("\n", "\n  "))
    check(proof.ok and proof.max_abs == 0.0, "timm's outputs equal torchvision's exactly")

    section("and back: timm resnet50 -> a fresh torchvision resnet50")
    back = torchvision.models.resnet50(weights=None).eval()
    surgery.load_partial(tm, into=back, rename="auto", strict=True)
    check(surgery.check_transfer(tm, back, x).ok, "torchvision's outputs equal timm's")

    section("timm ViT-B/16 -> torchvision vit_b_16 (other names, other order)")
    vit_tm = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    vit_tv = torchvision.models.vit_b_16(weights=None).eval()
    km = surgery.match_keys(vit_tm, vit_tv)
    check(
        km.mapping["conv_proj.weight"] == "patch_embed.proj.weight"
        and km.mapping["class_token"] == "cls_token"
        and km.mapping["encoder.layers.encoder_layer_11.mlp.3.weight"]
        == "blocks.11.mlp.fc2.weight",
        "conv_proj <- patch_embed.proj, class_token <- cls_token, mlp.3 <- mlp.fc2",
    )
    rules = km.rules()
    print(f"  {len(rules)} rules reproduce the mapping, e.g. {rules[3]}")
    check(len(rules) <= 14, "a short rule list to pin in code")
    surgery.load_partial(vit_tm, into=vit_tv, rename=rules, strict=True)
    img = torch.randn(1, 3, 224, 224)
    check(surgery.check_transfer(vit_tm, vit_tv, img).ok, "the pinned rules give equal outputs")

    section("torchvision convnext_tiny -> timm convnext_tiny (tensors in other shapes)")
    cn_tv = torchvision.models.convnext_tiny(weights=None).eval()
    cn_tm = timm.create_model("convnext_tiny", pretrained=False).eval()
    km = surgery.match_keys(cn_tv, cn_tm)
    shapes = km.reshaped["stages.0.blocks.0.gamma"]
    print(f"  {len(km.reshaped)} reshaped, e.g. stages.0.blocks.0.gamma {shapes[0]} -> {shapes[1]}")
    check(len(km.reshaped) == 18 and not km.mismatched, "18 layer scales (C, 1, 1) -> (C,)")
    report = surgery.load_partial(cn_tv, into=cn_tm, rename="auto", strict=True)
    check(report.reshaped == km.reshaped, "load_partial loads them reshaped")
    check(surgery.check_transfer(cn_tv, cn_tm, x).ok, "timm's outputs equal torchvision's")

    section("two different networks are refused, not forced")
    r34 = torchvision.models.resnet34(weights=None)
    r50 = torchvision.models.resnet50(weights=None)
    try:
        surgery.load_partial(r34, into=r50, rename="auto")
        check(False, "resnet34 into resnet50 raises LoadError")
    except surgery.LoadError as e:
        print("  " + str(e)[:160] + " ...")
        check("diverge at 'layer1.0.conv1'" in str(e), "the error names where they diverge")
    tmp.cleanup()
    finish("convert_between_zoos")


if __name__ == "__main__":
    main()
