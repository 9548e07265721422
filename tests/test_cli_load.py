"""CLI: surgery plan / diff / convert / tree CKPT."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torchvision

from surgery.cli import main


@pytest.fixture(scope="module")
def ssl_ckpt(tmp_path_factory) -> str:
    m = torchvision.models.resnet18(weights=None)
    sd = {f"backbone.{k}": v for k, v in m.state_dict().items()}
    path = tmp_path_factory.mktemp("ckpt") / "ssl.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    return str(path)


def test_plan_text(ssl_ckpt, capsys) -> None:
    rc = main(
        [
            "plan",
            ssl_ckpt,
            "--into",
            "torchvision:resnet18",
            "--rename",
            "backbone.=",
            "--exclude",
            "backbone.fc",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith(f"LoadReport from {ssl_ckpt} ['model']: would load 120, missing 2")
    assert "missing (2): 'fc.bias', 'fc.weight'" in out


def test_plan_json(ssl_ckpt, capsys) -> None:
    rc = main(
        [
            "plan",
            ssl_ckpt,
            "--into",
            "torchvision:resnet18",
            "--rename",
            "backbone.=",
            "--include",
            "backbone.layer4",
            "--json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(data["loaded"]) == 30 and data["dry_run"] is True
    assert data["renamed"]["layer4.0.conv1.weight"] == "backbone.layer4.0.conv1.weight"
    assert data["unwrapped"] == "model"


def test_plan_error_exit_2_with_hint(ssl_ckpt, capsys) -> None:
    rc = main(["plan", ssl_ckpt, "--into", "torchvision:resnet18"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "surgery plan: error: nothing to load" in err
    assert "hint: every checkpoint key starts with 'backbone.': --rename backbone.= " in err
    assert "rename={" not in err  # the CLI spells the hint as its option


def test_plan_bad_rename(ssl_ckpt, capsys) -> None:
    assert main(["plan", ssl_ckpt, "--into", "torchvision:resnet18", "--rename", "oops"]) == 2
    assert "OLD=NEW" in capsys.readouterr().err


def test_diff(ssl_ckpt, tmp_path, capsys) -> None:
    m = torchvision.models.resnet18(weights=None, num_classes=10)
    torch.save(m.state_dict(), tmp_path / "r10.pt")
    rc = main(["diff", str(tmp_path / "r10.pt"), "torchvision:resnet18"])
    out = capsys.readouterr().out
    assert rc == 1  # like diff(1): the inputs differ
    assert "120 identical in shape and dtype, 0 only in A, 0 only in B, 2 shape" in out
    assert "~ 'fc.weight'  shape (10, 512) -> (1000, 512)" in out
    rc = main(["diff", ssl_ckpt, "torchvision:resnet18", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert len(data["only_a"]) == 122 and data["only_a"][0].startswith("backbone.")


def test_diff_dtypes(tmp_path, capsys) -> None:
    torch.save({"w": torch.ones(2), "x": torch.ones(1)}, tmp_path / "a.pt")
    torch.save({"w": torch.ones(2).half(), "y": torch.ones(1)}, tmp_path / "b.pt")
    main(["diff", str(tmp_path / "a.pt"), str(tmp_path / "b.pt")])
    out = capsys.readouterr().out
    assert "- 'x'  (1,) float32" in out and "+ 'y'  (1,) float32" in out
    assert "~ 'w'  dtype float32 -> float16" in out


def test_convert_and_tree(ssl_ckpt, tmp_path, capsys) -> None:
    out_path = tmp_path / "ssl.safetensors"
    assert main(["convert", ssl_ckpt, str(out_path)]) == 0
    assert "122 tensors" in capsys.readouterr().out
    assert main(["tree", str(out_path), "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{out_path}: 122 tensors, 11,699,132 values, 46.8 MB"
    assert "  backbone.layer1  24 tensors, 148,484 values" in out
    assert main(["tree", ssl_ckpt]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\n    backbone\.conv1\.weight +\(64, 3, 7, 7\) +float32\n", out)
    assert main(["tree", ssl_ckpt, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["tensors"]
    assert rows[0] == {"key": "backbone.conv1.weight", "shape": [64, 3, 7, 7], "dtype": "float32"}


def test_convert_sharded(ssl_ckpt, tmp_path, capsys) -> None:
    assert main(["convert", ssl_ckpt, str(tmp_path / "out"), "--max-shard-size", "10MB"]) == 0
    assert "model.safetensors.index.json" in capsys.readouterr().out
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 6  # layer4's 9.4 MB convs: one each


def test_convert_refuses_unsafe(tmp_path, capsys) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    assert main(["convert", str(tmp_path / "evil.pt"), str(tmp_path / "o.safetensors")]) == 2
    captured = capsys.readouterr()
    assert "pwned" not in captured.out and "refusing to load" in captured.err


def test_plan_at_and_strict(tmp_path, capsys) -> None:
    m = torchvision.models.resnet18(weights=None)
    part = {k[len("layer4.") :]: v for k, v in m.state_dict().items() if k.startswith("layer4.")}
    torch.save(part, tmp_path / "layer4.pt")
    rc = main(
        [
            "plan",
            str(tmp_path / "layer4.pt"),
            "--into",
            "torchvision:resnet18",
            "--at",
            "layer4",
            "--strict",
            "--json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(data["loaded"]) == 30 and data["missing"] == []
    assert data["loaded"][0] == "layer4.0.conv1.weight"
