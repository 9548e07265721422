"""A pretrained resnet18 stem..layer2, frozen, with fresh layer3/layer4 and a new classifier.

The tutorials' ``MyNet_pretrained`` keeps the first half of a pretrained resnet18 (stem,
layer1, layer2) frozen, appends randomly initialised layer3, layer4, the average
pool and ``Linear(512, 10)``, and trains the rest. By hand that is
``nn.Sequential(*list(resnet.children())[:6])``, two more resnets for the fresh
layers, a ``requires_grad`` loop, and a forgotten ``flatten``. Here:
``surgery.cut`` (the pretrained part, functional ops included), ``surgery.compose``
(shapes traced at every junction), ``surgery.freeze`` (BatchNorm statistics stay
fixed too), ``surgery.verify`` and ``surgery.trainable``.

Use ``weights="DEFAULT"`` for the real pretrained weights; ``weights=None`` keeps
this recipe offline and fast (the counts are the same).

Run: ``python recipes/pretrained_hybrid.py``
"""

from __future__ import annotations

import torch
import torchvision
from _common import check, finish, fmt, section
from torch import nn

import surgery

INPUT = (10, 3, 224, 224)


def main() -> None:
    torch.manual_seed(0)
    pretrained = torchvision.models.resnet18(weights=None)  # weights="DEFAULT" in real use
    fresh = torchvision.models.resnet18(weights=None)  # random init for layer3/layer4

    section("compose: frozen resnet18 stem..layer2 + fresh layer3, layer4, pool, Linear(512, 10)")
    model = surgery.compose(
        body=surgery.cut(pretrained, "layer2"),  # conv1, bn1, relu, maxpool, layer1, layer2
        layer3=(fresh, "layer3"),
        layer4=(fresh, "layer4"),
        avgpool=(fresh, "avgpool"),
        flatten=nn.Flatten(),
        fc=nn.Linear(512, 10),
        input_size=INPUT,
    )
    surgery.freeze(model, "body")
    print("  " + str(surgery.trainable(model)).replace("\n", "\n  "))

    stats = surgery.verify(
        model, INPUT, output_shape=(10, 10), total_params=11_181_642, trainable_params=10_498_570
    )
    check(
        stats.total_params == 11_181_642,
        f"total {fmt(stats.total_params)} params (tutorial: 11,181,642)",
    )
    check(
        stats.trainable_params == 10_498_570,
        f"trainable {fmt(stats.trainable_params)} (tutorial: 10,498,570)",
    )
    frozen = stats.total_params - stats.trainable_params
    check(frozen == 683_072, f"frozen {fmt(frozen)} (tutorial: 683,072)")
    check(tuple(stats.output_size) == (10, 10), f"output {tuple(stats.output_size)} on {INPUT}")

    section("the parts are copies: no parameter shared with the source models")
    ours = {id(p) for p in model.parameters()}
    check(
        not ours & {id(p) for p in pretrained.parameters()}
        and not ours & {id(p) for p in fresh.parameters()},
        "no parameter object shared with pretrained or fresh",
    )
    check(
        torch.equal(
            surgery.get(model, "body.layer2.1.conv2").weight, pretrained.layer2[1].conv2.weight
        ),
        "the body carries the pretrained values",
    )

    section("a training step: frozen weights and BatchNorm statistics do not move")
    bn_before = surgery.get(model, "body.layer1.0.bn1").running_mean.clone()
    w_before = model.body.conv1.weight.clone()
    fc_before = model.fc.weight.clone()
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01
    )
    model.train()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    check(torch.equal(model.body.conv1.weight, w_before), "frozen conv1 weight unchanged")
    check(
        torch.equal(surgery.get(model, "body.layer1.0.bn1").running_mean, bn_before),
        "frozen BatchNorm running_mean unchanged after model.train() and a step",
    )
    check(not torch.equal(model.fc.weight, fc_before), "the new classifier trained")

    section("unfreeze the last frozen block (body.layer2.1)")
    block = sum(p.numel() for p in surgery.get(model, "body.layer2.1").parameters())
    surgery.unfreeze(model, "body.layer2.1")
    print("  " + str(surgery.trainable(model)).replace("\n", "\n  "))
    stats = surgery.verify(model, INPUT, trainable_params=10_498_570 + block)
    check(block == 295_424, f"layer2.1 holds {fmt(block)} params")
    check(
        stats.trainable_params == 10_793_994,
        f"trainable now {fmt(stats.trainable_params)}, frozen {fmt(stats.total_params - stats.trainable_params)}",
    )
    check(
        surgery.get(model, "body.layer2.1.bn1").weight.requires_grad
        and not surgery.get(model, "body.layer2.0.conv1").weight.requires_grad,
        "layer2.1 trains, layer2.0 stays frozen",
    )
    finish("pretrained_hybrid")


if __name__ == "__main__":
    main()
