"""`trainlab serve`: the page in a real headless Chromium, the JSON endpoint, hostile uploads
(each refused in one message while the server keeps answering), a bounded load, and the
command's own edges (busy port, bad port, SIGTERM). Every server is stopped by its test."""

from __future__ import annotations

import http.client
import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import CLOTHES, cli_env, start_cli, train_tiny, write_fashion_pngs, write_idx_folder
from test_folder import bomb_png
from test_report import Browser, background_share, chromium  # noqa: F401 - chromium is a fixture

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from serve_load import load  # noqa: E402


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny run on synthetic IDX data with class names, and that data's folder."""
    root = tmp_path_factory.mktemp("serve")
    data = write_idx_folder(root / "data", gz=False, classes=CLOTHES)
    return train_tiny(root / "runs", dataset=f"idx:{data}", name="tiny").run_dir, data


@pytest.fixture(scope="module")
def served_model(tiny_run):
    from trainlab.serve import ServedModel

    return ServedModel(tiny_run[0])


class Running:
    """A server on 127.0.0.1 (any free port) serving in a thread; `stop` ends it."""

    def __init__(self, model):
        from trainlab.serve import make_server

        self.server = make_server(model, "127.0.0.1", 0)
        self.url = self.server.url
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


@pytest.fixture
def server(served_model):
    s = Running(served_model)
    yield s
    s.stop()


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def test_pngs(tiny_run) -> list[tuple[bytes, str]]:
    """(PNG bytes, true class) of the tiny data's first test images."""
    from trainlab.data.idx import read_idx

    data = tiny_run[1]
    x, y = read_idx(data / "t10k-images-idx3-ubyte"), read_idx(data / "t10k-labels-idx1-ubyte")
    return [(png_bytes(x[i]), CLOTHES[int(y[i])]) for i in range(8)]


