"""Batch augmentation (trainlab.data.batch_transforms, the new ops of trainlab.data.augment): what
each built-in does to the pixels and labels, determinism under a generator, the transforms= hook
of train() / fit() with its per-batch generator, soft targets in the loss and the accuracy, the
words for a transform that breaks the batch, and bitwise resume with each op on."""

import math
import tomllib

import pytest
import torch
from conftest import TINY_RUN, assert_resume_bitwise, train_tiny

import trainlab
from trainlab.data.augment import Augment, color_jitter, random_resized_crop
from trainlab.data.batch_transforms import MixCut, apply_transforms, batch_seed, hard_labels, sample_beta
from trainlab.training.loop import fit


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def ramps(n, h=28, w=28):
    """Channel 0 is the column number, channel 1 the row number: a crop's zoom shows as slopes."""
    cols = torch.arange(w, dtype=torch.float32).expand(h, w)
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    return torch.stack([cols, rows])[None].repeat(n, 1, 1, 1)


# ---------------------------------------------------------------- random-resized-crop

def test_rrc_zooms_each_image_into_a_box_of_the_asked_area():
    n, scale_min = 64, 0.3
    out = random_resized_crop(ramps(n), scale_min, gen(1))
    assert out.shape == (n, 2, 28, 28)
    # inside the frame (away from the border clamp) the ramps stay linear: slope = the box's side
    sx = (out[:, 0, 14, 20] - out[:, 0, 14, 8]) / 12
    sy = (out[:, 1, 20, 14] - out[:, 1, 8, 14]) / 12
    area = sx * sy
    assert (area >= scale_min - 1e-4).all() and (area <= 1 + 1e-4).all()
    assert area.std() > 0.05  # each image its own box
    assert (out >= 0).all() and (out <= 27).all()  # sampled inside the image


def test_rrc_keeps_values_within_each_image_and_constants_constant():
    x = torch.randn(16, 3, 20, 24, generator=gen(2))
    out = random_resized_crop(x, 0.2, gen(3))
    assert out.shape == x.shape and out.dtype == x.dtype
    lo, hi = x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))
    assert (out.amin(dim=(1, 2, 3)) >= lo - 1e-5).all() and (out.amax(dim=(1, 2, 3)) <= hi + 1e-5).all()
    flat = torch.full((4, 1, 28, 28), 0.7)
    assert torch.allclose(random_resized_crop(flat, 0.1, gen()), flat)
    assert random_resized_crop(x, 0.0, gen()) is x


# ---------------------------------------------------------------- colour jitter

def test_brightness_scales_each_image_towards_black_within_the_factor_range():
    n, b = 200, 0.4
    x = torch.rand(n, 1, 8, 8, generator=gen(4)) + 0.5  # 0.5..1.5, black at -1: no clamping
    black, white = torch.full((1, 1, 1, 1), -1.0), torch.full((1, 1, 1, 1), 10.0)
    out = color_jitter(x, b, 0.0, gen(5), black, white)
    factor = (out + 1) / (x + 1)
    per_image = factor.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-5)  # one factor per image
    assert (per_image[:, 0] >= 1 - b - 1e-5).all() and (per_image[:, 0] <= 1 + b + 1e-5).all()
    assert per_image[:, 0].std() > 0.1


def test_contrast_keeps_each_channels_mean_and_clamps_to_the_pixel_range():
    n, c = 100, 0.5
    x = torch.rand(n, 3, 8, 8, generator=gen(6))
    big = torch.full((1, 3, 1, 1), 100.0)
    out = color_jitter(x, 0.0, c, gen(7), -big, big)
    assert torch.allclose(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-5)
    spread = (out - out.mean(dim=(2, 3), keepdim=True)).flatten(1).norm(dim=1) / \
        (x - x.mean(dim=(2, 3), keepdim=True)).flatten(1).norm(dim=1)
    assert (spread >= 1 - c - 1e-4).all() and (spread <= 1 + c + 1e-4).all() and spread.std() > 0.1
    black, white = torch.tensor([0.0, -1.0, 0.2]).view(1, 3, 1, 1), torch.tensor([1.0, 0.5, 0.8]).view(1, 3, 1, 1)
    clamped = color_jitter(x * 4 - 2, 1.0, 1.0, gen(8), black, white)
    assert (clamped >= black).all() and (clamped <= white).all()
    assert color_jitter(x, 0.0, 0.0, gen()) is x


