"""Batch transforms: callables on a whole training batch and its labels, on the device.

A transform is `t(x, y, generator) -> (x, y)`. fit() applies them in order to each training
batch (after the loader's augmentation) and hands each the same torch.Generator, seeded anew
for every batch from (seed, epoch, step, rank): a batch draws the same numbers whether the run
went straight through or was resumed mid-epoch, with no state to save. A transform may return
soft targets, N x C float class probabilities (rows summing to 1), which nn.CrossEntropyLoss
takes as they are (its label smoothing is then applied to them: t * (1 - s) + s / C).

Built-in: mixup and cutmix (MixCut), with per-image weights from Beta(alpha, alpha) drawn as
tensors (no per-sample Python; torch's Beta sampler takes no generator, so the Gamma draws
are written here).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from trainlab.data.loader import derive_seed
from trainlab.errors import ConfigError

BatchTransform = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]

_TRANSFORM_SALT = 0x5EED_0004  # a stream of its own (the loader's order and augmentation use 1, 2)
_GAMMA_TRIES = 16  # candidates per draw: each is accepted with p >= 0.95, so all 16 fail < 1e-20


def check_transforms(transforms) -> tuple[BatchTransform, ...]:
    """The transforms as a tuple, each checked to be callable (before any run starts)."""
    if transforms is None:
        return ()
    if callable(transforms) or isinstance(transforms, (str, bytes)):
        raise ConfigError("transforms= takes a list of callables t(x, y, generator) -> (x, y), "
                          f"not one {type(transforms).__name__}: wrap it in a list")
    out = tuple(transforms)
    for t in out:
        if not callable(t):
            raise ConfigError(f"transforms= holds a {type(t).__name__}, which cannot be called: each must be "
                              "a callable t(x, y, generator) -> (x, y)")
    return out


def batch_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The seed of one batch's generator."""
    return derive_seed(seed, epoch, step, rank, _TRANSFORM_SALT)


def _name(t) -> str:
    return getattr(t, "__name__", type(t).__name__)


