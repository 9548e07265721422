"""Transfer learning end to end on real data, offline, in about a minute on a CPU.

The story: a small CNN is pretrained on the handwritten digits 0-4 (scikit-learn's
bundled 8x8 digits, no download) and saved as safetensors. A model for the *other*
digits, 5-9, is then built by surgery from that checkpoint: the same architecture
gets a fresh classifier (``replace_head``) and the pretrained body's weights only
(``load_partial(..., exclude="classifier")``). With ten labelled images per class,
three settings are compared on the same splits, seeds and epoch budget:

* feature extraction: the body is frozen (``freeze``), ``split`` cuts the model
  after it, ``precompute`` runs the body once, and only the classifier trains,
  on the cached features;
* fine-tuning with discriminative learning rates: ``param_groups`` with
  ``slice(1e-3, 1e-2)`` over three layer groups;
* training from scratch: the same architecture with random weights.

Few-shot results depend on which ten images per class are labelled, so every
setting runs on the same three random draws and the table reports the mean
validation accuracy per epoch. The recipe checks that both transfer settings beat
scratch, and writes a plot (``recipes/out/digits_transfer.png`` or ``--out``).

Run: ``python recipes/digits_transfer.py [--out PATH] [--epochs N] [--draws N]``
(needs the ``[recipes]`` extra: scikit-learn and matplotlib).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
from _common import check, finish, require, section
from torch import nn
from torch.utils.data import TensorDataset

require("sklearn", "matplotlib")

import surgery  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "out", "digits_transfer.png")

LR = 1e-2  # the classifier's rate; the body's groups get lower ones when fine-tuning
BATCH = 25
SETTINGS = {
    "fe": "feature extraction",
    "ft": "fine-tuning (discriminative lr)",
    "scratch": "from scratch",
}
COLUMNS = {"fe": "feature extraction", "ft": "fine-tuning", "scratch": "scratch"}


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits. Its forward flattens with a functional call, the
    kind of code ``nn.Sequential(*model.children())`` silently drops."""

    def __init__(self, num_classes: int = 5, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(1, w, 3, padding=1),
                bn1=nn.BatchNorm2d(w),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(w, 2 * w, 3, padding=1),
                bn2=nn.BatchNorm2d(2 * w),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
                conv3=nn.Conv2d(2 * w, 4 * w, 3, padding=1),
                bn3=nn.BatchNorm2d(4 * w),
                relu3=nn.ReLU(),
                pool3=nn.MaxPool2d(2),
            )
        )
        self.classifier = nn.Linear(4 * w * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def load_data() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    images = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return images, torch.tensor(y)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train(was)
    return acc


def fit(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    gen: torch.Generator,
    evaluate=None,
) -> list[float]:
    """Plain minibatch training; returns ``evaluate()`` after every epoch."""
    curve = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            idx = order[i : i + BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if evaluate is not None:
            curve.append(evaluate())
    return curve


def pretrain(images: torch.Tensor, labels: torch.Tensor, ckpt: str) -> DigitsCNN:
    section("1. pretrain on digits 0-4 and save a safetensors checkpoint")
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    src = labels < 5
    x, y = images[src], labels[src]
    order = torch.randperm(len(x), generator=gen)
    n_val = len(x) // 5
    val, train = order[:n_val], order[n_val:]
    net = DigitsCNN(num_classes=5)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    fit(net, opt, x[train], y[train], epochs=8, gen=gen)
    acc = accuracy(net, x[val], y[val])
    print(f"  digits 0-4: {len(train)} training images, held-out accuracy {acc:.3f}")
    check(acc > 0.95, f"pretrained model is good on held-out digits 0-4 ({acc:.3f} > 0.95)")
    written = surgery.save_state_dict(net, ckpt)
    check(os.path.exists(written), f"checkpoint written: {os.path.basename(written)}")
    return net


def transfer_model(ckpt: str | None, seed: int) -> tuple[nn.Module, object]:
    """The 5-9 model by surgery: same body, fresh classifier, pretrained body weights."""
    torch.manual_seed(seed)
    model = DigitsCNN(num_classes=5)  # architecture of the checkpoint, random weights
    surgery.replace_head(model, 5)  # a fresh classifier for digits 5-9
    report = None
    if ckpt is not None:
        report = surgery.load_partial(ckpt, into=model, exclude="classifier")
    return model, report


def few_shot_split(labels: torch.Tensor, per_class: int, gen: torch.Generator):
    train, val = [], []
    for c in range(5):
        ids = torch.nonzero(labels == c).flatten()
        ids = ids[torch.randperm(len(ids), generator=gen)]
        train.append(ids[:per_class])
        val.append(ids[per_class:])
    return torch.cat(train), torch.cat(val)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    images, labels = load_data()
    tmp = tempfile.TemporaryDirectory()
    ckpt = os.path.join(tmp.name, "digits04.safetensors")
    pretrained = pretrain(images, labels, ckpt)

    section("2. a model for digits 5-9 by surgery")
    target = labels >= 5
    x_all, y_all = images[target], labels[target] - 5
    model, report = transfer_model(ckpt, seed=1)
    print("  " + str(report).replace("\n", "\n  "))
    check(
        report.missing == ["classifier.weight", "classifier.bias"],
        "load_partial: every body tensor loaded, only the new classifier missing",
    )
    check(
        torch.equal(model.features.conv1.weight, pretrained.features.conv1.weight)
        and not torch.equal(model.classifier.weight[:1], pretrained.classifier.weight[:1]),
        "body weights equal the checkpoint's, the classifier is fresh",
    )

    # Feature extraction: the body runs once over every 5-9 image; each draw
    # then picks its ten-per-class training rows from the cache.
    surgery.freeze(model, "features")
    body, top = surgery.split(model, "features", copy=False)  # top: flatten + classifier
    t0 = time.perf_counter()
    cache = surgery.precompute(body, TensorDataset(x_all, y_all), batch_size=256, progress=False)
    feats = cache.features
    print(
        f"  precompute: {len(cache)} images through the frozen body once, features {tuple(feats.shape[1:])}, {time.perf_counter() - t0:.2f} s"
    )
    with torch.no_grad():
        same = torch.allclose(top(feats[:64]), model.eval()(x_all[:64]), atol=1e-5)
    check(same, "split + precompute: top(cached features) == model(images)")

    section(
        f"3. three settings, {args.per_class} labelled images per class, {args.draws} draws, {args.epochs} epochs"
    )
    curves: dict[str, list[list[float]]] = {k: [] for k in SETTINGS}
    for draw in range(args.draws):
        gen = torch.Generator().manual_seed(100 + draw)
        train, val = few_shot_split(y_all, args.per_class, gen)
        xt, yt, xv, yv = x_all[train], y_all[train], x_all[val], y_all[val]

        # feature extraction: only the classifier trains, on cached features
        fe, _ = transfer_model(ckpt, seed=1)
        surgery.freeze(fe, "features")
        _, top = surgery.split(fe, "features", copy=False)
        opt = torch.optim.SGD(surgery.param_groups(fe, LR, split_at=None), momentum=0.9)
        ft_val = feats[val]
        curves["fe"].append(
            fit(
                top,
                opt,
                feats[train],
                yt,
                args.epochs,
                torch.Generator().manual_seed(draw),
                evaluate=partial(accuracy, top, ft_val, yv),
            )
        )
        if draw == 0:  # the trained classifier in the full model agrees with the cache
            check(
                abs(accuracy(fe, xv, yv) - curves["fe"][-1][-1]) < 1e-6,
                "feature-extraction model scores the same on images as on cached features",
            )

        # fine-tuning with discriminative learning rates over three layer groups
        ft, _ = transfer_model(ckpt, seed=1)
        groups = surgery.param_groups(
            ft, slice(LR / 10, LR), split_at=["features.conv3", "classifier"]
        )
        if draw == 0:
            rates = [round(g["lr"], 5) for g in groups]
            print(f"  fine-tuning groups: {[len(g['params']) for g in groups]} tensors, lr {rates}")
            check(rates == [0.001, 0.00316, 0.01], "param_groups: slice(1e-3, 1e-2) is geometric")
        opt = torch.optim.SGD(groups, momentum=0.9)
        curves["ft"].append(
            fit(
                ft,
                opt,
                xt,
                yt,
                args.epochs,
                torch.Generator().manual_seed(draw),
                evaluate=partial(accuracy, ft, xv, yv),
            )
        )

        # from scratch: same architecture and budget, random weights
        sc, _ = transfer_model(None, seed=1)
        opt = torch.optim.SGD(sc.parameters(), lr=LR, momentum=0.9)
        curves["scratch"].append(
            fit(
                sc,
                opt,
                xt,
                yt,
                args.epochs,
                torch.Generator().manual_seed(draw),
                evaluate=partial(accuracy, sc, xv, yv),
            )
        )
        print(
            f"  draw {draw}: {len(train)} train / {len(val)} val images; final "
            + ", ".join(f"{k} {curves[k][-1][-1]:.3f}" for k in SETTINGS)
        )

    mean = {k: torch.tensor(v).mean(0).tolist() for k, v in curves.items()}

    section("4. validation accuracy per epoch (mean over draws)")
    print(f"  {'epoch':>5}  " + "  ".join(f"{COLUMNS[k]:>18}" for k in SETTINGS))
    for e in range(args.epochs):
        print(f"  {e + 1:>5}  " + "  ".join(f"{mean[k][e]:>18.3f}" for k in SETTINGS))
    best = {k: max(v) for k, v in mean.items()}
    final = {k: v[-1] for k, v in mean.items()}
    print(f"  {'best':>5}  " + "  ".join(f"{best[k]:>18.3f}" for k in SETTINGS))

    for k in ("fe", "ft"):
        check(
            final[k] > final["scratch"] and best[k] > best["scratch"],
            f"{SETTINGS[k]} beats scratch: final {final[k]:.3f} vs {final['scratch']:.3f}, "
            f"best {best[k]:.3f} vs {best['scratch']:.3f}",
        )

    plot(mean, curves, args)
    tmp.cleanup()


def plot(mean: dict, curves: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    section("5. plot")
    out = args.out
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    epochs = list(range(1, args.epochs + 1))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    colors = {"fe": "tab:blue", "ft": "tab:green", "scratch": "tab:red"}
    for k, label in SETTINGS.items():
        for run_curve in curves[k]:
            ax.plot(epochs, run_curve, color=colors[k], alpha=0.2, linewidth=1)
        ax.plot(
            epochs,
            mean[k],
            color=colors[k],
            linewidth=2.2,
            marker="o",
            markersize=4,
            label=f"{label} (final {mean[k][-1]:.3f})",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (digits 5-9)")
    ax.set_title(
        f"Digits 5-9 with {args.per_class} labels per class: transfer from a 0-4 model vs scratch\n"
        f"(mean of {args.draws} draws, thin lines: each draw)",
        fontsize=10,
    )
    ax.set_ylim(0, 1)
    ax.set_xticks(epochs)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    check(os.path.getsize(out) > 10_000, f"plot written: {out}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT, help="where to write the PNG plot")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--draws", type=int, default=3, help="random draws of the labelled images")
    p.add_argument("--per-class", type=int, default=10, help="labelled images per class")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (tiny convs: 1 is fastest)"
    )
    run(p.parse_args(argv))
    finish("digits_transfer")


if __name__ == "__main__":
    main(sys.argv[1:])