def test_augment_with_new_ops_is_deterministic_and_leaves_old_draws_alone():
    x = torch.randn(32, 1, 28, 28, generator=gen(9))
    aug = Augment(translate=2, hflip=True, rrc=0.4, brightness=0.3, contrast=0.3, erase=0.3)
    assert torch.equal(aug(x, gen(7)), aug(x, gen(7)))
    assert not torch.equal(aug(x, gen(7)), aug(x, gen(8)))
    # ops that are off draw nothing: a recipe without the new keys augments as before
    old = Augment(translate=2, hflip=True, erase=0.3)
    assert torch.equal(old(x, gen(3)), Augment(translate=2, hflip=True, erase=0.3, rrc=0, brightness=0)(x, gen(3)))


# ---------------------------------------------------------------- mixup and cutmix

def test_beta_draws_have_the_beta_moments():
    for alpha in (0.2, 1.0, 4.0):
        lam = sample_beta(alpha, 40_000, gen(int(alpha * 10)), "cpu")
        assert ((lam >= 0) & (lam <= 1)).all() and torch.isfinite(lam).all()
        assert abs(lam.mean().item() - 0.5) < 0.01
        assert abs(lam.var().item() - 1 / (4 * (2 * alpha + 1))) < 0.006, alpha


def distinct_batch(n=10, c=1, h=12, w=12):
    """Image i is the constant i+1 and has label i: the output tells which images mixed how."""
    x = (torch.arange(n, dtype=torch.float32) + 1).view(n, 1, 1, 1).expand(n, c, h, w).clone()
    return x, torch.arange(n)


def test_mixup_blends_each_image_with_one_other_by_its_label_weights():
    n = 10
    x, y = distinct_batch(n)
    out, t = MixCut(n, mixup=0.4)(x, y, gen(1))
    assert out.shape == x.shape and t.shape == (n, n) and t.dtype == torch.float32
    assert torch.allclose(t.sum(1), torch.ones(n)) and (t >= 0).all()
    assert ((t > 0).sum(1) <= 2).all()  # itself and one partner
    # each pixel is the label-weighted blend of the two sources' values
    assert torch.allclose(out[:, 0, 0, 0], t @ (torch.arange(n, dtype=torch.float32) + 1), atol=1e-5)
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))  # blended evenly, no box
    assert (t.max(1).values < 0.999).any()


def test_cutmix_pastes_a_box_and_weighs_the_labels_by_the_pixels_kept():
    n, h, w = 10, 12, 12
    x, y = distinct_batch(n, h=h, w=w)
    out, t = MixCut(n, cutmix=1.0)(x, y, gen(2))
    assert torch.allclose(t.sum(1), torch.ones(n))
    pasted = 0
    for i in range(n):
        img = out[i, 0]
        own = img == i + 1
        assert abs(own.float().mean().item() - t[i, i].item()) < 1e-6 or t[i].max() == 1  # weight = pixels kept
        others = torch.nonzero(~own)
        if len(others):
            pasted += 1
            sources = img[~own].unique()
            assert len(sources) == 1  # one partner
            j = int(sources.item()) - 1
            assert abs(t[i, j].item() - (~own).float().mean().item()) < 1e-6
            (y0, x0), (y1, x1) = others.min(0).values, others.max(0).values
            assert len(others) == (y1 - y0 + 1) * (x1 - x0 + 1)  # a full rectangle
    assert pasted >= n // 2


def test_mixup_and_cutmix_together_pick_one_per_image():
    n = 64
    x, y = distinct_batch(n, h=8, w=8)
    out, t = MixCut(n, mixup=1.0, cutmix=1.0)(x, y, gen(3))
    assert torch.allclose(t.sum(1), torch.ones(n))
    values = [out[i, 0].unique().numel() for i in range(n)]
    blended = sum(v == 1 and not float(out[i, 0, 0, 0]).is_integer() for i, v in enumerate(values))
    boxed = sum(v == 2 for v in values)
    assert blended > 5 and boxed > 5


