"""The command line: clean errors for user error, convert by suffix, diff's exit codes, help."""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

import surgery
from surgery import Hint, LoadError
from surgery.cli import SUBCOMMAND_MODULES, build_parser, main
from surgery.cli._render import cli_hint, render_error
from surgery.cli._spec import no_download_kwargs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    clf = torchvision.models.resnet18(weights=None, num_classes=10)
    torch.save(clf.state_dict(), d / "clf.pth")
    ssl = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({"model": {f"backbone.{k}": v for k, v in ssl.items()}, "epoch": 3}, d / "ssl.pth")
    torch.save({"w": torch.ones(2)}, d / "existing.pt")
    return d


# (argv, a piece of the message) for each bad input: exit code 2, one message, no traceback
BAD_INPUTS = {
    "callable-needs-arguments": (["tree", "torch.nn:Linear"], '--kwargs \'{"in_features"'),
    "into-needs-arguments": (
        ["plan", "clf.pth", "--into", "torch.nn:Linear"],
        "needs arguments (in_features, out_features)",
    ),
    "into-is-a-checkpoint": (
        ["plan", "ssl.pth", "--into", "clf.pth"],
        "--into takes a model spec (torchvision:NAME or package.module:callable), not a checkpoint",
    ),
    "unknown-package": (["tree", "nonexistent_pkg_xyz:thing"], "cannot import"),
    "torchvision-typo": (["tree", "torchvision:resnet_18"], "did you mean resnet18"),
    "neither-spec-nor-file": (["tree", "no_such_thing"], "is neither torchvision:NAME"),
    "kwargs-not-json": (["tree", "torch.nn:Linear", "--kwargs", "{bad"], "must be a JSON object"),
    "kwargs-not-object": (["tree", "torch.nn:Linear", "--kwargs", "[1, 2]"], "JSON object"),
    "kwargs-unknown-to-torchvision": (
        ["tree", "torchvision:resnet18", "--kwargs", '{"colour": 1}'],
        "unexpected keyword argument 'colour'",
    ),
    "factory-raises": (
        ["tree", "torch.nn:Linear", "--kwargs", '{"in_features": -1, "out_features": 2}'],
        "building torch.nn:Linear raised RuntimeError",
    ),
    "factory-returns-no-module": (["tree", "builtins:dict"], "returned dict, not an nn.Module"),
    "bad-input-shape": (["tree", "torchvision:resnet18", "--input", "1,a"], "--input must be"),
    "input-for-a-checkpoint": (["tree", "clf.pth", "--input", "1,3,32,32"], "applies to models"),
    "convert-unknown-suffix": (["convert", "clf.pth", "out.xyz"], "cannot tell the format"),
    "convert-no-overwrite": (["convert", "clf.pth", "existing.pt"], "pass --force to overwrite"),
    "convert-missing-input": (["convert", "missing.pth", "out.pt"], "missing.pth"),
    "plan-hint-in-cli-syntax": (
        ["plan", "ssl.pth", "--into", "torchvision:resnet18"],
        "--rename backbone.= (then 122 keys match)",
    ),
    "plan-mismatch-hint": (
        ["plan", "clf.pth", "--into", "torchvision:resnet18"],
        "pass --on-mismatch skip to skip them, or --exclude them",
    ),
    "argparse-usage": (["tree"], "the following arguments are required: SPEC"),
}


# Runs every bad input through the console script's entry point in one fresh process (one
# interpreter start instead of one per case): ``sys.exit(main(argv))``, as the installed
# ``surgery`` script does; an exception escaping ``main`` is reported with its traceback.
DRIVER = """
import contextlib, io, json, sys, traceback
from surgery.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
        except BaseException:
            rc = None
            traceback.print_exc()
    results.append({"rc": rc, "stderr": err.getvalue()})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def bad_runs(files: Path) -> dict[str, dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argvs = [argv for argv, _ in BAD_INPUTS.values()]
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(argvs)],
        capture_output=True,
        text=True,
        cwd=files,
        env=env,
        timeout=600,
        check=True,
    ).stdout
    return dict(zip(BAD_INPUTS, json.loads(out.splitlines()[-1])))


def test_console_script_error_in_a_subprocess(files: Path) -> None:
    """The real entry point: a short message, exit code 2, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "surgery", "tree", "torch.nn:Linear"],
        capture_output=True,
        text=True,
        cwd=files,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("surgery tree: error: torch.nn:Linear needs arguments")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_without_traceback(case: str, bad_runs: dict) -> None:
    argv, piece = BAD_INPUTS[case]
    rc, stderr = bad_runs[case]["rc"], bad_runs[case]["stderr"]
    assert rc == 2, (argv, stderr)
    assert "Traceback" not in stderr, stderr
    assert piece in stderr, stderr
    assert stderr.startswith(f"surgery {argv[0]}: error: " if len(argv) > 1 else "usage: ")
    if case.startswith("plan-hint"):
        assert "rename={" not in stderr


def test_python_messages_keep_python_syntax_and_carry_hints(files: Path) -> None:
    with pytest.raises(LoadError) as info:
        surgery.load_partial(files / "ssl.pth", into=torchvision.models.resnet18(weights=None))
    assert "rename={'backbone.': ''}" in str(info.value)
    assert Hint("rename", {"backbone.": ""}) in info.value.hints
    cli = render_error(info.value, {"--rename"})
    assert "--rename backbone.=" in cli and "rename={" not in cli
    # an option the subcommand lacks keeps the Python spelling; the CLI drops the
    # operation prefix, since it names its subcommand itself
    assert str(info.value).startswith("load_partial(ResNet): nothing to load")
    assert render_error(info.value, set()) == str(info.value).removeprefix("load_partial(ResNet): ")


