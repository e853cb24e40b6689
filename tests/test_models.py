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
    monkeypatch.setattr(models.registry, "_REGISTRY", dict(models.registry._REGISTRY))
    return models.registry._REGISTRY


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


def test_every_factory_is_sized_on_meta_then_built_once(registry):
    """The one size check, for a user's factory as for a built-in: a call on the meta device (no
    memory), then the one real build; a factory that builds no module is refused after one call."""
    devices = []

    def net(input_shape, num_classes):
        devices.append(torch.empty(0).device.type)
        return nn.Linear(4, num_classes)

    models.register("counted", net)
    models.build("counted", (1, 2, 2), 3)
    assert devices == ["meta", "cpu"]
    calls = []
    models.register("nothing", lambda input_shape, num_classes: calls.append(1))
    with pytest.raises(ConfigError, match="returned NoneType, not an nn.Module"):
        models.build("nothing")
    assert calls == [1]


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


# ---------------------------------------------------------------- anyone's constructor

NETS = '''
from torch import nn


class Net(nn.Module):
    """timm's shape: num_classes and in_chans by name."""

    def __init__(self, num_classes=10, in_chans=1, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                  nn.Flatten())
        self.head = nn.Linear(width * 16, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def make(num_classes):
    """torchvision's shape: num_classes only (this one knows its 1x28x28 input)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, num_classes))


def three(a, b, c):
    return nn.Linear(1, 1)


def huge(num_classes):
    return nn.Linear(100_000, 100_000)
'''


@pytest.fixture
def nets(tmp_path, monkeypatch):
    (tmp_path / "usernets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("usernets", None)


def test_a_constructor_taking_num_classes_and_in_chans_by_name_is_called_by_name(nets):
    """A class whose first parameter is num_classes was called with the input shape as the
    class count (an internal error); now trainlab maps what it knows onto the signature."""
    net = models.build("usernets:Net", (3, 28, 28), 7, width=4)
    assert net.body[0].in_channels == 3 and net.head.out_features == 7 and net.body[0].out_channels == 4
    assert models.build("usernets:make", (1, 28, 28), 5)[-1].out_features == 5


def test_a_constructor_that_fits_no_contract_is_told_the_contract(nets):
    with pytest.raises(ConfigError, match=r"trainlab calls a model factory as f\(input_shape, num_classes"):
        models.build("usernets:three")
    with pytest.raises(ConfigError, match="in_chans come.* from the data"):
        models.build("usernets:Net", in_chans=3)


def test_anyones_factory_gets_the_size_check_before_allocating(nets):
    with pytest.raises(ConfigError, match="10,000,100,000 parameters, over the limit"):
        models.build("usernets:huge")


def test_a_user_level_allow_list_trusts_a_module_on_every_command(nets, monkeypatch, isolated_home):
    spec = {"name": "usernets:Net", "kwargs": {}, "input_shape": [1, 28, 28], "num_classes": 10}
    with pytest.raises(ConfigError, match="--allow-import usernets"):
        models.build_from_spec(spec)
    monkeypatch.setenv("TRAINLAB_ALLOW_IMPORT", "other, usernets")
    assert models.build_from_spec(spec).head.out_features == 10
    monkeypatch.delenv("TRAINLAB_ALLOW_IMPORT")
    listed = isolated_home / ".config" / "trainlab" / "allow-import"
    listed.parent.mkdir(parents=True)
    listed.write_text("# modules I wrote\nusernets\n")
    assert models.build_from_spec(spec).head.out_features == 10
    listed.write_text("usernets; rm -rf\n")
    with pytest.raises(ConfigError, match="not a module name"):
        models.build_from_spec(spec)


def test_a_users_constructor_from_the_cli_trains_resumes_evaluates_and_exports(nets, tmp_path):
    """`--model usernets:Net` from the command line; the later commands find it through the
    user-level allow-list (no --allow-import on each)."""
    from conftest import cli_env, run_cli, write_idx_folder

    idx = write_idx_folder(tmp_path / "idx", n_train=300, n_test=100)
    common = ("--dataset", f"idx:{idx}", "--val-size", "50", "--batch-size", "25", "--threads", "1", "--quiet")
    done = run_cli("train", "--model", "usernets:Net", "--name", "net", "--epochs", "2", *common, cwd=nets)
    assert done.returncode == 0, done.stderr
    refused = run_cli("evaluate", nets / "runs" / "net", cwd=tmp_path)
    assert refused.returncode == 2 and "--allow-import usernets" in refused.stderr
    env = cli_env(TRAINLAB_ALLOW_IMPORT="usernets", PYTHONPATH=f"{nets}:{cli_env()['PYTHONPATH']}")
    ok = run_cli("evaluate", nets / "runs" / "net", env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    exported = run_cli("export", nets / "runs" / "net", "--format", "onnx", "--out", tmp_path / "onnx", env=env,
                       cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "100.00%" in exported.stdout  # the parity check's argmax agreement


def test_a_users_function_trains_from_the_library_and_resumes_bitwise(nets, tmp_path, tiny_data):
    """make(num_classes) named by path from Python: trained, stopped mid-run, resumed bitwise
    (the module allowed), evaluated."""
    import trainlab
    from conftest import TINY_RUN, assert_resume_bitwise

    cfg = {**TINY_RUN, "model": "usernets:make", "epochs": 3}
    full = assert_resume_bitwise(cfg, tmp_path, 30, {"data": tiny_data},
                                 {"data": tiny_data, "allow_import": ("usernets",)})
    summary = trainlab.evaluate_run(full.run_dir, data=tiny_data, allow_import=("usernets",))
    assert summary["accuracy"] == pytest.approx(full.test_accuracy)
