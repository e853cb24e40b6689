"""The registries: a model's metadata (recipe, channels_last, CPU bf16) lives with its factory
and drives config and precision; data formats are registered by scheme and dispatched by
load_dataset. The last two tests are user extensions written against the public API only."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import make_images, run_cli, write_idx_folder
from torch import nn

import trainlab
import trainlab.cli
from trainlab import models
from trainlab.config import resolve
from trainlab.data import formats
from trainlab.errors import ConfigError, DataError
from trainlab.training import precision as P

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture
def registry(monkeypatch):
    """Private copies of both registries, so test registrations don't leak."""
    monkeypatch.setattr(models.registry, "_REGISTRY", dict(models.registry._REGISTRY))
    monkeypatch.setattr(formats, "_READERS", dict(formats._READERS))


def tiny_net(input_shape, num_classes):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))


# ---------------------------------------------------------------- model metadata

def test_the_built_in_models_keep_their_recipes_layout_and_precision():
    got = {n: (models.info(n).recipe, models.info(n).conv, models.info(n).cpu_bf16)
           for n in ("mlp", "mlp-reg", "cnn", "cnn-fast", "resnet")}
    assert got == {"mlp": (None, False, True), "mlp-reg": (None, False, True),
                   "cnn": ("fast-cnn", True, True), "cnn-fast": ("fast-cnn", True, True),
                   "resnet": ("resnet", True, False)}
    resolved = {n: (resolve({"model": n}).recipe, resolve({"model": n}).channels_last) for n in got}
    assert resolved == {"mlp": ("fast", False), "mlp-reg": ("fast", False), "cnn": ("fast-cnn", True),
                        "cnn-fast": ("fast-cnn", True), "resnet": ("resnet", True)}


def test_registered_metadata_drives_config(registry):
    trainlab.register("my-conv", tiny_net, recipe="textbook", conv=True)
    cfg = resolve({"model": "my-conv"})
    assert cfg.recipe == "textbook" and cfg.channels_last and cfg.train.batch_size == 64
    # what the user says still wins over what the registration suggests
    cfg = resolve({"model": "my-conv", "recipe": "fast", "channels_last": False})
    assert cfg.recipe == "fast" and cfg.channels_last is False
    # an import path has no registered metadata: the defaults
    assert models.info("mypkg.nets:make").recipe is None
    cfg = resolve({"model": "mypkg.nets:make"})
    assert cfg.recipe == "fast" and cfg.channels_last is False


def test_registered_cpu_bf16_drives_precision_auto(registry, monkeypatch):
    cpu = torch.device("cpu")
    trainlab.register("bf16-net", tiny_net, cpu_bf16=True)
    trainlab.register("fp32-net", tiny_net)
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: True)
    chosen = P.resolve_precision("auto", cpu, "bf16-net")
    assert chosen.name == "bf16-mixed" and "measured" in chosen.reason
    for name in ("fp32-net", "resnet", "mypkg:make", ""):
        assert P.resolve_precision("auto", cpu, name).name == "32"
    assert P.resolve_precision("auto", cpu, "cnn-fast").name == "bf16-mixed"
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: False)
    assert P.resolve_precision("auto", cpu, "bf16-net").name == "32"


def test_register_as_a_decorator_or_a_call(registry):
    @trainlab.register("deco-net", conv=True)
    def deco_net(input_shape, num_classes):
        return tiny_net(input_shape, num_classes)

    assert trainlab.register("call-net", tiny_net) is tiny_net  # the factory itself comes back
    assert models.info("deco-net").conv and models.info("deco-net").factory is deco_net
    assert trainlab.build_model("call-net", (1, 4, 4), 3)(torch.zeros(2, 1, 4, 4)).shape == (2, 3)


@pytest.mark.parametrize("call,message", [
    (lambda: trainlab.register("r", tiny_net, recipe="turbo"),
     "model 'r': recipe 'turbo' is not a known preset: choose one of textbook, fast"),
    (lambda: trainlab.register("r", tiny_net, recipe="auto"), "recipe 'auto' is not a known preset"),
    (lambda: trainlab.register("r", recipe=3), "recipe 3 is not a known preset"),
    (lambda: trainlab.register("r", tiny_net, conv="yes"), "conv = 'yes' is invalid: use True or False"),
    (lambda: trainlab.register("mod:fn", tiny_net), "model name 'mod:fn' is invalid"),
    (lambda: trainlab.register("", tiny_net), "model name '' is invalid"),
    (lambda: trainlab.register("r", 42), "the factory 42 is not callable"),
    (lambda: trainlab.register("mlp", tiny_net), "model name 'mlp' is already registered"),
    (lambda: trainlab.register("mlp", models.mlp, conv=True), "already registered (by trainlab.models.architectures.mlp) with other settings"),
])
def test_bad_registrations_are_one_sentence_config_errors(registry, call, message):
    with pytest.raises(ConfigError) as e:
        call()
    assert message in str(e.value) and "\n" not in str(e.value)
    assert "r" not in models.available()


