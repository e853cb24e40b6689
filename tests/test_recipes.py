"""Recipes: named presets, overrides, clear errors."""

import pytest

from trainlab.errors import ConfigError
from trainlab.recipes import DEFAULT_RECIPE, PRESETS, Recipe, get_recipe


def test_presets_exist_and_the_default_is_one_of_them():
    assert {"textbook", "fast"} <= set(PRESETS)
    assert DEFAULT_RECIPE in PRESETS
    for recipe in PRESETS.values():
        assert recipe.validate() is recipe


def test_textbook_is_the_plain_loop():
    r = get_recipe("textbook")
    assert (r.optimizer, r.lr, r.batch_size, r.schedule) == ("adam", 1e-3, 64, "none")
    assert (r.weight_decay, r.label_smoothing, r.grad_clip, r.ema) == (0, 0, 0, 0)
    # no augmentation of any kind, no test-time tricks
    assert (r.translate, r.hflip, r.erase, r.tta_flip) == (0, False, 0, False)


def test_overrides_apply_and_leave_the_preset_alone():
    r = get_recipe("textbook", epochs=3, lr=0.01, schedule="cosine")
    assert (r.epochs, r.lr, r.schedule, r.optimizer) == (3, 0.01, "cosine", "adam")
    assert PRESETS["textbook"].lr == 1e-3 and PRESETS["textbook"].epochs == 10


def test_overrides_are_validated():
    with pytest.raises(ConfigError, match="momentum = 1.0 is invalid: must be in \\[0, 1\\)"):
        get_recipe("fast", momentum=1.0)


def test_unknown_recipe_lists_the_choices():
    with pytest.raises(ConfigError) as e:
        get_recipe("turbo")
    assert "unknown recipe 'turbo'" in str(e.value)
    for name in PRESETS:
        assert name in str(e.value)


def test_unknown_field_lists_the_known_fields():
    with pytest.raises(ConfigError) as e:
        get_recipe("textbook", learning_rate=0.1)
    assert "learning_rate" in str(e.value) and "lr" in str(e.value)


def test_to_dict_holds_every_field():
    assert set(Recipe().to_dict()) == {f for f in Recipe.__dataclass_fields__}


# ---------------------------------------------------------------- a recipe that knows its data

@pytest.mark.parametrize("dataset, flips", [
    ("fashion-mnist", True), ("mnist", False), ("mnist-10k", False), ("idx:/data/x", False),
    ("folder:/data/photos", False), ("cifar10:/data/c", True), ("cifar100:/data/c", True)])
def test_a_presets_flips_are_on_only_where_mirroring_keeps_the_label(dataset, flips):
    """fast-cnn flipped digits too (2.9 points lost on mnist-10k); unknown data counts as no."""
    from trainlab.config import resolve

    for recipe in ("fast-cnn", "resnet"):
        cfg = resolve({"model": "cnn-fast", "recipe": recipe, "dataset": dataset})
        assert (cfg.train.hflip, cfg.train.tta_flip) == (flips, flips), (recipe, dataset)
    asked = resolve({"model": "cnn-fast", "dataset": dataset, "hflip": True, "tta_flip": True})
    assert asked.train.hflip and asked.train.tta_flip  # named by the user: kept


def test_a_registered_format_can_say_its_images_may_be_flipped(monkeypatch):
    from trainlab.config import resolve
    from trainlab import catalog
    from trainlab.data import formats

    # the registries as they were afterwards: other tests list the registered formats
    monkeypatch.setattr(formats, "_READERS", dict(formats._READERS))
    monkeypatch.setattr(catalog, "FLIP_SAFE_SCHEMES", set(catalog.FLIP_SAFE_SCHEMES))
    monkeypatch.setattr(formats, "FLIP_SAFE_SCHEMES", catalog.FLIP_SAFE_SCHEMES)
    formats.register_format("mirrorsafe", lambda arg, data_dir: None, flips_keep_labels=True)
    assert resolve({"model": "cnn-fast", "dataset": "mirrorsafe:x"}).train.hflip
    assert not resolve({"model": "cnn-fast", "dataset": "otherfmt:x"}).train.hflip


def test_the_run_says_why_the_recipe_does_not_flip(tmp_path, caplog):
    import logging

    from conftest import train_tiny, write_idx_folder

    idx = write_idx_folder(tmp_path / "idx", n_train=200, n_test=50)
    with caplog.at_level(logging.INFO, logger="trainlab"):
        train_tiny(tmp_path / "runs", dataset=f"idx:{idx}", model="cnn-fast", epochs=1, val_size=50)
    assert "recipe fast-cnn's horizontal flips are off (idx: not known" in caplog.text


def test_a_folder_given_as_the_data_set_is_told_its_scheme(tmp_path):
    from conftest import write_idx_folder

    from trainlab.config import resolve
    from trainlab.errors import ConfigError

    idx = write_idx_folder(tmp_path / "idx", n_train=20, n_test=10)
    with pytest.raises(ConfigError, match=f"did you mean idx:{idx}"):
        resolve({"dataset": str(idx)})
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    with pytest.raises(ConfigError, match=f"did you mean folder:{tmp_path / 'photos'}"):
        resolve({"dataset": str(tmp_path / "photos")})


def test_freezing_without_init_weights_is_warned(tiny_data, tmp_path, caplog):
    import logging

    from conftest import train_tiny

    with caplog.at_level(logging.WARNING, logger="trainlab"):
        train_tiny(tmp_path, tiny_data, freeze="body", epochs=1)
    assert "without init_from: the frozen parameters keep their random initial values" in caplog.text
