"""Start-up of the command line, before and after, in one run: each command's whole process,
timed from the outside (fork to exit), the two code versions alternated (A/B, then B/A) so
that a load from other processes falls on both alike.

    git worktree add /tmp/startup-base 3d20b6c
    python benchmarks/startup.py --before /tmp/startup-base/src --rounds 7 [--train]

`--before` and `--after` are source folders put first on PYTHONPATH (after: this checkout's
src). `--train` adds the default mlp run's whole process (1 epoch) to the commands. Prints a
Markdown table of wall-clock medians (min-max), CPU seconds (user + sys) and the before/after
ratios, with the machine.
"""

from __future__ import annotations

import argparse
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


def commands(data: Path, runs: Path, train: bool) -> dict[str, list[str]]:
    found = {
        "`python -c 'import trainlab'`": ["-c", "import trainlab"],
        "`trainlab --help`": ["-m", "trainlab", "--help"],
        "`trainlab --version`": ["-m", "trainlab", "--version"],
        "`trainlab train --help`": ["-m", "trainlab", "train", "--help"],
        "`trainlab data info` (local IDX files)": ["-m", "trainlab", "data", "info", "--data-dir", str(data)],
    }
    if train:
        found["`trainlab train` mlp, 1 epoch (whole process)"] = [
            "-m", "trainlab", "train", "--epochs", "1", "--data-dir", str(data), "--runs-dir", str(runs),
            "--quiet", "--name", "{name}"]
    return found


def once(src: Path, args: list[str], name: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one whole process: the CPU time is what a load from other
    processes inflates least."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    env.pop("TRAINLAB_DEBUG", None)
    argv = [sys.executable, *[a.replace("{name}", name) for a in args]]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} (PYTHONPATH={src}) exited {proc.returncode}: {proc.stderr[-2000:]}")
    return seconds, cpu


def machine() -> dict[str, str]:
    info = {"cpu": platform.processor() or "?", "cores": str(os.cpu_count())}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        flags = set()
    info["avx512"] = "yes" if "avx512f" in flags else "no"
    info["amx"] = "yes" if {"amx_tile", "amx_bf16"} & flags else "no"
    info["torch"] = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True).stdout.strip()
    info["python"] = platform.python_version()
    return info


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, required=True, help="src folder of the code before (e.g. 3d20b6c)")
    p.add_argument("--after", type=Path, default=ROOT / "src", help="src folder of the code after (this checkout)")
    p.add_argument("--rounds", type=int, default=7, help="runs of each command per version (default 7)")
    p.add_argument("--data-dir", type=Path, default=DATA)
    p.add_argument("--train", action="store_true", help="also the default mlp run, 1 epoch, whole process")
    args = p.parse_args()
    versions = {"before": args.before.resolve(), "after": args.after.resolve()}
    info, load_start, began = machine(), os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trainlab-startup-") as runs:
        todo = commands(args.data_dir, Path(runs), args.train)
        times = {(c, v): [] for c in todo for v in versions}
        torch_alone = []
        for r in range(args.rounds):
            torch_alone.append(once(versions["after"], ["-c", "import torch"], ""))
            for label, argv in todo.items():
                order = list(versions) if r % 2 == 0 else list(reversed(versions))  # A/B, then B/A
                for v in order:
                    times[label, v].append(once(versions[v], argv, f"{v}-{r}"))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    load_end, took = os.getloadavg(), time.perf_counter() - began

    print(f"Machine: {info['cpu']}, {info['cores']} cores, AVX512 {info['avx512']}, AMX {info['amx']}; "
          f"torch {info['torch']}, Python {info['python']}. Load average (1/5/15 min) "
          f"{'/'.join(f'{x:.1f}' for x in load_start)} at the start, {'/'.join(f'{x:.1f}' for x in load_end)} "
          f"at the end ({took:.0f} s); {args.rounds} runs of each, the versions alternated.\n")
    print("| command (whole process) | before: wall s, median (min-max) | after: wall s | before / after "
          "(wall) | before: CPU s, median | after: CPU s | before / after (CPU) |")
    print("|---|---|---|---|---|---|---|")
    rows = [(label, times[label, "before"], times[label, "after"]) for label in todo]
    for label, b, a in rows:
        bw, bc, aw, ac = [t[0] for t in b], [t[1] for t in b], [t[0] for t in a], [t[1] for t in a]
        print(f"| {label} | {spread(bw)} | {spread(aw)} | {statistics.median(bw) / statistics.median(aw):.1f}x | "
              f"{statistics.median(bc):.2f} | {statistics.median(ac):.2f} | "
              f"{statistics.median(bc) / statistics.median(ac):.1f}x |")
    tw, tc = [t[0] for t in torch_alone], [t[1] for t in torch_alone]
    print(f"| `python -c 'import torch'` alone (the floor of any command that trains) | | {spread(tw)} | | | "
          f"{statistics.median(tc):.2f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
