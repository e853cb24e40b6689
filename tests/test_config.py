"""Config: TOML file + command line, unknown keys, wrong types, invalid values, round trip."""

import dataclasses

import pytest

from trainlab import api
from trainlab.config import Config, dumps_toml, load_toml, resolve
from trainlab.errors import ConfigError


def write(tmp_path, text, name="run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_resolve_to_the_default_recipe():
    cfg = resolve({})
    assert cfg.recipe == "fast" and cfg.model == "mlp" and cfg.val_size == 5000
    assert cfg.train.schedule == "onecycle"


def test_toml_is_loaded_and_the_command_line_wins(tmp_path):
    path = write(tmp_path, 'recipe = "textbook"\nepochs = 3\nlr = 0.01\nbatch-size = 128\n'
                           'model = "mlp-reg"\n[model_kwargs]\ndropout = 0.2\n')
    cfg = resolve({"epochs": 5, "seed": 7}, base=load_toml(path), origin=str(path))
    assert cfg.train.epochs == 5  # command line over file
    assert cfg.train.lr == 0.01 and cfg.train.batch_size == 128  # file over preset ('-' accepted)
    assert cfg.recipe == "textbook" and cfg.seed == 7
    assert cfg.model == "mlp-reg" and cfg.model_kwargs == {"dropout": 0.2}


def test_explicit_fields_beat_the_preset_whichever_names_the_recipe(tmp_path):
    # the file sets a field, the command line switches the preset: the field still holds
    cfg = resolve({"recipe": "fast"}, base={"batch_size": 32})
    assert cfg.recipe == "fast" and cfg.train.batch_size == 32
    assert cfg.train.optimizer == "adamw"  # the rest comes from the preset


def test_unknown_key_in_a_file_names_the_file_and_suggests(tmp_path):
    path = write(tmp_path, "epoch = 3\n")
    with pytest.raises(ConfigError) as e:
        resolve(base=load_toml(path), origin=str(path))
    msg = str(e.value)
    assert str(path) in msg and "'epoch'" in msg and "did you mean 'epochs'" in msg


def test_unknown_key_on_the_command_line():
    with pytest.raises(ConfigError, match=r"command line: unknown key 'learning_rate'"):
        resolve({"learning_rate": 0.1})


@pytest.mark.parametrize("key,value,expected", [
    ("epochs", "3", "expected int"),      # string for int
    ("epochs", True, "expected int"),     # bool is not an int here
    ("epochs", 2.5, "expected int"),      # float for int
    ("lr", "0.1", "expected float"),
    ("quiet", 1, "expected bool"),
    ("model_kwargs", [1], "expected dict"),
    ("threads", "two", "expected int or none"),
])
def test_wrong_types_name_the_key_and_the_expected_type(key, value, expected):
    with pytest.raises(ConfigError) as e:
        resolve({key: value})
    assert f"{key} = {value!r} has the wrong type" in str(e.value)
    assert expected in str(e.value)


def test_an_int_is_accepted_where_a_float_is_expected():
    assert resolve({"lr": 1}).train.lr == 1.0


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(write(tmp_path, "epochs = = 3\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_toml(tmp_path / "nope.toml")


@pytest.mark.parametrize("values,message", [
    ({"epochs": -1}, "epochs = -1 is invalid: must be at least 1"),
    ({"epochs": 0}, "epochs = 0 is invalid: must be at least 1"),
    ({"lr": 0}, "lr = 0.0 is invalid: must be greater than 0"),
    ({"lr": -0.1}, "lr = -0.1 is invalid: must be greater than 0"),
    ({"batch_size": 0}, "batch_size = 0 is invalid: must be at least 1"),
    ({"optimizer": "rmsprop"}, "optimizer = 'rmsprop' is invalid: choose one of adam, adamw, sgd"),
    ({"schedule": "linear"}, "schedule = 'linear' is invalid: choose one of none, onecycle, cosine, plateau, step"),
    ({"label_smoothing": 1}, "label_smoothing = 1.0 is invalid: must be in [0, 1)"),
    ({"warmup_epochs": 3, "epochs": 3}, "warmup_epochs = 3.0 is invalid: must be in [0, epochs)"),
    ({"device": "gpu"}, "device = 'gpu' is invalid: use auto, cpu, cuda, cuda:N or mps"),
    ({"device": "cuda:x"}, "device = 'cuda:x' is invalid"),
    ({"name": "a/b"}, "name = 'a/b' is invalid: use a plain folder name"),
    ({"name": ".."}, "name = '..' is invalid"),
    ({"name": ""}, "name = '' is invalid"),
    ({"threads": 0}, "threads = 0 is invalid: must be at least 1"),
    ({"val_size": -1}, "val_size = -1 is invalid"),
    ({"recipe": "slow"}, "unknown recipe 'slow': choose one of textbook, fast"),
])
def test_invalid_values_name_field_value_and_what_is_allowed(values, message):
    with pytest.raises(ConfigError) as e:
        resolve(values)
    assert message in str(e.value)


def test_valid_devices_pass():
    for dev in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert resolve({"device": dev}).device == dev


def test_batch_size_larger_than_the_training_set_fails_before_training(tiny_data, tmp_path):
    # 600 training samples - 100 for validation = 500: the check needs the data, so it is in
    # training.build.check_run, which runs before the run folder is created or any step is taken.
    runs = tmp_path / "runs"
    cfg = resolve({"recipe": "textbook", "batch_size": 501, "val_size": 100, "epochs": 1,
                   "runs_dir": str(runs), "quiet": True, "threads": 1})
    with pytest.raises(ConfigError, match="batch_size = 501 is invalid: larger than the 500 training samples"):
        api.train(cfg, data=tiny_data, progress=False)
    assert not runs.exists()


def test_val_size_as_large_as_the_training_set_fails_before_training(tiny_data, tmp_path):
    runs = tmp_path / "runs"
    cfg = resolve({"val_size": 600, "runs_dir": str(runs), "threads": 1})
    with pytest.raises(ConfigError, match="val_size = 600 is invalid: the training split has only 600"):
        api.train(cfg, data=tiny_data, progress=False)
    assert not runs.exists()


def test_to_dict_round_trips_through_config_toml(tmp_path):
    cfg = resolve({"recipe": "textbook", "model": "mlp-reg", "model_kwargs": {"hidden": [64, 32], "dropout": 0.1},
                   "epochs": 4, "lr": 3e-4, "schedule": "cosine", "warmup_epochs": 1.0, "hflip": True,
                   "name": "x", "threads": 1, "seed": 3})
    path = write(tmp_path, dumps_toml(cfg.to_dict()), "config.toml")
    again = resolve(base=load_toml(path), origin=str(path))
    assert again == cfg
    assert isinstance(again, Config)


def test_with_changes_revalidates_and_the_config_is_never_assigned_to():
    cfg = resolve({"recipe": "textbook"})
    assert cfg.with_changes(epochs=2).train.epochs == 2
    with pytest.raises(ConfigError, match="lr = -1.0 is invalid"):
        cfg.with_changes(lr=-1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3
