"""Batched on-device augmentation (trainlab.data.augment): shapes, ranges, determinism under a
seed, identity when disabled, and what each op does to the pixels."""

import pytest
import torch

from trainlab.data.augment import Augment, random_erase, random_hflip, random_translate


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def batch(n=16, c=1, h=28, w=28, seed=0):
    return torch.randn(n, c, h, w, generator=gen(seed))


@pytest.mark.parametrize("shape", [(8, 1, 28, 28), (4, 3, 32, 32), (3, 2, 7, 5)])
def test_every_op_keeps_shape_dtype_and_device(shape):
    x = torch.randn(*shape)
    for out in (random_translate(x, 2, gen()), random_hflip(x, gen()), random_erase(x, 1.0, gen()),
                Augment(translate=2, hflip=True, erase=0.5)(x, gen())):
        assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device


def test_ranges_stay_within_each_images_values():
    x = batch()
    lo, hi = x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))
    for out in (random_translate(x, 3, gen()), random_hflip(x, gen())):
        assert (out.amin(dim=(1, 2, 3)) >= lo - 1e-6).all() and (out.amax(dim=(1, 2, 3)) <= hi + 1e-6).all()
    erased = random_erase(x, 1.0, gen())
    changed = erased != x
    assert changed.flatten(1).any(1).all()  # p=1: every image has an erased patch
    assert (erased[changed] == 0).all()  # erasing writes the data mean (0 after normalization)


def test_same_seed_same_batch_other_seed_other_batch():
    x = batch(32)
    aug = Augment(translate=2, hflip=True, erase=0.5)
    a, b, c = aug(x, gen(7)), aug(x, gen(7)), aug(x, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_disabled_ops_are_the_identity():
    x = batch()
    assert Augment()(x, gen()) is x
    assert random_translate(x, 0, gen()) is x
    assert random_erase(x, 0.0, gen()) is x
    assert torch.equal(random_hflip(x, gen(), p=0.0), x)


def test_translate_shifts_the_content_and_fills_with_the_background():
    n, pixels = 64, 3
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 10:14, 12:15] = 1.0  # a bright block well inside the frame
    out = random_translate(x, pixels, gen(3))
    shifts = set()
    for i in range(n):
        ys, xs = torch.nonzero(out[i, 0] == 1.0, as_tuple=True)
        assert len(ys) == 12  # the whole block survives (it stays inside the frame)
        dy, dx = int(ys.min()) - 10, int(xs.min()) - 12
        assert abs(dy) <= pixels and abs(dx) <= pixels
        expected = torch.zeros(28, 28)
        expected[10 + dy:14 + dy, 12 + dx:15 + dx] = 1.0
        assert torch.equal(out[i, 0], expected)  # exactly the shifted image, background elsewhere
        shifts.add((dy, dx))
    assert len(shifts) > 10  # the offsets really vary per image


def test_translate_pads_with_each_images_minimum():
    n = 8
    x = torch.full((n, 1, 6, 6), 5.0)
    lows = -1.0 - torch.arange(n, dtype=torch.float32)  # each image its own minimum (background)
    x[:, 0, 2, 2] = lows
    out = random_translate(x, 2, gen())
    padded = 0
    for i in range(n):
        assert set(out[i].unique().tolist()) <= {5.0, lows[i].item()}, i  # its own minimum, no other
        padded += int((out[i] == lows[i]).sum()) > 1  # shifted: a border filled with the minimum
    assert padded >= n // 2


def test_erase_draws_one_rectangle_inside_the_image():
    n, h, w, frac = 50, 28, 20, 0.4
    x = torch.ones(n, 1, h, w)
    out = random_erase(x, 1.0, gen(5), max_frac=frac)
    for i in range(n):
        ys, xs = torch.nonzero(out[i, 0] == 0, as_tuple=True)
        assert len(ys) > 0  # p=1: every image is erased
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
        assert 0 <= y0 <= y1 < h and 0 <= x0 <= x1 < w
        eh, ew = y1 - y0 + 1, x1 - x0 + 1
        assert len(ys) == eh * ew  # a full rectangle, no holes
        assert eh <= int(frac * h) + 1 and ew <= int(frac * w) + 1


def test_erase_probability_is_per_image():
    x = torch.ones(400, 1, 8, 8)
    out = random_erase(x, 0.25, gen(1))
    erased = (out == 0).flatten(1).any(1).float().mean().item()
    assert 0.15 < erased < 0.35


def test_hflip_mirrors_whole_images_about_half_the_time():
    x = batch(200, c=3, h=5, w=7)
    out = random_hflip(x, gen(2))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert 0.35 < mirrored.float().mean().item() < 0.65
    assert torch.equal(random_hflip(x, gen(), p=1.0), x.flip(3))
