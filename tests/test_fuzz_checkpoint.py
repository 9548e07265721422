"""Byte-mutation fuzzer of both checkpoint formats (.pt zip and .safetensors).

Every mutated file either loads, with a report that accounts for every model key
and values equal to an independent reader's, or raises a ``LoadError`` (a
``CheckpointError`` for an unreadable file; a plain ``LoadError`` for a valid
file whose content does not fit the model, e.g. a mutated shape) with the model
bit-for-bit unchanged. Nothing else escapes, nothing hangs (hypothesis deadline),
nothing crashes the process (a SIGBUS would end the run).

CI runs a bounded number of examples. A big run:

    SURGERY_FUZZ_EXAMPLES=10000 OMP_NUM_THREADS=1 pytest -q -p no:cacheprovider \\
        tests/test_fuzz_checkpoint.py
"""

from __future__ import annotations

import os
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from surgery import LoadError, load_partial
from tests.snapshot import assert_unchanged, snapshot

EXAMPLES = int(os.environ.get("SURGERY_FUZZ_EXAMPLES", "40"))
#: where a big run appends its outcome counts (one JSON line per format)
COUNTS_FILE = os.environ.get("SURGERY_FUZZ_COUNTS")


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))


def _base(fmt: str, folder: Path) -> tuple[bytes, list[tuple[int, int]]]:
    """The file's bytes and its structural regions (headers, pickle, zip directory)."""
    torch.manual_seed(0)
    sd = _model().state_dict()
    path = folder / f"base.{fmt}"
    if fmt == "pt":
        torch.save(sd, path)
        data = path.read_bytes()
        with zipfile.ZipFile(path) as zf:
            info = next(i for i in zf.infolist() if i.filename.endswith("data.pkl"))
        start = info.header_offset
        regions = [(start, start + 100 + info.file_size), (max(0, len(data) - 1200), len(data))]
    else:
        save_file(sd, str(path))
        data = path.read_bytes()
        n = int.from_bytes(data[:8], "little")
        regions = [(0, 8 + n)]
    return data, regions


_BASES: dict[str, tuple[bytes, list[tuple[int, int]]]] = {}


def _base_cached(fmt: str, folder: Path) -> tuple[bytes, list[tuple[int, int]]]:
    if fmt not in _BASES:
        _BASES[fmt] = _base(fmt, folder)
    return _BASES[fmt]


@st.composite
def _mutation(draw: st.DrawFn, size: int, regions: list[tuple[int, int]]) -> list[tuple]:
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            lo, hi = draw(st.sampled_from(regions))
            pos = draw(st.integers(lo, max(lo, min(hi, size) - 1)))
        else:
            pos = draw(st.integers(0, size - 1))
        kind = draw(st.sampled_from(["set"] * 6 + ["truncate", "delete", "insert"]))
        value = draw(st.integers(0, 255))
        length = draw(st.integers(1, 16))
        ops.append((kind, pos, value, length))
    return ops


def _apply(data: bytes, ops: list[tuple]) -> bytes:
    buf = bytearray(data)
    for kind, pos, value, length in ops:
        pos = min(pos, max(len(buf) - 1, 0))
        if kind == "set" and buf:
            buf[pos] = value
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "delete":
            del buf[pos : pos + length]
        elif kind == "insert":
            buf[pos:pos] = bytes([value]) * length
    return bytes(buf)


def _reference(path: Path, fmt: str) -> dict[str, torch.Tensor] | None:
    """An independent reader's view of the file, or None when it refuses the file."""
    try:
        if fmt == "pt":
            return torch.load(path, weights_only=True, map_location="cpu")
        from safetensors.torch import load_file

        return load_file(str(path))
    except Exception:
        return None


def _check(data: bytes, fmt: str, folder: Path, counts: dict[str, int]) -> None:
    path = folder / f"mutated.{fmt}"
    path.write_bytes(data)
    torch.manual_seed(1)
    model = _model()
    before = snapshot(model)
    try:
        report = load_partial(path, into=model)
    except LoadError as exc:
        kind = type(exc).__name__
        counts[kind] = counts.get(kind, 0) + 1
        assert_unchanged(model, before)
        assert str(path) in str(exc) or exc.key is not None or "'" in str(exc), str(exc)
        return
    counts["loaded"] = counts.get("loaded", 0) + 1
    keys = list(model.state_dict())
    assert sorted(report.loaded + report.missing + list(report.mismatched)) == sorted(keys)
    ref = _reference(path, fmt)
    if isinstance(ref, dict):
        state = model.state_dict()
        for k in report.loaded:
            ck = report.renamed.get(k, k)
            if ck in ref and isinstance(ref[ck], torch.Tensor):
                want = ref[ck].to(state[k].dtype)
                got = state[k]
                same = torch.equal(
                    got.contiguous().view(-1).view(torch.uint8),
                    want.contiguous().view(-1).view(torch.uint8),
                )
                assert same, k


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_fuzz_byte_mutations(fmt: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp(f"fuzz_{fmt}")
    data, regions = _base_cached(fmt, folder)
    counts: dict[str, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=timedelta(seconds=10),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(ops=_mutation(len(data), regions))
    def run(ops: list[tuple]) -> None:
        _check(_apply(data, ops), fmt, folder, counts)

    run()
    assert sum(counts.values()) >= min(EXAMPLES, 10)
    if COUNTS_FILE:
        import json

        with open(COUNTS_FILE, "a") as f:
            f.write(json.dumps({"format": fmt, "examples": EXAMPLES, **counts}) + "\n")
