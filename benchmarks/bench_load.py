"""load_partial against bare torch and the seed recipe on a >= 1 GB vit_l_16 checkpoint.

Goals (issue 5), ratios from one run:

* time: ``load_partial(path, into=model)`` <= 1.3x ``torch.load(mmap=True,
  weights_only=True)`` + ``load_state_dict(strict=False)``, and >= 10x faster than
  the seed recipe (``torch.load`` + ``dict.update`` + ``load_state_dict``);
* extra peak anonymous memory (RssAnon sampled in a thread during the load)
  <= 1.1x the loaded bytes by default, <= 0.1x with ``transactional=False``;
* a safetensors source at least as fast as a pickle one.

Each case runs in a fresh subprocess (clean allocator, same warm page cache):
the model is built on meta, given real zeroed storage, then loaded ``--repeat``
times; the best time and the largest extra RssAnon are kept.

    python benchmarks/bench_load.py [--repeat 3] [--dir /tmp/somewhere]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

CASES = {
    "bare torch (mmap + load_state_dict)": "bare",
    "seed recipe (torch.load + update + load_state_dict)": "seed",
    "load_partial .pt": "ours_pt",
    "load_partial .pt transactional=False": "ours_pt_inplace",
    "load_partial .safetensors": "ours_st",
    "load_partial .safetensors transactional=False": "ours_st_inplace",
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


def build_model():
    import torch
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.vit_l_16(weights=None)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for t in model.state_dict().values():
            t.zero_()  # touch every page: the model's memory is resident before the load
    return model


def run_case(case: str, directory: str, repeat: int) -> dict[str, float]:
    import gc

    import torch

    import surgery

    pt = os.path.join(directory, "vit_l_16.pt")
    st = os.path.join(directory, "vit_l_16.safetensors")
    model = build_model()
    loaded = sum(t.nbytes for t in model.state_dict().values())

    def bare() -> None:
        sd = torch.load(pt, mmap=True, weights_only=True, map_location="cpu")
        model.load_state_dict(sd, strict=False)

    def seed() -> None:
        sd = model.state_dict()
        ckpt = torch.load(pt, weights_only=True, map_location="cpu")
        sd.update(ckpt)
        model.load_state_dict(sd)

    fns = {
        "bare": bare,
        "seed": seed,
        "ours_pt": lambda: surgery.load_partial(pt, into=model),
        "ours_pt_inplace": lambda: surgery.load_partial(pt, into=model, transactional=False),
        "ours_st": lambda: surgery.load_partial(st, into=model),
        "ours_st_inplace": lambda: surgery.load_partial(st, into=model, transactional=False),
    }
    fn = fns[case]
    times, extras = [], []
    for _ in range(repeat):
        gc.collect()
        with PeakSampler() as sampler:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        extras.append(sampler.extra)
    return {"time": min(times), "first": times[0], "extra": max(extras), "loaded": loaded}


def prepare(directory: str) -> int:
    import torch
    import torchvision
    from safetensors.torch import save_file

    pt = os.path.join(directory, "vit_l_16.pt")
    st = os.path.join(directory, "vit_l_16.safetensors")
    if not (os.path.exists(pt) and os.path.exists(st)):
        torch.manual_seed(0)
        sd = torchvision.models.vit_l_16(weights=None).state_dict()
        torch.save(sd, pt)
        save_file({k: v.contiguous() for k, v in sd.items()}, st)
    for path in (pt, st):  # warm the page cache: every case reads from memory
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    return os.path.getsize(pt)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.dir, args.repeat)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        size = prepare(directory)
        print(f"vit_l_16 checkpoint: {size / 1e9:.2f} GB (.pt and .safetensors in {directory})")
        results: dict[str, dict[str, float]] = {}
        for label, case in CASES.items():
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--case",
                    case,
                    "--dir",
                    directory,
                    "--repeat",
                    str(args.repeat),
                ],
                capture_output=True,
                text=True,
            )
            if proc.returncode:
                raise SystemExit(f"case {case} failed:\n{proc.stderr}")
            out = proc.stdout
            results[case] = json.loads(out.strip().splitlines()[-1])
            r = results[case]
            print(
                f"{label:50s} best {r['time']:6.3f} s  first {r['first']:6.3f} s  "
                f"extra RssAnon {r['extra'] / 1e9:6.3f} GB "
                f"({r['extra'] / r['loaded']:.2f}x loaded)"
            )
    bare, seed = results["bare"]["time"], results["seed"]["time"]
    first = {case: r["first"] for case, r in results.items()}
    print()
    print(
        "first call (fresh process, no allocator reuse): load_partial .pt / bare "
        f"{first['ours_pt'] / first['bare']:.2f}x, .safetensors / bare "
        f"{first['ours_st'] / first['bare']:.2f}x, seed / load_partial .pt "
        f"{first['seed'] / first['ours_pt']:.1f}x; transactional=False: .pt / bare "
        f"{first['ours_pt_inplace'] / first['bare']:.2f}x, seed / .pt "
        f"{first['seed'] / first['ours_pt_inplace']:.1f}x"
    )
    print("best of --repeat:")
    print(
        f"load_partial .pt / bare torch:            {results['ours_pt']['time'] / bare:.2f}x (goal <= 1.3x)"
    )
    print(f"load_partial .safetensors / bare torch:   {results['ours_st']['time'] / bare:.2f}x")
    print(
        f"seed recipe / load_partial .pt:           {seed / results['ours_pt']['time']:.1f}x faster (goal >= 10x)"
    )
    print(
        f"safetensors / pickle time:                {results['ours_st']['time'] / results['ours_pt']['time']:.2f}x (goal <= 1.0x)"
    )
    for case in ("ours_pt", "ours_st"):
        print(
            f"{case}: extra memory {results[case]['extra'] / results[case]['loaded']:.2f}x loaded (goal <= 1.1x)"
        )
    for case in ("ours_pt_inplace", "ours_st_inplace"):
        print(
            f"{case}: extra memory {results[case]['extra'] / results[case]['loaded']:.2f}x loaded (goal <= 0.1x)"
        )


if __name__ == "__main__":
    main()
