"""Batched on-device augmentation: each op transforms a whole batch with tensor ops.

No per-sample Python: random choices are drawn as tensors from one generator (seeded per
epoch by the DeviceLoader, so an epoch replays exactly on resume). Images arrive
normalized, so "black" padding is each image's own minimum, not 0.
"""

from __future__ import annotations

import torch


def random_translate(x: torch.Tensor, pixels: int, g: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `pixels` in x and y (pad with the background, then crop)."""
    if pixels <= 0:
        return x
    n, c, h, w = x.shape
    fill = x.amin(dim=(1, 2, 3), keepdim=True)
    padded = torch.nn.functional.pad(x - fill, (pixels, pixels, pixels, pixels)) + fill
    dx = torch.randint(0, 2 * pixels + 1, (n,), device=x.device, generator=g)
    dy = torch.randint(0, 2 * pixels + 1, (n,), device=x.device, generator=g)
    # Gather rows then columns with per-image offsets: two index ops for the whole batch.
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])  # n,h
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])  # n,w
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pixels))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def random_hflip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device, generator=g) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_erase(x: torch.Tensor, p: float, g: torch.Generator, max_frac: float = 0.4) -> torch.Tensor:
    """With probability p per image, set a random rectangle (up to max_frac of each side) to 0
    (the data mean after normalization)."""
    if p <= 0:
        return x
    n, _, h, w = x.shape
    dev = x.device
    apply = torch.rand(n, device=dev, generator=g) < p
    eh = (torch.rand(n, device=dev, generator=g) * max_frac * h).long() + 1
    ew = (torch.rand(n, device=dev, generator=g) * max_frac * w).long() + 1
    y0 = (torch.rand(n, device=dev, generator=g) * (h - eh + 1)).long()
    x0 = (torch.rand(n, device=dev, generator=g) * (w - ew + 1)).long()
    ys = torch.arange(h, device=dev)[None]
    xs = torch.arange(w, device=dev)[None]
    in_y = (ys >= y0[:, None]) & (ys < (y0 + eh)[:, None])  # n,h
    in_x = (xs >= x0[:, None]) & (xs < (x0 + ew)[:, None])  # n,w
    mask = (in_y[:, :, None] & in_x[:, None, :] & apply[:, None, None])[:, None]
    return x.masked_fill(mask, 0.0)


class Augment:
    """The recipe's augmentation as one callable(batch, generator) for the DeviceLoader."""

    def __init__(self, translate: int = 0, hflip: bool = False, erase: float = 0.0):
        self.translate, self.hflip, self.erase = translate, hflip, erase

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.translate:
            x = random_translate(x, self.translate, g)
        if self.hflip:
            x = random_hflip(x, g)
        if self.erase:
            x = random_erase(x, self.erase, g)
        return x
