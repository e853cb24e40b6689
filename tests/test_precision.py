"""The precision policy: what auto chooses, fp16/bf16 autocast on CPU, the scaler round trip."""

import math

import pytest
import torch
from conftest import train_tiny

from trainlab.config import resolve
from trainlab.errors import ConfigError
from trainlab.training import precision as P


def test_auto_on_cpu_is_float32_unless_bf16_was_measured_to_help(monkeypatch):
    """bf16 only on a CPU with fast bf16 and for a model registered with cpu_bf16 (measured)."""
    from trainlab import models

    cpu = torch.device("cpu")
    assert models.info("mlp").cpu_bf16 and not models.info("resnet").cpu_bf16
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: True)
    chosen = P.resolve_precision("auto", cpu, "mlp")
    assert chosen.name == "bf16-mixed" and "measured" in chosen.reason
    assert P.resolve_precision("auto", cpu, "resnet").name == "32"  # registered, never measured faster
    assert P.resolve_precision("auto", cpu, "mypkg.nets:make").name == "32"  # an import path: unknown
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: False)
    chosen = P.resolve_precision("auto", cpu, "mlp")
    assert chosen.name == "32" and "float32" in chosen.reason


@pytest.mark.parametrize("capability,expected", [((7, 0), "16-mixed"), ((7, 5), "16-mixed"),
                                                  ((8, 0), "bf16-mixed"), ((9, 0), "bf16-mixed")])
def test_auto_on_cuda_takes_bf16_only_where_the_gpu_has_it_in_hardware(monkeypatch, capability, expected):
    """V100 (7.0) and T4 (7.5) report is_bf16_supported() True (emulated, slow): float16 + scaler
    there; A100 (8.0) and H100 (9.0) get bfloat16."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    chosen = P.resolve_precision("auto", cuda)
    assert chosen.name == expected and chosen.uses_scaler == (expected == "16-mixed")
    if expected == "16-mixed":
        assert f"{capability[0]}.{capability[1]}" in chosen.reason
        asked = P.resolve_precision("bf16-mixed", cuda)  # still the user's choice, said to be slower
        assert asked.name == "bf16-mixed" and "emulated" in asked.reason


def test_bf16_on_a_cuda_gpu_without_it_is_refused(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (6, 1))
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


def test_the_fp16_scaler_keeps_small_gradients_from_underflowing():
    cpu = torch.device("cpu")
    small = torch.tensor(1e-8)
    assert small.half() == 0  # float16 flushes it: why 16-mixed needs a loss scaler
    scaler = P.Precision("16-mixed").scaler(cpu)
    assert scaler.is_enabled() and scaler.get_scale() == 65536.0
    assert scaler.scale(small).half() > 0
    for name in ("bf16-mixed", "32"):  # bfloat16 has float32's range: no scaler, a pass-through
        off = P.Precision(name).scaler(cpu)
        assert not off.is_enabled() and off.scale(small) is small


@pytest.mark.parametrize("name,dtype", [("16-mixed", torch.float16), ("bf16-mixed", torch.bfloat16)])
def test_autocast_runs_matmuls_in_low_precision_on_cpu(name, dtype):
    p = P.Precision(name)
    layer = torch.nn.Linear(4, 3)
    with p.autocast(torch.device("cpu")):
        out = layer(torch.randn(2, 4))
    assert out.dtype == dtype


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_training_learns_on_cpu(tiny_data, tmp_path, precision):
    result = train_tiny(tmp_path, tiny_data, precision=precision, epochs=3)
    assert result.results["precision"] == precision
    assert result.test_accuracy > 0.5  # chance is 0.1


def test_scaler_state_round_trips_through_a_checkpoint(tiny_data, tmp_path, monkeypatch):
    """The float16 loss scaler's state is saved in last.pt and restored by resume."""
    from trainlab import resume
    from trainlab.store.schema import load_checkpoint

    train_tiny(tmp_path, tiny_data, precision="16-mixed", epochs=1, name="r")
    saved = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["scaler"]
    assert {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"} <= set(saved)
    # it starts at 65536 and only halves (a skipped step) within 2000 steps: 65536 / 2**k
    assert saved["scale"] > 0 and math.log2(65536 / saved["scale"]) % 1 == 0
    loaded = []
    real = torch.amp.GradScaler.load_state_dict

    def spy(self, state):
        loaded.append(dict(state))
        return real(self, state)

    monkeypatch.setattr(torch.amp.GradScaler, "load_state_dict", spy)
    result = resume(tmp_path / "r", epochs=2, data=tiny_data, progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert loaded == [saved]  # the resumed run's scaler continues from the saved state
