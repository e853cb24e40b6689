"""Precision policy: `--precision auto|32|16-mixed|bf16-mixed`.

16-mixed  autocast to float16 + GradScaler (loss scaling keeps small gradients from
          underflowing to zero in float16). Works on CPU too in torch >= 2.4, but slowly.
bf16-mixed autocast to bfloat16: float32's exponent range, so no scaler is needed.
32        plain float32.
auto      CUDA: bf16-mixed where the GPU has bfloat16 in hardware (compute capability >= 8.0,
          Ampere on), else 16-mixed. MPS: 32. CPU: bf16-mixed
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


def cuda_has_native_bf16(device: torch.device) -> bool:
    """bfloat16 in hardware: compute capability 8.0 or later. `torch.cuda.is_bf16_supported()`
    alone also says True on 7.x GPUs (T4, V100), where bfloat16 is emulated and slower than float16."""
    major, _minor = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve_precision(requested: str, device: torch.device, model_name: str = "") -> Precision:
    if requested not in PRECISIONS:
        raise ConfigError(f"precision = {requested!r} is invalid: choose one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        if requested == "bf16-mixed" and device.type == "cuda":
            if not torch.cuda.is_bf16_supported():
                raise ConfigError("precision bf16-mixed needs a GPU with bfloat16 support; use 16-mixed")
            if not cuda_has_native_bf16(device):
                return Precision(requested, "asked for (emulated on this GPU: 16-mixed is faster here)")
        return Precision(requested, "asked for")
    if device.type == "cuda":
        if cuda_has_native_bf16(device):
            return Precision("bf16-mixed", "auto: this GPU has bfloat16 in hardware")
        major, minor = torch.cuda.get_device_capability(device)
        return Precision("16-mixed", f"auto: no native bfloat16 on this GPU (compute capability {major}.{minor} "
                                     "< 8.0): float16 with loss scaling")
    if device.type == "cpu" and cpu_has_fast_bf16() and models.info(model_name).cpu_bf16:
        return Precision("bf16-mixed", f"auto: fast bf16 CPU and measured gain for {model_name}")
    return Precision("32", f"auto: float32 on {device.type}"
                     + (" (no measured bf16 gain for this model)" if device.type == "cpu" else ""))
