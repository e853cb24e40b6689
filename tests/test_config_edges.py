"""Edge values: every bad config value or model kwarg is one ConfigError sentence naming the key,
the value and what is allowed, raised before any data is loaded (never a traceback, never a
huge allocation)."""

import math
import typing
from dataclasses import fields

import pytest

from trainlab import models
from trainlab.config import Config, dumps_toml, load_toml, resolve
from trainlab.config_checks import RUN_LIMITS
from trainlab.errors import ConfigError
from trainlab.recipes import RECIPE_LIMITS, Recipe

INF, NAN = math.inf, math.nan
FLOAT_KEYS = [f.name for cls in (Config, Recipe) for f in fields(cls)
              if typing.get_type_hints(cls)[f.name] is float]


def refused(values, message):
    with pytest.raises(ConfigError) as e:
        resolve(values)
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_every_number_and_choice_field_has_a_row_in_its_table():
    hints = {**typing.get_type_hints(Config), **typing.get_type_hints(Recipe)}
    numbers = {k for k, h in hints.items() if h in (int, float, int | None)}
    choices = {"optimizer", "schedule", "precision", "device", "mode", "memory_budget", "rerun",
               "class_weights", "track"}
    lists = {k for k, h in hints.items() if h is list}  # e.g. step_milestones: checked item by item
    assert numbers | choices | lists == set(RUN_LIMITS) | set(RECIPE_LIMITS)


@pytest.mark.parametrize("value", [INF, -INF, NAN])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_floats_must_be_finite(key, value):
    refused({key: value}, f"{key} = {value!r} is invalid: ")


@pytest.mark.parametrize("values,message", [
    ({"epochs": 10**30}, f"epochs = {10**30} is invalid: must be at least 1 and at most 100000"),
    ({"batch_size": 10**12}, "batch_size = 1000000000000 is invalid: must be at least 1 and at most 1048576"),
    ({"seed": -1}, "seed = -1 is invalid: must be an int in [0, 2**63)"),
    ({"seed": 2**63}, f"seed = {2**63} is invalid: must be an int in [0, 2**63)"),
    ({"threads": 10**6}, "threads = 1000000 is invalid: must be at least 1 and at most 1024"),
    ({"val_size": 10**12}, "val_size = 1000000000000 is invalid: must be 0 (no validation split) or more"),
    ({"patience": 10**9}, "patience = 1000000000 is invalid: must be 0 (off) or more, up to 1000000"),
    ({"save_every": 10**9}, "save_every = 1000000000 is invalid"),
    ({"keep": 10**9}, "keep = 1000000000 is invalid"),
    ({"translate": 10**9}, "translate = 1000000000 is invalid: must be 0 (off) or a number of pixels up to 16"),
    ({"translate": 17}, "translate = 17 is invalid"),
    ({"lr": 1e9}, "lr = 1000000000.0 is invalid: must be greater than 0 and at most 10"),
    ({"weight_decay": 2}, "weight_decay = 2.0 is invalid: must be in [0, 1]"),
    ({"grad_clip": 1e30}, "grad_clip = 1e+30 is invalid"),
    ({"min_delta": 1e30}, "min_delta = 1e+30 is invalid"),
    ({"device": "cuda:١"}, "device = 'cuda:١' is invalid"),  # \d matches Arabic-Indic digits
])
def test_numbers_have_upper_bounds(values, message):
    refused(values, message)


NAME_RULE = "is invalid: use a plain folder name (printable, up to 200 bytes, no '/' or '\\', not starting with '.')"


@pytest.mark.parametrize("name", ["x" * 256, "é" * 150, "a\0b", "a\\b", ".hidden", "tab\there", "a\nb"])
def test_run_names_are_plain_file_names(name):
    msg = refused({"name": name}, NAME_RULE if "\0" not in name else "contains a NUL byte")
    assert len(msg) < 300  # a long value is shortened in the message


def test_the_longest_allowed_name_is_accepted():
    assert resolve({"name": "x" * 200}).name == "x" * 200


