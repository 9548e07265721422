"""FSDP2 (``fully_shard``) on two CPU processes (gloo): freeze, param_groups and load_partial.

One test spawns the two ranks once and runs every scenario in them (process
start-up dominates the cost). Each rank checks its own results and sends back
a small summary that the test checks again.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
TIMEOUT_S = 150


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(16, 32)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(32, 32), nn.LayerNorm(32), nn.GELU()) for _ in range(2)
        )
        self.head = nn.Linear(32, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)


def _sharded_net(seed: int, mesh: Any) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    net = Net()
    for block in net.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(net, mesh=mesh)
    return net


def _local(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.to_local().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        _scenarios(rank, Path(tmp))
    except BaseException:
        Path(tmp, f"error-{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _scenarios(rank: int, tmp: Path) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    import surgery
    from surgery.checkpoint._dcp import open_dcp

    out: dict[str, Any] = {}
    mesh = init_device_mesh("cpu", (WORLD,))
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))

    # -- a sharded source model, saved as DCP by every rank (collective)
    src = _sharded_net(0, mesh)
    assert all(isinstance(p, DTensor) for p in src.parameters())
    ckpt = tmp / "ckpt"
    surgery.save_state_dict(src, ckpt, format="dcp")
    dist.barrier()
    expected_local = _local(src)
    expected_out = src(x).detach()

    # -- freeze and param_groups on DTensor parameters
    net = _sharded_net(1, mesh)
    surgery.freeze(net, "stem", "blocks.0")
    trainable = sorted(n for n, p in net.named_parameters() if p.requires_grad)
    assert trainable == sorted(
        [f"blocks.1.1.{n}" for n in ("weight", "bias")]
        + [f"blocks.1.0.{n}" for n in ("weight", "bias")]
        + ["head.weight", "head.bias"]
    ), trainable
    groups = surgery.param_groups(net, slice(1e-4, 1e-3), split_at=["blocks.1", "head"])
    assert [len(g["params"]) for g in groups] == [4, 2], [len(g["params"]) for g in groups]
    assert all(isinstance(p, DTensor) for g in groups for p in g["params"])
    out["lrs"] = [g["lr"] for g in groups]
    frozen_before = {k: v for k, v in _local(net).items() if k.startswith(("stem", "blocks.0"))}
    opt = torch.optim.AdamW(groups, weight_decay=0.1)
    net(x).square().mean().backward()
    assert all(p.grad is None for n, p in net.named_parameters() if not p.requires_grad)
    opt.step()
    after = _local(net)
    assert all(torch.equal(after[k], v) for k, v in frozen_before.items())
    assert not torch.equal(after["head.weight"], expected_local["head.weight"])

    # -- load_partial from the DCP checkpoint: each rank reads only its own shards
    ids = {n: id(p) for n, p in net.named_parameters()}
    source = open_dcp(ckpt)
    report = surgery.load_partial(source, into=net, include=["blocks", "head"])
    assert sorted(report.loaded) == sorted(k for k in expected_local if not k.startswith("stem"))
    assert report.missing == ["stem.weight", "stem.bias"]
    loaded_local = _local(net)
    for k, v in expected_local.items():
        if k.startswith("stem"):
            assert torch.equal(loaded_local[k], after[k]), k  # untouched
        else:
            assert torch.equal(loaded_local[k], v), k
    assert {n: id(p) for n, p in net.named_parameters()} == ids  # FSDP keeps its parameters
    md = source.metadata
    own_file = f"__{rank}_0.distcp"
    selected = [k for k in expected_local if not k.startswith("stem")]
    stored = {k: 0 for k in ("own", "all")}
    for index, info in md.storage_data.items():
        if index.fqn in selected:
            stored["all"] += info.length
            if info.relative_path == own_file:
                stored["own"] += info.length
    assert source.bytes_read == stored["own"], (source.bytes_read, stored)
    assert source.bytes_read < 0.6 * stored["all"]
    out["bytes_read"] = source.bytes_read
    out["bytes_selected"] = stored["all"]

    # ... the rest by path, and the sharded model computes what the source computes
    report = surgery.load_partial(ckpt, into=net, include="stem")
    assert report.loaded == ["stem.weight", "stem.bias"]
    assert torch.allclose(net(x).detach(), expected_out)

    # -- a failing load leaves every shard unchanged (all or nothing, on every rank)
    before = _local(net)
    try:
        surgery.load_partial(ckpt, into=net, include="head", rename={"head.": "stem."})
    except surgery.LoadError as exc:
        out["error"] = str(exc).splitlines()[0]
    now = _local(net)
    assert all(torch.equal(v, now[k]) for k, v in before.items())

    # -- a plain (unsharded) safetensors checkpoint loads into the sharded model too
    full = {k: v.full_tensor() for k, v in src.state_dict().items()}
    plain = tmp / "plain.safetensors"
    if rank == 0:
        surgery.save_state_dict(full, plain)
    dist.barrier()
    other = _sharded_net(2, mesh)
    surgery.load_partial(plain, into=other)
    now = _local(other)
    assert all(torch.equal(v, now[k]) for k, v in expected_local.items())

    # -- FSDP's meta-device init: fully_shard on meta, to_empty, then load (each rank its shard)
    from torch.distributed.fsdp import fully_shard

    with torch.device("meta"):
        lazy = Net()
    fully_shard(lazy, mesh=mesh)
    try:
        surgery.load_partial(ckpt, into=lazy)
        raise AssertionError("loading into meta DTensors must be refused")
    except surgery.LoadError as exc:
        out["meta_error"] = str(exc).splitlines()[0]
    assert all(p.is_meta for p in lazy.parameters())
    lazy.to_empty(device="cpu")
    surgery.load_partial(ckpt, into=lazy)
    now = _local(lazy)
    assert all(torch.equal(v, now[k]) for k, v in expected_local.items())

    out["local_shapes"] = {k: list(v.shape) for k, v in expected_local.items()}
    Path(tmp, f"result-{rank}.json").write_text(json.dumps(out))


@pytest.mark.slow
def test_fsdp2_freeze_param_groups_and_load_partial(tmp_path: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    start = time.perf_counter()
    ctx = mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {WORLD} FSDP ranks did not finish in {TIMEOUT_S} s")
    except Exception:
        errors = sorted(tmp_path.glob("error-*.txt"))
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
        if errors:
            pytest.fail("\n".join(e.read_text() for e in errors))
        raise
    results = [json.loads((tmp_path / f"result-{r}.json").read_text()) for r in range(WORLD)]
    elapsed = time.perf_counter() - start
    for r in results:
        # three groups, geometric 1e-4 .. 1e-3; the first is frozen, so only two are returned
        assert r["lrs"] == pytest.approx([10**-3.5, 1e-3])
        assert r["bytes_read"] < 0.6 * r["bytes_selected"]
        assert "shape mismatch" in r["error"], r["error"]
        assert r["meta_error"].startswith(
            "load_partial(FSDPNet): 12 DTensor parameter(s) of FSDPNet are on the meta device"
        )
        # each rank holds half of every dim-0-sharded parameter
        assert r["local_shapes"]["head.weight"] == [3, 32]
        assert r["local_shapes"]["stem.weight"] == [16, 16]
    assert results[0]["bytes_read"] + results[1]["bytes_read"] == results[0]["bytes_selected"]
    print(f"FSDP2 scenarios on {WORLD} ranks: {elapsed:.1f} s")
