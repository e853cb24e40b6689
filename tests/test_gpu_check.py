"""benchmarks/gpu_check.sh --dry-run: every Python step of the GPU check runs on this CPU with
tiny settings, so a stale import, flag or file name fails here, not first on a lent GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import SRC, write_idx_folder

SCRIPT = SRC.parent / "benchmarks" / "gpu_check.sh"


def test_the_gpu_check_dry_run_runs_every_step_on_the_cpu(tmp_path):
    data = write_idx_folder(tmp_path / "idx", n_train=400, n_test=100)
    out = tmp_path / "out"
    env = {**os.environ, "PY": sys.executable, "OUT": str(out), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--dataset", f"idx:{data}"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    steps = {r["step"] for r in rows}
    assert {"machine", "map_location", "resume_bitwise", "deterministic_vs_default", "bench_device", "speed",
            "time_to_accuracy"} <= steps
    assert rows[-1] == {"step": "done", "failed": []}
    assert (out / "gpu_check.log").is_file()
    speed = {(r["model"], r["variant"]) for r in rows if r["step"] == "speed"}
    assert {("mlp", v) for v in ("fp32", "tf32", "bf16", "fp16", "bf16-compile")} <= speed
    assert {("cnn-fast", "bf16-channels-last"), ("resnet", "bf16-channels-last")} <= speed
    assert all(r["samples_per_s"] > 0 for r in rows if r["step"] == "speed")
    assert all(r["bitwise"] for r in rows if r["step"] == "resume_bitwise")


def test_a_failing_step_is_recorded_and_the_check_goes_on(tmp_path):
    """A step that fails (here: a data set that does not exist) is written down with its error,
    the later steps still run, and the exit code says something failed."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(SCRIPT.with_suffix(".py")), "--dry-run", "--out", str(out),
                           "--dataset", f"idx:{tmp_path / 'missing'}", "--only", "machine", "map_location"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    rows = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == ["machine", "map_location", "done"]
    assert "error" in rows[1] and rows[-1]["failed"] == ["map_location"]
    assert not list(Path(tmp_path).glob("gpu-check-runs-*"))  # its temporary runs folder removed