def test_registering_the_same_model_again_is_harmless(registry):
    trainlab.register("again", tiny_net, recipe="fast-cnn", conv=True)
    trainlab.register("again", tiny_net, recipe="fast-cnn", conv=True)  # e.g. a module imported twice
    trainlab.register("mlp", models.mlp, cpu_bf16=True)


def test_a_stored_spec_naming_an_unregistered_model_says_to_allow_its_module():
    spec = {"name": "made-elsewhere", "kwargs": {}, "input_shape": [1, 4, 4], "num_classes": 3}
    with pytest.raises(ConfigError) as e:
        models.build_from_spec(spec, source="runs/x/config.toml")
    msg = str(e.value)
    assert msg.startswith("runs/x/config.toml: its model 'made-elsewhere' is not registered in this process")
    assert "--allow-import MODULE" in msg and "\n" not in msg


# ---------------------------------------------------------------- data formats

def _arrays(n=40, size=8, name="fmt"):
    tx, ty = make_images(n, num_classes=4, size=size, seed=1)
    sx, sy = make_images(n // 2, num_classes=4, size=size, seed=2)
    return trainlab.from_arrays(tx, ty, sx, sy, name=name)


def test_a_registered_format_is_dispatched_by_its_scheme(registry, tmp_path):
    calls = []

    def reader(arg, data_dir):
        calls.append((arg, data_dir))
        return _arrays()

    assert trainlab.register_format("mine", reader) is reader
    ds = trainlab.load_dataset("mine:some/where:with:colons", tmp_path)
    assert calls == [("some/where:with:colons", tmp_path)]
    assert ds.spec == "mine:some/where:with:colons" and ds.name == "fmt"  # the string that reloads it
    assert resolve({"dataset": "mine:x"}).dataset == "mine:x"

    @trainlab.data.register_format("keeps")
    def keeps(arg, data_dir):
        ds = _arrays()
        ds.spec = f"keeps:/abs/{arg}"  # a reader may record a better spec (an absolute path)
        return ds

    assert trainlab.load_dataset("keeps:rel").spec == "keeps:/abs/rel"


def test_every_reader_sets_spec(tmp_path):
    folder = write_idx_folder(tmp_path / "d", n_train=50, n_test=20)
    assert trainlab.load_dataset("mnist", folder).spec == "mnist"  # a catalog name, from data_dir
    ds = trainlab.load_dataset(f"idx:{folder}")
    assert ds.spec == f"idx:{folder}" and ds.name == f"idx:{folder}"
    assert _arrays().spec is None  # given in memory: nothing to reload it from


def test_an_idx_spec_is_absolute(tmp_path, monkeypatch):
    write_idx_folder(tmp_path / "d", n_train=50, n_test=20)
    monkeypatch.chdir(tmp_path)
    ds = trainlab.load_dataset("idx:d")
    assert ds.spec == f"idx:{tmp_path / 'd'}" and ds.name == "idx:d"


def test_a_reader_must_return_a_dataset(registry):
    trainlab.register_format("bad", lambda arg, data_dir: {"x": 1})
    with pytest.raises(DataError, match="the 'bad' reader returned dict, not a trainlab Dataset"):
        trainlab.load_dataset("bad:x")


def test_arrays_is_reserved_and_refused_at_load():
    with pytest.raises(ConfigError) as e:
        trainlab.load_dataset("arrays:tiny")
    msg = str(e.value)
    assert "'arrays:tiny' was given in memory (trainlab.from_arrays)" in msg
    assert "data=" in msg and "command line" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="'arrays' is reserved"):
        trainlab.register_format("arrays", lambda arg, data_dir: None)
    assert resolve({"dataset": "arrays:tiny"}).dataset == "arrays:tiny"  # refused when loaded, not read


def test_an_unknown_scheme_names_the_registered_ones_and_how_to_add_one(registry):
    trainlab.register_format("npz", lambda arg, data_dir: _arrays())
    with pytest.raises(ConfigError) as e:
        trainlab.load_dataset("later:thing")
    msg = str(e.value)
    assert "no data format 'later' is registered in this process (registered: cifar10, cifar100, csv, folder, hf, idx, npz)" in msg
    assert "trainlab.data.register_format" in msg and "--allow-import" in msg and "\n" not in msg


