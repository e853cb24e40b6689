"""Precision policy: `--precision auto|32|16-mixed|bf16-mixed`.

16-mixed  autocast to float16 + GradScaler (loss scaling keeps small gradients from
          underflowing to zero in float16). Works on CPU too in torch >= 2.4, but slowly.
bf16-mixed autocast to bfloat16: float32's exponent range, so no scaler is needed.
32        plain float32.
auto      CUDA: bf16-mixed where the GPU supports it, else 16-mixed. MPS: 32. CPU: bf16-mixed
          only for models registered with cpu_bf16=True (measured to gain from it on a CPU
          with fast bf16: avx512_bf16 or AMX; see trainlab.models), else 32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainlab import models
from trainlab.errors import ConfigError
from trainlab.recipes import PRECISIONS


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
    if device.type == "cpu" and cpu_has_fast_bf16() and models.info(model_name).cpu_bf16:
        return Precision("bf16-mixed", f"auto: fast bf16 CPU and measured gain for {model_name}")
    return Precision("32", f"auto: float32 on {device.type}"
                     + (" (no measured bf16 gain for this model)" if device.type == "cpu" else ""))
