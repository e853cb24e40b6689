"""The command line: help, exit codes, data info on the real data, run folders, idx:DIR."""

import gzip
import json
import re

import numpy as np
import pytest
from conftest import refuse_writes_under, run_cli, write_idx_folder

# From ../shared/data/fashion-mnist/README.md: sha256 of the decoded payloads.
README_HASHES = {
    "train_images": "364b881eba674548fb66c1ffd39c5af81fa9d389f2c4aba7dcd0232381a058b1",
    "train_labels": "5626aa72ea6f80ff61bf043038e9fdc438c335081ab56b71eb6b6f8f8fdb871f",
    "test_images": "87d1fa587ba26f662d9c4c1c32512e14ed0528716b4e84d0a31450ee87503c31",
    "test_labels": "08d3210951ad1511d43373c6b32bda28f1cc7a26ba05546b24f6abea47f6fc4c",
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture
def idx50(tmp_path):
    """A folder of IDX files: 50 classes of 3x32x32 images, channels last, with classes.txt;
    the labels gzipped, the images not (one folder may mix both)."""
    folder = write_idx_folder(tmp_path / "idx50", n_train=100, n_test=50, gz=False, num_classes=50, size=32,
                              channels=3, classes=[f"kind-{i:02d}" for i in range(50)])
    for split in ("train", "t10k"):
        plain = folder / f"{split}-labels-idx1-ubyte"
        plain.with_name(plain.name + ".gz").write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
        plain.unlink()
    return folder


def train_args(folder, runs, *extra):
    return ["train", "--dataset", f"idx:{folder}", "--recipe", "textbook", "--epochs", "1",
            "--batch-size", "16", "--val-size", "10", "--threads", "1", "--quiet",
            "--runs-dir", str(runs), *extra]


def test_help_from_python_m(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for command in ("train", "evaluate", "data"):
        assert command in proc.stdout


def test_train_help_lists_run_and_recipe_options(cli):
    done = cli("train", "--help")
    assert done.returncode == 0
    out = done.stdout
    for flag in ("--config", "--data-dir", "--model", "--recipe", "--device", "--threads",
                 "--val-size", "--name", "--epochs", "--batch-size", "--lr", "--label-smoothing",
                 "--hflip", "--no-hflip"):
        assert flag in out


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["train", "--epochs", "x"],
                                  ["train", "--model-kwarg", "novalue"], ["data"]])
def test_usage_errors_exit_2(argv, cli):
    done = cli(*argv)
    assert done.returncode == 2
    assert "trainlab: error:" in done.stderr


