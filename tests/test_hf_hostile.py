"""hf:DIR folders made hostile or odd: labels that are not class numbers (floats, text, missing,
huge), an image column of numbers, state.json or dataset_dict.json naming files outside the
folder, and decoded images beyond the memory budget: each one sentence, nothing read outside."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from conftest import run_cli

datasets = pytest.importorskip("datasets", reason="the optional datasets package is not installed")

from trainlab.data import load_dataset  # noqa: E402
from trainlab.errors import DataError  # noqa: E402

ROWS = 30


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _save(folder, labels, label_feature, images=None, image_feature=None):
    rng = np.random.default_rng(0)
    images = images if images is not None else [{"bytes": _png(rng.integers(0, 255, (8, 8), dtype=np.uint8)),
                                                 "path": None} for _ in range(ROWS)]
    feats = datasets.Features({"image": image_feature or datasets.Image(), "label": label_feature})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=feats).save_to_disk(str(folder))
    return folder


def _good(folder):
    return _save(folder, [i % 3 for i in range(ROWS)], datasets.ClassLabel(names=["a", "b", "c"]))


@pytest.mark.parametrize("name,labels,dtype,phrase", [
    ("float", [i % 3 + 0.5 for i in range(ROWS)], "float32", "not class numbers"),
    ("text", [str(i % 3) for i in range(ROWS)], "string", "not class numbers"),
    ("missing", [None] + [i % 3 for i in range(1, ROWS)], "int64", "have no label"),
    ("huge", [2**62] + [i % 3 for i in range(1, ROWS)], "int64", "out of range"),
    ("beyond-the-rows", [10**6] + [i % 3 for i in range(1, ROWS)], "int64", "out of range"),
])
def test_labels_that_are_not_class_numbers_are_refused(tmp_path, name, labels, dtype, phrase):
    """Floats were truncated and text parsed silently; a missing or huge label was an internal
    error; a label of 10**6 made a million class names."""
    folder = _save(tmp_path / name, labels, datasets.Value(dtype))
    with pytest.raises(DataError, match=phrase):
        load_dataset(f"hf:{folder}")


def test_an_image_column_of_numbers_is_one_sentence(tmp_path):
    folder = _save(tmp_path / "ints", [i % 3 for i in range(ROWS)], datasets.ClassLabel(names=["a", "b", "c"]),
                   images=list(range(ROWS)), image_feature=datasets.Value("int64"))
    r = run_cli("data", "info", "--dataset", f"hf:{folder}#image=image")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert "not images" in r.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("where", ["absolute", "relative", "etc-passwd", "link"])
def test_state_json_naming_files_outside_the_folder_is_refused(tmp_path, where):
    """datasets opens whatever state.json names: another data set's arrow file by an absolute or
    ../ path was read as this one's, /etc/passwd was opened."""
    other = _good(tmp_path / "other")
    arrow = next(other.glob("*.arrow"))
    folder = _good(tmp_path / "ds")
    state = json.loads((folder / "state.json").read_text())
    own = state["_data_files"][0]["filename"]
    if where == "link":
        (folder / own).unlink()
        (folder / own).symlink_to(arrow)
    else:
        state["_data_files"][0]["filename"] = {"absolute": str(arrow), "relative": f"../other/{arrow.name}",
                                               "etc-passwd": "/etc/passwd"}[where]
        (folder / "state.json").write_text(json.dumps(state))
    r = run_cli("data", "info", "--dataset", f"hf:{folder}")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "not regular files inside its folder" in r.stderr.strip().splitlines()[-1]


def test_dataset_dict_splits_outside_the_folder_are_refused(tmp_path):
    other = _good(tmp_path / "other")
    root = tmp_path / "dd"
    root.mkdir()
    shutil.copytree(other, root / "train")
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "../other"]}))
    with pytest.raises(DataError, match="names splits that are not folders inside it"):
        load_dataset(f"hf:{root}")


def test_decoded_images_beyond_the_memory_budget_are_refused_before_decoding(tmp_path):
    big = _png((np.add.outer(np.arange(2000), np.arange(2000)) % 256).astype(np.uint8))  # 4 MB decoded
    folder = _save(tmp_path / "big", [i % 3 for i in range(ROWS)], datasets.ClassLabel(names=["a", "b", "c"]),
                   images=[{"bytes": big, "path": None}] * ROWS)
    with pytest.raises(DataError, match="more than the memory budget"):
        load_dataset(f"hf:{folder}", memory_budget="64MiB")
    assert load_dataset(f"hf:{folder}", image_size=16, memory_budget="64MiB").train_x.shape[1:] == (1, 16, 16)
