"""A hostile corpus for folder:DIR through the command line: odd modes, truncated files, names
that are not UTF-8, a copied folder with the same mtimes, tampered cache files, classes too
small to test. Each ends in the correct result or in one sentence (exit 1, no traceback)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_env, run_cli, write_image_folder

pytest.importorskip("PIL")
from PIL import Image


def info(root: Path, *extra, cache: Path):
    return run_cli("data", "info", "--dataset", f"folder:{root}", *extra, env=cli_env(XDG_CACHE_HOME=str(cache)))


def one_sentence(r, *fragments: str) -> None:
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("trainlab: error: ")]
    assert len(errors) == 1 and errors[0] == r.stderr.strip().splitlines()[-1], r.stderr
    assert all(f in errors[0] for f in fragments), errors[0]


def hashes(stdout: str) -> dict:
    return dict(line.split() for line in stdout.splitlines() if line.startswith("  ") and "_images" in line)


def test_16_bit_and_palette_folders_read(tmp_path):
    g = np.random.default_rng(0)
    for k, c in enumerate("ab"):
        (tmp_path / "g16" / c).mkdir(parents=True)
        (tmp_path / "pal" / c).mkdir(parents=True)
        for i in range(5):
            a = g.integers(k * 30000, k * 30000 + 30000, (8, 9), dtype=np.uint16)
            Image.fromarray(a).save(tmp_path / "g16" / c / f"{i}.png")
            Image.fromarray(g.integers(0, 256, (8, 9, 3), dtype=np.uint8)).quantize(8).save(
                tmp_path / "pal" / c / f"{i}.png")
    r = info(tmp_path / "g16", cache=tmp_path / "cache")
    assert r.returncode == 0 and "(1, 8, 9) images" in r.stdout and "modes I;16 10" in r.stdout, r.stderr
    r = info(tmp_path / "pal", cache=tmp_path / "cache")
    assert r.returncode == 0 and "(3, 8, 9) images" in r.stdout and "modes P 10" in r.stdout, r.stderr


def test_a_truncated_file_is_named_and_skip_bad_leaves_it_out(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    data = (root / "a" / "0001.png").read_bytes()
    (root / "a" / "0001.png").write_bytes(data[: len(data) // 2])
    r = run_cli("train", "--dataset", f"folder:{root}", "--model", "mlp", "--epochs", "1",
                "--runs-dir", tmp_path / "runs", "--quiet", env=cli_env(XDG_CACHE_HOME=str(tmp_path / "cache")))
    one_sentence(r, "1 file cannot be decoded: a/0001.png (", "--skip-bad")
    r = info(root, cache=tmp_path / "cache")  # data info shows what --skip-bad leaves out
    assert r.returncode == 0 and "left out 1 file that cannot be decoded" in r.stderr, r.stderr
    assert "a/0001.png (image file is truncated)" in r.stderr


@pytest.mark.parametrize("name,what", [(b"\xffclass/0.png", "class folder"), (b"a/\xfe.png", "file")])
def test_names_that_are_not_utf8_are_one_sentence_for_data_info_and_train(tmp_path, name, what):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    path = os.fsencode(root) + b"/" + name
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for i in range(3):
        shutil.copy(root / "b" / "0000.png", path.replace(b"0.png", b"%d.png" % i) if i else path)
    one_sentence(info(root, cache=tmp_path / "cache"), f"the {what} name", "is not UTF-8 text; rename it")
    r = run_cli("train", "--dataset", f"folder:{root}", "--model", "mlp", "--epochs", "1",
                "--runs-dir", tmp_path / "runs", "--quiet", env=cli_env(XDG_CACHE_HOME=str(tmp_path / "cache")))
    one_sentence(r, "is not UTF-8 text")


def test_a_copied_folder_with_the_same_mtimes_gets_its_own_pixels(tmp_path):
    first = write_image_folder(tmp_path / "first", classes=("a", "b"), per_class=5, ext=".bmp")
    a = info(first, cache=tmp_path / "cache")
    second = tmp_path / "second"
    shutil.copytree(first, second)  # copy2: the mtimes kept
    write_image_folder(second, classes=("a", "b"), per_class=5, ext=".bmp", seed=9)
    for f in first.rglob("*.bmp"):
        st = f.stat()
        os.utime(second / f.relative_to(first), ns=(st.st_atime_ns, st.st_mtime_ns))
    b = info(second, cache=tmp_path / "cache")
    fresh = info(second, cache=tmp_path / "fresh-cache")
    assert a.returncode == b.returncode == fresh.returncode == 0
    assert hashes(b.stdout) == hashes(fresh.stdout) != hashes(a.stdout)


def _flip_images(cache: Path) -> None:
    arr = np.load(cache / "images.npy", mmap_mode="r+")
    arr[-1] = 255 - arr[-1]
    arr.flush()


def _rewrite_sums(cache: Path) -> None:
    np.save(cache / "sums.npy", np.zeros_like(np.load(cache / "sums.npy")))


def _edit_recorded_hash(cache: Path) -> None:
    meta = json.loads((cache / "meta.json").read_text())
    meta["images_sha256"] = "0" * 64
    (cache / "meta.json").write_text(json.dumps(meta))


def _truncate_images(cache: Path) -> None:
    with open(cache / "images.npy", "r+b") as f:
        f.truncate(200)


@pytest.mark.parametrize("tamper", [_flip_images, _rewrite_sums, _edit_recorded_hash, _truncate_images],
                         ids=["images-flipped", "sums-rewritten", "recorded-hash-edited", "images-truncated"])
def test_tampered_cache_files_are_decoded_again_with_one_warning(tmp_path, tamper):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    cache = tmp_path / "cache"
    before = info(root, cache=cache)
    (folder,) = (cache / "trainlab" / "folder").iterdir()
    tamper(folder)
    after = info(root, cache=cache)
    assert after.returncode == 0, after.stderr
    warnings = [line for line in after.stderr.splitlines() if "is damaged" in line]
    assert len(warnings) == 1 and "decoding the folder again" in warnings[0]
    assert after.stdout == before.stdout  # the same hashes, mean and std as the first decode


def test_classes_too_small_to_test_are_one_sentence(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    (root / "c").mkdir()
    shutil.copy(root / "a" / "0000.png", root / "c" / "only.png")
    one_sentence(info(root, cache=tmp_path / "cache"), "class c has too few images", "at least 2 images")
