"""torch.distributed.checkpoint directories as sources, and the DCP writer (single process)."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torchvision
from torch import nn

from surgery import CheckpointError, LoadError
from surgery.checkpoint import open_source
from surgery.checkpoint._dcp import DCPSource, SafeFileSystemReader, open_dcp, save_dcp


def _raw_save(obj: dict[str, object], path: Path) -> None:
    """dcp.save without surgery, as a training job would write it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(obj, checkpoint_id=str(path), no_dist=True)


@pytest.fixture(scope="module")
def resnet_dcp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("dcp") / "resnet18"
    save_dcp(sd, path)
    return path, sd


def test_save_dcp_writes_a_dcp_directory(resnet_dcp: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = resnet_dcp
    names = sorted(os.listdir(path))
    assert names[0] == ".metadata" and all(n.endswith(".distcp") for n in names[1:])


def test_keys_and_infos_come_from_metadata_alone(
    resnet_dcp: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, sd = resnet_dcp
    src = open_dcp(path)
    assert isinstance(src, DCPSource) and src.unwrapped is None
    assert src.keys() == list(sd)
    for k, v in sd.items():
        info = src.info(k)
        assert (info.shape, info.dtype) == (tuple(v.shape), v.dtype), k
    assert src.bytes_read == 0


def test_read_goes_through_dcp_and_counts_bytes(
    resnet_dcp: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, sd = resnet_dcp
    with open_source(path) as src:
        assert isinstance(src, DCPSource)
        t = src.read("fc.weight")
        assert torch.equal(t, sd["fc.weight"])
        # the stored item is a torch.save of the tensor: its data plus a small zip header
        assert sd["fc.weight"].nbytes <= src.bytes_read <= sd["fc.weight"].nbytes + 4096
        before = src.bytes_read
        assert torch.equal(
            src.read("layer4.1.bn2.num_batches_tracked"), sd["layer4.1.bn2.num_batches_tracked"]
        )
        assert src.bytes_read > before


def test_read_like_plain_tensor_is_read(resnet_dcp: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, sd = resnet_dcp
    t = open_dcp(path).read_like("conv1.weight", torch.empty(0))
    assert torch.equal(t, sd["conv1.weight"])


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.int8, torch.bool, torch.float64]
)
def test_dtypes_round_trip(tmp_path: Path, dtype: torch.dtype) -> None:
    t = (torch.arange(12).reshape(3, 4) % 3).to(dtype)
    save_dcp({"t": t}, tmp_path)
    src = open_dcp(tmp_path)
    assert src.info("t").dtype == dtype
    out = src.read("t")
    assert out.dtype == dtype and torch.equal(out, t)


def test_views_are_saved_compactly(tmp_path: Path) -> None:
    big = torch.arange(100_000, dtype=torch.float32)
    save_dcp({"small": big[10:20]}, tmp_path)
    data = sum(os.path.getsize(tmp_path / n) for n in os.listdir(tmp_path) if n.endswith(".distcp"))
    assert data < 10_000
    assert torch.equal(open_dcp(tmp_path).read("small"), big[10:20])


def test_a_wrapped_training_checkpoint_is_unwrapped(tmp_path: Path) -> None:
    sd = nn.Linear(3, 2).state_dict()
    _raw_save({"model": sd, "step": 7, "config": {"lr": 0.1}}, tmp_path)
    src = open_dcp(tmp_path)
    assert src.unwrapped == "model"
    assert src.keys() == ["weight", "bias"]
    assert torch.equal(src.read("weight"), sd["weight"])


def test_several_wrapped_state_dicts_need_key(tmp_path: Path) -> None:
    sd = nn.Linear(3, 2).state_dict()
    _raw_save({"model": sd, "ema": {k: v + 1 for k, v in sd.items()}}, tmp_path)
    with pytest.raises(
        LoadError,
        match=r"wraps several state dicts: 'model', 'ema'; pick one with key='model'",
    ):
        open_dcp(tmp_path)
    src = open_dcp(tmp_path, key="ema")
    assert src.unwrapped == "ema" and torch.equal(src.read("bias"), sd["bias"] + 1)
    with pytest.raises(
        LoadError,
        match=r"has no entry 'emma' holding tensors; entries that hold tensors: 'model', 'ema'",
    ):
        open_dcp(tmp_path, key="emma")


def test_non_tensor_values_in_the_state_dict_are_named(tmp_path: Path) -> None:
    _raw_save({"weight": torch.ones(2), "note": "hello", "n": 3}, tmp_path)
    with pytest.raises(LoadError, match=r"holds non-tensor entries: 'note', 'n'"):
        open_dcp(tmp_path)


def test_non_tensor_entries_are_never_read(tmp_path: Path) -> None:
    """DCP itself would torch.load(weights_only=False) them; our reader refuses."""
    _raw_save({"w": torch.ones(2), "step": 3}, tmp_path)
    from torch.distributed.checkpoint import CheckpointException

    target: dict[str, object] = {"step": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(CheckpointException, match=r"refusing to read non-tensor entry 'step'"):
            dcp.load(target, storage_reader=SafeFileSystemReader(tmp_path), no_dist=True)
    assert target == {"step": 0}


def test_a_pickle_payload_in_metadata_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(
        CheckpointError,
        match=r"cannot read the DCP metadata of '.*ckpt': UnpicklingError: global '(posix|os)\.system' is not allowed",
    ):
        open_source(ckpt)
    assert not marker.exists()


def test_metadata_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".metadata").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match=r"expected DCP Metadata, found dict"):
        open_dcp(tmp_path)


def test_missing_metadata_and_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"DCP checkpoint '.*' has no \.metadata file"):
        open_dcp(tmp_path)
    with pytest.raises(CheckpointError, match=r"DCP checkpoint '.*nothing' is not a directory"):
        open_dcp(tmp_path / "nothing")


