"""cifar10:DIR and cifar100:DIR: the binary version, read strictly, from small files written
here in the exact record format; the pickled version is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from trainlab.data import load_dataset
from trainlab.errors import DataError


def records(n: int, label_bytes: int, seed: int, classes: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """n CIFAR records (labels then 3072 pixel bytes, R plane, G plane, B plane)."""
    g = np.random.default_rng(seed)
    labels = g.integers(0, classes, size=(n, label_bytes), dtype=np.uint8)
    labels[:, -1] = np.arange(n) % classes  # every class present
    pixels = g.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    raw = np.concatenate([labels, pixels.reshape(n, -1)], axis=1).tobytes()
    return raw, labels[:, -1].astype(np.int64), pixels


def write_cifar10(folder: Path, per_batch: int = 12, names: bool = True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {"train_x": [], "train_y": []}
    for i in range(1, 6):
        raw, y, x = records(per_batch, 1, i, 10)
        (folder / f"data_batch_{i}.bin").write_bytes(raw)
        out["train_x"].append(x)
        out["train_y"].append(y)
    raw, out["test_y"], out["test_x"] = records(10, 1, 99, 10)
    (folder / "test_batch.bin").write_bytes(raw)
    if names:
        (folder / "batches.meta.txt").write_text("\n".join(f"thing{i}" for i in range(10)) + "\n\n")
    out["train_x"], out["train_y"] = np.concatenate(out["train_x"]), np.concatenate(out["train_y"])
    return out


def test_cifar10_binary_reads_every_record_in_the_plane_layout(tmp_path):
    truth = write_cifar10(tmp_path / "c10")
    ds = load_dataset(f"cifar10:{tmp_path / 'c10'}")
    assert ds.input_shape == (3, 32, 32) and ds.classes == [f"thing{i}" for i in range(10)]
    assert np.array_equal(ds.train_x.numpy(), truth["train_x"])
    assert np.array_equal(ds.train_y.numpy(), truth["train_y"])
    assert np.array_equal(ds.test_x.numpy(), truth["test_x"])
    # the first pixel's red, green and blue are bytes 1, 1025 and 2049 of the first record
    raw = (tmp_path / "c10" / "data_batch_1.bin").read_bytes()
    assert ds.train_x[0, :, 0, 0].tolist() == [raw[1], raw[1025], raw[2049]]
    assert ds.spec == f"cifar10:{tmp_path / 'c10'}"


def test_cifar10_in_its_unpacked_subfolder_and_default_names(tmp_path):
    write_cifar10(tmp_path / "dl" / "cifar-10-batches-bin", names=False)
    ds = load_dataset(f"cifar10:{tmp_path / 'dl'}")
    assert ds.classes[:3] == ["airplane", "automobile", "bird"] and len(ds.train_y) == 60


def test_cifar100_uses_the_fine_labels(tmp_path):
    folder = tmp_path / "c100"
    folder.mkdir()
    raw, y, x = records(200, 2, 1, 100)
    (folder / "train.bin").write_bytes(raw)
    raw_t, _, _ = records(100, 2, 2, 100)
    (folder / "test.bin").write_bytes(raw_t)
    (folder / "fine_label_names.txt").write_text("".join(f"f{i}\n" for i in range(100)))
    ds = load_dataset(f"cifar100:{folder}")
    assert ds.num_classes == 100 and ds.classes[99] == "f99"
    assert np.array_equal(ds.train_y.numpy(), y) and np.array_equal(ds.train_x.numpy(), x)


@pytest.mark.parametrize("damage,message", [
    (lambda f: f.write_bytes(f.read_bytes()[:-5]), "is not a whole number of 3073-byte CIFAR10 records"),
    (lambda f: f.write_bytes(b""), "0 bytes is not a whole number"),
    (lambda f: f.write_bytes(b"\x0b" + f.read_bytes()[1:]), "label 11 is out of range for 10 classes"),
])
def test_damaged_files_are_one_sentence(tmp_path, damage, message):
    write_cifar10(tmp_path / "c10")
    damage(tmp_path / "c10" / "data_batch_3.bin")
    with pytest.raises(DataError, match=message) as e:
        load_dataset(f"cifar10:{tmp_path / 'c10'}")
    assert "\n" not in str(e.value) and "data_batch_3.bin" in str(e.value)


def test_wrong_class_name_count_and_missing_files(tmp_path):
    write_cifar10(tmp_path / "c10")
    (tmp_path / "c10" / "batches.meta.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="holds 2 names but CIFAR10 has 10 classes"):
        load_dataset(f"cifar10:{tmp_path / 'c10'}")
    (tmp_path / "c10" / "batches.meta.txt").write_text("same\n" * 10)
    with pytest.raises(DataError, match="the class name 'same' is given twice"):
        load_dataset(f"cifar10:{tmp_path / 'c10'}")
    (tmp_path / "c10" / "test_batch.bin").unlink()
    with pytest.raises(DataError, match="lacks test_batch.bin"):
        load_dataset(f"cifar10:{tmp_path / 'c10'}")


def test_the_pickled_python_version_is_refused_unread(tmp_path):
    py = tmp_path / "dl" / "cifar-10-batches-py"
    py.mkdir(parents=True)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (py / name).write_bytes(b"\x80\x04 a pickle that must never be loaded")
    with pytest.raises(DataError, match="pickled Python version of CIFAR10, which trainlab never reads"):
        load_dataset(f"cifar10:{tmp_path / 'dl'}")
    c100 = tmp_path / "c100"
    c100.mkdir()
    (c100 / "train").write_bytes(b"\x80\x04")
    with pytest.raises(DataError, match=r"cifar-100-binary.tar.gz"):
        load_dataset(f"cifar100:{c100}")


def test_cli_data_info_and_one_line_errors(tmp_path):
    write_cifar10(tmp_path / "c10")
    r = run_cli("data", "info", "--dataset", f"cifar10:{tmp_path / 'c10'}")
    assert r.returncode == 0, r.stderr
    assert "(3, 32, 32) images, 10 classes, 60 train / 10 test" in r.stdout
    r = run_cli("data", "info", "--dataset", f"cifar10:{tmp_path / 'nope'}")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("trainlab: error: cifar10:")
