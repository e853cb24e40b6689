"""The default mlp run's whole process against the textbook loop's whole process, paired.

Each round runs both, timed from the outside (fork to exit): the textbook script
(benchmarks/textbook_mlp.py: Dataset + DataLoader bs 64, Adam, 10 epochs, test accuracy to a
file) and `trainlab train` with its defaults (mlp, the `fast` recipe, 10 epochs, to
results.json written). Their order alternates (A/B, then B/A) so that a load from other
processes falls on both alike; the claim is the ratio of the medians, beside the CPU seconds
(user + sys, what a load inflates least) and each run's test accuracy.

    python benchmarks/whole_process.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fashion-mnist"


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one process."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def textbook(data: Path, out: Path) -> dict:
    wall, cpu = timed([sys.executable, str(ROOT / "benchmarks" / "textbook_mlp.py"), "--data-dir", str(data),
                       "--out", str(out)])
    return {"wall": wall, "cpu": cpu, "test_acc": json.loads(out.read_text())["test_acc"]}


def trainlab(data: Path, runs: Path, name: str) -> dict:
    wall, cpu = timed([sys.executable, "-m", "trainlab", "train", "--data-dir", str(data), "--runs-dir", str(runs),
                       "--name", name, "--quiet"])
    return {"wall": wall, "cpu": cpu,
            "test_acc": json.loads((runs / name / "results.json").read_text())["test"]["accuracy"]}


def cpu_line() -> str:
    model, flags = "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    marks = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    return f"{model}, {os.cpu_count()} cores, {marks}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data-dir", type=Path, default=DATA)
    args = p.parse_args()
    import torch  # only for its version line

    print(f"machine: {cpu_line()}; torch {torch.__version__}; Python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    runs = {"textbook": [], "trainlab": []}
    with tempfile.TemporaryDirectory(prefix="whole-") as tmp:
        tmp = Path(tmp)
        for r in range(args.rounds):
            order = ("textbook", "trainlab") if r % 2 == 0 else ("trainlab", "textbook")
            for which in order:
                got = (textbook(args.data_dir, tmp / f"tb{r}.json") if which == "textbook"
                       else trainlab(args.data_dir, tmp / "runs", f"r{r}"))
                runs[which].append(got)
                print(f"round {r + 1} {which:<8} wall {got['wall']:6.1f} s  cpu {got['cpu']:6.1f} s  "
                      f"test {got['test_acc']:.4f}  load {os.getloadavg()[0]:.2f}", flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("wall", "cpu", "test_acc")} for k, v in runs.items()}
    print("\n| process | wall s, median (min-max) | CPU s, median | test acc, median |")
    print("|---|---|---|---|")
    for k, v in runs.items():
        walls = [x["wall"] for x in v]
        print(f"| {k} | {med[k]['wall']:.1f} ({min(walls):.1f}-{max(walls):.1f}) | {med[k]['cpu']:.1f} | "
              f"{med[k]['test_acc']:.4f} |")
    print(f"\nwhole process, textbook / trainlab: {med['textbook']['wall'] / med['trainlab']['wall']:.2f}x wall, "
          f"{med['textbook']['cpu'] / med['trainlab']['cpu']:.2f}x CPU ({args.rounds} rounds, A/B then B/A); "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
