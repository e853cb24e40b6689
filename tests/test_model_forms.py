"""Every form of a trained model trainlab writes (run folder, checkpoint, model.pt,
model.safetensors + .json, model.onnx) x every use (predict image files, a labelled folder,
arrays; evaluate; inspect): each cell works and the forms agree (argmax 100%, probabilities
within 1e-4). And the exports round-trip: one metadata file per artifact, schema 1, the old
model.json still read, load_model rebuilds a safetensors export, the README's plain-PyTorch
snippet runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import train_tiny, write_idx_folder

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("safetensors")
pytest.importorskip("PIL")

from trainlab.export.export import export_run  # noqa: E402
from trainlab.data import load_dataset  # noqa: E402

TOL = 1e-4
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("forms")
    data = write_idx_folder(root / "data")
    run = train_tiny(root / "runs", dataset=f"idx:{data}", model="cnn-fast", name="cnn", epochs=1,
                     hflip=True, tta_flip=True, batch_size=64).run_dir
    out = root / "export"
    export_run(run, out)
    export_run(run, out, format="onnx")
    ds = load_dataset(f"idx:{data}")
    x, y = ds.test_x[:24].numpy(), ds.test_y[:24].numpy()
    folder = root / "labelled"
    for i, (img, label) in enumerate(zip(x, y)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(folder / str(label) / f"{i:03d}.png")
    np.save(root / "x.npy", x)
    ckpt = next(p for p in (run / "checkpoints" / n for n in ("best.pt", "last.pt")) if p.exists())
    return {"root": root, "data": data, "run": run, "out": out, "folder": folder, "npy": root / "x.npy",
            "forms": {"run": run, "checkpoint": ckpt, "model.pt": run / "model.pt",
                      "safetensors": out / "model.safetensors", "onnx": out / "model.onnx"}}


def _probs(doc: dict) -> np.ndarray:
    """Per image, the probability of each class (from --top K with K = every class)."""
    k = len(doc["predictions"][0]["top"])
    rows = []
    for p in doc["predictions"]:
        row = np.zeros(k)
        for t in p["top"]:
            row[int(t["class"])] = t["probability"]
        rows.append(row)
    return np.array(rows)


@pytest.mark.parametrize("inputs", ["files", "folder", "arrays"])
def test_predict_agrees_across_every_form(forms, cli, inputs):
    folder = forms["folder"]
    args = {"files": sorted(folder.rglob("*.png"))[:7], "folder": [folder], "arrays": [forms["npy"]]}[inputs]
    docs = {}
    for name, path in forms["forms"].items():
        r = cli("predict", path, *args, "--top", "10", "--output", "json")
        assert r.returncode == 0, (name, r.stderr)
        docs[name] = json.loads(r.stdout)
    ref = _probs(docs["model.pt"])
    assert len(ref) == {"files": 7, "folder": 24, "arrays": 24}[inputs]
    for name, doc in docs.items():
        p = _probs(doc)
        assert (p.argmax(1) == ref.argmax(1)).all(), name
        assert np.abs(p - ref).max() <= TOL, name
        assert [d["file"] for d in doc["predictions"]] == [d["file"] for d in docs["model.pt"]["predictions"]]
    if inputs == "folder":  # labelled by its class subfolders: the true class and a summary
        assert all("true" in d for d in docs["onnx"]["predictions"])
        accs = {name: doc["summary"]["accuracy"] for name, doc in docs.items()}
        assert len(set(accs.values())) == 1, accs
        assert sum(map(sum, docs["onnx"]["summary"]["confusion_matrix"])) == 24
    else:
        assert all(doc["summary"] is None for doc in docs.values())


def test_image_files_equal_the_arrays_they_were_written_from(forms, cli):
    a = json.loads(cli("predict", forms["forms"]["onnx"], forms["folder"], "-k", "10", "--output", "json").stdout)
    b = json.loads(cli("predict", forms["forms"]["onnx"], forms["npy"], "-k", "10", "--output", "json").stdout)
    order = [int(Path(d["file"]).stem) for d in a["predictions"]]
    assert np.abs(_probs(a) - _probs(b)[order]).max() <= TOL


def test_evaluate_and_inspect_read_every_form(forms, cli):
    accs = {}
    for name, path in forms["forms"].items():
        r = cli("evaluate", path, "--no-plots")
        assert r.returncode == 0, (name, r.stderr)
        accs[name] = re.search(r"test accuracy ([\d.]+)%, loss ([\d.]+)", r.stdout).groups()
        r = cli("inspect", path)
        assert r.returncode == 0 and "cnn-fast" in r.stdout, (name, r.stdout, r.stderr)
    assert len({a for a, _ in accs.values()}) == 1, accs
    assert max(float(loss) for _, loss in accs.values()) - min(float(loss) for _, loss in accs.values()) <= 1e-3


def test_table_csv_and_limits(forms, cli):
    onnx = forms["forms"]["onnx"]
    r = cli("predict", onnx, forms["folder"])
    assert r.returncode == 0 and "accuracy" in r.stdout and "confusion matrix" in r.stdout
    r = cli("predict", onnx, forms["folder"], "-n", "5", "-k", "2", "--output", "csv")
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "file,true,class_1,prob_1,class_2,prob_2" and len(lines) == 6
    assert "accuracy" in r.stderr  # the summary stays off the CSV
    r = cli("predict", forms["forms"]["safetensors"], forms["npy"], "--limit", "3", "--output", "json")
    assert len(json.loads(r.stdout)["predictions"]) == 3


def test_a_folder_streams_in_chunks(forms, cli, monkeypatch):
    """Never all images decoded at once: chunks of CHUNK_BYTES (here 5 images' worth)."""
    from trainlab.analysis import prediction
    from trainlab.data import folder as folder_mod

    seen = []
    real = folder_mod.read_images
    monkeypatch.setattr(prediction, "CHUNK_BYTES", 5 * 28 * 28)
    monkeypatch.setattr(prediction, "read_image_files", lambda paths, *a: seen.append(len(paths)) or real(paths, *a))
    r = cli("predict", forms["forms"]["model.pt"], forms["folder"], "--output", "csv")
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 25
    assert max(seen) == 5 and sum(seen) == 24


def test_one_metadata_file_per_artifact(forms):
    out = forms["out"]
    st, ox = (json.loads((out / n).read_text()) for n in ("model.safetensors.json", "model.onnx.json"))
    assert st["schema"] == ox["schema"] == 1 and (st["format"], ox["format"]) == ("safetensors", "onnx")
    assert st["file"] == "model.safetensors" and ox["file"] == "model.onnx"
    assert not (out / "model.json").exists()
    for key in ("model_spec", "classes", "image_files", "data"):
        assert st[key] == ox[key], key
    assert st["preprocessing"]["tta_flip"] is True and st["data"]["dataset"].startswith("idx:")


def test_load_model_rebuilds_a_safetensors_export(forms):
    import torch

    import trainlab

    model, ckpt = trainlab.load_model(forms["forms"]["safetensors"], map_location="cpu")
    ref, _ = trainlab.load_model(forms["run"], map_location="cpu")
    assert isinstance(model, torch.nn.Module) and ckpt["classes"] == [str(i) for i in range(10)]
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_an_export_before_schema_1_is_still_read(forms, cli, tmp_path):
    """model.json of an older export: the safetensors fields, or the ONNX table that overwrote them."""
    import shutil

    st = json.loads((forms["out"] / "model.safetensors.json").read_text())
    old = {"model_spec": st["model_spec"], "classes": st["classes"], "mean": st["preprocessing"]["mean"],
           "std": st["preprocessing"]["std"], "input": st["image_files"], "trainlab_version": "0.1.0",
           "source": "x"}
    shutil.copy(forms["out"] / "model.safetensors", tmp_path / "model.safetensors")
    for meta in (old, json.loads((forms["out"] / "model.onnx.json").read_text())):
        (tmp_path / "model.json").write_text(json.dumps(meta))
        r = cli("predict", tmp_path / "model.safetensors", forms["npy"], "--output", "json")
        assert r.returncode == 0, r.stderr
        assert cli("inspect", tmp_path / "model.safetensors").returncode == 0


@pytest.mark.parametrize("damage", ["missing", "not-json", "bad-spec", "few-classes", "other-weights",
                                    "junk-weights"])
def test_a_damaged_or_missing_metadata_is_one_sentence(forms, cli, tmp_path, damage):
    import shutil

    shutil.copy(forms["out"] / "model.safetensors", tmp_path / "model.safetensors")
    meta = json.loads((forms["out"] / "model.safetensors.json").read_text())
    side = tmp_path / "model.safetensors.json"
    if damage == "junk-weights":
        side.write_text(json.dumps(meta))
        (tmp_path / "model.safetensors").write_bytes(b"\xff" * 8 + b"{" * 100)
    elif damage == "not-json":
        side.write_text("{")
    elif damage == "bad-spec":
        side.write_text(json.dumps({**meta, "model_spec": {"name": "os:system"}}))
    elif damage == "few-classes":
        side.write_text(json.dumps({**meta, "classes": ["a"]}))
    elif damage == "other-weights":
        side.write_text(json.dumps({**meta, "model_spec": {**meta["model_spec"], "name": "mlp"}}))
    for cmd in (("predict", tmp_path / "model.safetensors", forms["npy"]), ("inspect", tmp_path / "model.safetensors")):
        r = cli(*cmd)
        if damage == "other-weights" and cmd[0] == "inspect":  # shown, not stopped
            assert r.returncode == 0 and "DO NOT FIT" in r.stdout
            continue
        assert r.returncode == 1 and "Traceback" not in r.stderr, (damage, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_readme_plain_pytorch_snippet_rebuilds_the_export(forms, monkeypatch):
    """The README's block after '<!-- plain-pytorch -->', run as written, in the export folder."""
    import torch

    text = README.read_text()
    block = text.split("<!-- plain-pytorch -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) <= 12
    monkeypatch.chdir(forms["out"])
    images = load_dataset(f"idx:{forms['data']}").test_x[:16]
    scope = {"images": images}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 -- the project's own README
    import trainlab
    from trainlab.inference import predict_images

    model, ckpt = trainlab.load_model(forms["run"], map_location="cpu")
    ref = predict_images(model, ckpt, images)
    assert torch.equal(scope["probs"].argmax(1), ref.argmax(1))
    assert (scope["probs"] - ref).abs().max() <= TOL


def test_a_folder_is_labelled_only_by_the_models_class_names(forms, cli, tmp_path, monkeypatch):
    """~ is expanded as for image files; a subfolder that is not a class leaves it unlabelled."""
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(forms["folder"], tmp_path / "digits")
    doc = json.loads(cli("predict", forms["forms"]["onnx"], "~/digits", "--output", "json").stdout)
    assert doc["summary"]["n"] == 24
    (tmp_path / "digits" / "cats").mkdir()
    shutil.copy(next(forms["folder"].rglob("*.png")), tmp_path / "digits" / "cats" / "x.png")
    r = cli("predict", forms["forms"]["onnx"], tmp_path / "digits", "--output", "json")
    doc = json.loads(r.stdout)
    assert doc["summary"] is None and len(doc["predictions"]) == 25 and "true" not in doc["predictions"][0]
