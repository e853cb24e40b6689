"""folder:DIR, your own images: layouts, channel and size policy, the carved test split, bad
files, the decode cache and its invalidation, the CLI from training to predict, and a real
round trip (Fashion-MNIST as PNG files reads back equal to the IDX pixels)."""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import child_pids, cli_env, is_alive, run_cli, start_cli, write_fashion_pngs, write_image_folder

PIL = pytest.importorskip("PIL")
from PIL import Image

from trainlab.data import folder as folder_mod
from trainlab.data.folder import scanner as folder_scanner
from trainlab.data import load_dataset
from trainlab.errors import ConfigError, DataError


def load(root, **kw):
    return load_dataset(f"folder:{root}", **kw)


def bomb_png(path: Path, width=100_000, height=100_000) -> Path:
    """A valid PNG header declaring far more pixels than Pillow's bomb limit (a few bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------- layouts and the test split

def test_class_folders_give_sorted_class_names_and_a_seeded_stratified_test_split(tmp_path):
    root = write_image_folder(tmp_path / "pets", classes=("dog", "cat", "bird"), per_class=10)
    (root / "cat" / "notes.txt").write_text("not an image")  # other files are ignored
    ds = load(root, seed=3)
    assert ds.classes == ["bird", "cat", "dog"]
    assert ds.input_shape == (3, 16, 20)
    assert len(ds.train_y) == 24 and len(ds.test_y) == 6
    assert np.bincount(ds.test_y.numpy()).tolist() == [2, 2, 2]  # stratified: 20% of each class
    carved = ds.source["test_carved"]
    assert carved["seed"] == 3 and len(carved["files"]) == 6
    assert all(f.split("/")[0] in ds.classes for f in carved["files"])
    assert ds.source["ignored"] == 1
    assert ds.spec == f"folder:{root.resolve()}"
    again = load(root, seed=3)
    assert again.source["test_carved"]["files"] == carved["files"]
    other = load(root, seed=4)
    assert other.source["test_carved"]["files"] != carved["files"]
    # the carved files are exactly the test images
    files = {f: i for i, f in enumerate(carved["files"])}
    assert len(files) == len(ds.test_y)


def test_split_layout_uses_test_and_val_folders_as_given(tmp_path):
    root = tmp_path / "d"
    write_image_folder(root, classes=("a", "b"), per_class=5, split="train")
    write_image_folder(root, classes=("a", "b"), per_class=2, split="val", seed=1)
    write_image_folder(root, classes=("a", "b"), per_class=3, split="test", seed=2)
    ds = load(root)
    assert ds.source["layout"] == "splits" and ds.source["val_given"] == 4
    assert len(ds.train_y) == 14 and len(ds.test_y) == 6
    assert "test_carved" not in ds.source
    expected = np.asarray(Image.open(root / "test" / "b" / "0000.png")).transpose(2, 0, 1)
    assert np.array_equal(ds.test_x[3].numpy(), expected)  # test: a/0..2 then b/0..
    # the validation rows are exactly the val/ files, whatever val_size or seed says
    fit, val = ds.train_val_indices(val_size=9, seed=5)
    assert len(fit) == 10 and len(val) == 4 and set(fit.tolist()).isdisjoint(val.tolist())
    val_pixels = {ds.train_x[i].numpy().tobytes() for i in val.tolist()}
    on_disk = {np.asarray(Image.open(p)).transpose(2, 0, 1).tobytes() for p in sorted((root / "val").rglob("*.png"))}
    assert val_pixels == on_disk
    # larger than memory (the splits stay memory-mapped): the same validation rows
    mapped = load(root, memory_budget="1B")
    assert mapped.source.get("mapped") and np.array_equal(mapped.val_rows.numpy(), ds.val_rows.numpy())
    # statistics are of the images trained on, not of val/
    train_only = np.stack([np.asarray(Image.open(p)) for p in sorted((root / "train").rglob("*.png"))])
    assert ds.mean == pytest.approx((train_only / 255.0).mean(axis=(0, 1, 2)).tolist(), abs=1e-4)


def test_val_folder_is_the_run_validation_split(tmp_path):
    import trainlab
    from trainlab.training.callbacks import Callback

    root = tmp_path / "d"
    write_image_folder(root, classes=("a", "b"), per_class=12, split="train")
    write_image_folder(root, classes=("a", "b"), per_class=3, split="val", seed=1)
    seen = {}

    class Sizes(Callback):
        def on_fit_start(self, run):
            seen.update(val=len(run.loaders["val"].labels), train=len(run.loaders["train"].labels))

    trainlab.train({"dataset": f"folder:{root}", "model": "mlp", "epochs": 1, "batch_size": 4,
                    "val_size": 10, "runs_dir": str(tmp_path / "runs"), "name": "v", "threads": 1},
                   callbacks=[Sizes()])
    # validated on the 6 val/ images (val_size = 10 would have taken 10 of train/); trained on
    # what train/ leaves after the carved test split (10% of 24)
    assert seen["val"] == 6 and seen["train"] == 24 - round(24 * folder_mod.TEST_FRACTION)
    # the test split is carved from train/ only: val/ stays whole
    ds = load(root)
    assert ds.source["val_given"] == 6 and "test_carved" in ds.source
    assert not any(f.startswith("val/") for f in ds.source["test_carved"]["files"])


def test_split_layout_refuses_stray_folders_and_unknown_test_classes(tmp_path):
    root = tmp_path / "d"
    write_image_folder(root, classes=("a", "b"), per_class=3, split="train")
    write_image_folder(root, classes=("zebra",), per_class=1, split="test")
    with pytest.raises(DataError, match=r"test/zebra/ is a class that train/ does not have"):
        load(root)
    write_image_folder(tmp_path / "e", classes=("a",), per_class=2, split="train")
    (tmp_path / "e" / "extra").mkdir()
    with pytest.raises(DataError, match=r"only train/, val/ and test/ are read"):
        load(tmp_path / "e")


@pytest.mark.parametrize("make,message", [
    (lambda p: p, "is not a folder"),
    (lambda p: (p.mkdir(), p)[1], "no class folders found"),
    (lambda p: ((p / "a").mkdir(parents=True), p)[1], "hold no training images|holds no training images"),
])
def test_empty_or_missing_folders_are_one_sentence(tmp_path, make, message):
    root = make(tmp_path / "x")
    with pytest.raises(DataError, match=message) as e:
        load(root)
    assert "\n" not in str(e.value)


def test_too_few_images_to_carve_a_test_split(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a",), per_class=2)
    with pytest.raises(DataError, match="too few to carve a test split"):
        load(root)


# ---------------------------------------------------------------- channels and sizes

def test_modes_convert_to_the_channel_count_most_files_have(tmp_path, caplog):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5, size=(8, 8))
    rgba = Image.fromarray(np.full((8, 8, 4), [10, 20, 30, 0], np.uint8), "RGBA")
    rgba.save(root / "a" / "rgba.png")
    Image.fromarray(np.full((8, 8), 77, np.uint8), "L").save(root / "a" / "grey.png")
    Image.fromarray(np.full((8, 8), 50, np.uint8), "L").convert("P").save(root / "b" / "pal.gif")
    with caplog.at_level(logging.INFO, "trainlab.data"):
        ds = load(root, skip_bad=False)
    assert ds.input_shape == (3, 8, 8)
    assert "3 channels" in caplog.text and "3 files converted" in caplog.text
    x = np.concatenate([ds.train_x.numpy(), ds.test_x.numpy()])
    images = {tuple(int(v) for v in img[:, 0, 0]) for img in x}
    assert (10, 20, 30) in images  # alpha dropped, colour kept
    assert (77, 77, 77) in images  # grey replicated
    assert (50, 50, 50) in images  # palette expanded


def test_mostly_grey_folders_give_one_channel_and_16_bit_is_scaled(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5, size=(6, 6), mode="L")
    Image.fromarray(np.full((6, 6), 65535, np.uint16)).save(root / "a" / "deep.png")  # I;16
    Image.fromarray(np.full((6, 6, 3), [255, 0, 0], np.uint8), "RGB").save(root / "b" / "red.png")
    ds = load(root)
    assert ds.input_shape == (1, 6, 6)
    values = {int(img[0, 0, 0]) for img in np.concatenate([ds.train_x.numpy(), ds.test_x.numpy()])}
    assert 255 in values  # 16-bit white is 8-bit white
    assert 76 in values  # red as grey: ITU-R 601-2 luma, Pillow's L conversion


def test_image_size_resizes_the_shorter_side_and_centre_crops(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5, size=(40, 20))
    ds = load(root, image_size=10)
    assert ds.input_shape == (3, 10, 10)
    img = Image.open(root / "a" / "0000.png").convert("RGB").resize((20, 10), Image.Resampling.BILINEAR)
    expected = np.asarray(img.crop((5, 0, 15, 10))).transpose(2, 0, 1)
    assert any(np.array_equal(expected, x) for x in np.concatenate([ds.train_x.numpy(), ds.test_x.numpy()]))


def test_mixed_sizes_default_to_the_most_common_one(tmp_path, caplog):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5, size=(12, 10))
    odd = Image.fromarray(np.arange(30 * 30 * 3, dtype=np.uint32).reshape(30, 30, 3).astype(np.uint8), "RGB")
    odd.save(root / "b" / "odd.png")
    with caplog.at_level(logging.INFO, "trainlab.data"):
        ds = load(root)
    assert ds.input_shape == (3, 10, 12)
    assert "most common size 12x10 (10 of 11 files)" in caplog.text
    # files already of the chosen size are not resampled: pixels as stored
    same = np.asarray(Image.open(root / "a" / "0000.png")).transpose(2, 0, 1)
    assert any(np.array_equal(same, x) for x in np.concatenate([ds.train_x.numpy(), ds.test_x.numpy()]))
    assert ds.source["sizes"] == {"12x10": 10, "30x30": 1}


def test_fit_to_is_the_one_size_rule():
    img = Image.fromarray(np.zeros((30, 60, 3), np.uint8))  # 60 wide, 30 high
    assert folder_mod.fit_to(img, 10, 10).size == (10, 10)
    assert folder_mod.fit_to(img, 60, 30) is img
    assert folder_mod.fit_to(img, 20, 40).size == (20, 40)


# ---------------------------------------------------------------- bad files

def _bad_folder(tmp_path) -> Path:
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5, size=(16, 16))
    good = (root / "a" / "0000.png").read_bytes()
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(big)
    (root / "a" / "truncated.png").write_bytes(big.read_bytes()[: len(big.read_bytes()) // 2])
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "b" / "text.jpg").write_bytes(b"hello, not a jpeg" * 3)
    bomb_png(root / "b" / "bomb.png")
    assert good
    return root


def test_bad_files_stop_loading_with_each_path_and_reason(tmp_path):
    root = _bad_folder(tmp_path)
    with pytest.raises(DataError) as e:
        load(root)
    text = str(e.value)
    assert "\n" not in text and "4 files cannot be decoded" in text
    assert "a/empty.png (empty file (0 bytes))" in text
    assert "b/text.jpg (not a PNG, JPEG, BMP, GIF or WebP image)" in text
    assert "b/bomb.png (decompression bomb" in text
    assert "a/truncated.png (" in text
    assert "--skip-bad" in text


def test_skip_bad_leaves_them_out_and_counts_them(tmp_path, caplog):
    root = _bad_folder(tmp_path)
    with caplog.at_level(logging.WARNING, "trainlab.data"):
        ds = load(root, skip_bad=True)
    assert len(ds.train_y) + len(ds.test_y) == 10
    assert ds.source["skipped_bad"] == 4
    assert sorted(b[0] for b in ds.source["bad"]) == ["a/empty.png", "a/truncated.png", "b/bomb.png", "b/text.jpg"]
    assert "left out 4 files" in caplog.text


def test_a_file_of_another_format_never_reaches_its_decoder(tmp_path, monkeypatch):
    """Pillow picks a plugin by content; EPS would run Ghostscript. Only image formats are tried."""
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    (root / "a" / "doc.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a file ran a program"))
    with pytest.raises(DataError, match=r"a/doc.png \(not a PNG, JPEG, BMP, GIF or WebP image\)"):
        load(root)


def test_many_bad_files_are_listed_first_few_and_counted(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    for i in range(8):
        (root / "a" / f"bad{i}.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"8 files cannot be decoded: .* and 3 more;"):
        load(root)


def test_a_folder_of_only_bad_files(tmp_path):
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="no image could be read"):
        load(root)


# ---------------------------------------------------------------- the decode cache

def _decoded(caplog) -> bool:
    return "data: decoded" in caplog.text


def test_the_second_load_reads_the_cache_and_changes_make_a_new_key(tmp_path, caplog):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    caplog.set_level(logging.INFO, "trainlab.data")
    first = load(root)
    assert _decoded(caplog)
    caches = sorted((Path(os.environ["XDG_CACHE_HOME"]) / "trainlab" / "folder").iterdir())
    assert len(caches) == 1 and (caches[0] / "images.npy").is_file() and (caches[0] / "meta.json").is_file()
    caplog.clear()
    second = load(root)
    assert not _decoded(caplog) and "read the decoded cache" in caplog.text
    assert np.array_equal(first.train_x.numpy(), second.train_x.numpy())

    def reloaded_decodes(**kw) -> bool:
        caplog.clear()
        load(root, **kw)
        return _decoded(caplog)

    st = (root / "a" / "0001.png").stat()
    os.utime(root / "a" / "0001.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touch
    assert reloaded_decodes()
    assert not reloaded_decodes()
    write_image_folder(root, classes=("a",), per_class=6)  # adds a/0005.png
    assert reloaded_decodes()
    (root / "b" / "0004.png").unlink()  # remove
    assert reloaded_decodes()
    assert reloaded_decodes(image_size=8)  # policy change
    assert not reloaded_decodes(image_size=8)
    base = Path(os.environ["XDG_CACHE_HOME"]) / "trainlab" / "folder"
    assert not [p for p in base.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_damaged_cache_is_decoded_again(tmp_path, caplog):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    first = load(root)
    (cache,) = (Path(os.environ["XDG_CACHE_HOME"]) / "trainlab" / "folder").iterdir()
    for damage in ("{not json", "[1, 2]"):
        (cache / "meta.json").write_text(damage)
        caplog.clear()
        with caplog.at_level(logging.INFO, "trainlab.data"):
            again = load(root)
        assert _decoded(caplog)
    assert np.array_equal(first.train_x.numpy(), again.train_x.numpy())
    (cache / "images.npy").write_bytes(b"\x93NUMPY garbage")
    caplog.clear()
    with caplog.at_level(logging.INFO, "trainlab.data"):
        load(root)
    assert _decoded(caplog)


# Each edit leaves meta.json valid JSON of the right shape but no longer true of the folder:
# the cache is decoded again, never trusted (a label out of range would reach the loss).
META_EDITS = {
    "a label out of range": lambda m: m["labels"].__setitem__(0, 99),
    "a negative label": lambda m: m["labels"].__setitem__(0, -1),
    "a label of another type": lambda m: m["labels"].__setitem__(0, "x"),
    "a file moved to another class": lambda m: m["labels"].__setitem__(0, 1),
    "an unknown split": lambda m: m["splits"].__setitem__(0, "elsewhere"),
    "every file a test file": lambda m: m.__setitem__("splits", ["test"] * len(m["splits"])),
    "other class names": lambda m: m.__setitem__("classes", [str(i) for i in range(1000)]),
    "a file not in the folder": lambda m: m["files"].__setitem__(0, "../../etc/passwd"),
    "a file twice": lambda m: m["files"].__setitem__(1, m["files"][0]),
    "a file dropped": lambda m: (m["files"].pop(), m["labels"].pop(), m["splits"].pop()),
    "a good file listed as bad": lambda m: m["bad"].append([m["files"][0], "edited"]),
    "a bad-file entry of another shape": lambda m: m["bad"].append([1]),
    "bad not a list": lambda m: m.__setitem__("bad", 5),
    "modes not counts": lambda m: m.__setitem__("modes", [1, 2]),
    "a size of another type": lambda m: m.__setitem__("height", "16"),
    "no channels": lambda m: m.__setitem__("channels", 0),
    "another policy's image_size": lambda m: m.__setitem__("image_size", 8),
    "an empty object": lambda m: m.clear(),
}


@pytest.mark.parametrize("with_bad", [False, True], ids=["clean", "with-bad-files"])
@pytest.mark.parametrize("edit", META_EDITS, ids=list(META_EDITS))
def test_an_edited_cache_meta_is_decoded_again_not_trusted(tmp_path, caplog, edit, with_bad):
    import torch

    root = _bad_folder(tmp_path) if with_bad else write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    first = load(root, skip_bad=with_bad)
    (cache,) = (Path(os.environ["XDG_CACHE_HOME"]) / "trainlab" / "folder").iterdir()
    meta = json.loads((cache / "meta.json").read_text())
    META_EDITS[edit](meta)
    (cache / "meta.json").write_text(json.dumps(meta))
    for budget in (None, "1"):  # resident, and the splits kept memory-mapped
        caplog.clear()
        with caplog.at_level(logging.INFO, "trainlab.data"):
            again = load(root, skip_bad=with_bad, memory_budget=budget)
        assert _decoded(caplog) == (budget is None)  # the first load decodes and rewrites the cache
        assert again.classes == first.classes and torch.equal(again.train_y, first.train_y)
        assert torch.equal(again.test_y, first.test_y) and torch.equal(again.train_x, first.train_x)


def test_a_cache_with_bad_files_listed_is_read_again_as_it_is(tmp_path, caplog):
    root = _bad_folder(tmp_path)
    load(root, skip_bad=True)
    caplog.clear()
    with caplog.at_level(logging.INFO, "trainlab.data"):
        ds = load(root, skip_bad=True)
    assert not _decoded(caplog) and "read the decoded cache" in caplog.text
    assert ds.source["skipped_bad"] == 4


def test_parallel_decoding_gives_the_same_array(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=12, size=(9, 7))
    s = folder_mod.scan(root)
    one, meta1 = folder_mod.decode_folder(s, None, 1, tmp_path / "one")
    two, meta2 = folder_mod.decode_folder(s, None, 2, tmp_path / "two")
    assert np.array_equal(one, two) and meta1 == meta2


def test_importing_trainlab_needs_no_pillow_and_its_absence_is_one_sentence(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    code = ("import sys; sys.modules['PIL'] = None\n"
            "import trainlab\nfrom trainlab.cli.main import main\n"
            f"raise SystemExit(main(['data', 'info', '--dataset', 'folder:{root}']))\n")
    r = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        "trainlab: error: reading image folders needs Pillow: pip install trainlab[images]"
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- the command line

def test_fifty_classes_train_predict_export_and_data_info_from_the_cli(tmp_path):
    """The transfer check: 50 classes of 100x100 RGB PNG files, trained 1 epoch at 32x32."""
    classes = [f"class{i:02d}" for i in range(50)]
    root = write_image_folder(tmp_path / "photos", classes=classes, per_class=4, size=(100, 100))
    runs = tmp_path / "runs"
    r = run_cli("train", "--dataset", f"folder:{root}", "--image-size", "32", "--model", "cnn-fast",
                "--epochs", "1", "--batch-size", "32", "--val-size", "20", "--runs-dir", runs, "--name", "f50",
                "--quiet", "--threads", "1", timeout=300)
    assert r.returncode == 0, r.stderr
    run = runs / "f50"
    meta = json.loads((run / "meta.json").read_text())
    # 20% of 4 images is 0.8: the proportional carve gave 10 classes no test image (a run that
    # `compare` and `report` then refused as damaged); each class now gets at least one
    carved = meta["data_source"]["test_carved"]["files"]
    assert meta["data_source"]["kind"] == "folder" and len(carved) == 50
    assert sorted({f.split("/")[0] for f in carved}) == classes
    assert meta["classes"] == classes
    assert "image_size = 32" in (run / "config.toml").read_text()
    for cmd in (("compare", run, run), ("report", run, "-o", tmp_path / "r.html")):
        r = run_cli(*cmd, timeout=300)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr

    r = run_cli("predict", run, root / "class07" / "0000.png", root / "class42")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["file", "predicted", "prob"]
    assert len(lines) == 2 + 1 + 4  # header, rule, 1 file + 4 in the folder
    assert any("class42/0003.png" in line for line in lines)

    r = run_cli("export", run)
    if r.returncode == 0:  # safetensors installed
        policy = json.loads((run / "model.safetensors.json").read_text())["image_files"]
        assert policy["channels"] == 3 and policy["image_size"] == 32 and "centre crop" in policy["resize"]

    r = run_cli("data", "info", "--dataset", f"folder:{root}", "--image-size", "32")
    assert r.returncode == 0, r.stderr
    assert "50 classes, 150 train / 50 test" in r.stdout
    assert "modes RGB 200" in r.stdout and "sizes 100x100 200" in r.stdout
    assert "bad      none" in r.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_decode_stopped_by_a_signal_leaves_no_worker_and_no_temporary_folder(tmp_path, sig):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=500, size=(128, 128))
    cache = tmp_path / "cache"
    proc = start_cli("data", "info", "--dataset", f"folder:{root}", env=cli_env(XDG_CACHE_HOME=str(cache)),
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers, deadline = [], time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and len(workers) < 2:
        workers = child_pids(proc.pid)
        time.sleep(0.002)
    assert len(workers) >= 2, "the decode ended before the signal: nothing was tested"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)  # returns: no orphan holds the output pipes open
    deadline = time.monotonic() + 10
    while any(is_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if is_alive(w)], "decode workers outlived their parent"
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err
        assert err.strip().splitlines()[-1] == "trainlab: interrupted (SIGTERM)"
        assert not list((cache / "trainlab" / "folder").glob(".decode-*"))  # removed on the way out
    else:
        assert proc.returncode == -signal.SIGKILL


def test_cli_bad_files_and_bad_values_are_one_line(tmp_path):
    root = _bad_folder(tmp_path)
    r = run_cli("train", "--dataset", f"folder:{root}", "--epochs", "1", "--val-size", "2", "--batch-size", "2",
                "--runs-dir", tmp_path / "runs", "--quiet")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("trainlab: error: folder:")
    assert "Traceback" not in r.stderr and not (tmp_path / "runs").exists()
    r = run_cli("data", "info", "--dataset", f"folder:{root}")
    assert r.returncode == 0, r.stderr
    assert "4 file(s) cannot be decoded" in r.stdout and "b/bomb.png: decompression bomb" in r.stdout
    r = run_cli("train", "--dataset", f"folder:{root}", "--image-size", "0")
    assert r.returncode == 2 and "image_size = 0 is invalid" in r.stderr
    for command in (("train",), ("data", "info")):  # a size whose crop Pillow would call a bomb: a usage error
        r = run_cli(*command, "--dataset", f"folder:{root}", "--image-size", "14000")
        assert r.returncode == 2 and "image_size = 14000 is invalid" in r.stderr and "at most 8192" in r.stderr
    r = run_cli("predict", tmp_path / "nothing", tmp_path / "missing.png")
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_a_run_trained_from_a_relative_folder_is_evaluated_from_anywhere(tmp_path):
    write_image_folder(tmp_path / "work" / "pets", classes=("cat", "dog"), per_class=8, size=(12, 10))
    r = run_cli("train", "--dataset", "folder:pets", "--model", "mlp", "--epochs", "1", "--val-size", "2",
                "--batch-size", "4", "--runs-dir", "runs", "--name", "rel", "--quiet", cwd=tmp_path / "work")
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "work" / "runs" / "rel"
    assert f'dataset = "folder:{tmp_path / "work" / "pets"}"' in (run / "config.toml").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run_cli("evaluate", run, cwd=elsewhere)
    assert r.returncode == 0, r.stderr[-2000:]


def test_special_files_named_for_predict_or_in_a_class_folder_are_one_sentence(tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    dangling = tmp_path / "gone.png"
    dangling.symlink_to(tmp_path / "nowhere.png")
    for item in (fifo, dangling):  # never opened (a FIFO would block for ever)
        with pytest.raises(DataError, match=r"not a regular file or a folder; name image files"):
            folder_mod.image_files([item])
    with pytest.raises(DataError, match=r"no such file or folder"):
        folder_mod.image_files([tmp_path / "missing.png"])
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=3)
    (root / "a" / "loop.png").symlink_to(root / "a" / "loop.png")
    with pytest.raises(DataError, match=r"a/loop.png: cannot read it \(.*\); remove it or move it out of the folder"):
        folder_mod.scan(root)


def test_image_size_is_checked_by_the_config_table():
    from trainlab.config import resolve

    with pytest.raises(ConfigError, match="image_size = 100000 is invalid"):
        resolve({"image_size": 100000})
    assert resolve({"image_size": 32, "skip_bad": True}).image_size == 32


# ---------------------------------------------------------------- real data round trip

def test_fashion_mnist_as_png_files_reads_back_equal_to_the_idx_pixels(tmp_path, real_data_dir):
    from trainlab.data.idx import read_idx
    from trainlab.data.sources import split_file

    root = write_fashion_pngs(real_data_dir, tmp_path / "fm", n_train=1600, n_test=400)
    ds = load(root)
    assert ds.input_shape == (1, 28, 28) and ds.classes == [str(i) for i in range(10)]
    for split, stem, n, x, y in (("train", "train", 1600, ds.train_x, ds.train_y),
                                 ("test", "test", 400, ds.test_x, ds.test_y)):
        images = read_idx(split_file(real_data_dir, f"{stem}_images"))[:n]
        labels = read_idx(split_file(real_data_dir, f"{stem}_labels"))[:n].astype(np.int64)
        order = np.lexsort((np.arange(n), labels))  # the folder's order: by class, then file name
        assert np.array_equal(y.numpy(), labels[order])
        assert np.array_equal(x.numpy()[:, 0], images[order])


# ---------------------------------------------------------------- larger than memory: streaming

def test_streamed_batches_are_the_resident_ones(tmp_path):
    import torch

    from trainlab.data import DeviceLoader
    from trainlab.data.augment import Augment

    root = write_image_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=15, size=(12, 10))
    ds = load(root)
    kw = dict(mean=ds.mean, std=ds.std, shuffle=True, seed=5, augment=Augment(translate=2, hflip=True))
    resident = DeviceLoader(ds.train_x, ds.train_y, 7, memory_budget=None, **kw)
    streamed = DeviceLoader(ds.train_x, ds.train_y, 7, memory_budget=1, **kw)
    assert not resident.streaming and streamed.streaming
    for epoch in (0, 1):
        for loader in (resident, streamed):
            loader.set_epoch(epoch, start_step=1 if epoch else 0)
        pairs = list(zip(resident, streamed, strict=True))
        assert len(pairs) == len(resident) - (1 if epoch else 0)
        for (x1, y1), (x2, y2) in pairs:
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_training_streamed_gives_bitwise_the_weights_of_training_resident(tmp_path, caplog):
    import torch
    from conftest import train_tiny

    from trainlab.inference import load_model

    root = write_image_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=20, size=(12, 10))
    common = dict(batch_size=8, val_size=6, translate=1, hflip=True, epochs=2)
    runs = {"resident": train_tiny(tmp_path / "resident", data=load(root), **common).run_dir,
            "streamed": train_tiny(tmp_path / "streamed", data=load(root), memory_budget="1B", **common).run_dir}
    with caplog.at_level(logging.INFO, "trainlab.data"):  # the session reads the folder itself
        runs["mapped"] = train_tiny(tmp_path / "mapped", dataset=f"folder:{root}", memory_budget="1B",
                                    **common).run_dir
    assert "the splits stay memory-mapped and batches are streamed" in caplog.text
    meta = json.loads((runs["mapped"] / "meta.json").read_text())
    assert meta["data_source"]["mapped"] is True
    ref, _ = load_model(runs["resident"], map_location="cpu")
    for name in ("streamed", "mapped"):
        other, _ = load_model(runs[name], map_location="cpu")
        for (k, v), (_, w) in zip(ref.state_dict().items(), other.state_dict().items(), strict=True):
            assert torch.equal(v, w), f"{name}: {k}"
    fingerprints = {json.loads((runs[n] / "meta.json").read_text())["data_fingerprint"]["train_images"] for n in runs}
    assert len(fingerprints) == 1  # the same data, however it is held


def test_a_mapped_dataset_is_not_read_into_memory(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=10, size=(12, 10))
    ds = load(root, memory_budget="1B")
    assert ds.source["mapped"] is True
    (split,) = (Path(os.environ["XDG_CACHE_HOME"]) / "trainlab" / "folder").glob("*/splits-*")
    mapped = np.load(split / "train.npy", mmap_mode="r")  # the split's own file, what train_x maps
    assert np.array_equal(mapped, ds.train_x.numpy())
    plain = load(root)
    assert np.array_equal(ds.train_x.numpy(), plain.train_x.numpy()) and ds.hashes == plain.hashes
    assert ds.mean == plain.mean and ds.std == plain.std


@pytest.mark.parametrize("damage", ["truncated", "another shape", "not an array", "missing"])
def test_damaged_mapped_splits_are_written_again(tmp_path, caplog, damage):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=10, size=(12, 10))
    first = load(root, memory_budget="1B")
    pixels, hashes = first.train_x.numpy().copy(), first.hashes
    del first  # its mapping is of the file damaged below
    (split,) = (Path(os.environ["XDG_CACHE_HOME"]) / "trainlab" / "folder").glob("*/splits-*")
    train = split / "train.npy"
    if damage == "truncated":
        train.write_bytes(train.read_bytes()[:-50])
    elif damage == "another shape":
        np.save(train, np.zeros((3, 3, 10, 12), np.uint8))
    elif damage == "not an array":
        train.write_bytes(b"hello")
    else:
        train.unlink()
    with caplog.at_level(logging.WARNING, "trainlab.data"):
        again = load(root, memory_budget="1B")
    assert "are damaged; writing them again" in caplog.text
    assert np.array_equal(again.train_x.numpy(), pixels) and again.hashes == hashes


def _full_disk_on_write(monkeypatch):
    """Every new .npy written through open_memmap fails as on a full disk; reading still works."""
    import errno

    real = np.lib.format.open_memmap

    def open_memmap(*a, mode="r+", **k):
        if mode == "w+":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, mode=mode, **k)

    monkeypatch.setattr(np.lib.format, "open_memmap", open_memmap)


def test_mapped_splits_on_a_full_disk_end_in_one_sentence_and_leave_nothing(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=10, size=(12, 10))
    load(root)  # the decode cache, then the splits' writes fail as on a full disk
    _full_disk_on_write(monkeypatch)
    with pytest.raises(DataError, match=r"the memory-mapped splits cannot be written in .*No space left on device.*"
                                        r"XDG_CACHE_HOME") as e:
        load(root, memory_budget="1B")
    assert "\n" not in str(e.value)
    (cache,) = (Path(os.environ["XDG_CACHE_HOME"]) / "trainlab" / "folder").iterdir()
    assert sorted(p.name for p in cache.iterdir()) == ["images.npy", "lock", "meta.json", "sums.npy"]


def test_decoding_on_a_full_or_read_only_cache_ends_in_one_sentence_and_leaves_nothing(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    base = Path(os.environ["XDG_CACHE_HOME"]) / "trainlab" / "folder"
    with monkeypatch.context() as m:
        _full_disk_on_write(m)
        with pytest.raises(DataError, match=r"decoding into the cache .* failed \(No space left on device\); free "
                                            r"some space or set XDG_CACHE_HOME") as e:
            load(root)
    assert "\n" not in str(e.value) and not list(base.iterdir())  # no temporary folder left
    with monkeypatch.context() as m:  # the cache folder is there but cannot be written (as root, chmod cannot show it)
        real_mkdir = Path.mkdir

        def mkdir(self, *a, **k):
            if self.name.startswith(".decode-"):
                raise PermissionError(13, "Permission denied")
            return real_mkdir(self, *a, **k)

        m.setattr(Path, "mkdir", mkdir)
        with pytest.raises(DataError, match=r"failed \(Permission denied\)"):
            load(root)
    assert load(root).classes == ["a", "b"]  # and once it can be written, it is


def test_memory_budget_takes_bytes_or_units_and_refuses_junk_in_one_sentence():
    from trainlab.config import resolve
    from trainlab.text import parse_bytes

    assert [parse_bytes(v) for v in ("2GiB", "512MiB", "1.5GB", "1000", " 4 kb ")] == \
        [2 * 2**30, 512 * 2**20, 1_500_000_000, 1000, 4000]
    assert resolve({"memory_budget": "2GiB"}).memory_budget == "2GiB"
    for junk in ("lots", "-1", "1e9", "2 parsecs"):
        with pytest.raises(ConfigError, match="memory_budget = .* is invalid: give a number of bytes"):
            resolve({"memory_budget": junk})


def test_temporary_folders_left_by_a_killed_process_are_removed_a_day_later(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    base = Path(os.environ["XDG_CACHE_HOME"]) / "trainlab" / "folder"
    old, new = base / ".decode-1-dead", base / ".decode-2-busy"
    for p in (old, new):
        p.mkdir(parents=True)
        (p / "images.npy").write_bytes(b"partial")
    os.utime(old, (0, 0))
    load(root)
    assert not old.exists() and new.exists()  # a fresh one may belong to a process still decoding


def test_a_folder_with_too_many_files_is_refused_before_any_is_read(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=3)
    monkeypatch.setattr(folder_scanner, "MAX_FILES", 5)
    with pytest.raises(DataError, match=r"over 5 files; is this the right folder\?"):
        folder_mod.scan(root)
    monkeypatch.setattr(folder_scanner, "MAX_FILES", 9)
    s = folder_mod.scan(root)
    assert s.rels == [f"{c}/{i:04d}.png" for c in "abc" for i in range(3)]


def test_data_whose_every_training_row_is_validation_is_refused_in_one_sentence(tmp_path):
    import torch

    import trainlab
    from trainlab.data import from_arrays

    g = torch.Generator().manual_seed(0)
    ds = from_arrays(torch.randint(0, 255, (8, 1, 6, 6), dtype=torch.uint8, generator=g), torch.arange(8) % 2,
                     torch.randint(0, 255, (4, 1, 6, 6), dtype=torch.uint8, generator=g), torch.arange(4) % 2)
    ds.val_rows = torch.arange(8)
    with pytest.raises(ConfigError, match="every training image is in the validation split"):
        trainlab.train({"model": "mlp", "epochs": 1, "batch_size": 2, "runs_dir": str(tmp_path / "runs"),
                        "threads": 1}, data=ds)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