@pytest.mark.parametrize("key", ["dataset", "data_dir", "model", "runs_dir"])
def test_nul_bytes_are_refused_in_every_string(key):
    refused({key: "a\0b"}, f"{key} = 'a\\x00b' is invalid: contains a NUL byte")


def test_runs_dir_must_be_a_folder(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    refused({"runs_dir": str(f)}, f"runs_dir = '{f}' is invalid: {f} is a file, not a folder")
    refused({"runs_dir": str(f / "runs")}, f"is invalid: {f} is a file, not a folder")
    assert resolve({"runs_dir": str(tmp_path / "new" / "runs")}).runs_dir.endswith("runs")


@pytest.mark.parametrize("key", ["runs_dir", "data_dir"])
def test_path_components_over_255_bytes_are_refused(key, tmp_path):
    refused({key: str(tmp_path / ("x" * 256))}, f"{key} = ")
    refused({key: str(tmp_path / ("x" * 256))}, "has a path component over 255 bytes")


@pytest.mark.parametrize("model", [":", "mod:", ":fn", "a b:c", "a:b:c", "a.:f", "1mod:f", "a/b", "x" * 101, "-x"])
def test_model_specs_must_be_a_name_or_module_function(model):
    refused({"model": model}, "is invalid: name a registered model (e.g. mlp, cnn-fast) or your own "
                              "factory as package.module:function")


@pytest.mark.parametrize("model", ["mlp", "mlp-reg", "cnn-fast", "resnet", "mypkg.nets:make_net", "m:f"])
def test_good_model_specs_pass(model):
    assert resolve({"model": model}).model == model


@pytest.mark.parametrize("kwargs,message", [
    ({1: 2}, "model_kwargs key 1 is invalid: keys are Python identifiers"),
    ({"a b": 1}, "model_kwargs key 'a b' is invalid"),
    ({"hidden": {"x": 1}}, "model_kwargs.hidden = {'x': 1} is invalid: use a number, true/false, a string"),
    ({"hidden": [[1, 2]]}, "model_kwargs.hidden = [[1, 2]] is invalid"),
    ({"hidden": None}, "model_kwargs.hidden = None is invalid"),
    ({"dropout": NAN}, "model_kwargs.dropout = nan is invalid: numbers must be finite"),
    ({"hidden": [INF]}, "model_kwargs.hidden = [inf] is invalid: numbers must be finite"),
    ({"act": "re\0lu"}, "model_kwargs.act = 're\\x00lu' is invalid: contains a NUL byte"),
])
def test_model_kwargs_are_a_flat_table_of_plain_values(kwargs, message):
    refused({"model_kwargs": kwargs}, message)


def test_keys_must_be_strings():
    refused({1: 2}, "command line: key 1 is invalid: keys are strings")


# ---------------------------------------------------------------- config files

def test_a_config_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "run.toml"
    path.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 11\); TOML files must be UTF-8"):
        load_toml(path)


def test_a_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "run.toml"
    path.write_bytes(b"\xef\xbb\xbfepochs = 3\n")
    assert load_toml(path) == {"epochs": 3}


def test_a_folder_given_as_the_config_file(tmp_path):
    with pytest.raises(ConfigError, match=f"config file {tmp_path} is a folder, not a TOML file"):
        load_toml(tmp_path)


def test_an_unreadable_config_file(tmp_path, monkeypatch):
    path = tmp_path / "run.toml"
    path.write_text("epochs = 1\n")

    def denied(p, *a, **k):  # tests may run as root, where chmod 000 does not stop reading
        raise PermissionError(13, "Permission denied", str(p))
    monkeypatch.setattr("trainlab.config.open", denied, raising=False)
    with pytest.raises(ConfigError, match=f"config file {path} cannot be read: permission denied"):
        load_toml(path)


