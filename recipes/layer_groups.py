"""fastai's layer groups and discriminative learning rates, on plain torchvision models.

fastai (v1 ``model_meta``, v2 ``_resnet_split`` & co.) splits each architecture into
layer groups by indexing its own ``Sequential(body, head)`` wrapper: ``m[0][6]`` for
resnets, ``m[0][0][22]`` for vgg, ``m[0][0][5]`` and ``m[0][0][8]`` for squeezenet.
Here the same split points are module paths on the torchvision models themselves,
so they work without fastai's wrapper: ``surgery.layer_groups`` partitions the
parameters, ``surgery.param_groups(model, slice(1e-4, 1e-2), split_at=...)`` gives
fastai's geometric rates, and a ``StepLR`` scheduler drives every group.

Run: ``python recipes/layer_groups.py``
"""

from __future__ import annotations

import math

import torch
import torchvision
from _common import check, finish, fmt, section
from torch import nn

import surgery

# fastai's split points (fastai/vision/learner.py, model_meta), as paths on the
# torchvision models. fastai's body is ``children[:cut]`` (resnet: cut=-2, drops
# avgpool and fc; others: cut=-1, keeps ``features``), its head replaces the
# classifier, so ``m[0]`` is the body, ``m[0][0]`` is ``features`` and ``m[1]``
# is the classifier.
FASTAI_SPLITS = {
    # _alexnet_split: m[0][0][:6], m[0][0][6:], m[1:]
    "alexnet": ["features.6", "classifier"],
    # _vgg_split: m[0][0][:22], m[0][0][22:], m[1:]  (features[22] is a ReLU: the
    # group starts with it, i.e. at its first parameter, features.24)
    "vgg16_bn": ["features[22:]", "classifier"],
    # _resnet_split: m[0][:6], m[0][6:], m[1:]  (body child 6 is layer3)
    "resnet34": ["layer3", "fc"],
    # _squeezenet_split: m[0][0][:5], m[0][0][5:8], m[0][0][8:], m[1:]
    "squeezenet1_0": ["features.5", "features.8", "classifier"],
    # _densenet_split: m[0][0][:7], m[0][0][7:], m[1:]  (features[7] is transition2)
    "densenet121": ["features.transition2", "classifier"],
}
LR = slice(1e-4, 1e-2)


def build(name: str) -> nn.Module:
    with torch.device("meta"):  # structure only: groups and rates need no weights
        return getattr(torchvision.models, name)(weights=None)


def geometric(lo: float, hi: float, n: int) -> list[float]:
    return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-9) for x, y in zip(a, b))


def one_model(name: str, split_at: list[str]) -> None:
    section(f"{name}: split_at={split_at}")
    model = build(name)
    groups = surgery.layer_groups(model, split_at)
    sizes = [sum(model.get_parameter(n).numel() for n in g) for g in groups]
    for i, (g, size) in enumerate(zip(groups, sizes)):
        print(f"  group {i}: {len(g):>3} tensors, {fmt(size):>11} params, {g[0]} .. {g[-1]}")
    names = [n for n, _ in model.named_parameters()]
    check(
        [n for g in groups for n in g] == names,
        f"{len(groups)} groups cover every parameter once, in model order",
    )

    opt_groups = surgery.param_groups(model, LR, split_at=split_at)
    rates = [g["lr"] for g in opt_groups]
    want = geometric(LR.start, LR.stop, len(groups))
    print("  lr: " + ", ".join(f"{r:.2e}" for r in rates))
    check(close(rates, want), f"slice(1e-4, 1e-2) -> geometric rates over {len(groups)} groups")

    opt = torch.optim.SGD(opt_groups, lr=0.1, momentum=0.9)  # the group rates win over lr=
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    for _ in range(5):  # 5 epochs: the rates drop after epochs 2 and 4
        opt.step()  # (no gradients on meta: a no-op step, keeps the scheduler's order check happy)
        sched.step()
    after = [g["lr"] for g in opt.param_groups]
    check(
        close(after, [r * 0.01 for r in want]),
        "StepLR(step_size=2, gamma=0.1): every group at 1/100 after 5 epochs",
    )

    # fastai's Learner.freeze(): only the last group (the head) trains.
    surgery.freeze_to(model, -1, split_at=split_at)
    head_only = surgery.param_groups(model, LR, split_at=split_at)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    check(
        trainable == set(groups[-1])
        and len(head_only) == 1
        and math.isclose(head_only[0]["lr"], LR.stop),
        f"freeze_to(-1): only the last group trains, at {LR.stop:g}; frozen groups get no optimizer entry",
    )
    surgery.freeze_to(model, 0, split_at=split_at)  # unfreeze: everything trains again
    check(all(p.requires_grad for p in model.parameters()), "freeze_to(0): everything trains again")


def fastai_learner() -> None:
    section("a fastai-style model: resnet34 body + create_head, groups by path")
    r34 = torchvision.models.resnet34(weights=None)
    model = surgery.compose(
        body=surgery.cut(r34, "layer4"),  # fastai's create_body(resnet34, cut=-2)
        head=surgery.create_head(512, 10),  # fastai's create_head(512, 10)
        input_size=(2, 3, 64, 64),
    )
    split_at = ["body.layer3", "head"]  # fastai's _resnet_split
    groups = surgery.layer_groups(model, split_at)
    print(f"  groups: {[len(g) for g in groups]} tensors; first of each: {[g[0] for g in groups]}")
    check(
        groups[1][0] == "body.layer3.0.conv1.weight" and groups[2][0].startswith("head."),
        "groups start at body.layer3 and at the head",
    )
    surgery.freeze_to(model, -1, split_at=split_at)
    report = surgery.trainable(model)
    print("  " + str(report).replace("\n", "\n  "))
    check(
        report["body"].trainable == 0 and report["head"].frozen == 0,
        "freeze_to(-1): body frozen, head trains",
    )
    surgery.freeze_to(model, 0, split_at=split_at)
    opt = torch.optim.AdamW(
        surgery.param_groups(model, slice(1e-5, 1e-3), split_at=split_at), weight_decay=0.01
    )
    x = torch.randn(4, 3, 64, 64)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    check(
        torch.isfinite(loss).item(),
        f"one AdamW step with discriminative rates (loss {loss.item():.3f})",
    )


def main() -> None:
    for name, split_at in FASTAI_SPLITS.items():
        one_model(name, split_at)
    fastai_learner()
    finish("layer_groups")


if __name__ == "__main__":
    main()