def apply_transforms(transforms: Sequence[BatchTransform], x: torch.Tensor, y: torch.Tensor,
                     g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each transform in turn; what one returns is checked (shapes are host metadata: no sync)."""
    n = x.shape[0]
    for t in transforms:
        out = t(x, y, g)
        if not (isinstance(out, (tuple, list)) and len(out) == 2
                and all(isinstance(v, torch.Tensor) for v in out)):
            raise ConfigError(f"the batch transform {_name(t)} returned {type(out).__name__}, not (images, labels): "
                              "a transform must return a pair of tensors")
        nx, ny = out
        if nx.shape != x.shape or nx.dtype != x.dtype or nx.device != x.device:
            raise ConfigError(f"the batch transform {_name(t)} returned images of shape {tuple(nx.shape)} "
                              f"({nx.dtype}, {nx.device}) for a batch of shape {tuple(x.shape)} ({x.dtype}, "
                              f"{x.device}): a transform may change the values, not the shape, dtype or device")
        if ny.device != x.device:
            raise ConfigError(f"the batch transform {_name(t)} returned labels on {ny.device} for a batch on "
                              f"{x.device}: keep them on the batch's device")
        soft = ny.dim() == 2 and ny.is_floating_point()
        if not ((ny.dim() == 1 and not ny.is_floating_point()) or soft) or ny.shape[0] != n:
            raise ConfigError(f"the batch transform {_name(t)} returned labels of shape {tuple(ny.shape)} "
                              f"({ny.dtype}) for {n} images: return class indices (N,) or class "
                              "probabilities (N, classes) as floats")
        x, y = nx, ny
    return x, y


def check_soft_targets(y: torch.Tensor, out: torch.Tensor) -> None:
    """Soft targets must have a column per class the model outputs."""
    if y.dim() == 2 and y.shape != out.shape:
        raise ConfigError(f"the batch transforms returned soft targets of shape {tuple(y.shape)} but the model "
                          f"gives {tuple(out.shape)}: give the transform the data's number of classes")


def hard_labels(y: torch.Tensor) -> torch.Tensor:
    """Class indices: soft targets count as their most likely class (for training accuracy)."""
    return y.argmax(1) if y.dim() == 2 else y


def sample_gamma(a: float, n: int, g: torch.Generator, device) -> torch.Tensor:
    """n draws of Gamma(a, 1) (Marsaglia and Tsang, 2000), all candidates drawn at once: the
    first accepted of _GAMMA_TRIES per draw is kept. a < 1: Gamma(a+1) * U^(1/a)."""
    boost = a < 1
    d = (a + 1 if boost else a) - 1 / 3
    c = 1 / math.sqrt(9 * d)
    z = torch.randn(n, _GAMMA_TRIES, device=device, generator=g)
    u = torch.rand(n, _GAMMA_TRIES, device=device, generator=g)
    v = (1 + c * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-30)))
    first = ok.float().argmax(1, keepdim=True)  # argmax gives the first of equal maxima
    draw = torch.where(ok.any(1), d * v.gather(1, first).squeeze(1), torch.full_like(z[:, 0], d))
    if boost:
        draw = draw * torch.rand(n, device=device, generator=g) ** (1 / a)
    return draw


def sample_beta(alpha: float, n: int, g: torch.Generator, device) -> torch.Tensor:
    """n draws of Beta(alpha, alpha) as G1 / (G1 + G2)."""
    g1, g2 = sample_gamma(alpha, n, g, device), sample_gamma(alpha, n, g, device)
    total = g1 + g2
    return torch.where(total > 0, g1 / total.clamp_min(1e-30), torch.full_like(total, 0.5))


def as_probabilities(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return y if y.dim() == 2 else torch.nn.functional.one_hot(y, num_classes).float()


def _boxes(lam: torch.Tensor, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """Per image a box of about (1 - lam) of its area, centred uniformly and cut by the frame
    (cutmix): an n x h x w mask."""
    n, dev = lam.shape[0], lam.device
    side = torch.sqrt(1 - lam)
    bh, bw = (side * h).round().long(), (side * w).round().long()
    cy = (torch.rand(n, device=dev, generator=g) * h).long()
    cx = (torch.rand(n, device=dev, generator=g) * w).long()
    y0, y1 = (cy - bh // 2).clamp(0, h), (cy - bh // 2 + bh).clamp(0, h)
    x0, x1 = (cx - bw // 2).clamp(0, w), (cx - bw // 2 + bw).clamp(0, w)
    ys, xs = torch.arange(h, device=dev)[None], torch.arange(w, device=dev)[None]
    in_y = (ys >= y0[:, None]) & (ys < y1[:, None])
    in_x = (xs >= x0[:, None]) & (xs < x1[:, None])
    return in_y[:, :, None] & in_x[:, None, :]


class MixCut:
    """Mixup and/or cutmix as one batch transform. Each image is paired with another of the batch
    (one random permutation) and gets its own weight lam ~ Beta(alpha, alpha): mixup blends the
    pixels lam : 1 - lam; cutmix pastes the partner's pixels into a box of about 1 - lam of the
    area (lam is then the share of pixels kept). With both on, each image takes one of the two
    at random. The targets are mixed by the same lam (soft targets; their rows sum to 1)."""

    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0):
        if num_classes < 1 or (mixup <= 0 and cutmix <= 0):
            raise ValueError("MixCut needs num_classes >= 1 and mixup or cutmix > 0")
        self.num_classes, self.mixup, self.cutmix = num_classes, mixup, cutmix

    def __call__(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        dev = x.device
        perm = torch.randperm(n, device=dev, generator=g)
        other = x[perm]
        shape = (n, 1, 1, 1)
        if self.mixup > 0:
            lam_m = sample_beta(self.mixup, n, g, dev)
            mixed = torch.lerp(other, x, lam_m.to(x.dtype).view(shape))
            lam = lam_m
        if self.cutmix > 0:
            box = _boxes(sample_beta(self.cutmix, n, g, dev), h, w, g)
            cut = torch.where(box[:, None], other, x)
            lam_c = 1 - box.flatten(1).float().mean(1)  # the pixels kept, after the frame cut the box
            if self.mixup > 0:
                pick_cut = torch.rand(n, device=dev, generator=g) < 0.5
                mixed = torch.where(pick_cut.view(shape), cut, mixed)
                lam = torch.where(pick_cut, lam_c, lam_m)
            else:
                mixed, lam = cut, lam_c
        t = as_probabilities(y, self.num_classes)
        lam = lam.to(t.dtype)[:, None]
        return mixed, lam * t + (1 - lam) * t[perm]
