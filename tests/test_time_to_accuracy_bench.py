"""Smoke test: benchmarks/time_to_accuracy.py --quick runs end to end on tiny synthetic data."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "time_to_accuracy.py"


def test_quick_run_prints_the_tables_and_writes_json(tmp_path):
    out_json = tmp_path / "tta.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--threads", "1", "--json", str(out_json)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for needle in ("machine: CPU", "torch threads", "load average", "seeds:",
                   "## textbook reference", "## trainlab mlp", "## trainlab cnn-fast", "time to"):
        assert needle in text, needle
    report = json.loads(out_json.read_text())
    assert set(report["textbook"]) == {"mlp", "cnn"}  # cnn-fast is compared with the textbook cnn
    for name in ("mlp", "cnn-fast"):
        rows = report["trainlab"][name]["rows"]
        assert [r["epochs"] for r in rows] == [1, 2]
        for r in rows:
            assert len(r["runs"]) == 1 and r["train_s"][0] > 0
            assert 0 <= r["test_acc"][0] <= 1 and r["speedup"] > 0
            assert len(r["runs"][0]["epoch_s"]) == r["epochs"]  # a complete fixed schedule
    assert report["machine"]["torch"] and report["machine"]["cores"]


def test_quick_run_with_the_lightning_peer(tmp_path):
    import pytest

    pytest.importorskip("lightning")  # the peer is optional (the test extra installs it)
    out_json = tmp_path / "tta.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--threads", "1", "--models", "mlp", "--lightning",
                           "--json", str(out_json)], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## peer: Lightning Trainer" in proc.stdout
    peer = json.loads(out_json.read_text())["lightning"]["mlp"]
    run = peer["runs"][0]
    assert run["import_s"] > 0 and len(run["epoch_s"]) == 1 and 0 <= run["test_acc"] <= 1
    assert not [p for p in tmp_path.iterdir() if p.name != "tta.json"]  # no lightning_logs, no checkpoints
