"""surgery.tree and the `surgery tree` command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

import surgery
from surgery import ArgumentError
from surgery.cli import main, parse_shape


def test_tree_rows_counts_and_shapes_on_resnet18() -> None:
    with torch.device("meta"):
        m = torchvision.models.resnet18(weights=None)
    m.conv1.weight.requires_grad_(False)
    t = surgery.tree(m, depth=1, input_size=(2, 3, 224, 224))
    rows = {r.path: r for r in t.rows}
    assert [r.path for r in t.rows] == [
        "",
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "avgpool",
        "fc",
    ]
    assert t.total == 11_689_512 == sum(p.numel() for p in m.parameters())
    assert t.frozen == 9408 and t.trainable == 11_689_512 - 9408
    assert rows["fc"].params == rows["fc"].total == 513_000
    assert rows["layer3"].params == 0 and rows["layer3"].total == 2_099_712
    assert rows["conv1"].frozen == 9408 and rows["conv1"].trainable == 0
    assert rows["layer3"].output_shape == [2, 256, 14, 14]
    assert rows[""].output_shape == [2, 1000]
    text = str(t)
    assert "layer3" in text and "(2, 256, 14, 14)" in text and "frozen" in text
    assert (
        text.splitlines()[-1] == "Total: 11,689,512 parameters (11,680,104 trainable, 9,408 frozen)"
    )
    data = json.loads(t.to_json())
    assert data["rows"][7]["path"] == "layer3" and data["total"] == 11_689_512


def test_tree_depth_and_training_mode_untouched() -> None:
    m = torchvision.models.resnet18(weights=None).train()
    before = {n: p.detach().clone() for n, p in m.state_dict().items()}
    t = surgery.tree(m, input_size=(1, 3, 32, 32))
    assert all(mod.training for mod in m.modules())
    assert all(p.device.type == "cpu" for p in m.parameters())
    for n, v in m.state_dict().items():
        assert torch.equal(v, before[n]), n  # BN statistics not touched by the meta run
    assert max(r.depth for r in t.rows) == 4  # layer2.0.downsample.0
    assert max(r.depth for r in surgery.tree(m, depth=2).rows) == 2
    assert [r.path for r in surgery.tree(m, depth=0).rows] == [""]


def test_tree_tuple_outputs_and_errors() -> None:
    with torch.device("meta"):
        g = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    t = surgery.tree(g, depth=1, input_size=(1, 3, 299, 299))
    assert {r.path: r for r in t.rows}["fc"].output_shape == [1, 1000]
    with pytest.raises(ArgumentError, match="depth"):
        surgery.tree(g, depth=-1)
    with pytest.raises(ArgumentError, match="input_size"):
        surgery.tree(g, input_size="big")
    with pytest.raises(surgery.SurgeryError, match="could not run on the meta device"):
        surgery.tree(nn.Linear(3, 4), input_size=(1, 5))


def test_cli_tree(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tree", "torchvision:resnet18", "--depth", "2", "--input", "1,3,224,224"]) == 0
    out = capsys.readouterr().out
    assert "layer3" in out and "(1, 512, 7, 7)" in out and "Total: 11,689,512" in out
    assert main(["tree", "torchvision:resnet18", "--depth", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 11_689_512
    assert main(["tree", "torchvision:resnet_18"]) == 2
    assert "did you mean resnet18" in capsys.readouterr().err
    assert main(["tree", "torch.nn:Identity"]) == 0
    assert main(["tree", "nonexistent_pkg_xyz:thing"]) == 2
    assert "cannot import" in capsys.readouterr().err


def test_parse_shape() -> None:
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    assert parse_shape("1x3x32x32") == (1, 3, 32, 32)
    with pytest.raises(ArgumentError):
        parse_shape("1,a")
    with pytest.raises(ArgumentError):
        parse_shape("0,3")


@pytest.mark.slow  # a fresh interpreter; tests/test_cli.py runs the entry point too
def test_python_dash_m_runs_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "surgery", "tree", "torchvision:alexnet", "--depth", "1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "features" in out and "Total: 61,100,840" in out
