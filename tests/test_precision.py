"""The precision policy: what auto chooses, fp16/bf16 autocast on CPU, the scaler round trip."""

import pytest
import torch

from trainlab.config import resolve
from trainlab.errors import ConfigError
from trainlab.training import precision as P
from trainlab.training.session import train


def test_auto_on_cpu_is_float32_unless_bf16_was_measured_to_help(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(P, "CPU_BF16_MEASURED_HELPS", {"cnn-fast"})
    assert P.resolve_precision("auto", cpu, "mlp").name == "32"
    chosen = P.resolve_precision("auto", cpu, "cnn-fast")
    assert chosen.name == "bf16-mixed" and "measured" in chosen.reason
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: False)
    assert P.resolve_precision("auto", cpu, "cnn-fast").name == "32"


def test_auto_on_cuda_prefers_bf16_then_fp16(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert P.resolve_precision("auto", cuda).name == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    chosen = P.resolve_precision("auto", cuda)
    assert chosen.name == "16-mixed" and chosen.uses_scaler
    with pytest.raises(ConfigError, match="bfloat16"):
        P.resolve_precision("bf16-mixed", cuda)


def test_explicit_choices_and_bad_value():
    cpu = torch.device("cpu")
    assert P.resolve_precision("16-mixed", cpu).autocast_dtype == torch.float16
    assert P.resolve_precision("bf16-mixed", cpu).autocast_dtype == torch.bfloat16
    assert not P.resolve_precision("bf16-mixed", cpu).uses_scaler
    with pytest.raises(ConfigError, match="precision"):
        P.resolve_precision("fp8", cpu)
    with pytest.raises(ConfigError, match="precision"):
        resolve({"precision": "half"})


def test_float16_underflow_is_why_the_scaler_exists():
    assert torch.tensor(1e-8, dtype=torch.float16) == 0
    assert torch.tensor(1e-8 * 65536, dtype=torch.float16) > 0


@pytest.mark.parametrize("name,dtype", [("16-mixed", torch.float16), ("bf16-mixed", torch.bfloat16)])
def test_autocast_runs_matmuls_in_low_precision_on_cpu(name, dtype):
    p = P.Precision(name)
    layer = torch.nn.Linear(4, 3)
    with p.autocast(torch.device("cpu")):
        out = layer(torch.randn(2, 4))
    assert out.dtype == dtype


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_training_learns_on_cpu(tiny_data, tmp_path, precision):
    result = train(resolve({"model": "mlp", "precision": precision, "epochs": 3, "batch_size": 32,
                            "val_size": 100, "quiet": True, "runs_dir": str(tmp_path)}),
                   data=tiny_data, progress=False)
    assert result.results["precision"] == precision
    assert result.test_accuracy > 0.5  # chance is 0.1


def test_scaler_state_round_trips_through_a_checkpoint(tiny_data, tmp_path):
    from trainlab.store.checkpoint import load_checkpoint

    train(resolve({"model": "mlp", "precision": "16-mixed", "epochs": 1, "batch_size": 32,
                   "val_size": 100, "quiet": True, "runs_dir": str(tmp_path), "name": "r"}),
          data=tiny_data, progress=False)
    saved = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["scaler"]
    scaler = torch.amp.GradScaler("cpu")
    scaler.load_state_dict(saved)
    assert scaler.state_dict() == saved
    assert saved["scale"] <= 65536.0  # halves on skipped steps, grows every 2000 good ones