def test_missing_data_file_names_the_key(
    resnet_dcp: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    import shutil

    path, _ = resnet_dcp
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    for n in os.listdir(copy):
        if n.endswith(".distcp"):
            os.remove(copy / n)
    src = open_dcp(copy)
    assert src.info("fc.bias").shape == (1000,)  # metadata still answers
    with pytest.raises(
        CheckpointError, match=r"cannot read 'fc\.bias' from DCP checkpoint '.*copy'"
    ):
        src.read("fc.bias")


def test_unknown_key(resnet_dcp: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = resnet_dcp
    with pytest.raises(LoadError, match=r"has no tensor 'fc\.weigth'; did you mean 'fc\.weight'"):
        open_dcp(path).info("fc.weigth")


# -- through the public API ------------------------------------------------------------------


def test_save_state_dict_format_dcp_and_load_partial_round_trip(tmp_path: Path) -> None:
    import surgery

    torch.manual_seed(0)
    src = torchvision.models.resnet18(weights=None)
    path = surgery.save_state_dict(src, tmp_path / "r18", format="dcp")
    assert path == str(tmp_path / "r18") and (tmp_path / "r18" / ".metadata").exists()
    dst = torchvision.models.resnet18(weights=None)
    report = surgery.load_partial(path, into=dst)
    assert len(report.loaded) == 122 and not report.missing
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k


def test_load_partial_from_dcp_with_include_exclude_rename_and_at(tmp_path: Path) -> None:
    import surgery

    torch.manual_seed(0)
    ssl = torchvision.models.resnet18(weights=None)
    _raw_save(
        {"model": {f"backbone.{k}": v for k, v in ssl.state_dict().items()}, "step": 9}, tmp_path
    )
    clf = torchvision.models.resnet18(weights=None, num_classes=10)
    source = open_dcp(tmp_path)
    report = surgery.load_partial(
        source,
        into=clf,
        include="backbone.layer4",
        exclude="**.num_batches_tracked",
        rename={"backbone.": ""},
    )
    assert report.unwrapped == "model"
    assert len(report.loaded) == 25 and all(k.startswith("layer4.") for k in report.loaded)
    assert report.renamed["layer4.0.conv1.weight"] == "backbone.layer4.0.conv1.weight"
    assert torch.equal(clf.layer4[1].bn2.running_var, ssl.layer4[1].bn2.running_var)
    # only the selected tensors were read
    nbytes = sum(
        v.nbytes
        for k, v in ssl.state_dict().items()
        if k.startswith("layer4.") and "num_batches" not in k
    )
    assert nbytes <= source.bytes_read <= nbytes + 25 * 4096
    # at= with relative keys
    report = surgery.load_partial(
        tmp_path, into=clf, at="layer1", include="backbone.layer1", rename={"backbone.layer1.": ""}
    )
    assert report.loaded[0] == "layer1.0.conv1.weight" and torch.equal(
        clf.layer1[0].conv1.weight, ssl.layer1[0].conv1.weight
    )


def test_load_partial_key_picks_a_wrapped_dcp_state_dict(tmp_path: Path) -> None:
    import surgery

    lin = nn.Linear(3, 2)
    _raw_save(
        {"model": lin.state_dict(), "ema": {k: v * 0 for k, v in lin.state_dict().items()}},
        tmp_path,
    )
    with pytest.raises(LoadError, match=r"wraps several state dicts: 'model', 'ema'"):
        surgery.load_partial(tmp_path, into=nn.Linear(3, 2))
    target = nn.Linear(3, 2)
    report = surgery.load_partial(tmp_path, into=target, key="ema")
    assert report.unwrapped == "ema" and torch.equal(target.weight, torch.zeros(2, 3))


def test_a_failing_dcp_load_changes_nothing(tmp_path: Path) -> None:
    import surgery
    from tests.snapshot import assert_unchanged, snapshot

    save_dcp(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), tmp_path)
    model = torchvision.models.resnet18(weights=None)
    before = snapshot(model)
    with pytest.raises(
        LoadError, match=r"'fc\.weight': checkpoint \(10, 512\) vs model \(1000, 512\)"
    ):
        surgery.load_partial(tmp_path, into=model)
    assert_unchanged(model, before)


def test_save_state_dict_format_errors(tmp_path: Path) -> None:
    import surgery
    from surgery import ArgumentError

    with pytest.raises(ArgumentError, match=r"max_shard_size applies to format='safetensors'"):
        surgery.save_state_dict(nn.Linear(2, 2), tmp_path, format="dcp", max_shard_size="1MB")
    with pytest.raises(ArgumentError, match=r"format must be 'safetensors' or 'dcp', got 'npz'"):
        surgery.save_state_dict(nn.Linear(2, 2), tmp_path, format="npz")
    with torch.device("meta"):
        meta = nn.Linear(2, 2)
    with pytest.raises(
        surgery.SaveError, match=r"cannot save 'weight', 'bias': on the meta device"
    ):
        surgery.save_state_dict(meta, tmp_path / "m", format="dcp")
    with pytest.raises(surgery.SaveError, match=r"cannot save non-tensor values: 'note'"):
        surgery.save_state_dict({"w": torch.ones(1), "note": "x"}, tmp_path / "n", format="dcp")
