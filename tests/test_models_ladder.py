"""The ladder's new designs (cnn-fast, resnet): shapes, kwargs through the registry, sizes."""

import pytest
import torch
from torch import nn

from trainlab import models
from trainlab.errors import ConfigError

SHAPES = [((1, 28, 28), 10), ((3, 32, 32), 50)]


@pytest.mark.parametrize("name", ["cnn-fast", "resnet"])
@pytest.mark.parametrize("shape,classes", SHAPES)
def test_builds_and_gives_logits(name, shape, classes):
    assert name in models.available()
    model = models.build(name, shape, classes)
    model.train()
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, classes)
    out.sum().backward()  # every parameter gets a gradient
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, *shape)).shape == (1, classes)


@pytest.mark.parametrize("name", ["cnn-fast", "resnet"])
def test_channels_last_gives_the_same_logits(name):
    torch.manual_seed(0)
    model = models.build(name, (1, 28, 28), 10, **({"width": 8} if name == "resnet" else {})).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        plain = model(x)
        model = model.to(memory_format=torch.channels_last)
        cl = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(plain, cl, rtol=1e-4, atol=1e-4)


def test_parameter_counts_are_in_the_intended_range():
    count = lambda name, **kw: models.count_parameters(models.build(name, (1, 28, 28), 10, **kw))
    assert 300_000 < count("cnn-fast") < 600_000  # like cnn's 422k, mostly the FC layer
    assert count("cnn-fast", fc=0) < 100_000
    assert 2_000_000 < count("resnet") < 4_000_000  # width 64: 64/128/256
    assert 150_000 < count("resnet", width=16) < 300_000
    assert count("resnet", depth=3) > count("resnet")


def test_cnn_fast_kwargs_shape_the_layers():
    model = models.build("cnn-fast", (1, 28, 28), 10, channels=(8, 16, 32), fc=64, dropout=0.5)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 8), (8, 16), (16, 32)]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32 * 7 * 7, 64), (64, 10)]
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.5]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model) == 2  # none after the last block
    no_fc = models.build("cnn-fast", (1, 28, 28), 10, fc=0)
    assert [m.out_features for m in no_fc if isinstance(m, nn.Linear)] == [10]


def test_resnet_kwargs_shape_the_stages():
    model = models.build("resnet", (1, 28, 28), 10, width=16, depth=3, stages=3, dropout=0.1)
    assert len(model.blocks) == 9
    widths = [b.conv2.out_channels for b in model.blocks]
    assert widths == [16] * 3 + [32] * 3 + [64] * 3
    strides = [b.conv1.stride[0] for b in model.blocks]
    assert strides == [1, 1, 1, 2, 1, 1, 2, 1, 1]
    assert model.fc.in_features == 64
    feats = model.blocks(model.stem(torch.randn(2, 1, 28, 28)))
    assert feats.shape == (2, 64, 7, 7)  # 28 -> 14 -> 7
    assert models.build("resnet", (1, 28, 28), 10, stages=2).fc.in_features == 128


@pytest.mark.parametrize("name,kwargs,match", [
    ("cnn-fast", {"channels": (16, -1)}, "channels"),
    ("cnn-fast", {"channels": ()}, "channels"),
    ("cnn-fast", {"channels": (4, 4, 4, 4, 4, 4)}, "too many pooling"),
    ("cnn-fast", {"fc": -1}, "fc"),
    ("cnn-fast", {"dropout": 1.0}, "dropout"),
    ("resnet", {"width": 0}, "width"),
    ("resnet", {"depth": 1.5}, "depth"),
    ("resnet", {"stages": 7}, "too many"),
    ("resnet", {"dropout": -0.1}, "dropout"),
])
def test_bad_kwargs_are_config_errors_naming_the_kwarg(name, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        models.build(name, (1, 28, 28), 10, **kwargs)


def test_unknown_kwarg_lists_what_the_model_takes():
    with pytest.raises(ConfigError, match="width, depth, stages, dropout"):
        models.build("resnet", (1, 28, 28), 10, widht=32)