def test_mixcut_is_deterministic_for_a_generator_and_takes_soft_labels():
    x = torch.randn(32, 1, 8, 8, generator=gen(4))
    y = torch.randint(0, 5, (32,), generator=gen(5))
    mix = MixCut(5, mixup=0.4, cutmix=1.0)
    a, b, c = mix(x, y, gen(6)), mix(x, y, gen(6)), mix(x, y, gen(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    again = mix(a[0], a[1], gen(8))  # soft targets in: mixed again, still distributions
    assert torch.allclose(again[1].sum(1), torch.ones(32))


def test_label_smoothing_applies_to_the_mixed_targets(tiny_data):
    """The run's own loss (the Session's, with mixup on) on soft targets t is the cross entropy
    with t * (1 - s) + s / C (what the README states), the mixing among its transforms."""
    from trainlab.config import resolve
    from trainlab.training.session import Session

    session = Session(resolve({**TINY_RUN, "label_smoothing": 0.1, "mixup": 0.4}), tiny_data, progress=False)
    assert any(isinstance(t, MixCut) for t in session.transforms)
    out = torch.randn(6, tiny_data.num_classes, generator=gen(1))
    t = torch.softmax(torch.randn(6, tiny_data.num_classes, generator=gen(2)), 1)
    smoothed = session.loss_fn(out, t)
    by_hand = -(torch.log_softmax(out, 1) * (t * 0.9 + 0.1 / tiny_data.num_classes)).sum(1).mean()
    assert torch.allclose(smoothed, by_hand)


def test_soft_targets_count_as_their_argmax_for_accuracy():
    t = torch.tensor([[0.6, 0.4, 0.0], [0.3, 0.0, 0.7]])
    assert torch.equal(hard_labels(t), torch.tensor([0, 2]))
    y = torch.tensor([1, 2])
    assert hard_labels(y) is y


# ---------------------------------------------------------------- the transforms= hook

def small_fit(transforms=(), epochs=1, seed=0):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(40, 1, 4, 4, generator=gen(1))
    y = torch.randint(0, 3, (40,), generator=gen(2))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    from trainlab.training.loop import StepParts

    state = fit(model, opt, loader, epochs=epochs, transforms=transforms, progress=False,
                parts=StepParts(seed=seed))
    return model, state


def test_a_user_transform_gets_the_per_batch_generator_on_the_batch_device():
    seen = []

    def record(x, y, g):
        seen.append((g.initial_seed(), g.device.type, x.shape, y.shape))
        return x, y

    small_fit([record], epochs=2, seed=5)
    assert [s[0] for s in seen] == [batch_seed(5, e, i, 0) for e in range(2) for i in range(5)]
    assert all(s[1] == "cpu" and s[2] == (8, 1, 4, 4) and s[3] == (8,) for s in seen)


def test_one_hot_soft_targets_train_like_class_indices():
    def one_hot(x, y, g):
        return x, torch.nn.functional.one_hot(y, 3).float()

    _, hard = small_fit()
    _, soft = small_fit([one_hot])
    assert soft.history[0]["train_acc"] == hard.history[0]["train_acc"]
    assert soft.history[0]["train_loss"] == pytest.approx(hard.history[0]["train_loss"], rel=1e-5)


@pytest.mark.parametrize("transform, words", [
    (lambda x, y, g: (x[:, :, :2], y), r"returned images of shape \(8, 1, 2, 4\) .* for a batch of shape \(8, 1, 4, 4\)"),
    (lambda x, y, g: (x.double(), y), r"returned images .*torch.float64.* not the shape, dtype or device"),
    (lambda x, y, g: (x, y.to("meta")), r"returned labels on meta for a batch on cpu"),
    (lambda x, y, g: x, r"returned Tensor, not \(images, labels\)"),
    (lambda x, y, g: (x, y[:4]), r"returned labels of shape \(4,\)"),
    (lambda x, y, g: (x, y.float()), r"returned labels of shape \(8,\) \(torch.float32\)"),
    (lambda x, y, g: (x, torch.ones(8, 5) / 5), r"soft targets of shape \(8, 5\) but the model gives \(8, 3\)"),
])
def test_a_transform_that_breaks_the_batch_ends_in_one_sentence(transform, words):
    with pytest.raises(trainlab.ConfigError, match=words) as e:
        small_fit([transform])
    assert "\n" not in str(e.value) and str(e.value).count(": ") >= 1


def test_transforms_that_are_not_callables_are_refused_before_the_run(tmp_path, tiny_data):
    for bad, words in ((lambda x, y, g: (x, y), "not one function: wrap it in a list"),
                       ([3], "holds a int, which cannot be called")):
        with pytest.raises(trainlab.ConfigError, match=words):
            trainlab.train({**TINY_RUN, "runs_dir": str(tmp_path)}, data=tiny_data, progress=False, transforms=bad)
    assert not any(tmp_path.iterdir())  # refused before a run folder was made


def test_apply_transforms_runs_them_in_order():
    x, y = torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])
    out, _ = apply_transforms([lambda x, y, g: (x + 1, y), lambda x, y, g: (x * 3, y)], x, y, gen())
    assert torch.equal(out, torch.full_like(x, 3.0))


