"""Precision policy: `--precision auto|32|16-mixed|bf16-mixed`.

16-mixed  autocast to float16 + GradScaler (loss scaling keeps small gradients from
          underflowing to zero in float16). Works on CPU too in torch >= 2.4, but slowly.
bf16-mixed autocast to bfloat16: float32's exponent range, so no scaler is needed.
32        plain float32.
auto      CUDA: bf16-mixed where the GPU supports it, else 16-mixed. MPS: 32. CPU: bf16-mixed
          only for models measured to gain from it on a CPU with fast bf16 (avx512_bf16 or
          AMX), else 32 (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainlab.errors import ConfigError
from trainlab.recipes import PRECISIONS

# Models whose CPU bf16 autocast was measured faster at equal accuracy (benchmarks/RESULTS.md;
# 2-core EPYC with avx512_bf16, torch 2.13): step time 1.5-2.9x shorter. Final accuracy, same
# schedule, bf16 vs fp32: mlp test 90.37 vs 90.50 (seeds 0-2, bs 512, 10 epochs; val 90.33 vs
# 90.33; at equal *time* bf16 trains twice the epochs and wins), mlp-reg 90.59 vs 90.60 (seeds
# 0-2), cnn-fast 93.16 vs 93.20 (seed 0), cnn val 93.21 vs 93.23 / test 93.38 vs 93.48 (seeds
# 0-2, 10 epochs, 1.5x faster: 52.9 vs 79.0 s).
CPU_BF16_MEASURED_HELPS: set[str] = {"mlp", "mlp-reg", "cnn", "cnn-fast"}


@dataclass(frozen=True)
class Precision:
    name: str  # "32", "16-mixed" or "bf16-mixed"
    reason: str = ""

    @property
    def autocast_dtype(self):
        return {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(self.name)

    @property
    def uses_scaler(self) -> bool:
        return self.name == "16-mixed"

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        # A disabled scaler is a pass-through, so the loop has one code path.
        return torch.amp.GradScaler(device.type, enabled=self.uses_scaler)


def cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def resolve_precision(requested: str, device: torch.device, model_name: str = "") -> Precision:
    if requested not in PRECISIONS:
        raise ConfigError(f"precision = {requested!r} is invalid: choose one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        if requested == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("precision bf16-mixed needs a GPU with bfloat16 support; use 16-mixed")
        return Precision(requested, "asked for")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16-mixed", "auto: this GPU supports bfloat16")
        return Precision("16-mixed", "auto: this GPU lacks bfloat16, float16 with loss scaling")
    if device.type == "cpu" and cpu_has_fast_bf16() and model_name in CPU_BF16_MEASURED_HELPS:
        return Precision("bf16-mixed", f"auto: fast bf16 CPU and measured gain for {model_name}")
    return Precision("32", f"auto: float32 on {device.type}"
                     + (" (no measured bf16 gain for this model)" if device.type == "cpu" else ""))
