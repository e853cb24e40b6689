"""The learning-rate schedules (engine.lr_multiplier), weight EMA as the session builds it,
and flip test-time augmentation (engine.predict), each on small tensors."""

import math

import pytest
import torch
from torch import nn

from trainlab.inference import predict
from trainlab.recipes import get_recipe
from trainlab.training.ema import ema_decay, make_ema
from trainlab.training.optim import build_optimizer, lr_multiplier

STEPS = 10  # per epoch


def curve(schedule, epochs=4, **kw):
    f = lr_multiplier(get_recipe("textbook", schedule=schedule, epochs=epochs, **kw), STEPS)
    return [f(s) for s in range(epochs * STEPS)], f


def test_no_schedule_is_constant():
    values, f = curve("none")
    assert values == [1.0] * len(values) and f(10_000) == 1.0


def test_onecycle_warms_up_over_a_quarter_then_anneals_to_one_percent():
    values, f = curve("onecycle", epochs=4)
    total, warm = 40, 10
    assert values[0] == pytest.approx(1 / 25)
    assert values[warm] == pytest.approx(1.0)
    assert max(values) == pytest.approx(1.0) and values.index(max(values)) == warm
    assert all(a < b for a, b in zip(values[:warm], values[1:warm + 1]))  # rising
    assert all(a >= b for a, b in zip(values[warm:], values[warm + 1:]))  # then falling
    # the cosine half: midway through the anneal, halfway between 1 and the final 0.01
    assert values[warm + (total - warm) // 2] == pytest.approx(0.01 + 0.99 * 0.5, abs=1e-9)
    assert values[-1] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 29 / 30)))
    assert f(total) == f(total + 100) == f(10**6) == 0.01  # past the plan: the final rate continues


def test_cosine_with_linear_warmup():
    values, f = curve("cosine", epochs=4, warmup_epochs=1.0)
    warm, total = 10, 40
    assert values[:warm] == pytest.approx([(s + 1) / warm for s in range(warm)])
    assert values[warm] == pytest.approx(1.0) and max(values) == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[warm:], values[warm + 1:]))
    assert values[warm + 15] == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(total) == pytest.approx(0.01) and f(10**6) == pytest.approx(0.01)


def test_cosine_without_warmup_starts_at_the_peak():
    values, f = curve("cosine", epochs=2)
    total = 2 * STEPS
    assert values[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(values, values[1:]))  # falling from the first step
    assert values[total // 2] == pytest.approx(0.01 + 0.99 * 0.5)
    assert values[-1] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (total - 1) / total)))
    assert f(total) == pytest.approx(0.01)


@pytest.mark.parametrize("schedule,first,peak", [("onecycle", 1 / 25, 5), ("cosine", 1.0, 0)])
def test_the_schedule_drives_the_optimizer_through_lambdalr_past_the_plan(schedule, first, peak):
    """Through the optimizer trainlab builds (two parameter groups: with and without decay),
    then 25 steps past the plan (a run extended by resume): the final rate continues."""
    recipe = get_recipe("textbook", schedule=schedule, epochs=2, lr=0.5)
    opt = build_optimizer(nn.Linear(2, 2), recipe)
    assert len(opt.param_groups) == 2
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(recipe, STEPS))
    lrs = []
    for _ in range(2 * STEPS + 25):
        group_lrs = {g["lr"] for g in opt.param_groups}
        assert len(group_lrs) == 1  # every group follows the schedule
        lrs.append(group_lrs.pop())
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5 * first)
    assert lrs[peak] == pytest.approx(0.5)  # onecycle: warm-up is 25% of 20 steps
    assert max(lrs) == pytest.approx(0.5)
    assert lrs[2 * STEPS:] == pytest.approx([0.5 * 0.01] * 25)


# ---------------------------------------------------------------- EMA

def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_ema_decay_warms_up_then_settles_at_the_configured_decay():
    assert ema_decay(0.999, 0) == pytest.approx(0.1)  # the 2nd update mostly takes the new weights
    assert ema_decay(0.999, 90) == pytest.approx(0.91)
    assert ema_decay(0.999, 100_000) == 0.999
    assert ema_decay(0.5, 100) == 0.5  # the warm-up only ever lowers the decay
    assert ema_decay(0.5, 3) == pytest.approx(4 / 13)


