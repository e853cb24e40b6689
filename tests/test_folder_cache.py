"""trainlab.data.folder.cache: what the decode cache key tells apart (copies of a folder, files
rewritten with their size and mtime put back), what is checked when a cache is read back
(tampered pixels and sums), and that superseded copies are removed but never under a reader."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_env, write_image_folder

pytest.importorskip("PIL")

from trainlab.data import load_dataset
from trainlab.data.folder import cache as cache_mod
from trainlab.data.folder import cache_locks


def load(root, **kw):
    return load_dataset(f"folder:{root}", **kw)


def caches() -> list[Path]:
    base = Path(os.environ["XDG_CACHE_HOME"]) / "trainlab" / "folder"
    return sorted(p for p in base.iterdir() if not p.name.startswith("."))


def pixels(ds) -> np.ndarray:
    return np.concatenate([ds.train_x.numpy(), ds.test_x.numpy()])


def same_stat_times(src: Path, dst: Path) -> None:
    """dst's files get src's mtimes (what cp -a, rsync -a and tar keep)."""
    for f in src.rglob("*.bmp"):
        st = f.stat()
        os.utime(dst / f.relative_to(src), ns=(st.st_atime_ns, st.st_mtime_ns))


def bmp_folder(root: Path, seed: int) -> Path:
    # BMP files of one size are one byte count whatever their pixels: size and mtime cannot tell them apart
    return write_image_folder(root, classes=("a", "b"), per_class=5, size=(12, 10), ext=".bmp", seed=seed)


@pytest.mark.parametrize("how", ["copy-then-edit", "rsync-a-of-another", "moved-in-place-of"])
def test_a_folder_agreeing_in_names_sizes_and_mtimes_is_never_served_another_folders_pixels(tmp_path, how):
    first = bmp_folder(tmp_path / "first", seed=0)
    other = bmp_folder(tmp_path / "other", seed=1)
    a = load(first)
    if how == "copy-then-edit":  # cp -a, then the copy's files rewritten at their old size and mtime
        second = tmp_path / "second"
        shutil.copytree(first, second)
        bmp_folder(second, seed=1)
        same_stat_times(first, second)
    elif how == "rsync-a-of-another":  # another folder's files, their mtimes made the first one's
        second = tmp_path / "second"
        shutil.copytree(other, second)
        same_stat_times(first, second)
    else:  # the first folder replaced by another with the same names, sizes and mtimes
        same_stat_times(first, other)
        shutil.rmtree(first)
        other.rename(first)
        second = first
    got = load(second)
    fresh = cache_mod.decode_folder(cache_mod.scan(second), None, 1, tmp_path / "direct")[0]
    assert rows(pixels(got)) == rows(fresh) != rows(pixels(a))  # the second folder's own pixels
    assert got.hashes["train_images"] != a.hashes["train_images"]


def rows(arr: np.ndarray) -> list[bytes]:
    return sorted(r.tobytes() for r in arr)


def test_a_file_rewritten_with_its_size_and_mtime_put_back_is_decoded_again(tmp_path, caplog):
    root = bmp_folder(tmp_path / "d", seed=0)
    before = load(root)
    f = root / "a" / "0000.bmp"
    st = f.stat()
    from PIL import Image

    Image.fromarray(np.full((10, 12, 3), 7, np.uint8)).save(f)  # the same byte count
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r: the mtime put back
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    caplog.set_level(logging.INFO, "trainlab.data")
    after = load(root)
    assert "data: decoded" in caplog.text
    rows = pixels(after)
    assert any((r == 7).all() for r in rows) and not any((r == 7).all() for r in pixels(before))


def _tamper_images(cache: Path) -> None:
    arr = np.load(cache / "images.npy", mmap_mode="r+")
    arr[0] = 255 - arr[0]  # in place: header, shape and size unchanged
    arr.flush()


def _tamper_sums(cache: Path) -> None:
    sums = np.load(cache / "sums.npy")
    np.save(cache / "sums.npy", sums + 1000)


@pytest.mark.parametrize("tamper", [_tamper_images, _tamper_sums], ids=["images.npy", "sums.npy"])
def test_cache_arrays_damaged_in_place_are_set_aside_and_decoded_again_with_one_warning(tmp_path, caplog, tamper):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    first = load(root)
    (cache,) = caches()
    tamper(cache)
    cache_mod._verified.clear()  # a fresh process: it has hashed nothing yet
    with caplog.at_level(logging.INFO, "trainlab.data"):
        again = load(root)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "is damaged" in warnings[0].getMessage()
    assert "sha256" in warnings[0].getMessage() and "data: decoded" in caplog.text
    assert np.array_equal(pixels(first), pixels(again)) and first.mean == again.mean and first.std == again.std
    assert len(caches()) == 1


def test_damaged_mapped_split_pixels_are_written_again_not_hashed_as_the_folders(tmp_path, caplog):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    first = load(root, memory_budget="1")
    resident = load(root).train_x.numpy().copy()  # first's pixels are a mapping of the file damaged below
    (splits,) = caches()[0].glob("splits-*")
    arr = np.load(splits / "train.npy", mmap_mode="r+")
    arr[0] = 255 - arr[0]
    arr.flush()
    del arr
    with caplog.at_level(logging.INFO, "trainlab.data"):
        again = load(root, memory_budget="1")
    assert "splits" in caplog.text and "damaged" in caplog.text
    assert np.array_equal(resident, again.train_x.numpy())
    assert again.hashes == first.hashes


def test_superseded_copies_of_a_folder_are_removed_and_other_policies_kept(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    load(root)
    load(root, image_size=8)  # another policy: its own copy, not superseded
    for i in range(3):  # three small edits: one copy left per policy, not four
        f = root / "a" / f"{i:04d}.png"
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        load(root)
    assert len(caches()) == 2
    other = write_image_folder(tmp_path / "e", classes=("a", "b"), per_class=5)
    load(other)  # another folder: its own copy
    assert len(caches()) == 3


HOLDER = """
import sys, time
from trainlab.data import load_dataset
ds = load_dataset("folder:" + sys.argv[1])
print("loaded", flush=True)
sys.stdin.readline()
print(int(ds.train_x.sum()), flush=True)
"""


def test_a_copy_mapped_by_another_process_is_kept_until_it_ends(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    env = cli_env()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "loaded"
        (old,) = caches()
        f = root / "a" / "0000.png"
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        load(root)
        assert old in caches() and len(caches()) == 2  # mapped by the holder: left
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip().isdigit()  # its mapping still read
        assert holder.wait(60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    load(root)
    assert old not in caches() and len(caches()) == 1


def test_a_lock_held_exclusively_for_ever_is_not_waited_on(tmp_path, monkeypatch, caplog):
    import fcntl

    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    first = load(root)
    (cache,) = caches()
    os.close(cache_locks._held.pop(str(cache)))  # as a fresh process would be
    fd = os.open(cache / "lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a process that never lets go
        monkeypatch.setattr(cache_locks, "LOCK_TRIES", 2)
        with caplog.at_level(logging.INFO, "trainlab.data"):
            again = load(root)
        assert "held exclusively" in caplog.text and "data: decoded" in caplog.text
        assert np.array_equal(pixels(first), pixels(again))
    finally:
        os.close(fd)


def test_two_processes_decoding_one_folder_at_once_agree_and_leave_one_copy(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=40, size=(32, 32))
    code = ("import sys; from trainlab.data import load_dataset; ds = load_dataset('folder:' + sys.argv[1]); "
            "print(ds.hashes['train_images'], ds.hashes['test_images'])")
    env = cli_env(XDG_CACHE_HOME=os.environ["XDG_CACHE_HOME"])
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert outs[0][0] == outs[1][0] and outs[0][0].strip()
    assert len(caches()) == 1
    base = caches()[0].parent
    assert not [p for p in base.iterdir() if p.name.startswith((".decode-", ".stale-"))]
