"""The model registry: built-in architectures, errors, bring-your-own models."""

import sys

import pytest
import torch
from torch import nn

from trainlab import models
from trainlab.errors import ConfigError


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so test registrations don't leak."""
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    return models._REGISTRY


@pytest.mark.parametrize("name", ["mlp", "mlp-reg", "cnn"])
@pytest.mark.parametrize("shape,classes", [((1, 28, 28), 10), ((3, 100, 100), 50)])
def test_each_model_builds_and_gives_logits(name, shape, classes):
    assert name in models.available()
    model = models.build(name, shape, classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, classes)


def test_mlp_is_784_256_128_10():
    model = models.build("mlp", (1, 28, 28), 10)
    assert models.count_parameters(model) == 235_146
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 256), (256, 128), (128, 10)]


def test_mlp_reg_blocks():
    model = models.build("mlp-reg", (1, 28, 28), 10)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Dropout",
                     "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert model[1].out_features == 512 and model[5].out_features == 256


def test_unknown_name_lists_the_choices():
    with pytest.raises(ConfigError) as e:
        models.build("resnet9000")
    msg = str(e.value)
    assert "unknown model 'resnet9000'" in msg
    assert all(n in msg for n in ("mlp", "mlp-reg", "cnn")) and "module:function" in msg


def test_bad_kwargs_name_what_the_model_takes():
    with pytest.raises(ConfigError) as e:
        models.build("mlp", depth=3)
    assert "bad arguments {'depth': 3}" in str(e.value) and "hidden" in str(e.value)


@pytest.mark.parametrize("name,kwargs,field", [
    ("mlp-reg", {"dropout": 1.5}, "dropout"),
    ("mlp", {"hidden": [0]}, "hidden"),
    ("cnn", {"channels": [8, 8, 8, 8, 8, 8]}, "channels"),  # too many pools for 28x28
])
def test_bad_kwarg_values_are_config_errors(name, kwargs, field):
    with pytest.raises(ConfigError, match=f"model kwarg {field} = .* is invalid"):
        models.build(name, (1, 28, 28), 10, **kwargs)


def test_register_a_user_factory(registry):
    @models.register("tiny-linear")
    def tiny(input_shape, num_classes, scale=1.0):
        c, h, w = input_shape
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))

    assert "tiny-linear" in models.available()
    assert models.build("tiny-linear", (1, 4, 4), 3, scale=2.0)(torch.zeros(1, 1, 4, 4)).shape == (1, 3)
    # re-registering the same factory is harmless; another one under the name is refused
    models.register("tiny-linear")(tiny)
    with pytest.raises(ConfigError, match="already registered"):
        models.register("tiny-linear")(lambda s, n: nn.Identity())


def test_factory_must_return_a_module(registry):
    models.register("not-a-module")(lambda input_shape, num_classes: "oops")
    with pytest.raises(ConfigError, match="returned str, not an nn.Module"):
        models.build("not-a-module")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's module on sys.path: mynets_for_tests:make_net."""
    (tmp_path / "mynets_for_tests.py").write_text(
        "from torch import nn\n"
        "def make_net(input_shape, num_classes, width=8):\n"
        "    c, h, w = input_shape\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.ReLU(),\n"
        "                         nn.Linear(width, num_classes))\n"
        "not_callable = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mynets_for_tests"
    sys.modules.pop("mynets_for_tests", None)


def test_import_path_model_for_training(user_module):
    model = models.build(f"{user_module}:make_net", (1, 28, 28), 10, width=16)
    assert model[1].out_features == 16
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_import_path_allowed_explicitly(user_module):
    model = models.build(f"{user_module}:make_net", allow_import=(user_module,))
    assert isinstance(model, nn.Module)


def test_import_path_refused_unless_allowed(user_module):
    with pytest.raises(ConfigError) as e:
        models.build(f"{user_module}:make_net", allow_import=())
    assert f"--allow-import {user_module}" in str(e.value)
    assert user_module not in sys.modules  # refused before importing anything


def test_import_path_errors(user_module):
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        models.build("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="has no callable 'not_callable'"):
        models.build(f"{user_module}:not_callable")
