"""The classic hybrid networks of the transfer-learning tutorials, built with ``surgery.compose`` and checked against its tables.

``MyNet1`` puts a block of a VGG (``vgg16_bn.features[7:14]``: two 128-channel
conv/BN/ReLU and a max-pool) in front of a ResNet stage (``resnet18.layer3``) for
1-channel 32x32 images. The tutorials wrote a class with hand-picked children and a
``forward`` that flattens by hand; ``compose`` takes the parts by path (copies, so
the source models are never shared or changed) and traces the shapes through every
junction on the meta device, naming the junction when they do not fit.

Run: ``python recipes/hybrid_mynet.py``
"""

from __future__ import annotations

import torch
import torchvision
from _common import check, finish, fmt, section
from torch import nn

import surgery

INPUT = (10, 1, 32, 32)


def mynet1(vgg: nn.Module, resnet: nn.Module) -> nn.Sequential:
    """The tutorials' MyNet1: a grey-image stem, a VGG block, a ResNet stage and a classifier."""
    return surgery.compose(
        conv1=nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU()),
        block2=(vgg, "features[7:14]"),  # 64 -> 128 channels, 32 -> 16 pixels
        block3=(resnet, "layer3"),  # 128 -> 256 channels, 16 -> 8 pixels
        avgpool=(resnet, "avgpool"),
        flatten=nn.Flatten(),
        fc=nn.Linear(256, 10),
        input_size=INPUT,
    )


def vgg_block(cin: int, cout: int, n: int) -> nn.Sequential:
    """``n`` times conv3x3-BN-ReLU, then a 2x2 max-pool (a VGG stage)."""
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [
            nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        ]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


def mynet2() -> nn.Sequential:
    """MyNet2: a small VGG-style network for the same images.

    The tutorials' table gives only its size (925,482 parameters) and output; this is
    the architecture the project's tests and docs/composing.md use for it."""
    return surgery.compose(
        block1=vgg_block(1, 48, 1),
        block2=vgg_block(48, 96, 1),
        block3=vgg_block(96, 192, 3),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        fc1=nn.Linear(192, 256),
        relu=nn.ReLU(),
        dropout=nn.Dropout(0.5),
        fc2=nn.Linear(256, 10),
        input_size=INPUT,
    )


def main() -> None:
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16_bn(weights=None)  # weights="DEFAULT" for pretrained parts
    resnet = torchvision.models.resnet18(weights=None)

    section("MyNet1 = conv1 + vgg16_bn.features[7:14] + resnet18.layer3 + avgpool + fc")
    net = mynet1(vgg, resnet)
    print("  " + str(surgery.tree(net, depth=1, input_size=INPUT)).replace("\n", "\n  "))
    stats = surgery.verify(net, INPUT, output_shape=(10, 10), total_params=2_325_002)
    check(
        stats.total_params == 2_325_002,
        f"MyNet1: {fmt(stats.total_params)} params (tutorial: 2,325,002)",
    )
    out = net.eval()(torch.randn(INPUT))
    check(
        tuple(out.shape) == (10, 10), f"MyNet1: a real forward gives {tuple(out.shape)} on {INPUT}"
    )
    ours = {id(p) for p in net.parameters()}
    check(
        not ours & {id(p) for p in vgg.parameters()}
        and not ours & {id(p) for p in resnet.parameters()},
        "MyNet1 shares no parameter with vgg16_bn or resnet18 (parts are copies)",
    )
    check(
        torch.equal(net.block3[0].conv1.weight, resnet.layer3[0].conv1.weight),
        "block3 carries resnet18.layer3's values",
    )

    section("a junction that does not fit is named before anything runs")
    try:
        surgery.compose(
            conv1=nn.Conv2d(1, 32, 3, padding=1),  # 32 channels, but block2 expects 64
            block2=(vgg, "features[7:14]"),
            input_size=INPUT,
        )
        check(False, "a 32-channel stem before a 64-channel block raises ShapeMismatchError")
    except surgery.ShapeMismatchError as e:
        print("  " + str(e).replace("\n", "\n  "))
        check("block2" in str(e), "ShapeMismatchError names the junction (block2)")

    section("MyNet2: a small VGG-style network")
    net2 = mynet2()
    stats = surgery.verify(net2, INPUT, output_shape=(10, 10), total_params=925_482)
    check(
        stats.total_params == 925_482,
        f"MyNet2: {fmt(stats.total_params)} params (tutorial: 925,482)",
    )
    check(
        tuple(net2.eval()(torch.randn(INPUT)).shape) == (10, 10),
        f"MyNet2: output (10, 10) on {INPUT}",
    )
    finish("hybrid_mynet")


if __name__ == "__main__":
    main()
