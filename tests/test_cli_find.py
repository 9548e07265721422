"""`surgery find MODEL PATTERN [--types T ...] [--json]`: rows, counts, JSON, errors (rc 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torchvision

import surgery
from surgery.cli import main


def test_table_lists_find_matches_with_types_and_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["find", "torchvision:resnet18", "layer1.**", "--types", "BatchNorm2d"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["path", "type", "params", "trainable"]
    assert [line.split()[0] for line in lines[1:-1]] == surgery.find(
        torchvision.models.resnet18(weights=None), "layer1.**", types="BatchNorm2d"
    )
    assert lines[1].split() == ["layer1.0.bn1", "BatchNorm2d", "128", "128"]
    assert lines[-1] == "4 matches"


def test_json_counts_equal_the_modules_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["find", "torchvision:resnet18", "layer4.*", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    m = torchvision.models.resnet18(weights=None)
    assert [r["path"] for r in out["matches"]] == ["layer4.0", "layer4.1"]
    for row in out["matches"]:
        mod = surgery.get(m, row["path"])
        assert row["type"] == "BasicBlock"
        assert row["params"] == row["trainable"] == sum(p.numel() for p in mod.parameters())


def test_several_types(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["find", "torchvision:resnet18", "layer1.0.*", "--types", "ReLU", "Conv2d"]) == 0
    paths = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert paths == ["layer1.0.conv1", "layer1.0.relu", "layer1.0.conv2"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["find", "torchvision:resnet18", "layer9.**"], "matches no module of ResNet"),
        (["find", "torchvision:resnet18", "**", "--types", "Nope"], "module types present"),
        (["find", "torchvision:resnet18", "layer1.**", "--types", "Linear"], "none is a Linear"),
        (["find", "torchvision:resnetXX", "fc"], "torchvision has no model 'resnetXX'"),
        (["find", "torchvision:resnet18", "layer1[0"], "find"),
    ],
)
def test_errors_are_clean_with_rc_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("surgery find: error: ") and message in err
    assert "Traceback" not in err


def test_console_script_subprocess() -> None:
    code = "import sys; from surgery.cli import main; sys.exit(main(sys.argv[1:]))"
    ok = subprocess.run(
        [sys.executable, "-c", code, "find", "torchvision:resnet18", "fc", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["matches"] == [
        {"path": "fc", "type": "Linear", "params": 513000, "trainable": 513000}
    ]
    bad = subprocess.run(
        [sys.executable, "-c", code, "find", "torchvision:resnet18", "nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "nope" in bad.stderr
