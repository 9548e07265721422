"""torchvision's ``initialize_model`` for six families, in one loop, with ``replace_head``.

The "Finetuning Torchvision Models" tutorial re-heads each family by hand
(``model.fc = nn.Linear(512, n)``, ``model.classifier[6] = ...``,
``model.classifier[1] = nn.Conv2d(512, n, 1)``, inception's ``AuxLogits.fc`` and
``fc``...) and freezes with a ``requires_grad`` loop. Here one function covers every
family: ``surgery.freeze(model)`` then ``surgery.replace_head(model, num_classes)``.

For each model the recipe checks, in feature-extract and finetune modes, that the
parameters to learn are exactly those of the tutorial's hand-written version (names,
shapes, count), and that the output shape is right (``surgery.verify``). Models are
built on the meta device: structure only, no memory, no compute.

Run: ``python recipes/finetune_zoo.py``
"""

from __future__ import annotations

import torch
import torchvision
from _common import check, finish, fmt, section
from torch import nn

import surgery

NUM_CLASSES = 2  # the tutorial's hymenoptera data set: ants and bees
MODELS = ["resnet18", "alexnet", "vgg11_bn", "squeezenet1_0", "densenet121", "inception_v3"]


def build(name: str) -> nn.Module:
    """A torchvision model on the meta device (no weights: structure only)."""
    kwargs = {"init_weights": False} if name == "inception_v3" else {}
    with torch.device("meta"):
        return getattr(torchvision.models, name)(weights=None, **kwargs)


def initialize_model(name: str, num_classes: int, feature_extract: bool) -> tuple[nn.Module, int]:
    """The tutorial's ``initialize_model``, for every family at once."""
    model = build(name)
    if feature_extract:
        surgery.freeze(model)  # every pretrained parameter
    surgery.replace_head(model, num_classes)  # the new head trains
    input_size = 299 if name == "inception_v3" else 224
    return model, input_size


def by_hand(name: str, num_classes: int, feature_extract: bool) -> nn.Module:
    """What the tutorial writes, family by family (the reference)."""
    model = build(name)
    if feature_extract:
        for p in model.parameters():
            p.requires_grad = False
    with torch.device("meta"):
        if name.startswith("resnet"):
            model.fc = nn.Linear(model.fc.in_features, num_classes)
        elif name == "alexnet" or name.startswith("vgg"):
            model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)
        elif name.startswith("squeezenet"):
            model.classifier[1] = nn.Conv2d(512, num_classes, kernel_size=(1, 1), stride=(1, 1))
            model.num_classes = num_classes
        elif name.startswith("densenet"):
            model.classifier = nn.Linear(model.classifier.in_features, num_classes)
        elif name == "inception_v3":
            model.AuxLogits.fc = nn.Linear(model.AuxLogits.fc.in_features, num_classes)
            model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def to_learn(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


def main() -> None:
    rows = []
    for feature_extract in (True, False):
        mode = "feature extract" if feature_extract else "finetune"
        section(f"{mode}: num_classes={NUM_CLASSES}")
        for name in MODELS:
            model, size = initialize_model(name, NUM_CLASSES, feature_extract)
            want = to_learn(by_hand(name, NUM_CLASSES, feature_extract))
            got = to_learn(model)
            count = sum(p.numel() for p in model.parameters() if p.requires_grad)
            if feature_extract:
                print(f"  {name}: params to learn: {', '.join(got)} ({fmt(count)})")
            check(
                got == want,
                f"{name}: same parameters to learn as the tutorial's code ({len(got)} tensors, {fmt(count)} values)",
            )
            stats = surgery.verify(
                model, (1, 3, size, size), output_shape=(1, NUM_CLASSES), trainable_params=count
            )
            check(
                tuple(stats.output_size) == (1, NUM_CLASSES),
                f"{name}: output (1, {NUM_CLASSES}) on (1, 3, {size}, {size})",
            )
            rows.append((mode, name, len(got), count, sum(p.numel() for p in model.parameters())))

    section("summary: parameters to learn")
    print(f"  {'mode':<16} {'model':<14} {'tensors':>7} {'to learn':>12} {'total':>12}")
    for mode, name, tensors, count, total in rows:
        print(f"  {mode:<16} {name:<14} {tensors:>7} {fmt(count):>12} {fmt(total):>12}")

    expected_fe = {
        "resnet18": 1_026,  # fc: 512 * 2 + 2
        "alexnet": 8_194,  # classifier.6: 4096 * 2 + 2
        "vgg11_bn": 8_194,
        "squeezenet1_0": 1_026,  # classifier.1: a 1x1 conv, 512 * 2 + 2
        "densenet121": 2_050,  # classifier: 1024 * 2 + 2
        "inception_v3": 5_636,  # AuxLogits.fc (768 * 2 + 2) and fc (2048 * 2 + 2)
    }
    fe = {name: count for mode, name, _, count, _ in rows if mode == "feature extract"}
    check(fe == expected_fe, "feature-extract counts match the tutorial's heads")
    ft = {name: (count, total) for mode, name, _, count, total in rows if mode == "finetune"}
    check(all(c == t for c, t in ft.values()), "finetune mode: every parameter trains")
    finish("finetune_zoo")


if __name__ == "__main__":
    main()