def test_ema_matches_the_hand_computed_average():
    decay = 0.9
    model = tiny_model()
    ema = make_ema(model, decay)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = None
    for step in range(40):  # long enough for the warm-up to reach the configured decay
        loss = model(torch.randn(8, 3)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update_parameters(model)
        current = [t.detach().clone().float() for t in list(model.parameters()) + list(model.buffers())
                   if t.is_floating_point()]
        if expected is None:  # the first update copies the weights
            expected = current
        else:
            d = min(decay, (1 + step) / (10 + step))  # `step` earlier updates
            expected = [d * e + (1 - d) * c for e, c in zip(expected, current)]
    got = [t.float() for t in list(ema.module.parameters()) + list(ema.module.buffers())
           if t.is_floating_point()]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    assert int(ema.n_averaged) == 40
    # and the raw model moved away from its average (EMA is not a copy)
    assert not torch.equal(ema.module[0].weight, model[0].weight)


def zero_model():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)  # the "initialization"
    return model


def share_of_initial_weights_after(make_average, steps: int) -> float:
    model = zero_model()
    ema = make_average(model)
    ema.update_parameters(model)  # copies the initial weight (0)
    with torch.no_grad():
        model.weight.fill_(1.0)  # then training moves it for good
    for _ in range(steps):
        ema.update_parameters(model)
    return 1 - ema.module.weight.detach().item()


def test_ema_forgets_the_initial_weights_in_a_short_run():
    """The reason for the warm-up: after 1,500 updates torch's fixed-decay EMA (what trainlab
    used before) still keeps 22% of the initialization; with the warm-up it is under 1%."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    def fixed(model):
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=True)

    assert share_of_initial_weights_after(lambda m: make_ema(m, 0.999), 1500) < 0.01
    assert share_of_initial_weights_after(fixed, 1500) == pytest.approx(0.999 ** 1500, rel=1e-3)


def test_ema_averages_batchnorm_statistics_too():
    model = tiny_model()
    ema = make_ema(model, 0.5)
    ema.update_parameters(model)
    before = model[1].running_mean.clone()
    model.train()
    model(torch.randn(16, 3) + 5)  # moves the running mean
    ema.update_parameters(model)
    d = ema_decay(0.5, 1)
    torch.testing.assert_close(ema.module[1].running_mean, d * before + (1 - d) * model[1].running_mean)


# ---------------------------------------------------------------- flip TTA

class Batches(list):
    device = torch.device("cpu")


def image_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 6, 5))


def test_tta_flip_averages_the_probabilities_of_the_image_and_its_mirror():
    model = image_model()
    xs = [torch.randn(4, 1, 4, 6), torch.randn(3, 1, 4, 6)]
    loader = Batches([(x, torch.arange(len(x))) for x in xs])
    logits, labels = predict(model, loader, tta_flip=True)
    assert logits.shape == (7, 5) and labels.tolist() == [0, 1, 2, 3, 0, 1, 2]
    model.eval()
    with torch.no_grad():
        x = torch.cat(xs)
        by_hand = ((model(x).softmax(1) + model(x.flip(3)).softmax(1)) / 2).log()
    torch.testing.assert_close(logits, by_hand)
    assert torch.allclose(logits.exp().sum(1), torch.ones(7))  # log-probabilities


def test_without_tta_predict_returns_the_plain_logits_and_restores_train_mode():
    model = image_model().train()
    x = torch.randn(5, 1, 4, 6)
    logits, _ = predict(model, Batches([(x, torch.zeros(5, dtype=torch.long))]))
    assert model.training
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))


def test_tta_on_mirror_symmetric_images_changes_nothing_but_the_scale():
    model = image_model()
    x = torch.randn(6, 1, 4, 3)
    x = torch.cat([x, x.flip(3)], dim=3)  # each image equals its mirror
    plain, _ = predict(model, Batches([(x, torch.zeros(6, dtype=torch.long))]))
    tta, _ = predict(model, Batches([(x, torch.zeros(6, dtype=torch.long))]), tta_flip=True)
    torch.testing.assert_close(tta, plain.log_softmax(1))