@pytest.mark.parametrize("text,message", [
    ("epochs = " + "1" * 5000 + "\n", "is not valid TOML: Exceeds the limit (4300 digits)"),
    ("# " + "x" * (1 << 20) + "\n", "is over 1048576 bytes: not a trainlab config"),
])
def test_config_files_that_would_raise_or_run_away(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_toml(path)
    assert message in str(e.value)


def test_a_nul_byte_in_the_config_path():
    with pytest.raises(ConfigError, match="cannot be read"):
        load_toml("a\0b.toml")


def test_values_at_the_edges_round_trip_through_config_toml(tmp_path):
    cfg = resolve({"seed": 2**63 - 1, "epochs": 100_000, "batch_size": 2**20, "lr": 10, "translate": 16,
                   "threads": 1024, "min_delta": 1e6, "grad_clip": 1e6, "erase": 1.0, "ema": 0.9999,
                   "name": "é" * 100, "model_kwargs": {"hidden": [1, 2], "dropout": 0.5, "act": "relu"}})
    path = tmp_path / "config.toml"
    path.write_text(dumps_toml(cfg.to_dict()), encoding="utf-8")
    assert resolve(base=load_toml(path)) == cfg


# ---------------------------------------------------------------- the command line



# ---------------------------------------------------------------- model kwargs

@pytest.mark.parametrize("name,kwargs,message", [
    # bool is an int in Python: True would silently be a layer of width 1
    ("mlp", {"hidden": [True, 2]}, "hidden = [True, 2] is invalid: a list of up to 64 ints, each from 1 to 65536"),
    ("mlp-reg", {"hidden": [2, True]}, "hidden = [2, True] is invalid"),
    ("cnn", {"channels": [True]}, "channels = [True] is invalid"),
    ("cnn-fast", {"channels": [8, True]}, "channels = [8, True] is invalid: a list of 1 to 64 ints"),
    ("cnn-fast", {"fc": True}, "fc = True is invalid: 0 (no hidden FC layer) or an int up to 65536"),
    ("cnn", {"fc": True}, "fc = True is invalid: an int from 1 to 65536"),
    # not a list, or not numbers
    ("mlp", {"hidden": 5}, "hidden = 5 is invalid: a list of"),
    ("cnn", {"channels": 32}, "channels = 32 is invalid: a list of up to 64 ints"),
    ("mlp-reg", {"dropout": "x"}, "dropout = 'x' is invalid: a probability in [0, 1)"),
    ("cnn", {"fc": -1}, "fc = -1 is invalid: an int from 1 to 65536"),
    ("cnn", {"fc": 0}, "fc = 0 is invalid"),
    # sizes that would allocate terabytes or build millions of modules
    ("mlp", {"hidden": [10**9]}, "hidden = [1000000000] is invalid"),
    ("mlp", {"hidden": [8] * 65}, "hidden = [8, 8, 8, 8, 8, 8, ...] is invalid: a list of up to 64 ints"),
    ("cnn-fast", {"fc": 10**7}, "fc = 10000000 is invalid"),
    ("resnet", {"width": 10**7}, "width = 10000000 is invalid: an int from 1 to 65536"),
    ("resnet", {"depth": 10**6}, "depth = 1000000 is invalid: an int from 1 to 256"),
])
def test_bad_model_kwargs_are_one_sentence(name, kwargs, message):
    with pytest.raises(ConfigError) as e:
        models.build(name, (1, 28, 28), 10, **kwargs)
    assert f"model kwarg {message}" in str(e.value)


@pytest.mark.parametrize("name,kwargs", [
    ("mlp", {"hidden": [65536] * 3}),  # every width allowed, but 8.6e9 parameters together
    ("cnn", {"channels": [65536, 65536]}),
    ("resnet", {"width": 4096}),
])
def test_models_over_a_billion_parameters_are_refused_before_allocating(name, kwargs):
    with pytest.raises(ConfigError, match=r"model kwargs give [\d,]+ parameters, over the limit of 1,000,000,000"):
        models.build(name, (1, 28, 28), 10, **kwargs)


def test_the_largest_widths_within_the_limit_still_build():
    assert models.count_parameters(models.build("mlp", (1, 28, 28), 10, hidden=[65536])) == 784 * 65536 + 65536 + 65536 * 10 + 10
