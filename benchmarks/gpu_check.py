"""The GPU check's Python: every GPU item of the open issues, one step a function, run by
benchmarks/gpu_check.sh on a lent H100/H200 machine (one call, ~8 minutes).

`--dry-run` runs every step on the CPU with tiny settings (1 epoch, a small IDX data set, one
seed), so a stale import, flag or file name fails in `make test` (tests/test_gpu_check.py), never
first on the GPU machine. Each step prints its figures as JSON lines (`step`, then values) into
OUT/gpu_check.jsonl as well as the log; a failed step is recorded and the next one runs.

Steps: machine (device choice, precision policy), speed (mlp / cnn-fast / resnet epoch time and
samples/s under fp32, TF32, bf16, fp16 + GradScaler, channels_last, torch.compile with its compile
time apart), map_location both ways, bitwise resume under deterministic algorithms (and the
difference without), bench-device, time to accuracy (3 seeds, fixed schedules, the textbook loop
beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Check:
    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.device = "cpu" if self.dry else "cuda"
        self.epochs = 1 if self.dry else 3
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.runs = Path(tempfile.mkdtemp(prefix="gpu-check-runs-"))
        self.failed: list[str] = []
        self.val_size = 100 if self.dry else 5000
        self._n_train: int | None = None

    @property
    def n_train(self) -> int:
        """Training images per epoch (the data set's train split less the validation rows)."""
        if self._n_train is None:
            from trainlab.data import load_dataset

            self._n_train = len(load_dataset(self.args.dataset or "fashion-mnist").train_y) - self.val_size
        return self._n_train

    # -- helpers --------------------------------------------------------------------------
    def record(self, step: str, **values) -> None:
        line = json.dumps({"step": step, **values}, default=str)
        print(line, flush=True)
        with open(self.out / "gpu_check.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def env(self, **extra) -> dict:
        src = str(ROOT / "src")
        path = [p for p in [src, *os.environ.get("PYTHONPATH", "").split(os.pathsep)] if p]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1", **extra}

    def trainlab(self, *argv, python_prefix: str = "", timeout: float = 600, **popen):
        """`python -m trainlab ARGV`; with python_prefix, that code runs first in the same process
        (e.g. torch.use_deterministic_algorithms(True)), then trainlab's main."""
        argv = [str(a) for a in argv]
        if python_prefix:
            code = f"import sys; {python_prefix}; from trainlab.cli.main import main; sys.exit(main(sys.argv[1:]))"
            cmd = [sys.executable, "-c", code, *argv]
        else:
            cmd = [sys.executable, "-m", "trainlab", *argv]
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout, **popen)

    def data_args(self) -> list[str]:
        return ["--dataset", self.args.dataset] if self.args.dataset else []

    def train(self, name: str, model: str, *extra, epochs: int | None = None, python_prefix: str = "") -> dict:
        done = self.trainlab("train", "--model", model, "--epochs", epochs or self.epochs, "--device", self.device,
                             "--runs-dir", self.runs, "--name", name, "--quiet", *self.data_args(),
                             "--val-size", self.val_size, *extra, python_prefix=python_prefix)
        if done.returncode != 0:
            raise RuntimeError(f"train {name} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-800:]}")
        return self.epoch_figures(self.runs / name)

    def epoch_figures(self, run: Path) -> dict:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        results = json.loads((run / "results.json").read_text())
        seconds = [r["train_seconds"] for r in rows]
        steady = seconds[1:] or seconds  # the first epoch holds warm-up (and compile)
        return {"epochs": len(rows), "first_epoch_s": round(seconds[0], 3),
                "epoch_s_median": round(statistics.median(steady), 3),
                "samples_per_s": round(self.n_train / statistics.median(steady)),
                "val_acc": rows[-1].get("val_acc"), "precision": results.get("precision")}

    def step(self, fn) -> None:
        name = fn.__name__
        print(f"\n=== {name} ({time.strftime('%H:%M:%S')})", flush=True)
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:  # one failed step must not cost the rest of the machine's time
            self.failed.append(name)
            self.record(name, error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-1500:])
        print(f"--- {name}: {time.perf_counter() - t0:.1f} s", flush=True)

    # -- steps ----------------------------------------------------------------------------
    def machine(self) -> None:
        import platform

        import torch

        from trainlab.devices import pick_device
        from trainlab.training.precision import resolve_precision

        device = pick_device("auto")
        values = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                  "auto_device": str(device)}
        if torch.cuda.is_available():
            values.update(gpu=torch.cuda.get_device_name(), capability=torch.cuda.get_device_capability(),
                          bf16_supported=torch.cuda.is_bf16_supported())
        for model in ("mlp", "cnn-fast", "resnet"):
            chosen = resolve_precision("auto", torch.device(self.device), model)
            values[f"auto_precision_{model}"] = f"{chosen.name} ({chosen.reason})"
        self.record("machine", **values)

    def speed(self) -> None:
        variants = [("fp32", ["--precision", "32"]), ("tf32", ["--precision", "32", "--tf32"]),
                    ("bf16", ["--precision", "bf16-mixed"]), ("fp16", ["--precision", "16-mixed"]),
                    ("bf16-channels-last", ["--precision", "bf16-mixed", "--channels-last"]),
                    ("bf16-compile", ["--precision", "bf16-mixed", "--compile"])]
        models = [("mlp", []), ("cnn-fast", []), ("resnet", ["--model-kwarg", "width=8" if self.dry else "width=64"])]
        for model, kwargs in models:
            for label, flags in variants:
                if label == "bf16-channels-last" and model == "mlp":
                    continue  # NHWC means nothing to a fully connected model
                if self.dry and model != "mlp" and label != "bf16-channels-last":
                    continue  # on the CPU the mlp proves every flag; the others that their models build
                figures = self.train(f"speed-{model}-{label}", model, *kwargs, *flags,
                                     epochs=max(self.epochs, 2 if label.endswith("compile") else 1))
                if label.endswith("compile"):
                    figures["compile_and_first_epoch_s"] = figures.pop("first_epoch_s")
                self.record("speed", model=model, variant=label, **figures)

    def map_location(self) -> None:
        import torch

        from trainlab.api import load_model

        self.train("maploc", "mlp", "--precision", "32")
        for target in ("cpu", self.device):
            model, ckpt = load_model(self.runs / "maploc", map_location=target)
            stored = torch.load(self.runs / "maploc" / "checkpoints" / "last.pt", weights_only=True, mmap=True)
            first = next(iter(stored["model"].values()))
            self.record("map_location", trained_on=self.device, loaded_to=target, stored_device=str(first.device),
                        model_device=str(next(model.parameters()).device), epoch=ckpt.get("epoch"))

    def resume_bitwise(self) -> None:
        import torch

        from trainlab.store.schema import load_checkpoint

        deterministic = ("import os, torch; os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8'); "
                         "torch.use_deterministic_algorithms(True)")
        results = {}
        for label, prefix in (("deterministic", deterministic), ("default", "")):
            full, cut = f"full-{label}", f"cut-{label}"
            args = ["--model", "mlp" if self.dry else "cnn-fast", "--epochs", 2, "--seed", 1, "--device",
                    self.device, "--runs-dir", self.runs, "--quiet", "--precision", "16-mixed", *self.data_args(),
                    "--val-size", self.val_size]
            t0 = time.perf_counter()
            done = self.trainlab("train", *args, "--name", full, python_prefix=prefix)
            if done.returncode:
                raise RuntimeError(f"{full}: {done.stderr.strip()[-800:]}")
            seconds = time.perf_counter() - t0
            # the same run stopped by SIGTERM once its first epoch is written, then resumed
            code = (f"import sys; {prefix or 'pass'}; from trainlab.cli.main import main; "
                    "sys.exit(main(sys.argv[1:]))")
            proc = subprocess.Popen([sys.executable, "-c", code, "train", *map(str, args), "--name", cut],
                                    env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            metrics = self.runs / cut / "metrics.jsonl"
            while proc.poll() is None and not (metrics.is_file() and metrics.read_text().strip()):
                time.sleep(0.05)
            stopped_early = proc.poll() is None
            if stopped_early:
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=300)
            done = self.trainlab("resume", self.runs / cut, python_prefix=prefix)
            if done.returncode:
                raise RuntimeError(f"resume {cut}: {done.stderr.strip()[-800:]}")
            a = load_checkpoint(self.runs / full / "checkpoints" / "last.pt")["model"]
            b = load_checkpoint(self.runs / cut / "checkpoints" / "last.pt")["model"]
            diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
            results[label] = {"bitwise": all(torch.equal(a[k], b[k]) for k in a), "max_abs_diff": diff,
                              "interrupted": stopped_early, "exit_on_sigterm": proc.returncode,
                              "two_epochs_s": round(seconds, 2)}
            self.record("resume_bitwise", mode=label, **results[label])
        # the same seed with and without deterministic algorithms: how far apart they land
        a = load_checkpoint(self.runs / "full-deterministic" / "checkpoints" / "last.pt")["model"]
        b = load_checkpoint(self.runs / "full-default" / "checkpoints" / "last.pt")["model"]
        self.record("deterministic_vs_default", max_abs_diff=max(float((a[k].double() - b[k].double()).abs().max())
                                                                  for k in a if a[k].is_floating_point()),
                    time_ratio=round(results["deterministic"]["two_epochs_s"] / results["default"]["two_epochs_s"], 3))

    def bench_device(self) -> None:
        for model, batch in (("cnn-fast", 256), ("mlp", 64)):
            done = self.trainlab("bench-device", "--model", model, "--batch-size", batch,
                                 *(["--steps", "3"] if self.dry else []))
            if done.returncode:
                raise RuntimeError(f"bench-device {model}: {done.stderr.strip()[-800:]}")
            self.record("bench_device", model=model, batch=batch, output=done.stdout.strip().splitlines()[-6:])

    def time_to_accuracy(self) -> None:
        script = ROOT / "benchmarks" / "time_to_accuracy.py"
        runs = ([["--quick", "--models", "mlp"]] if self.dry else
                [["--models", "cnn-fast", "--seeds", "3", "--epochs-list", "5,10", "--textbook-seeds", "1"],
                 ["--models", "resnet", "--no-textbook", "--seeds", "3", "--epochs-list", "10",
                  "--set", 'model_kwargs={"width":64}']])
        for i, extra in enumerate(runs):
            path = self.out / f"tta_{i}.json"
            done = subprocess.run([sys.executable, str(script), *extra, "--json", str(path)], env=self.env(),
                                  capture_output=True, text=True, timeout=900)
            if done.returncode:
                raise RuntimeError(f"time_to_accuracy {extra}: {done.stderr.strip()[-800:]}")
            self.record("time_to_accuracy", args=extra, table=done.stdout.strip().splitlines()[-12:])

    STEPS = ("machine", "map_location", "resume_bitwise", "bench_device", "speed", "time_to_accuracy")

    def run(self) -> int:
        try:
            for name in self.STEPS:
                if not self.args.only or name in self.args.only:
                    self.step(getattr(self, name))
        finally:
            shutil.rmtree(self.runs, ignore_errors=True)
        self.record("done", failed=self.failed)
        return 1 if self.failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="every step on the CPU, tiny settings (the CI test)")
    ap.add_argument("--dataset", help="a trainlab --dataset value (default: fashion-mnist)")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="where the JSON lines go")
    ap.add_argument("--only", nargs="*", choices=Check.STEPS, help="run only these steps")
    return Check(ap.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
