"""bench-device: the recommendation is computed from timings (injected here), never guessed."""

import torch

from trainlab.analysis.bench_device import Timing, recommend, time_steps
from trainlab.cli.main import main


def test_no_gpu_reports_cpu_figures():
    text = recommend([Timing("cpu", "resident", 4.0, 0.0)], parameters=235_146, batch_size=256)
    assert text.startswith("No GPU found")
    assert "model size" in text and "batch size" in text and "transfer" in text


def test_gpu_that_is_not_faster_is_not_recommended():
    t = [Timing("cpu", "resident", 2.0, 0.0), Timing("cuda", "textbook", 2.5, 0.8),
         Timing("cuda", "resident", 1.9, 0.0)]
    text = recommend(t, parameters=100_000, batch_size=64)
    assert "does not help" in text and "small" in text


def test_fast_gpu_with_costly_copies_recommends_resident_data():
    t = [Timing("cpu", "resident", 80.0, 0.0), Timing("cuda", "textbook", 6.0, 3.0),
         Timing("cuda", "resident", 2.0, 0.0)]
    text = recommend(t, parameters=5_000_000, batch_size=512)
    assert "Use the GPU" in text and "40.0x" in text
    assert "Keep the data resident" in text and "50%" in text


def test_time_steps_measures_on_cpu():
    t = time_steps("mlp", 32, "cpu", "resident", steps=3, warmup=1)
    assert t.ms_per_step > 0 and t.transfer_ms == 0


def test_cli_prints_table_and_advice(capsys):
    torch.set_num_threads(1)
    assert main(["bench-device", "--model", "mlp", "--batch-size", "32", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "ms/step" in out
    assert ("cuda" in out) if torch.cuda.is_available() else ("No GPU found" in out)
