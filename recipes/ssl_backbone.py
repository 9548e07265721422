"""A self-supervised checkpoint into a classifier, then its projector elsewhere.

Self-supervised methods (SimCLR, BYOL, Barlow Twins...) save ``backbone.*`` and
``projector.*`` keys, often nested under ``"model"``. The hand-written way is
``torch.load`` + a dict comprehension stripping ``backbone.`` + ``dict.update`` +
``load_state_dict(strict=False)``; get the prefix wrong and ``strict=False`` loads
nothing and says nothing. ``surgery.load_partial`` selects, renames, checks every
shape before writing, reports what happened, and refuses to load zero keys.

Run: ``python recipes/ssl_backbone.py``
"""

from __future__ import annotations

import os
import tempfile

import torch
import torchvision
from _common import check, finish, section
from torch import nn

import surgery


class SimCLR(nn.Module):
    """The pretraining model: a resnet18 trunk and a projection MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torchvision.models.resnet18(weights=None)
        self.backbone.fc = nn.Identity()
        self.projector = nn.Sequential(
            nn.Linear(512, 2048), nn.BatchNorm1d(2048), nn.ReLU(), nn.Linear(2048, 128)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


class Retrieval(nn.Module):
    """Another model that reuses the projector under another name: ``neck``."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = torchvision.models.mobilenet_v3_small(weights=None, num_classes=512)
        self.neck = nn.Sequential(
            nn.Linear(512, 2048), nn.BatchNorm1d(2048), nn.ReLU(), nn.Linear(2048, 128)
        )


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def main() -> None:
    torch.manual_seed(0)
    ssl = SimCLR()
    tmp = tempfile.TemporaryDirectory()
    ckpt = os.path.join(tmp.name, "simclr_epoch100.pth")
    torch.save({"model": ssl.state_dict(), "epoch": 100}, ckpt)
    keys = list(ssl.state_dict())
    print(
        f"checkpoint: {{'model': {len(keys)} tensors ({keys[0]!r} .. {keys[-1]!r}), 'epoch': 100}}"
    )

    section("the trap: load_state_dict(strict=False) with the prefix left on")
    clf = torchvision.models.resnet18(weights=None, num_classes=10)
    before = state(clf)
    result = clf.load_state_dict(torch.load(ckpt, weights_only=True)["model"], strict=False)
    print(
        f"  missing {len(result.missing_keys)}, unexpected {len(result.unexpected_keys)}: nothing loaded, no error"
    )
    check(
        len(result.unexpected_keys) == 129 and unchanged(clf, before),
        "strict=False silently loads nothing",
    )

    section("load_partial refuses to load nothing, and says how to fix it")
    try:
        surgery.load_partial(ckpt, into=clf)
        check(False, "loading zero keys raises LoadError")
    except surgery.LoadError as e:
        first = str(e).splitlines()
        print("  " + "\n  ".join(first[:6]))
        check(
            "rename" in str(e) and "backbone." in str(e),
            "the error suggests rename={'backbone.': ''}",
        )
    check(unchanged(clf, before), "the model is unchanged after the error")

    section("plan (dry run), then load the backbone into the classifier")
    plan = surgery.load_partial(
        ckpt, into=clf, include="backbone", rename={"backbone.": ""}, dry_run=True
    )
    check(plan.dry_run and unchanged(clf, before), "dry_run=True reports and changes nothing")
    report = surgery.load_partial(ckpt, into=clf, include="backbone", rename={"backbone.": ""})
    print("  " + "\n  ".join(str(report).splitlines()[:4]) + "\n    ...")
    check(len(report.loaded) == 120, "120 backbone tensors loaded (every resnet18 key but fc)")
    check(
        report.missing == ["fc.weight", "fc.bias"],
        "missing: only the new classifier, fc.weight and fc.bias",
    )
    check(
        report.unexpected == [] and report.unwrapped == "model",
        "nothing unexpected; unwrapped from 'model'",
    )
    check(
        torch.equal(clf.layer4[1].conv2.weight, ssl.backbone.layer4[1].conv2.weight)
        and torch.equal(clf.bn1.running_var, ssl.backbone.bn1.running_var),
        "weights and BatchNorm statistics equal the SSL backbone's",
    )
    check(torch.equal(clf.fc.weight, before["fc.weight"]), "the classifier keeps its fresh weights")

    section("the projector alone, into another model, under another name")
    ret = Retrieval()
    trunk_before = state(ret.trunk)
    r1 = surgery.load_partial(ckpt, into=ret, include="projector", rename={"projector.": "neck."})
    print("  " + str(r1).splitlines()[0])
    check(
        len(r1.loaded) == 9 and all(k.startswith("neck.") for k in r1.loaded),
        "9 projector tensors -> neck.*",
    )
    check(
        torch.equal(ret.neck[3].weight, ssl.projector[3].weight)
        and unchanged(ret.trunk, trunk_before),
        "neck == projector; the trunk is untouched",
    )

    # The same with at= (keys relative to a submodule) from a safetensors copy,
    # and with a regex rule.
    st = surgery.save_state_dict(ssl, os.path.join(tmp.name, "simclr.safetensors"))
    r2 = surgery.load_partial(
        st, into=Retrieval(), at="neck", include="projector", rename={"projector.": ""}
    )
    r3 = surgery.load_partial(
        ckpt, into=Retrieval(), rename=[(r"^projector\.(\d+)\.", r"neck.\1.")]
    )
    check(
        r2.loaded == r1.loaded == r3.loaded,
        "at='neck' (safetensors) and a regex rename load the same 9 keys",
    )
    check(
        len(r3.unexpected) == 122 - 2,
        "the regex form reports the unmatched backbone keys as unexpected",
    )

    tmp.cleanup()
    finish("ssl_backbone")


if __name__ == "__main__":
    main()
