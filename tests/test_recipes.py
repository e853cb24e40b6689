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
