"""The hostile-input corpus: generated hostile files (checkpoints, run folders, IDX folders,
configs, image arrays) through every CLI command, each in its own process under a 2 GiB
memory limit. Each must end with exit 1 or 2 and one `trainlab: error:` line, no traceback,
no file changed outside its own output folder, and nothing imported or executed (markers)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_env, run_cli, write_idx_folder
from torch import nn

DRIVER = Path(__file__).with_name("hostile_driver.py")
INFO_PREFIXES = ("data: ", "run: ", "resume: ", "checkpoint ", "manifest ", "rebuilt ", "moved ", "evaluate: ")


class Evil:
    """Unpickling this runs code (writes the marker): the classic pickle attack."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('executed')",))


EVIL_MODULE = '''import pathlib
pathlib.Path({marker!r}).write_text("imported")
from trainlab.models import mlp
def make(input_shape, num_classes):
    return mlp(input_shape, num_classes, hidden=(8,))
'''


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny real run, then hostile variants of its files."""
    root = tmp_path_factory.mktemp("corpus")
    idx = write_idx_folder(root / "idx", n_train=300, n_test=100)
    marker = root / "MARKER"
    cwd = root / "cwd"  # commands run here, beside a planted module
    cwd.mkdir()
    (cwd / "evilmod.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    done = run_cli("train", "--dataset", f"idx:{idx}", "--runs-dir", root, "--name", "good", "--threads", "1",
                   "--val-size", "100", "--batch-size", "50", "--epochs", "2", "--model", "mlp",
                   "--model-kwarg", "hidden=[16]", "--quiet")
    assert done.returncode == 0, done.stderr
    good = root / "good"
    model_pt = torch.load(good / "model.pt", weights_only=True)
    files = root / "files"
    files.mkdir()

    def forged(name, change):
        ck = torch.load(good / "model.pt", weights_only=True)
        change(ck)
        torch.save(ck, files / name)

    (files / "random.pt").write_bytes(os.urandom(4096))
    (files / "empty.pt").write_bytes(b"")
    whole = (good / "model.pt").read_bytes()
    (files / "torn.pt").write_bytes(whole[: len(whole) // 2])
    (files / "plain-pickle.pt").write_bytes(pickle.dumps({"x": Evil(str(marker))}, protocol=2))
    (files / "pickle-v4.pt").write_bytes(pickle.dumps([Evil(str(marker))], protocol=4))
    torch.save({"x": Evil(str(marker))}, files / "torch-evil.pt")
    torch.save(nn.Linear(2, 2), files / "pickled-module.pt")
    torch.save(model_pt["model"], files / "state-dict.pt")
    torch.save([1, 2, 3], files / "a-list.pt")
    (files / "folder.pt").mkdir()
    with zipfile.ZipFile(io.BytesIO(whole)) as src, zipfile.ZipFile(files / "zip-bomb.pt", "w") as z:
        for info in src.infolist():
            z.writestr(info, src.read(info))
        z.writestr(zipfile.ZipInfo("archive/data/99"), b"\0" * (256 << 20), compress_type=zipfile.ZIP_DEFLATED)
    forged("no-spec.pt", lambda c: c.pop("model_spec"))
    forged("evil-spec.pt", lambda c: c["model_spec"].update(name="evilmod:make"))
    forged("os-spec.pt", lambda c: c["model_spec"].update(name="os:system"))
    forged("bad-import-path.pt", lambda c: c["model_spec"].update(name=":"))
    forged("huge-kwargs.pt", lambda c: c["model_spec"].update(kwargs={"hidden": [10**9]}))
    forged("huge-shape.pt", lambda c: c["model_spec"].update(input_shape=[3, 100000, 100000]))
    forged("bad-kwargs.pt", lambda c: c["model_spec"].update(kwargs={"nonsense": 1}))
    forged("spec-string.pt", lambda c: c.update(model_spec="mlp"))
    forged("classes-mismatch.pt", lambda c: c.update(classes=["a", "b"]))
    forged("missing-key.pt", lambda c: c["model"].pop(next(iter(c["model"]))))
    forged("shape-mismatch.pt", lambda c: c["model"].update(
        {k: torch.zeros(3, 3) for k in list(c["model"])[:1]}))
    forged("mean-string.pt", lambda c: c.update(mean="x"))
    forged("no-config.pt", lambda c: c.pop("config"))
    forged("future-format.pt", lambda c: c.update(format_version=99))
    forged("ten-classes-other-data.pt", lambda c: c["model_spec"].update(input_shape=[1, 14, 14]))

    # run folders with one hostile file each
    runs = root / "runs"
    runs.mkdir()

    def run_variant(name, change):
        dest = runs / name
        shutil.copytree(good, dest)
        change(dest)

    run_variant("config-evil-model", lambda d: (d / "config.toml").write_text(
        (d / "config.toml").read_text().replace('model = "mlp"', 'model = "evilmod:make"')))
    run_variant("config-not-utf8", lambda d: (d / "config.toml").write_bytes(b"\xff\xfe model = 1"))
    run_variant("config-inf-lr", lambda d: (d / "config.toml").write_text(
        "\n".join(x for x in (d / "config.toml").read_text().splitlines() if not x.startswith("lr ")) + "\nlr = inf\n"))
    run_variant("no-config", lambda d: (d / "config.toml").unlink())
    run_variant("config-a-folder", lambda d: ((d / "config.toml").unlink(), (d / "config.toml").mkdir()))

    def all_forged(d):  # every checkpoint forged with a working hash: nothing usable
        ck = d / "checkpoints"
        m = json.loads((ck / "manifest.json").read_text())
        for name in list(m["files"]):
            c = torch.load(ck / name, weights_only=True)
            c["model_spec"]["name"] = "evilmod:make"
            torch.save(c, ck / name)
            m["files"][name]["sha256"] = hashlib.sha256((ck / name).read_bytes()).hexdigest()
        (ck / "manifest.json").write_text(json.dumps(m))
        (d / "model.pt").unlink()

    run_variant("checkpoints-forged", all_forged)

    # IDX folders
    idxs = root / "idxs"

    def idx_variant(name, images: bytes | None = None, labels: bytes | None = None, gz=True):
        d = idxs / name
        shutil.copytree(idx, d)
        for stem, raw in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
            if raw is not None:
                (d / f"{stem}.gz").write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
        return d

    labels = gzip.decompress((idx / "train-labels-idx1-ubyte.gz").read_bytes())
    big_label = bytearray(struct.pack(">HBBI", 0, 0x0C, 1, 300)) + struct.pack(">300i", *([10**9] * 300))
    idx_variant("label-1e9", labels=bytes(big_label))
    idx_variant("overflow-dims", images=struct.pack(">HBBIIII", 0, 8, 4, 65536, 65536, 65536, 65536))
    idx_variant("gzip-bomb", images=struct.pack(">HBBIII", 0, 8, 3, 300, 28, 28) + b"\0" * (300 << 20))
    idx_variant("truncated", images=struct.pack(">HBBIII", 0, 8, 3, 300, 28, 28) + b"\0" * 100)
    idx_variant("zero-pixels", images=struct.pack(">HBBIII", 0, 8, 3, 300, 0, 0))
    idx_variant("labels-short", labels=labels[:8 + 10])
    idx_variant("not-gzip", images=b"\x1f\x8b garbage", gz=False)

    # configs
    cfgs = root / "cfgs"
    cfgs.mkdir()
    for name, text in {"not-utf8": b"\xff\xfe", "inf-lr": b"lr = inf", "nan-wd": b"weight_decay = nan",
                       "nul-name": b'name = "a\\u0000b"', "long-name": b'name = "' + b"x" * 300 + b'"',
                       "bad-model": b'model = ":"', "bool-hidden": b"model_kwargs = { hidden = [true, 2] }",
                       "huge-translate": b"translate = 1000000000", "unknown-key": b"lrr = 1",
                       "runs-dir-a-file": b'runs_dir = "' + str(cfgs / "not-utf8.toml").encode() + b'"',
                       "huge-hidden": b"model_kwargs = { hidden = [1000000000] }",
                       "huge-epochs": b"epochs = 1000000000000000000"}.items():
        (cfgs / f"{name}.toml").write_bytes(text)

    # image arrays for predict --input
    arrays = root / "arrays"
    arrays.mkdir()
    (arrays / "empty.npy").write_bytes(b"")
    np.save(arrays / "zero-images.npy", np.zeros((0, 28, 28), np.uint8))
    np.save(arrays / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(arrays / "nan.npy", np.full((2, 28, 28), np.nan, np.float32))
    np.save(arrays / "wrong-shape.npy", np.zeros((2, 3, 5, 5), np.uint8))
    np.save(arrays / "one-dim.npy", np.zeros(10, np.uint8))
    np.save(arrays / "strings.npy", np.array(["a", "b"]))
    (arrays / "header-lies.npy").write_bytes(
        b"\x93NUMPY\x01\x00v\x00{'descr': '|u1', 'fortran_order': False, 'shape': (100000, 100000, 100), }"
        + b" " * 40 + b"\n")
    return {"root": root, "idx": idx, "good": good, "marker": marker, "cwd": cwd, "files": files,
            "runs": runs, "idxs": idxs, "cfgs": cfgs, "arrays": arrays}


def snapshot(folder: Path) -> dict:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.name == ".lock" or "__pycache__" in p.parts:
            continue
        out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def run_cases(corpus, cases: list[dict], tmp_path) -> list[dict]:
    for c in cases:
        c.setdefault("cwd", str(corpus["cwd"]))
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    subprocess.run([sys.executable, str(DRIVER), str(tmp_path / "cases.json"), str(tmp_path / "results.json")],
                   env=cli_env(), check=True, timeout=600)
    return json.loads((tmp_path / "results.json").read_text())


def assert_refused_cleanly(case, result, marker: Path):
    err = result["stderr"]
    where = f"{' '.join(case['argv'])}: exit {result['code']}\n{err[-2000:]}"
    assert result["code"] in (1, 2), where
    assert "Traceback" not in err and "internal error" not in err, where
    lines = [x for x in err.strip().splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("trainlab: error:") or x.startswith("usage:")]
    assert lines and lines[-1].startswith("trainlab: error:"), where
    assert len([x for x in errors if x.startswith("trainlab: error:")]) == 1, where
    assert not marker.exists(), f"code ran: {where}"


def _check(corpus, cases, tmp_path):
    before = snapshot(corpus["root"])
    results = run_cases(corpus, cases, tmp_path)
    for case, result in zip(cases, results):
        assert_refused_cleanly(case, result, corpus["marker"])
    after = snapshot(corpus["root"])
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"files changed outside the commands' output folders: {changed[:10]}"
    return len(cases)


CHECKPOINT_FILES = ["random.pt", "empty.pt", "torn.pt", "plain-pickle.pt", "pickle-v4.pt", "torch-evil.pt",
                    "pickled-module.pt", "state-dict.pt", "a-list.pt", "folder.pt", "zip-bomb.pt", "no-spec.pt",
                    "evil-spec.pt", "os-spec.pt", "bad-import-path.pt", "huge-kwargs.pt", "huge-shape.pt",
                    "bad-kwargs.pt", "spec-string.pt", "classes-mismatch.pt", "missing-key.pt",
                    "shape-mismatch.pt", "mean-string.pt", "no-config.pt", "future-format.pt",
                    "ten-classes-other-data.pt", "missing.pt"]


def test_hostile_checkpoints_through_predict_evaluate_export(corpus, tmp_path):
    out = tmp_path / "out"
    cases = []
    for name in CHECKPOINT_FILES:
        f = str(corpus["files"] / name)
        cases += [{"argv": ["predict", f, "-n", "2"]}, {"argv": ["evaluate", f, "--no-plots"]},
                  {"argv": ["export", f, "-o", str(out / name)]}]
    # inspect shows what a file holds, so only the files it cannot read at all are errors
    for name in ("random.pt", "empty.pt", "torn.pt", "plain-pickle.pt", "torch-evil.pt", "pickled-module.pt",
                 "zip-bomb.pt", "folder.pt", "missing.pt"):
        cases.append({"argv": ["inspect", str(corpus["files"] / name)]})
    n = _check(corpus, cases, tmp_path)
    print(f"hostile checkpoints: {n} command runs refused cleanly")


def test_inspect_describes_forged_checkpoints_without_a_traceback(corpus, tmp_path):
    cases = [{"argv": ["inspect", str(corpus["files"] / n)]}
             for n in ("no-spec.pt", "spec-string.pt", "mean-string.pt", "evil-spec.pt", "state-dict.pt", "a-list.pt")]
    results = run_cases(corpus, cases, tmp_path)
    for case, r in zip(cases, results):
        assert r["code"] == 0 and "Traceback" not in r["stderr"], (case, r)
    assert "DAMAGED" in results[0]["stdout"] and not corpus["marker"].exists()


RUN_VARIANTS = ["config-evil-model", "config-not-utf8", "config-inf-lr", "no-config", "config-a-folder",
                "checkpoints-forged"]


def test_hostile_run_folders_through_resume_and_report(corpus, tmp_path):
    cases = []
    for name in RUN_VARIANTS:
        d = str(corpus["runs"] / name)
        cases += [{"argv": ["resume", d, "--epochs", "3"]}, {"argv": ["train", "--resume", d, "--epochs", "3"]}]
    cases += [{"argv": ["report", str(corpus["runs"] / "checkpoints-forged"), "-o", str(tmp_path / "r.html")]},
              {"argv": ["evaluate", str(corpus["runs"] / "checkpoints-forged"), "--no-plots"]}]
    n = _check(corpus, cases, tmp_path)
    print(f"hostile run folders: {n} command runs refused cleanly")


IDX_VARIANTS = ["label-1e9", "overflow-dims", "gzip-bomb", "truncated", "zero-pixels", "labels-short", "not-gzip"]


def test_hostile_idx_folders_through_data_info_and_train(corpus, tmp_path):
    cases = []
    for name in IDX_VARIANTS:
        d = f"idx:{corpus['idxs'] / name}"
        cases += [{"argv": ["data", "info", "--dataset", d]},
                  {"argv": ["train", "--dataset", d, "--runs-dir", str(tmp_path / "runs"), "--epochs", "1",
                            "--threads", "1", "--val-size", "100", "--batch-size", "50", "--quiet"]}]
    n = _check(corpus, cases, tmp_path)
    print(f"hostile IDX folders: {n} command runs refused cleanly")


def test_hostile_configs_and_arguments(corpus, tmp_path):
    runs = str(tmp_path / "runs")
    data = ["--dataset", f"idx:{corpus['idx']}", "--runs-dir", runs, "--threads", "1", "--val-size", "100",
            "--batch-size", "50", "--epochs", "1", "--quiet"]
    no_epochs = [a for a in data if a not in ("--epochs", "1")]  # the file's own epochs must count
    cases = [{"argv": ["train", "--config", str(p), *no_epochs]} for p in sorted(corpus["cfgs"].glob("*.toml"))
             if p.stem != "runs-dir-a-file"]
    cases.append({"argv": ["train", "--config", str(corpus["cfgs"] / "runs-dir-a-file.toml"),
                           "--dataset", f"idx:{corpus['idx']}", "--epochs", "1", "--quiet"]})
    good = str(corpus["good"])
    cases += [{"argv": ["predict", good, "--device", "garbage"]}, {"argv": ["evaluate", good, "--device", "garbage"]},
              {"argv": ["predict", good, "-n", "0"]}, {"argv": ["predict", good, "-n", "-5"]},
              {"argv": ["export", good, "-o", str(corpus["files"] / "random.pt")]},
              {"argv": ["train", "--nproc", "-1", *data]}, {"argv": ["train", "--nproc", "0", *data]},
              {"argv": ["train", "--nproc", "3", *data]},  # 50 does not divide across 3
              {"argv": ["train", "--name", "a/b", *data]}, {"argv": ["train", "--name", "x" * 300, *data]},
              {"argv": ["train", "--lr", "nan", *data]}, {"argv": ["train", "--lr", "inf", *data]},
              {"argv": ["train", "--grad-clip", "-inf", *data]}, {"argv": ["train", "--min-delta", "nan", *data]},
              {"argv": ["train", "--model", "os:system", *data]}, {"argv": ["train", "--model", ":", *data]},
              {"argv": ["resume", str(tmp_path / "nowhere")]}, {"argv": ["resume", good, "--from", "../x.pt"]},
              {"argv": ["resume", good, "--epochs", "1"]},  # fewer than trained
              {"argv": ["resume", good, "--lr", "-1"]},
              {"argv": ["report", good, "-o", str(tmp_path)]},  # a folder
              {"argv": ["inspect", str(tmp_path / "nowhere.pt")]}]
    n = _check(corpus, cases, tmp_path)
    print(f"hostile configs and arguments: {n} command runs refused cleanly")


def test_hostile_image_arrays_through_predict(corpus, tmp_path):
    good = str(corpus["good"])
    cases = [{"argv": ["predict", good, "--input", str(p)]} for p in sorted(corpus["arrays"].iterdir())]
    cases.append({"argv": ["predict", good, "--input", str(corpus["files"] / "random.pt")]})
    n = _check(corpus, cases, tmp_path)
    print(f"hostile image arrays: {n} command runs refused cleanly")


def test_hostile_run_metadata_through_compare_and_report(corpus, tmp_path):
    """meta.json, results.json and metrics.jsonl of shapes trainlab never writes: one sentence
    naming the file (a damaged row of metrics.jsonl too; only a torn last line is left out)."""
    good = corpus["good"]
    variants = {"meta-a-list": ("meta.json", "[1]"), "meta-fingerprint": ("meta.json", '{"data_fingerprint": "x"}'),
                "meta-parent": ("meta.json", '{"parent": {"run": 5}}'), "results-a-string": ("results.json", '"x"'),
                "results-test": ("results.json", '{"test": "x"}'),
                "results-per-class": ("results.json", '{"test": {"per_class": [1, 2]}}'),
                "results-seconds": ("results.json", '{"total_seconds": "x"}'),
                "results-tested": ("results.json", '{"tested": "x"}'),
                "results-tested-label": ("results.json", '{"tested": {"label": 5, "epoch": 1}}'),
                "results-tested-epoch": ("results.json", '{"tested": {"label": "x", "epoch": true}}')}
    cases = []
    for name, (file, text) in variants.items():
        d = tmp_path / name
        shutil.copytree(good, d)
        (d / file).write_text(text)
        cases += [{"argv": ["compare", str(good), str(d)]}]
    rows = tmp_path / "rows"
    shutil.copytree(good, rows)
    with open(rows / "metrics.jsonl", "a") as f:
        f.write('{"epoch": "a", "train_acc": "x"}\n{"epoch": [1]}\n\xff\n')
    cases.append({"argv": ["compare", str(good), str(rows)]})
    results = run_cases(corpus, cases, tmp_path)
    for case, result in zip(cases, results):
        assert_refused_cleanly(case, result, corpus["marker"])
    assert "metrics.jsonl" in results[-1]["stderr"], results[-1]


def test_hostile_onnx_files_through_predict(corpus, tmp_path):
    """An ONNX file is code: graphs trainlab never writes (Loop of 2**62 iterations, Scan, If,
    custom domains, operators outside the allow-list, external data naming /etc/passwd or a
    file beside it, huge or symbolic shapes), forged trainlab metadata field by field, and
    files that are not ONNX at all, each refused in one sentence before ONNX Runtime runs
    anything; a per-case alarm turns a hang into a failure."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import onnx_graphs

    files = onnx_graphs.hostile(tmp_path / "onnx")
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    x = str(tmp_path / "x.npy")
    cases = [{"argv": ["predict", str(f), x], "timeout": 120} for f, _ in files.values()]
    good = onnx_graphs.good(tmp_path / "good.onnx")
    results = run_cases(corpus, [*cases, {"argv": ["predict", str(good), x], "timeout": 120}], tmp_path)
    for case, result, (name, (_, phrase)) in zip(cases, results, files.items()):
        assert_refused_cleanly(case, result, corpus["marker"])
        assert phrase in result["stderr"], (name, result["stderr"])
    assert results[-1]["code"] == 0 and "Traceback" not in results[-1]["stderr"], results[-1]  # the control runs
    assert (tmp_path / "onnx" / "secret.bin").read_bytes() == b"s" * (28 * 28 * 10 * 4)
    print(f"hostile ONNX files: {len(cases)} predict runs refused cleanly")