def multipart(files: list[tuple[str, bytes]], field: str = "file", boundary: str = "trainlabTestBoundary7MA4YWxk"
              ) -> tuple[bytes, str]:
    out = b""
    for name, data in files:
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n").encode("utf-8") + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(server, body: bytes, content_type: str | None, path: str = "/predict", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        h = {"Content-Type": content_type} if content_type else {}
        conn.request("POST", path, body, {**h, **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if resp.getheader("Content-Type") == "application/json" else data
    finally:
        conn.close()


def assert_still_serving(server, png: bytes, truth: str | None = None) -> None:
    status, answer = post(server, *multipart([("good.png", png)]))
    assert status == 200, answer
    if truth:
        assert answer["predictions"][0]["top"][0]["class"] == truth


def one_sentence(answer) -> str:
    assert set(answer) == {"error"}, answer
    message = answer["error"]
    assert "\n" not in message and "Traceback" not in message and len(message) < 400, message
    return message


# ---------------------------------------------------------------- the JSON endpoint

def test_predict_multipart_and_raw_body_agree_with_predict_images(server, served_model, test_pngs):
    import torch

    from trainlab.inference import predict_images

    files = [(f"img{i}.png", png) for i, (png, _) in enumerate(test_pngs)]
    status, answer = post(server, *multipart(files))
    assert status == 200, answer
    preds = answer["predictions"]
    assert [p["file"] for p in preds] == [f for f, _ in files]
    assert all(len(p["top"]) == 5 for p in preds)  # k defaults to 5
    # the tiny data is learnable: the top class is the truth
    assert [p["top"][0]["class"] for p in preds] == [t for _, t in test_pngs]
    # the same probabilities as predict_images on the same pixels
    from PIL import Image

    pixels = torch.from_numpy(np.stack([np.asarray(Image.open(io.BytesIO(p)))[None] for p, _ in test_pngs]))
    probs = predict_images(served_model.model, served_model.ckpt, pixels)
    for p, row in zip(preds, probs):
        assert abs(p["top"][0]["probability"] - float(row.max())) < 1e-5
        assert all(a["probability"] >= b["probability"] for a, b in zip(p["top"], p["top"][1:]))

    status, raw = post(server, test_pngs[0][0], "image/png", path="/predict?k=3")
    assert status == 200
    assert raw["predictions"][0]["file"] == "(body)" and len(raw["predictions"][0]["top"]) == 3
    assert raw["predictions"][0]["top"] == preds[0]["top"][:3]
    status, raw = post(server, test_pngs[1][0], "application/octet-stream", path="/predict?k=99&name=x.png")
    assert status == 200 and len(raw["predictions"][0]["top"]) == 10 and raw["predictions"][0]["file"] == "x.png"


# ---------------------------------------------------------------- hostile uploads

def _bomb(tmp_path):
    return bomb_png(tmp_path / "bomb.png").read_bytes()


HOSTILE = {
    # name: (body maker, content type, status, phrase in the message)
    "decompression bomb": (lambda t, g: multipart([("bomb.png", _bomb(t))]), None, 400, "decompression bomb"),
    "truncated PNG": (lambda t, g: multipart([("cut.png", g[: len(g) // 2])]), None, 400, "truncated"),
    "non-image bytes": (lambda t, g: (b"hello, not an image" * 10, "image/png"), None, 400,
                        "not a PNG, JPEG, BMP, GIF or WebP image"),
    "wrong content type": (lambda t, g: (g, "text/plain"), None, 415, "Content-Type 'text/plain'"),
    "json body": (lambda t, g: (b'{"file": 1}', "application/json"), None, 415, "multipart/form-data"),
    "empty file": (lambda t, g: multipart([("empty.png", b"")]), None, 400, "empty file"),
    "empty body": (lambda t, g: (b"", "image/png"), None, 400, "no body"),
    "no file field": (lambda t, g: multipart([("a.png", g)], field="other"), None, 400, "field 'file'"),
    "too many files": (lambda t, g: multipart([(f"{i}.png", g) for i in range(17)]), None, 413, "at most 16"),
    "escape in a file name": (lambda t, g: multipart([("a\x1b[2Jb.png", g)]), None, 400, "control characters"),
    "bell in a file name": (lambda t, g: multipart([("x\x07.png", g)]), None, 400, "control characters"),
    "bad k": (lambda t, g: (g, "image/png"), "?k=lots", 400, "whole number"),
    "no boundary": (lambda t, g: (g, "multipart/form-data"), None, 400, "boundary"),
    # 10 MB of empty parts took the email parser 7 minutes: parts are counted first
    "many parts": (lambda t, g: multipart([("x", b"")] * 2000, field="other"), None, 413, "at most 64"),
    "no closing boundary": (lambda t, g: (multipart([("a.png", g)])[0][:-30], multipart([])[1]), None, 400,
                            "closing boundary"),
    "nested multipart": (lambda t, g: multipart([("n.png", multipart([("a.png", g)], boundary="inner")[0])]), None, 400,
                         "n.png: not a PNG"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_upload_is_one_message_and_the_server_keeps_serving(case, server, test_pngs, tmp_path):
    make, query, status, phrase = HOSTILE[case]
    good, truth = test_pngs[0]
    body, content_type = make(tmp_path, good)
    got, answer = post(server, body, content_type, path="/predict" + (query or ""))
    assert got == status, answer
    message = one_sentence(answer)
    assert phrase in message, message
    assert "\x1b" not in message and "\x07" not in message
    assert_still_serving(server, good, truth)


def test_a_50_mb_body_is_refused_unread_and_the_server_keeps_serving(server, test_pngs):
    good, truth = test_pngs[0]
    size = 50 * 1024 * 1024
    # with Expect: 100-continue (curl's way) the body is never sent
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {size}\r\n"
                  "Expect: 100-continue\r\n\r\n".encode())
        head = s.makefile("rb").read()
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert "at most 10 MB" in one_sentence(json.loads(head.split(b"\r\n\r\n", 1)[1]))
    assert_still_serving(server, good, truth)
    # sent whole: the answer still arrives, and nothing is kept
    status, answer = post(server, bytes(size), "image/png")
    assert status == 413 and "50.0 MB; at most 10 MB" in one_sentence(answer)
    assert_still_serving(server, good, truth)


def test_a_refused_request_leaves_its_connection_clean_for_the_next(server, test_pngs):
    """A refusal after the headers (a bad k) must still consume the body: on a keep-alive
    connection, the unread PNG would otherwise be read as the next request."""
    good, truth = test_pngs[0]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/predict?k=lots", good, {"Content-Type": "image/png"})
        resp = conn.getresponse()
        assert resp.status == 400 and "whole number" in one_sentence(json.loads(resp.read()))
        conn.request("POST", "/predict", good, {"Content-Type": "image/png"})  # the same connection
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["predictions"][0]["top"][0]["class"] == truth
    finally:
        conn.close()


def test_a_get_with_a_body_closes_its_connection(server, test_pngs):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        smuggled = b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
        answer = s.makefile("rb").read()  # returns: the server closed the connection
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1 ") == 1, answer
    assert_still_serving(server, *test_pngs[0])


def test_a_body_shorter_than_its_length_and_a_chunked_body_are_refused(server, test_pngs):
    good, truth = test_pngs[0]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
                  + good[:100])
        s.shutdown(socket.SHUT_WR)  # the client leaves mid-body
        rest = s.makefile("rb").read()
    assert rest == b"" or b"400" in rest.split(b"\r\n")[0]
    status, answer = post(server, good, "image/png", headers={"Transfer-Encoding": "chunked"})
    assert status == 411 and "Content-Length" in one_sentence(answer)
    assert_still_serving(server, good, truth)


def test_hostile_class_and_file_names_are_escaped_on_the_page(served_model, test_pngs, monkeypatch):
    from trainlab.serve.page import page

    hostile = "<script>alert(1)</script>"
    monkeypatch.setattr(served_model.card, "classes", [hostile + c for c in served_model.card.classes])
    running = Running(served_model)
    try:
        body, content_type = multipart([('<img src=x onerror="alert(2)">.png', test_pngs[0][0])])
        status, html_page = post(running, body, content_type, path="/")
        assert status == 200
        text = html_page.decode()
        assert "<script>alert" not in text and "<img src=x" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;img src=x onerror=" in text
        assert text.count("<script>") == 1  # the page's own
        # an error on the page is escaped too
        assert "&lt;b&gt;" in page(served_model.card, error="<b>bad</b>") and "<b>bad" not in page(
            served_model.card, error="<b>bad</b>")
        # a UTF-8 name, as browsers send it, is shown as written
        body, content_type = multipart([("été.png", test_pngs[0][0])])
        status, html_page = post(running, body, content_type, path="/")
        assert status == 200 and "été.png" in html_page.decode()
        # the JSON answer carries the names as data
        status, answer = post(running, test_pngs[0][0], "image/png", path="/predict?name=%3Cb%3E.png")
        assert status == 200 and answer["predictions"][0]["file"] == "<b>.png"
        assert answer["predictions"][0]["top"][0]["class"].startswith(hostile)
    finally:
        running.stop()


def test_the_page_shows_errors_and_unknown_paths_answer_404(server, test_pngs):
    status, text = post(server, b"junk" * 10, "image/png", path="/")
    assert status == 400 and b'id="error"' in text and b"not a PNG, JPEG" in text
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", "/nothing")
        resp = conn.getresponse()
        assert resp.status == 404 and "POST /predict" in one_sentence(json.loads(resp.read()))
        conn.request("GET", "/")
        resp = conn.getresponse()
        page = resp.read().decode()
        assert resp.status == 200 and "Model card" in page and "script-src 'sha256-" in resp.getheader(
            "Content-Security-Policy")
    finally:
        conn.close()
    assert_still_serving(server, *test_pngs[0])


def test_connections_are_bounded_and_one_more_is_told_so(server, test_pngs):
    import time

    from trainlab.serve.server import CONNECTIONS

    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(CONNECTIONS)]
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as extra:
            answer = extra.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
        assert "connections open" in one_sentence(json.loads(answer.split(b"\r\n\r\n", 1)[1]))
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 30  # the idle connections' threads end as their sockets close
    while True:
        try:
            return assert_still_serving(server, *test_pngs[0])
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# ---------------------------------------------------------------- load

def test_bounded_load_200_requests_from_8_clients(server, test_pngs):
    good, truth = test_pngs[0]
    r = load(server.url, good, requests=200, clients=8, limit=240)  # the limit is a hang guard
    assert r["errors"] == []
    assert len(r["latencies"]) == 200 and set(r["classes"]) == {truth}


# ---------------------------------------------------------------- the command

def _start(*args):
    proc = start_cli("serve", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    return proc, line, int(m.group(1)) if m else None


def test_command_serves_then_sigterm_stops_it_in_one_line_and_a_busy_port_is_one_sentence(tiny_run, test_pngs):
    run = tiny_run[0]
    proc, line, port = _start(str(run), "--port", "0")
    try:
        assert port, line + proc.stderr.read()
        assert "test accuracy" in line and "10 classes" in line
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/predict", test_pngs[0][0], {"Content-Type": "image/png"})
        assert json.loads(conn.getresponse().read())["predictions"][0]["top"][0]["class"] == test_pngs[0][1]
        conn.close()
        busy = subprocess.run([sys.executable, "-m", "trainlab", "serve", str(run), "--port", str(port)],
                              capture_output=True, text=True, env=cli_env(), timeout=120)
        assert busy.returncode == 1
        assert busy.stderr.strip().splitlines() == [
            f"trainlab: error: port {port} on 127.0.0.1 is in use: stop what listens there, or pick another "
            "port with --port"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines()[-1] == "trainlab: interrupted (SIGTERM)"
    assert "Traceback" not in err


@pytest.mark.parametrize("args, phrase", [
    (["--port", "70000"], "a port is 0 to 65535"),
    (["--port", "http"], "expected a port number"),
    (["--host", "no.such.host.invalid"], "--host no.such.host.invalid: not a name or address"),
    (["--device", "tpu"], "device 'tpu' is invalid"),  # --device reaches load_model
])
def test_bad_port_or_host_is_a_usage_error(tiny_run, args, phrase):
    r = subprocess.run([sys.executable, "-m", "trainlab", "serve", str(tiny_run[0]), *args],
                       capture_output=True, text=True, env=cli_env(), timeout=120)
    assert r.returncode == 2, r.stderr
    assert phrase in r.stderr and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("trainlab: error")]) == 1


def test_a_missing_model_is_one_sentence(tmp_path):
    r = subprocess.run([sys.executable, "-m", "trainlab", "serve", str(tmp_path / "nothing")],
                       capture_output=True, text=True, env=cli_env(), timeout=120)
    assert r.returncode in (1, 2) and r.stderr.count("\n") == 1 and r.stderr.startswith("trainlab: error:"), r.stderr


# ---------------------------------------------------------------- a person, in a browser

def test_a_fashion_mnist_png_picked_in_headless_chromium_shows_its_class_and_the_model_card(
        chromium, real_data_dir, tmp_path):  # noqa: F811 - the fixture imported above
    from trainlab.serve import ServedModel

    run = train_tiny(tmp_path / "runs", dataset="fashion-mnist", train_per_class=300, name="fashion").run_dir
    model = ServedModel(run)
    pngs = write_fashion_pngs(real_data_dir, tmp_path / "pngs", n_train=0, n_test=40)
    # a trouser (class 1) this model gets right, by the JSON endpoint: the page must say the same
    running = Running(model)
    browser = None
    try:
        truth = model.card.classes[1]
        png = next(p for p in sorted((pngs / "test" / "1").glob("*.png"))
                   if post(running, p.read_bytes(), "image/png")[1]["predictions"][0]["top"][0]["class"] == truth)
        blank = tmp_path / "blank.html"
        blank.write_text("<!doctype html><title>blank</title>")
        browser = Browser(chromium)
        browser.open(blank)
        browser.send("Page.navigate", {"url": running.url})
        browser.wait_for("Page.loadEventFired", timeout=60)
        root = browser.send("DOM.getDocument")["root"]["nodeId"]
        node = browser.send("DOM.querySelector", {"nodeId": root, "selector": "#file"})["nodeId"]
        browser.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(png)]})  # the form submits itself
        browser.wait_for("Page.loadEventFired", timeout=60)
        seen = json.loads(browser.evaluate(
            "JSON.stringify({file: document.querySelector('#results .file').textContent, "
            "top: Array.from(document.querySelectorAll('#results tr.top td')).map(td => td.textContent), "
            "card: document.querySelector('#card').innerText, "
            "images: Array.from(document.images).map(i => ({alt: i.alt, w: i.naturalWidth}))})"))
        shot = browser.screenshot(full_page=True)
        errors = browser.errors()
    finally:
        if browser:
            browser.close()
        running.stop()
    path = tmp_path / "serve-page.png"
    path.write_bytes(shot)
    print(f"screenshot of the page: {path}")
    assert errors == []  # a Content-Security-Policy refusal would be one
    assert seen["file"] == png.name
    assert seen["top"][0] == truth and seen["top"][1].endswith("%")
    assert "Model card" in seen["card"] and "test accuracy" in seen["card"] and "fashion-mnist" in seen["card"]
    for c in model.card.classes:  # the per-class table
        assert c in seen["card"]
    alts = {i["alt"]: i["w"] for i in seen["images"]}
    assert alts.get("train and test curves", 0) > 0 and alts.get("the image as the model saw it", 0) > 0
    assert background_share(shot) < 0.95