def test_cli_hint_spellings() -> None:
    assert cli_hint(Hint("rename", {"module.": "", "": "body."})) == (
        "--rename module.= --rename =body."
    )
    assert cli_hint(Hint("include", ["layer4", "fc"])) == "--include layer4 --include fc"
    assert (
        cli_hint(Hint("exclude", "**.num_batches_tracked")) == "--exclude '**.num_batches_tracked'"
    )
    assert cli_hint(Hint("rename", [(r"^a\.", "")])) is None  # regex rules: no CLI spelling
    assert cli_hint(Hint("init_missing", False)) is None
    text = render_error(
        LoadError(
            "adjust rename= or rename={'a.': ''}",
            hints=[Hint("rename"), Hint("rename", {"a.": ""})],
        ),
        {"--rename"},
    )
    assert text == "adjust --rename or --rename a.="


@pytest.mark.parametrize("name", torchvision.models.list_models())
def test_every_torchvision_builder_downloads_nothing(name: str) -> None:
    builder = torchvision.models.get_model_builder(name)
    weights = {p for p in inspect.signature(builder).parameters if p.startswith("weights")}
    assert weights and set(no_download_kwargs(builder)) == weights
    assert all(v is None for v in no_download_kwargs(builder).values())


def test_detection_spec_builds_without_download(monkeypatch, capsys) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    assert main(["tree", "torchvision:fasterrcnn_resnet50_fpn", "--depth", "1"]) == 0
    assert "\n  backbone   BackboneWithFPN" in capsys.readouterr().out


def test_kwargs(capsys) -> None:
    assert main(["tree", "torchvision:resnet18", "--kwargs", '{"num_classes": 7}', "--json"]) == 0
    rows = {r["path"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["fc"]["params"] == 512 * 7 + 7
    kw = '{"in_features": 4, "out_features": 3}'
    assert main(["tree", "torch.nn:Linear", "--kwargs", kw]) == 0
    assert "Total: 15 parameters" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth", ".bin"])
def test_convert_round_trip(suffix: str, files: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / f"clf{suffix}"
    assert main(["convert", str(files / "ssl.pth"), str(out)]) == 0
    assert capsys.readouterr().out == (
        f"wrote {out}: 122 tensors, 46.8 MB from {files / 'ssl.pth'} ['model']\n"
    )
    source = torch.load(files / "ssl.pth", weights_only=True)["model"]
    if suffix == ".safetensors":
        assert out.read_bytes()[8:9] == b"{"  # a safetensors header
        from safetensors.torch import load_file

        back = load_file(out)
    else:
        import zipfile

        assert zipfile.is_zipfile(out)  # torch's zip format, not safetensors bytes
        back = torch.load(out, weights_only=True)
        assert all(type(t) is torch.Tensor for t in back.values())
        assert list(back) == list(source)  # the order is kept too
    assert set(back) == set(source)
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in source.items())
    # the CLI and the library read it back
    assert main(["tree", str(out), "--depth", "1"]) == 0
    assert "backbone  122 tensors, 11,699,132 values" in capsys.readouterr().out
    report = surgery.load_partial(
        out, into=torchvision.models.resnet18(weights=None), rename={"backbone.": ""}
    )
    assert len(report.loaded) == 122


def test_convert_refuses_to_overwrite_unless_forced(files: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.pt"
    out.write_bytes(b"precious")
    assert main(["convert", str(files / "clf.pth"), str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main(["convert", str(files / "clf.pth"), str(out), "--force"]) == 0
    assert len(torch.load(out, weights_only=True)) == 122
    assert [p.name for p in tmp_path.iterdir()] == ["out.pt"]  # no temporary file left
    assert (
        main(["convert", str(files / "clf.pth"), str(out), "--max-shard-size", "10MB", "--force"])
        == 2
    )
    assert "writes a directory of shards" in capsys.readouterr().err


def test_convert_into_a_missing_directory(files: Path, tmp_path: Path, capsys) -> None:
    assert main(["convert", str(files / "clf.pth"), str(tmp_path / "no" / "out.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_diff_exit_codes(files: Path, tmp_path: Path, capsys) -> None:
    clf = str(files / "clf.pth")
    assert main(["convert", clf, str(tmp_path / "same.safetensors")]) == 0
    assert main(["diff", clf, str(tmp_path / "same.safetensors")]) == 0
    assert "122 identical in shape and dtype, 0 only in A" in capsys.readouterr().out
    assert main(["diff", clf, "torchvision:resnet18"]) == 1
    assert main(["diff", clf, "torchvision:resnet18", "--kwargs-b", '{"num_classes": 10}']) == 0
    assert main(["diff", clf, "torchvision:resnet18", "--json"]) == 1
    assert main(["diff", clf, "nonexistent_pkg_xyz:m"]) == 2  # an error is not a difference
    capsys.readouterr()


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"surgery {surgery.__version__}\n"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_and_subcommand_has_help() -> None:
    parser = build_parser()
    subs = _subparsers(parser)
    assert set(subs) == {"tree", "find", "plan", "diff", "convert", "match"}
    listed = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert all(choice.help for choice in listed._choices_actions)
    for name, p in subs.items():
        assert p.description and len(p.description) > 40, name
        for action in p._actions:
            assert action.help, f"surgery {name} {action.option_strings or action.dest}: no help"
    assert all(a.help for a in parser._actions)


def test_registration_is_one_way() -> None:
    """Subcommand modules never import the cli package (no cycle, no shared registry)."""
    assert SUBCOMMAND_MODULES
    for path in sorted((ROOT / "surgery" / "cli").glob("_[!_]*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.level == 1 and node.module is None), f"{path.name}: from . import"
                assert node.module != "surgery.cli", path.name
    for module in SUBCOMMAND_MODULES:
        assert callable(module.register)