@pytest.mark.parametrize("call,message", [
    (lambda: trainlab.register_format("idx", lambda a, d: None), "'idx' is already registered"),
    (lambda: trainlab.register_format("9x", lambda a, d: None), "scheme '9x' is invalid"),
    (lambda: trainlab.register_format("a:b", lambda a, d: None), "scheme 'a:b' is invalid"),
    (lambda: trainlab.register_format("", lambda a, d: None), "scheme '' is invalid"),
    (lambda: trainlab.register_format("ok", "not callable"), "the reader 'not callable' is not callable"),
])
def test_bad_format_registrations(registry, call, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        call()
    assert formats.schemes() == ["cifar10", "cifar100", "csv", "folder", "hf", "idx"]  # the built-in ones


def test_config_accepts_any_scheme_and_refuses_junk_naming_the_choices(registry):
    trainlab.register_format("npz", lambda arg, data_dir: _arrays())
    for ok in ("fashion-mnist", "mnist", "idx:/x", "npz:a.npz", "not-yet:registered", "s3+x.y_z:a"):
        assert resolve({"dataset": ok}).dataset == ok
    for junk in ("fashon-mnist", "cifar10", "two words", ":x", "9p:x", ""):
        with pytest.raises(ConfigError) as e:
            resolve({"dataset": junk})
        msg = str(e.value)
        assert msg.startswith(f"dataset = {junk!r} is invalid: ") and "\n" not in msg
        assert "fashion-mnist, mnist" in msg and "idx:DIR is built in" in msg and "register_format" in msg
    with pytest.raises(ConfigError, match="did you mean 'fashion-mnist'"):
        resolve({"dataset": "fashon-mnist"})
    with pytest.raises(ConfigError, match="idx: needs an argument after the colon"):
        resolve({"dataset": "idx:"})


# ---------------------------------------------------------------- --allow-import, up front

@pytest.mark.parametrize("module,code,message", [
    ("broken_mod", "raise RuntimeError('no GPU here')\n",
     "--allow-import broken_mod: importing it failed (RuntimeError: no GPU here)"),
    ("syntax_mod", "def (:\n", "--allow-import syntax_mod: importing it failed (SyntaxError"),
    ("clash_mod", "import trainlab\ntrainlab.register('mlp', lambda s, n: None)\n",
     "importing it failed (ConfigError: model name 'mlp' is already registered"),
    ("absent_mod", None, "--allow-import absent_mod: importing it failed (ModuleNotFoundError"),
])
def test_a_module_that_fails_to_import_is_one_sentence_exit_1(cli, tmp_path, monkeypatch, module, code, message):
    if code is not None:
        (tmp_path / f"{module}.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the import puts the folder on it
    done = cli("data", "info", "--allow-import", module, "--dataset", "idx:/nowhere")
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("trainlab: error:") == 1 and message in done.stderr
    assert "Traceback" not in done.stderr
    sys.modules.pop(module, None)


def test_allow_import_takes_a_module_not_a_function(cli):
    done = cli("data", "info", "--allow-import", "mymod:make_net")
    assert done.returncode == 2 and "name a module (e.g. mymod), not module:function" in done.stderr


# ---------------------------------------------------------------- user extensions, public API only

def small_convnet(input_shape, num_classes, width=8):
    """A user's convolutional model for the extension test below."""
    c = input_shape[0]
    return nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(4 * width, num_classes))


def test_a_user_conv_model_gets_its_recipe_and_channels_last_through_train_resume_export(tmp_path, capsys):
    trainlab.register("registry-test-convnet", small_convnet, recipe="fast-cnn", conv=True)
    tx, ty = make_images(160, num_classes=4, size=8, seed=1)
    sx, sy = make_images(64, num_classes=4, size=8, seed=2)
    data = trainlab.from_arrays(tx, ty, sx, sy, classes=["a", "b", "c", "d"])
    cfg = trainlab.resolve({"model": "registry-test-convnet", "epochs": 1, "batch_size": 32, "val_size": 32,
                            "quiet": True, "threads": 1, "runs_dir": str(tmp_path / "runs"), "name": "conv"})
    assert cfg.recipe == "fast-cnn" and cfg.channels_last is True
    first = trainlab.train(cfg, data=data, progress=False)
    run = first.run_dir
    stored = tomllib.loads((run / "config.toml").read_text())
    assert stored["model"] == "registry-test-convnet" and stored["recipe"] == "fast-cnn"
    assert stored["channels_last"] is True and stored["hflip"] is True and stored["optimizer"] == "adamw"

    again = trainlab.resume(run, epochs=2, data=data, progress=False)
    assert again.config.recipe == "fast-cnn" and again.config.channels_last is True
    assert json.loads((run / "results.json").read_text())["epochs"] == 2

    assert trainlab.cli.main(["export", str(run), "-o", str(tmp_path / "out")]) == 0
    meta = json.loads((tmp_path / "out" / "model.safetensors.json").read_text())
    assert meta["model_spec"]["name"] == "registry-test-convnet" and meta["classes"] == ["a", "b", "c", "d"]
    model = small_convnet((1, 8, 8), 4)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(tmp_path / "out" / "model.safetensors"))  # the user's own module loads it

    # the data was given in memory: the command line cannot reload it, and says so
    capsys.readouterr()
    assert trainlab.cli.main(["evaluate", str(run), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "was given in memory (trainlab.from_arrays)" in err and "data=" in err and "Traceback" not in err


NPZ_FORMAT = '''
"""A user's data format: one .npz file with train_x, train_y, test_x, test_y."""
from pathlib import Path

import numpy as np
import trainlab


def read_npz(arg, data_dir):
    path = Path(data_dir or ".") / arg
    z = np.load(path)
    return trainlab.from_arrays(z["train_x"], z["train_y"], z["test_x"], z["test_y"], name=path.stem)


trainlab.data.register_format("npz", read_npz)
'''


def test_a_user_data_format_from_the_command_line(tmp_path):
    (tmp_path / "npzformat.py").write_text(textwrap.dedent(NPZ_FORMAT))
    tx, ty = make_images(120, num_classes=4, size=8, seed=1)
    sx, sy = make_images(40, num_classes=4, size=8, seed=2)
    np.savez(tmp_path / "tiny.npz", train_x=tx, train_y=ty, test_x=sx, test_y=sy)
    fast = ["--threads", "1", "--quiet"]
    done = run_cli("train", "--allow-import", "npzformat", "--dataset", "npz:tiny.npz", "--model", "mlp",
                   "--epochs", "1", "--batch-size", "32", "--val-size", "20", "--runs-dir", "runs",
                   "--name", "npz", *fast, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stored = tomllib.loads((tmp_path / "runs" / "npz" / "config.toml").read_text())
    assert stored["dataset"] == "npz:tiny.npz"

    done = run_cli("evaluate", "runs/npz", "--no-plots", "--allow-import", "npzformat", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "acc" in done.stdout.lower()

    done = run_cli("evaluate", "runs/npz", "--no-plots", cwd=tmp_path)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("trainlab: ")]
    assert len(errors) == 1, done.stderr
    assert "no data format 'npz' is registered" in errors[0] and "--allow-import" in errors[0]
    assert "Traceback" not in done.stderr


CONV_MODULE = '''
"""A user's model module: registering is all it does."""
from torch import nn
import trainlab


def make(input_shape, num_classes):
    return nn.Sequential(nn.Conv2d(input_shape[0], 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, num_classes))


trainlab.register("cli-convnet", make, recipe="textbook", conv=True)
'''


def test_a_model_registered_by_an_allowed_module_on_the_command_line(tmp_path):
    (tmp_path / "mynets.py").write_text(CONV_MODULE)
    data = write_idx_folder(tmp_path / "d", n_train=120, n_test=40, size=8, num_classes=4)
    done = run_cli("train", "--allow-import", "mynets", "--model", "cli-convnet", "--dataset", f"idx:{data}",
                   "--epochs", "1", "--batch-size", "32", "--val-size", "20", "--runs-dir", "runs", "--name", "c",
                   "--threads", "1", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stored = tomllib.loads((tmp_path / "runs" / "c" / "config.toml").read_text())
    assert stored["recipe"] == "textbook" and stored["channels_last"] is True  # read after the import

    done = run_cli("export", "runs/c", "-o", "out", cwd=tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("trainlab: ")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "its model 'cli-convnet' is not registered in this process" in errors[0]
    assert "--allow-import MODULE" in errors[0]
    done = run_cli("export", "runs/c", "-o", "out", "--allow-import", "mynets", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_the_package_root_exports_the_registries():
    assert trainlab.register is models.register and trainlab.build_model is models.build
    assert trainlab.register_format is trainlab.data.register_format is formats.register_format
    assert {"register", "register_format", "build_model"} <= set(trainlab.__all__)
