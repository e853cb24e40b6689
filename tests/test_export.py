"""`trainlab export` (safetensors + JSON, channels_last models included) and `trainlab predict`
on .npy / IDX inputs, with its refusals (pickled .npy, wrong image shape)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import idx_folder, make_images, run_cli, tiny_dataset, train_tiny

from trainlab.export.export import export_run
from trainlab.api import load_model, predict_images
from trainlab.cli.main import main

safetensors_torch = pytest.importorskip("safetensors.torch")

CLASSES = [f"c{i}" for i in range(10)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("runs"), tiny_dataset()).run_dir


def assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------- export

def test_export_writes_safetensors_equal_to_the_model_and_a_json(run_dir, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(run_dir), "-o", str(out)]) == 0
    assert f"wrote {out / 'model.safetensors'} and {out / 'model.safetensors.json'}" in capsys.readouterr().out
    model, ckpt = load_model(run_dir, map_location="cpu")
    tensors = safetensors_torch.load_file(str(out / "model.safetensors"))
    assert_same_tensors(tensors, model.state_dict())
    meta = json.loads((out / "model.safetensors.json").read_text())
    assert meta["schema"] == 1 and meta["format"] == "safetensors" and meta["file"] == "model.safetensors"
    assert meta["model_spec"] == ckpt["model_spec"] and meta["model_spec"]["name"] == "mlp"
    assert meta["classes"] == CLASSES and meta["preprocessing"]["mean"] == ckpt["mean"] and meta["preprocessing"]["std"] == ckpt["std"]
    assert meta["source"] == str(run_dir / "model.pt")
    # the weights load into the architecture rebuilt from the JSON alone
    from trainlab.models import build_from_spec as build_model

    rebuilt = build_model(meta["model_spec"])
    rebuilt.load_state_dict(tensors)
    assert_same_tensors(rebuilt.state_dict(), model.state_dict())


def test_export_a_checkpoint_file(run_dir, tmp_path):
    weights, meta = export_run(run_dir / "checkpoints" / "last.pt", tmp_path)
    tensors = safetensors_torch.load_file(str(weights))
    from trainlab.store.schema import load_checkpoint

    assert_same_tensors(tensors, load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"])


def test_export_a_channels_last_cnn(tmp_path, tiny_data):
    run = train_tiny(tmp_path, tiny_data, model="cnn", epochs=1, channels_last=True,
                     model_kwargs={"channels": [4, 8], "fc": 16}).run_dir
    weights, _ = export_run(run, tmp_path / "out")
    model, _ = load_model(run, map_location="cpu")
    assert_same_tensors(safetensors_torch.load_file(str(weights)), model.state_dict())


def test_export_copies_channels_last_tensors_contiguous(run_dir, tmp_path, monkeypatch):
    """A model still in channels_last when exported: safetensors refuses its views as they are."""
    import trainlab.export.export as export
    from trainlab.models import build_from_spec as build_model

    spec = {"name": "cnn", "kwargs": {"channels": [4, 8], "fc": 16}, "input_shape": [1, 28, 28],
            "num_classes": 10}
    model = build_model(spec).to(memory_format=torch.channels_last)
    _, ckpt = load_model(run_dir, map_location="cpu")
    monkeypatch.setattr(export, "load_model", lambda path, map_location=None, allow_import=(): (model, {**ckpt, "model_spec": spec}))
    state = model.state_dict()
    assert any(not t.is_contiguous() for t in state.values())  # the premise
    with pytest.raises(ValueError, match="contiguous"):
        safetensors_torch.save_file(state, str(tmp_path / "raw.safetensors"))
    weights, _ = export_run(run_dir, tmp_path / "out")
    assert_same_tensors(safetensors_torch.load_file(str(weights)), {k: v.contiguous() for k, v in state.items()})


# ---------------------------------------------------------------- predict

def images_npy(path: Path, n: int = 5, **kw) -> Path:
    images, labels = make_images(n, seed=3, **kw)
    np.save(path, images)
    return path


def predicted_rows(out: str) -> list[list[str]]:
    """Rows named by index (the test split) or by FILE[index] (an array file), the name as its index."""
    return [[re.sub(r".*\[(\d+)\]$", r"\1", c) if i == 0 else c for i, c in enumerate(line.split())]
            for line in out.splitlines() if re.match(r"\s*(\S*\[)?\d+\]?\s", line)]


def test_predict_prints_class_names_and_probabilities(run_dir, tmp_path, capsys):
    npy = images_npy(tmp_path / "x.npy")
    assert main(["predict", str(run_dir), "--input", str(npy), "-n", "3"]) == 0
    rows = predicted_rows(capsys.readouterr().out)
    model, ckpt = load_model(run_dir, map_location="cpu")
    probs = predict_images(model, ckpt, torch.from_numpy(np.load(npy))[:3])
    assert len(rows) == 3
    for i, cells in enumerate(rows):
        top = int(probs[i].argmax())
        assert cells[:3] == [str(i), CLASSES[top], f"{float(probs[i, top]):.1%}"]
        assert re.fullmatch(r"c\d \d+\.\d%, c\d \d+\.\d%", " ".join(cells[3:]))  # the runners-up


def test_predict_from_python_m_with_an_npy_of_hw_images(run_dir, tmp_path):
    images, _ = make_images(4, seed=3)
    np.save(tmp_path / "x.npy", images[:, 0])  # N,H,W: the channel is added
    proc = run_cli("predict", run_dir, "--input", tmp_path / "x.npy", "-n", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = predicted_rows(proc.stdout)
    assert [r[0] for r in rows] == ["0", "1", "2"]
    assert all(r[1] in CLASSES and r[2].endswith("%") for r in rows)


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def test_predict_refuses_an_npy_holding_pickled_objects(run_dir, tmp_path, capsys):
    marker = tmp_path / "pwned"
    np.save(tmp_path / "evil.npy", np.array([Payload(marker), 1], dtype=object), allow_pickle=True)
    assert main(["predict", str(run_dir), "--input", str(tmp_path / "evil.npy")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("trainlab: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "holds Python objects (a pickle), which trainlab never loads" in err
    assert not marker.exists()
    np.load(tmp_path / "evil.npy", allow_pickle=True)  # the premise: unpickling it runs the payload
    assert marker.exists()


@pytest.mark.parametrize("shape,words", [
    ((2, 3, 32, 32), "the images are (3, 32, 32) but the model expects (1, 28, 28) (C,H,W)"),
    ((2, 1, 1, 28, 28), "expected images shaped N,H,W or N,C,H,W, got (2, 1, 1, 28, 28)"),
])
def test_predict_refuses_images_of_the_wrong_shape(run_dir, tmp_path, capsys, shape, words):
    np.save(tmp_path / "x.npy", np.zeros(shape, dtype=np.uint8))
    assert main(["predict", str(run_dir), "--input", str(tmp_path / "x.npy")]) == 1
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_predict_refuses_a_file_that_is_not_an_npy_array(run_dir, tmp_path, capsys):
    (tmp_path / "x.npy").write_bytes(os.urandom(64))
    assert main(["predict", str(run_dir), "--input", str(tmp_path / "x.npy")]) == 1
    assert "not a readable .npy array" in capsys.readouterr().err


idx_dir = idx_folder()


def test_predict_on_the_runs_own_test_images_and_an_idx_file(idx_dir, tmp_path, capsys):
    run = train_tiny(tmp_path / "runs", dataset=f"idx:{idx_dir}").run_dir
    assert main(["predict", str(run), "-n", "4"]) == 0  # the data set's test split, with the truth
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["#", "true", "predicted", "prob", "next"]
    rows = predicted_rows(out)
    _, labels = make_images(200, seed=2)
    assert [r[1] for r in rows] == [str(int(y)) for y in labels[:4]]  # IDX classes are "0".."9"
    assert main(["predict", str(run), "--input", str(idx_dir / "t10k-images-idx3-ubyte.gz"), "-n", "2"]) == 0
    assert len(predicted_rows(capsys.readouterr().out)) == 2