# ---------------------------------------------------------------- the recipe keys in a run

ON = [{"rrc": 0.35}, {"brightness": 0.4, "contrast": 0.4}, {"mixup": 0.4}, {"cutmix": 1.0},
      {"mixup": 0.2, "cutmix": 1.0, "label_smoothing": 0.1}]


@pytest.mark.parametrize("keys", ON, ids=lambda k: "+".join(k))
def test_resume_mid_epoch_is_bitwise_with_each_op_on(keys, tiny_data, tmp_path):
    cfg = {**TINY_RUN, **keys}
    full = assert_resume_bitwise(cfg, tmp_path, 21, {"data": tiny_data}, {"data": tiny_data})  # epoch 2, step 5
    saved = tomllib.loads((full.run_dir / "config.toml").read_text())
    assert all(math.isclose(_find(saved, k), v) for k, v in keys.items())  # recorded
    plain = train_tiny(tmp_path / "plain", data=tiny_data)
    assert full.history[0]["train_loss"] != plain.history[0]["train_loss"]  # the op really ran


def _find(d: dict, key: str):
    if key in d:
        return d[key]
    return next(_find(v, key) for v in d.values() if isinstance(v, dict) and _has(v, key))


def _has(d: dict, key: str) -> bool:
    return key in d or any(isinstance(v, dict) and _has(v, key) for v in d.values())


def test_resume_is_bitwise_with_a_user_transform(tiny_data, tmp_path):
    def noise(x, y, g):
        return x + 0.3 * torch.randn(x.shape, generator=g, device=x.device), y

    kw = {"data": tiny_data, "transforms": [noise]}
    full = assert_resume_bitwise(TINY_RUN, tmp_path, 21, kw, kw)
    plain = train_tiny(tmp_path / "plain", data=tiny_data)
    assert full.history[0]["train_loss"] != plain.history[0]["train_loss"]


@pytest.mark.parametrize("key, value", [("rrc", 0.01), ("rrc", 1.5), ("brightness", -0.1), ("contrast", 2.0),
                                        ("mixup", -1.0), ("cutmix", 11.0), ("mixup", float("nan"))])
def test_bad_recipe_values_are_refused_by_name(key, value):
    from trainlab.recipes import get_recipe

    with pytest.raises(trainlab.ConfigError, match=f"^{key} = .* is invalid: must be"):
        get_recipe("textbook", **{key: value})


def test_the_cli_takes_the_keys_and_refuses_a_bad_one(cli, tmp_path):
    r = cli("train", "--mixup", "-0.5", "--runs-dir", tmp_path, "--dataset", "nowhere")
    assert r.returncode == 2 and "mixup = -0.5 is invalid" in r.stderr and "Traceback" not in r.stderr
