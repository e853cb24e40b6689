"""Batched on-device augmentation: each op transforms a whole batch with tensor ops.

No per-sample Python: random choices are drawn as tensors from one generator (seeded per
epoch by the DeviceLoader, so an epoch replays exactly on resume). Images arrive
normalized, so "black" padding is each image's own minimum, not 0. These ops touch the
images alone; the ones that mix labels too (mixup, cutmix) are batch transforms
(trainlab.data.batch_transforms), applied by the training step.
"""

from __future__ import annotations

import math

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


def random_resized_crop(x: torch.Tensor, scale_min: float, g: torch.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Crop each image to a random box of area fraction U(scale_min, 1) and aspect ratio
    log-uniform in `ratio`, inside the image, and resize it back (bilinear): one affine grid
    and one grid_sample for the whole batch."""
    if scale_min <= 0:
        return x
    n, c, h, w = x.shape
    dev = x.device
    area = scale_min + (1 - scale_min) * torch.rand(n, device=dev, generator=g)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, device=dev, generator=g))
    # width and height as fractions of the image's; a side that would leave the frame is cut to
    # it and the other side widened so the area stays what was drawn
    sw = torch.sqrt(area * aspect).clamp(max=1.0)
    sh = (area / sw).clamp(max=1.0)
    sw = area / sh
    tx = (2 * torch.rand(n, device=dev, generator=g) - 1) * (1 - sw)  # the box's centre, box inside
    ty = (2 * torch.rand(n, device=dev, generator=g) - 1) * (1 - sh)
    zero = torch.zeros_like(sw)
    theta = torch.stack([torch.stack([sw, zero, tx], 1), torch.stack([zero, sh, ty], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta.to(x.dtype), [n, c, h, w], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, g: torch.Generator,
                 black: torch.Tensor | None = None, white: torch.Tensor | None = None) -> torch.Tensor:
    """Per image, scale the intensity by U(1-brightness, 1+brightness) (towards black: the
    normalized value of a 0 pixel) and then stretch its contrast by U(1-contrast, 1+contrast)
    about its own mean per channel; values are clamped to [black, white]. black / white: one
    value per channel (normalized 0 and 255); None: each image's own minimum / maximum."""
    if brightness <= 0 and contrast <= 0:
        return x
    n = x.shape[0]
    dev = x.device
    black = x.amin(dim=(1, 2, 3), keepdim=True) if black is None else black.to(dev, x.dtype)
    white = x.amax(dim=(1, 2, 3), keepdim=True) if white is None else white.to(dev, x.dtype)
    if brightness > 0:
        f = 1 + brightness * (2 * torch.rand(n, 1, 1, 1, device=dev, generator=g) - 1)
        x = black + f * (x - black)
    if contrast > 0:
        f = 1 + contrast * (2 * torch.rand(n, 1, 1, 1, device=dev, generator=g) - 1)
        mean = x.mean(dim=(2, 3), keepdim=True)
        x = mean + f * (x - mean)
    return torch.maximum(torch.minimum(x, white), black)


class Augment:
    """The recipe's augmentation as one callable(batch, generator) for the DeviceLoader. The
    order: crop, shift, flip, jitter, erase (an erased patch stays the data mean). An op that
    is off draws nothing, so turning a new op on leaves the others' draws as they were."""

    def __init__(self, translate: int = 0, hflip: bool = False, erase: float = 0.0, rrc: float = 0.0,
                 brightness: float = 0.0, contrast: float = 0.0,
                 black: torch.Tensor | None = None, white: torch.Tensor | None = None):
        self.translate, self.hflip, self.erase = translate, hflip, erase
        self.rrc, self.brightness, self.contrast = rrc, brightness, contrast
        self.black, self.white = black, white

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.rrc:
            x = random_resized_crop(x, self.rrc, g)
        if self.translate:
            x = random_translate(x, self.translate, g)
        if self.hflip:
            x = random_hflip(x, g)
        if self.brightness or self.contrast:
            x = color_jitter(x, self.brightness, self.contrast, g, self.black, self.white)
        if self.erase:
            x = random_erase(x, self.erase, g)
        return x
