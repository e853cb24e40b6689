"""End to end on the real data: one epoch of the baseline, from the library and the CLI."""

from conftest import run_cli

from trainlab import train
from trainlab.config import resolve


def test_one_epoch_on_real_data(real_data_dir, tmp_path):
    cfg = resolve({"model": "mlp", "recipe": "textbook", "epochs": 1, "runs_dir": str(tmp_path),
                   "quiet": True, "threads": 1})
    result = train(cfg, progress=False)
    assert result.test["n"] == 10000
    assert result.test_accuracy > 0.80  # one textbook epoch of the MLP reaches ~84%
    assert len(result.test["per_class"]) == 10
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"config.toml", "meta.json", "metrics.jsonl", "results.json", "model.pt"} <= files


def test_cli_exit_code_and_no_traceback_for_bad_config(tmp_path):
    proc = run_cli("train", "--lr", "-1", "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert proc.returncode == 2
    assert "lr = -1.0 is invalid" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was written
