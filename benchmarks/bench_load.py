"""load_partial against bare torch and the seed recipe: "time to use" on a >= 1.2 GB checkpoint.

Issue 11's protocol. Anchor: ``torch.load(mmap=True, weights_only=True)`` +
``load_state_dict(strict=False)`` into an initialized model (resident, zeroed
storage), then a pass over every loaded tensor (``t.sum()``). Every variant is
measured the same way: **time to use** = the load call + the same pass; the load
call alone is printed too. Each case runs in a fresh subprocess: its first call
is the **first load** of that process, and the best of ``--repeat`` (5) is kept.
Extra memory is the peak RssAnon sampled every 0.5 ms during the call, minus
RssAnon before it, as a multiple of the loaded bytes.

Cases: vit_l_16 (1.22 GB) as .pt and .safetensors, default (atomic) and
``transactional=False``; the seed recipe (``torch.load`` + ``dict.update`` +
``load_state_dict``); meta targets (``--meta-model``, vit_h_14 2.5 GB by default,
``--meta-model vit_l_16`` on a small machine): default (a private copy) and
``mmap=True``; and, for users, from nothing to a usable model: build on meta +
``load_partial`` against building normally + the anchor.

    python benchmarks/bench_load.py [--repeat 5] [--dir /tmp] [--meta-model vit_h_14]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

CASES = {
    "anchor (torch.load mmap + load_state_dict)": "bare",
    "seed recipe (torch.load + update + load_state_dict)": "seed",
    "load_partial .pt": "ours_pt",
    "load_partial .pt transactional=False": "ours_pt_inplace",
    "load_partial .safetensors": "ours_st",
    "load_partial .safetensors transactional=False": "ours_st_inplace",
    "META anchor into initialized model": "meta_bare",
    "META load_partial .safetensors into meta": "meta_st",
    "META load_partial .pt into meta": "meta_pt",
    "META load_partial .safetensors into meta, mmap=True": "meta_st_mmap",
    "USER build normally + anchor": "user_bare",
    "USER build on meta + load_partial": "user_ours",
}


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakSampler:
    """Samples RssAnon every ~0.5 ms in a thread; ``peak - base`` is the extra memory."""

    def __init__(self) -> None:
        self.base = rss_anon()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon())
            time.sleep(0.0005)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())

    @property
    def extra(self) -> int:
        return self.peak - self.base


def _factory(name: str):
    import torchvision

    return getattr(torchvision.models, name)


def build_initialized(name: str):
    import torch

    with torch.device("meta"):
        model = _factory(name)(weights=None)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for t in model.state_dict().values():
            t.zero_()  # touch every page: the model's memory is resident before the load
    return model


def build_meta(name: str):
    import torch

    with torch.device("meta"):
        return _factory(name)(weights=None)


def use(model) -> None:
    """The pass over every loaded tensor that makes "time to use"."""
    import torch

    with torch.no_grad():
        for t in model.state_dict().values():
            t.sum()


def run_case(case: str, directory: str, repeat: int, meta_model: str) -> dict[str, float]:
    import gc

    import torch

    import surgery

    name = meta_model if case.startswith(("meta_", "user_")) else "vit_l_16"
    pt = os.path.join(directory, f"{name}.pt")
    st = os.path.join(directory, f"{name}.safetensors")
    model = (
        build_initialized(name)
        if case in ("bare", "seed", "meta_bare") or case.startswith("ours")
        else None
    )
    loaded = sum(t.nbytes for t in build_meta(name).state_dict().values())

    def anchor(m) -> None:
        sd = torch.load(pt, mmap=True, weights_only=True, map_location="cpu")
        m.load_state_dict(sd, strict=False)

    def seed() -> None:
        sd = model.state_dict()
        ckpt = torch.load(pt, weights_only=True, map_location="cpu")
        sd.update(ckpt)
        model.load_state_dict(sd)

    holder: dict[str, object] = {}

    def into_meta(path: str, **kw) -> None:
        holder["m"] = m = build_meta(name)
        surgery.load_partial(path, into=m, **kw)

    def user_bare() -> None:
        holder["m"] = m = _factory(name)(weights=None)
        anchor(m)

    def user_ours() -> None:
        holder["m"] = m = build_meta(name)
        surgery.load_partial(st, into=m)

    fns = {
        "bare": lambda: anchor(model),
        "meta_bare": lambda: anchor(model),
        "seed": seed,
        "ours_pt": lambda: surgery.load_partial(pt, into=model),
        "ours_pt_inplace": lambda: surgery.load_partial(pt, into=model, transactional=False),
        "ours_st": lambda: surgery.load_partial(st, into=model),
        "ours_st_inplace": lambda: surgery.load_partial(st, into=model, transactional=False),
        "meta_st": lambda: into_meta(st),
        "meta_pt": lambda: into_meta(pt),
        "meta_st_mmap": lambda: into_meta(st, mmap=True),
        "user_bare": user_bare,
        "user_ours": user_ours,
    }
    fn = fns[case]
    loads, uses, extras = [], [], []
    for _ in range(1 if case.startswith("user_") else repeat):
        holder.clear()
        gc.collect()
        with PeakSampler() as sampler:
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
        use(holder.get("m", model))
        t2 = time.perf_counter()
        loads.append(t1 - t0)
        uses.append(t2 - t0)
        extras.append(sampler.extra)
    return {
        "load": min(loads),
        "use": min(uses),
        "first_load": loads[0],
        "first_use": uses[0],
        "extra": max(extras) / loaded,
        "loaded": loaded,
    }


def prepare(directory: str, names: list[str]) -> None:
    import torch
    from safetensors.torch import save_file

    for name in names:
        pt = os.path.join(directory, f"{name}.pt")
        st = os.path.join(directory, f"{name}.safetensors")
        if not (os.path.exists(pt) and os.path.exists(st)):
            torch.manual_seed(0)
            sd = _factory(name)(weights=None).state_dict()
            torch.save(sd, pt)
            save_file({k: v.contiguous() for k, v in sd.items()}, st)
            del sd
        for path in (pt, st):  # warm the page cache: every case reads from memory
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
        print(f"{name}: {os.path.getsize(pt) / 1e9:.2f} GB (.pt and .safetensors in {directory})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default="/tmp")
    parser.add_argument("--meta-model", default="vit_h_14")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.dir, args.repeat, args.meta_model)))
        return
    prepare(args.dir, list(dict.fromkeys(["vit_l_16", args.meta_model])))
    r: dict[str, dict[str, float]] = {}
    for label, case in CASES.items():
        cmd = [sys.executable, __file__, "--case", case, "--dir", args.dir]
        cmd += ["--repeat", str(args.repeat), "--meta-model", args.meta_model]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"case {case} failed:\n{proc.stderr}")
        r[case] = x = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"{label:54s} use best {x['use']:6.3f} s first {x['first_use']:6.3f} s | load best "
            f"{x['load']:6.3f} s first {x['first_load']:6.3f} s | extra {x['extra']:.2f}x"
        )

    def ratio(a: str, b: str, what: str) -> float:
        return r[a][what] / r[b][what]

    print("\nratios (goal in brackets):")
    for fmt in ("pt", "st"):
        c = f"ours_{fmt}"
        print(
            f"default .{fmt}: time to use {ratio(c, 'bare', 'use'):.2f}x anchor best of "
            f"{args.repeat} [<= 1.2x], {ratio(c, 'bare', 'first_use'):.2f}x first load "
            f"[<= 1.5x]; load call alone {ratio('seed', c, 'first_load'):.1f}x faster than "
            f"the seed recipe, first load [>= 7x]; extra memory {r[c]['extra']:.2f}x [<= 1.1x]"
        )
        c = f"ours_{fmt}_inplace"
        print(
            f"transactional=False .{fmt}: {ratio(c, 'bare', 'use'):.2f}x anchor [<= 1.05x], "
            f"first {ratio(c, 'bare', 'first_use'):.2f}x; extra memory {r[c]['extra']:.2f}x "
            "[<= 0.1x]"
        )
    for c in ("meta_st", "meta_pt"):
        print(
            f"{args.meta_model} {c}: time to use {ratio(c, 'meta_bare', 'use'):.2f}x the anchor "
            f"into an initialized model [<= 1.3x]; extra memory {r[c]['extra']:.2f}x"
        )
    print(
        f"{args.meta_model} mmap=True: load call {r['meta_st_mmap']['load']:.3f} s [<= 0.3 s], "
        f"extra anonymous memory {100 * r['meta_st_mmap']['extra']:.1f}% [< 5%]"
    )
    print(
        f"from nothing to a usable {args.meta_model}: meta + load_partial "
        f"{r['user_ours']['first_use']:.2f} s vs build + anchor {r['user_bare']['first_use']:.2f} s "
        f"({r['user_bare']['first_use'] / r['user_ours']['first_use']:.1f}x faster)"
    )


if __name__ == "__main__":
    main()
