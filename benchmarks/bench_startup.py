"""Start-up cost: ``import surgery`` and ``surgery --help`` against ``import torch``.

Goals (issue 15): ``import surgery`` <= 1.15x ``import torch``; ``surgery --help``
<= 1.3x ``python -c "import torch"``. Each command runs in a fresh subprocess; the
anchor and ours alternate run by run (so a busy machine slows both alike) and the
best of ``--repeat`` is kept. Peak memory (max RSS of the child) is shown too.

    python benchmarks/bench_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

CASES = {
    "import torch": [sys.executable, "-c", "import torch"],
    "import surgery": [sys.executable, "-c", "import surgery"],
    "surgery --help": [sys.executable, "-m", "surgery", "--help"],
    "import torchvision (for scale)": [sys.executable, "-c", "import torchvision"],
}
GOALS = {"import surgery": 1.15, "surgery --help": 1.3}


def run_once(argv: list[str]) -> float:
    """Wall-clock seconds of one fresh process."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per command (best is kept)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    rss: dict[str, float] = {}
    for argv in CASES.values():  # warm the page cache once
        run_once(argv)
    for _ in range(args.repeat):
        for name, argv in CASES.items():
            times[name].append(run_once(argv))
    for name, argv in CASES.items():  # RSS: ru_maxrss of children is a running max, so one
        rss[name] = _peak_rss(argv)  # process per measurement, in a clean child
    anchor = min(times["import torch"])
    print(f"python {sys.version.split()[0]}, best of {args.repeat}, {os.cpu_count()} CPUs")
    print(f"{'command':34} {'best':>8} {'median':>8} {'peak RSS':>9} {'vs torch':>9}  goal")
    for name in CASES:
        best = min(times[name])
        median = sorted(times[name])[len(times[name]) // 2]
        goal = GOALS.get(name)
        ratio = best / anchor
        status = "" if goal is None else f"<= {goal}x " + ("met" if ratio <= goal else "MISSED")
        print(f"{name:34} {best:7.3f}s {median:7.3f}s {rss[name]:6.0f} MB {ratio:8.2f}x  {status}")


def _peak_rss(argv: list[str]) -> float:
    """Peak RSS (MB) of one fresh process, read by a parent that runs nothing else."""
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
        "stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    return int(out.stdout.strip()) / 1024


if __name__ == "__main__":
    main()
