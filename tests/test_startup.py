"""Start-up stays light: ``import surgery`` (and the CLI) import nothing heavy eagerly.

Timings live in benchmarks/bench_startup.py; this checks the cause instead: the
modules ``import surgery`` adds to those ``import torch`` already loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# imported at first use only (each costs from 0.1 s to several seconds)
LAZY = ("torchvision", "torchinfo", "tqdm", "safetensors", "timm", "transformers", "hypothesis")


def modules_added(statement: str) -> list[str]:
    code = (
        "import json, sys, torch; before = set(sys.modules); "
        f"{statement}; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "statement", ["import surgery", "import surgery.cli; surgery.cli.build_parser()"]
)
def test_import_pulls_in_only_surgery(statement: str) -> None:
    added = modules_added(statement)
    assert "surgery" in added
    heavy = [m for m in added if m.split(".")[0] in LAZY]
    assert not heavy, f"{statement!r} imports {heavy[:10]} eagerly"
    tracing = [m for m in added if m.startswith(("torch.fx", "torch._dynamo", "torch._inductor"))]
    assert not tracing, f"{statement!r} imports tracing machinery: {tracing[:10]}"
    foreign = [m for m in added if m.split(".")[0] not in {"surgery", *sys.stdlib_module_names}]
    assert not foreign, f"{statement!r} imports {foreign[:10]}"


@pytest.mark.slow  # imports torchvision in a fresh interpreter
def test_lazy_modules_still_load_at_first_use() -> None:
    added = modules_added(
        "import surgery, torch; from torch import nn; "
        "surgery.freeze(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)), bn='frozen'); "
        "surgery.verify(nn.Linear(2, 3), (1, 2), output_shape=(1, 3)).total_mult_adds"
    )
    assert "torchvision.ops" in added and "torchinfo" in added