@pytest.mark.parametrize("extra,message", [
    (["--optimizer", "rmsprop"], "optimizer = 'rmsprop' is invalid: choose one of adam, adamw, sgd"),
    (["--epochs", "-3"], "epochs = -3 is invalid: must be at least 1"),
    (["--device", "gpu"], "device = 'gpu' is invalid"),
    (["--recipe", "turbo"], "unknown recipe 'turbo'"),
    (["--config", "missing.toml"], "config file missing.toml not found"),
    (["--lr", "inf"], "lr = inf is invalid: must be greater than 0 and at most 10"),
    (["--weight-decay", "inf"], "weight_decay = inf is invalid: must be in [0, 1]"),
    (["--model", ":"], "model = ':' is invalid"),
    (["--name", "n" * 300], f"name = '{'n' * 59}...{'n' * 9}' is invalid: use a plain folder name"),  # shortened
    (["--seed", "-1"], "seed = -1 is invalid"),
    (["--config", "."], "config file . is a folder, not a TOML file"),
    (["--model-kwarg", "dropout=NaN"], "model_kwargs.dropout = nan is invalid: numbers must be finite"),
])
def test_config_errors_exit_2(extra, message, tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    done = cli("train", "--runs-dir", "runs", *extra)
    assert done.returncode == 2
    err = done.stderr
    assert f"trainlab: error: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_unknown_key_in_config_file_exits_2(tmp_path, cli):
    path = tmp_path / "run.toml"
    path.write_text("epoch = 3\n")
    done = cli("train", "--config", path)
    assert done.returncode == 2
    err = done.stderr
    assert "unknown key 'epoch' (did you mean 'epochs'?)" in err and str(path) in err


def test_missing_data_exits_1_without_traceback(tmp_path):
    proc = run_cli("train", "--data-dir", "/nonexistent", "--runs-dir", "runs", "--threads", "1",
                   cwd=tmp_path)
    assert proc.returncode == 1
    assert "trainlab: error: --data-dir points at /nonexistent" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_data_info_without_data_exits_1(tmp_path, cli):
    done = cli("data", "info", "--data-dir", tmp_path)
    assert done.returncode == 1
    assert "lacks train-images-idx3-ubyte" in done.stderr


def test_data_info_on_the_real_data(real_data_dir, cli):
    done = cli("data", "info", "--data-dir", real_data_dir)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "60000 train / 10000 test" in out and "(1, 28, 28)" in out
    m = re.search(r"mean \[([\d.]+)\] std \[([\d.]+)\] \(measured", out)
    assert m and float(m[1]) == pytest.approx(0.2861, abs=1e-4) and float(m[2]) == pytest.approx(0.3528, abs=1e-4)
    for label, name in enumerate(FASHION_CLASSES):
        assert re.search(rf"^{label}\s+{re.escape(name)}\s+6000\s+1000$", out, re.M), name
    for split, digest in README_HASHES.items():
        assert re.search(rf"{split}\s+{digest}", out), split


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_run_folder_is_never_overwritten(idx50, tmp_path, cli):
    runs = tmp_path / "runs"
    assert cli(*train_args(idx50, runs, "--name", "x")).returncode == 0
    before = snapshot(runs / "x")
    done = cli(*train_args(idx50, runs, "--name", "x", "--seed", "1"))
    assert done.returncode == 2
    err = done.stderr
    # the same command with another config: refused by name (the same config would continue it)
    assert "holds a run with another config (seed: 0 -> 1)" in err and str(runs / "x") in err
    assert snapshot(runs / "x") == before
    assert sorted(p.name for p in runs.iterdir()) == ["x"]


def test_idx_folder_with_50_classes_of_rgb_images(idx50, tmp_path, cli):
    runs = tmp_path / "runs"
    done = cli(*train_args(idx50, runs, "--name", "rgb", "--model", "cnn"))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "kind-00" in out and "kind-49" in out  # class names from classes.txt
    meta = json.loads((runs / "rgb" / "meta.json").read_text())
    assert meta["model_spec"]["input_shape"] == [3, 32, 32]
    assert meta["model_spec"]["num_classes"] == 50
    assert meta["classes"][49] == "kind-49"
    rows = [json.loads(line) for line in (runs / "rgb" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "epoch" in r] == [1]
    results = json.loads((runs / "rgb" / "results.json").read_text())
    assert results["test"]["n"] == 50 and len(results["test"]["per_class"]) == 50
    assert np.isfinite(results["test"]["loss"])


# ---------------------------------------------------------------- a read-only folder or a full disk

@pytest.mark.parametrize("err_name", ["EROFS", "ENOSPC"])
def test_train_resume_evaluate_export_on_a_read_only_or_full_disk_say_one_sentence(idx50, tmp_path, monkeypatch,
                                                                                   cli, err_name):
    import errno

    runs = tmp_path / "runs"
    assert cli(*train_args(idx50, runs, "--name", "r", "--model", "mlp", "--epochs", "1")).returncode == 0
    before = snapshot(runs / "r")
    refuse_writes_under(monkeypatch, runs, getattr(errno, err_name))
    for argv in (train_args(idx50, runs, "--name", "s", "--model", "mlp"),
                 ["resume", str(runs / "r"), "--epochs", "2"],
                 ["evaluate", str(runs / "r"), "--no-plots"],
                 ["export", str(runs / "r")]):
        done = cli(*argv)
        assert done.returncode == 1, argv
        err = done.stderr
        lines = [x for x in err.strip().splitlines() if x.startswith("trainlab: ")]
        assert len(lines) == 1 and "Traceback" not in err, (argv, err)
        assert ("read-only" in lines[0]) if err_name == "EROFS" else ("filled up" in lines[0] or "free" in lines[0])
    monkeypatch.undo()
    after = snapshot(runs / "r")
    assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}

