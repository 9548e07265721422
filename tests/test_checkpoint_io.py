"""Checkpoint I/O that fails cleanly: corrupt, truncated, changing and aliased files; atomic saves."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import surgery
from surgery import CheckpointError, LoadError, SaveError, load_partial, save_state_dict
from tests.snapshot import assert_unchanged, snapshot


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.Linear(64, 8))


def _meta_net() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.Linear(64, 8))


def _write(folder: Path, sd: dict[str, torch.Tensor], fmt: str, name: str = "ckpt") -> str:
    if fmt == "pt":
        path = str(folder / f"{name}.pt")
        torch.save(sd, path)
    else:
        path = str(folder / f"{name}.safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


FORMATS = ["pt", "safetensors"]


# -- the model never aliases the file -------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("meta", [False, True], ids=["materialized", "meta"])
@pytest.mark.parametrize("what", ["overwrite", "truncate", "delete"])
def test_after_load_the_file_can_change_without_touching_the_model(
    tmp_path: Path, fmt: str, meta: bool, what: str
) -> None:
    sd = _net().state_dict()
    path = _write(tmp_path, sd, fmt)
    m = (
        _meta_net()
        if meta
        else nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.Linear(64, 8))
    )
    report = load_partial(path, into=m)
    assert len(report.loaded) == len(sd)
    if what == "overwrite":
        # same size, other values, written in place (a training loop's next torch.save)
        other = {k: torch.full_like(v, 3) for k, v in sd.items()}
        data = Path(_write(tmp_path, other, fmt, name="other")).read_bytes()
        with open(path, "r+b") as f:
            f.write(data)
    elif what == "truncate":
        os.truncate(path, 100)
    else:
        os.remove(path)
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k]), k  # touching it neither crashes nor changed


@pytest.mark.parametrize("fmt", FORMATS)
def test_mmap_true_is_the_zero_copy_opt_in(tmp_path: Path, fmt: str) -> None:
    sd = _net().state_dict()
    path = _write(tmp_path, sd, fmt)
    m = _meta_net()
    load_partial(path, into=m, mmap=True)
    assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
    with pytest.raises(surgery.ArgumentError, match="mmap must be True or False"):
        load_partial(path, into=m, mmap="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", FORMATS)
def test_lazy_view_reads_on_access_and_refuses_a_file_that_changed_size(
    tmp_path: Path, fmt: str
) -> None:
    sd = _net().state_dict()
    path = _write(tmp_path, sd, fmt)
    view = load_partial(path)
    assert torch.equal(view["0.weight"], sd["0.weight"])
    os.truncate(path, os.path.getsize(path) - 10)
    with pytest.raises(CheckpointError, match=r"changed size from \d+ to \d+ bytes"):
        view["2.weight"]
    view.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_file_truncated_between_open_and_read_is_a_checkpoint_error(
    tmp_path: Path, fmt: str
) -> None:
    sd = _net().state_dict()
    path = _write(tmp_path, sd, fmt)
    with surgery.open_checkpoint(path) as ckpt:
        assert ckpt.info("0.weight").shape == (64, 64)
        with open(path, "r+b") as f:
            f.truncate(200)
        with pytest.raises(CheckpointError) as info:
            ckpt["0.weight"]
        assert info.value.file == path


def test_open_checkpoint_lists_keys_and_reads_copies(tmp_path: Path) -> None:
    sd = _net().state_dict()
    path = _write(tmp_path, {"model": sd, "epoch": 3}, "pt")  # type: ignore[dict-item]
    with surgery.open_checkpoint(path) as ckpt:
        assert list(ckpt) == list(sd) and ckpt.unwrapped == "model"
        a, b = ckpt["0.weight"], ckpt["0.weight"]
        assert torch.equal(a, sd["0.weight"]) and a.data_ptr() != b.data_ptr()


# -- corrupt files: one CheckpointError naming the file and what is wrong --------------


def _zip_records(path: str) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _rezip(records: dict[str, bytes], path: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for n, data in records.items():
            zf.writestr(n, data)
    Path(path).write_bytes(buf.getvalue())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"the file is empty"),
        (b"PK\x03\x04garbage", r"zip directory is corrupt"),
        (b"\x80\x02garbage", r"torch\.load\(weights_only=True\)"),
        (b"not a checkpoint at all", r"corrupt, truncated or not a torch checkpoint"),
    ],
)
def test_corrupt_pt_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    m = _net()
    before = snapshot(m)
    with pytest.raises(CheckpointError, match=message) as info:
        load_partial(path, into=m)
    assert info.value.file == str(path) and str(path) in str(info.value)
    assert "EOFError: EOFError" not in str(info.value)
    assert_unchanged(m, before)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"the file is empty"),
        (b"\x05\x00", r"too few for the 8-byte header length"),
        ((10**6).to_bytes(8, "little") + b"{}", r"the header claims 1000000 bytes"),
        ((2).to_bytes(8, "little") + b"{]", r"the header is not valid JSON"),
        ((2).to_bytes(8, "little") + b"[]", r"JSON list, not an object"),
    ],
)
def test_corrupt_safetensors_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_partial(path, into=_net())


def test_a_safetensors_entry_must_match_its_bytes(tmp_path: Path) -> None:
    import json

    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}
    raw = json.dumps(header).encode()
    (tmp_path / "s.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(8))
    with pytest.raises(CheckpointError, match=r"needs 16 bytes but its data_offsets span 8"):
        surgery.open_checkpoint(tmp_path / "s.safetensors")


def test_a_storage_record_shorter_than_its_storage_is_refused(tmp_path: Path) -> None:
    """torch.load(mmap=True) would map past the record; we refuse like weights_only without mmap."""
    path = str(tmp_path / "c.pt")
    torch.save({"w": torch.arange(16.0)}, path)
    records = _zip_records(path)
    (name,) = [n for n in records if n.endswith("/data/0")]
    records[name] = records[name][:32]
    _rezip(records, path)
    with pytest.raises(CheckpointError, match=r"holds 32 bytes, but the pickle describes 16 x"):
        load_partial(path, into=nn.Linear(4, 4))


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "c.pt")
    big = torch.arange(16.0)
    torch.save({"w": big}, path)
    small_path = str(tmp_path / "small.pt")
    torch.save({"w": torch.arange(4.0)}, small_path)
    records = _zip_records(path)
    small = _zip_records(small_path)
    (pkl,) = [n for n in records if n.endswith("/data.pkl")]
    (rec,) = [n for n in records if n.endswith("/data/0")]
    # the pickle says 16 elements in a 16-element storage; shrink the storage to 4
    records[pkl] = records[pkl].replace(b"K\x10", b"K\x04", 1)  # numel 16 -> 4
    records[rec] = next(v for n, v in small.items() if n.endswith("/data/0"))
    _rezip(records, path)
    with pytest.raises(CheckpointError, match=r"reaches element 16 of a storage of 4"):
        surgery.open_checkpoint(path)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "module": nn.Linear(2, 2)}, path)  # pickles a class
    with pytest.raises(CheckpointError, match=r"refusing to load .*never runs pickled code"):
        load_partial(path, into=nn.Linear(2, 1))


# -- every check before the first write -------------------------------------------------


def _quantized(t: torch.Tensor) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized dtypes are deprecated
        return torch.quantize_per_tensor(t, 0.1, 0, torch.qint8)


@pytest.mark.parametrize("transactional", [True, False])
@pytest.mark.parametrize(
    "odd",
    [
        lambda: torch.eye(4).to_sparse(),
        lambda: _quantized(torch.ones(4, 4)),
    ],
    ids=["sparse", "quantized"],
)
def test_sparse_and_quantized_values_are_refused_before_any_write(odd, transactional) -> None:
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    before = snapshot(m)
    sd = {"0.weight": torch.ones(4, 4), "0.bias": torch.ones(4), "1.weight": odd()}
    with pytest.raises(LoadError, match=r"'1\.weight' \((sparse_coo|quantized)\)"):
        load_partial(sd, into=m, transactional=transactional)
    assert_unchanged(m, before)


def test_tied_keys_with_identical_nan_values_are_equal() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3, bias=False)
            self.b = nn.Linear(3, 3, bias=False)
            self.b.weight = self.a.weight

    w = torch.randn(3, 3)
    w[0, 0] = float("nan")
    m = Tied()
    report = load_partial({"a.weight": w, "b.weight": w.clone()}, into=m)
    assert report.loaded == ["a.weight", "b.weight"] and m.a.weight is m.b.weight
    assert torch.equal(m.a.weight.nan_to_num(), w.nan_to_num())
    other = w.clone()
    other[1, 1] += 1
    with pytest.raises(LoadError, match="tied parameters would be untied"):
        load_partial({"a.weight": w, "b.weight": other}, into=Tied())


# -- atomic saves -------------------------------------------------------------------


def _fail_on_call(monkeypatch: pytest.MonkeyPatch, n: int, error: BaseException) -> None:
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = {"n": 0}

    def save_file(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == n:
            Path(filename).write_bytes(b"partial")  # a half-written file
            raise error
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


def _sd(n: int = 6) -> dict[str, torch.Tensor]:
    return {f"layer{i}.weight": torch.full((256, 256), float(i)) for i in range(n)}


def test_a_failed_shard_leaves_nothing_and_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "ck"
    index = save_state_dict(_sd(), folder, max_shard_size="600KB")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    _fail_on_call(monkeypatch, 2, OSError(28, "No space left on device"))
    with pytest.raises(SaveError, match=r"No space left on device.*existing checkpoint") as info:
        save_state_dict({k: v + 1 for k, v in _sd().items()}, folder, max_shard_size="600KB")
    assert isinstance(info.value.__cause__, OSError) and info.value.op == "save_state_dict"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    monkeypatch.undo()
    view = load_partial(index)
    assert torch.equal(view["layer5.weight"], _sd()["layer5.weight"])
    view.close()


def test_a_failed_index_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from surgery.checkpoint import _save

    def boom(obj):
        def write(tmp: str) -> None:
            Path(tmp).write_text("{")
            raise KeyboardInterrupt

        return write

    monkeypatch.setattr(_save, "_json_writer", boom)
    with pytest.raises(KeyboardInterrupt):
        save_state_dict(_sd(), tmp_path / "ck", max_shard_size="600KB")
    assert os.listdir(tmp_path / "ck") == []


def test_a_failed_single_file_save_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.safetensors"
    save_state_dict(_sd(2), path)
    old = path.read_bytes()
    _fail_on_call(monkeypatch, 1, RuntimeError("disk went away"))
    with pytest.raises(SaveError, match=r"cannot write .*m\.safetensors.*disk went away"):
        save_state_dict(_sd(3), path)
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["m.safetensors"]


def test_resaving_with_fewer_shards_removes_the_old_ones(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    save_state_dict(_sd(), folder, max_shard_size="300KB")
    assert len(os.listdir(folder)) == 7
    index = save_state_dict(_sd(), folder, max_shard_size="1MB")
    names = sorted(os.listdir(folder))
    assert names == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    with surgery.open_checkpoint(index) as ckpt:
        assert len(ckpt) == 6


def test_a_lone_shard_is_refused_naming_the_missing_index(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    save_state_dict(_sd(), folder, max_shard_size="600KB")
    shard = folder / "model-00001-of-00003.safetensors"
    with pytest.raises(CheckpointError, match=r"shard 1 of 3 .* load its index"):
        load_partial(shard)
    os.remove(folder / "model.safetensors.index.json")
    with pytest.raises(
        CheckpointError, match=r"its index \('.*model\.safetensors\.index\.json'\) is missing"
    ):
        load_partial(shard)
    with pytest.raises(CheckpointError, match=r"is missing"):
        load_partial(folder, into=nn.Linear(2, 2))  # the directory holds only shards


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({1: torch.ones(1)}, r"keys that are not strings: 1"),
        ({"w": "text"}, r"non-tensor values: 'w'"),
    ],
)
def test_save_bad_input_is_a_save_error(tmp_path: Path, state, message: str) -> None:
    with pytest.raises(SaveError, match=message):
        save_state_dict(state, tmp_path / "x.safetensors")
    assert os.listdir(tmp_path) == []


def test_save_into_an_existing_directory_is_a_save_error(tmp_path: Path) -> None:
    with pytest.raises(SaveError, match=r"is a directory; pass a file name"):
        save_state_dict(_sd(1), tmp_path)


# -- no hangs on untrusted keys ---------------------------------------------------------


def test_a_catastrophic_regex_on_a_crafted_key_finishes_fast() -> None:
    import time

    key = "a" * 40 + "!"  # 41 characters: (a|aa)+ backtracks ~fib(40) times in Python's re
    sd = {key: torch.ones(1), "aaa.weight": torch.ones(2, 1)}
    start = time.perf_counter()
    view = load_partial(sd, include=r"re:(a|aa)+\.weight")
    assert list(view) == ["aaa.weight"]
    modules = nn.ModuleDict({"a" * 40 + "b": nn.Identity(), "aaaa": nn.Identity()})
    assert surgery.find(modules, r"re:(a|aa)+") == ["aaaa"]
    r = load_partial(sd, into=nn.Linear(1, 2, bias=False), rename=[(r"^(a|aa)+\.", "")])
    assert r.loaded == ["weight"]
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("pattern", [r"re:(a)\1\.weight", r"re:(?=a).*", r"re:.*(?<!bias)"])
def test_a_regex_re2_cannot_take_is_a_path_error(pattern: str) -> None:
    with pytest.raises(surgery.PathError, match=r"cannot be matched in linear time.*RE2"):
        load_partial({"a.weight": torch.ones(1)}, include=pattern)


def test_a_zip_offset_outside_the_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    """Found by the fuzzer: a mutated zip64 extra field gave a negative record offset."""
    from surgery.checkpoint._fileio import CheckedFile

    path = tmp_path / "x.bin"
    path.write_bytes(b"0123456789")
    f = CheckedFile(str(path))
    with pytest.raises(CheckpointError, match=r"4 bytes at offset -9 lie outside the 10-byte"):
        f.read_bytes(-9, 4)
    with pytest.raises(CheckpointError, match=r"lie outside"):
        f.read_bytes(8, 4)
    f.close()
