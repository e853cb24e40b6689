"""The HTML report: self-contained, and checked in a real headless Chromium.

The browser is driven over the DevTools protocol on a pipe (--remote-debugging-pipe):
no WebDriver, no websocket library, nothing downloaded. Chromium comes from Debian's
`chromium` package (`make test` installs it when missing); with CI=true this test runs.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CLOTHES, train_tiny, wait_until, write_idx_folder

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    return os.environ.get("TRAINLAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def chromium() -> str:
    exe = find_chromium()
    if exe is None:
        message = "headless Chromium is missing: apt-get install -y chromium (make test does this)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # in CI the browser test must run
        pytest.skip(message)
    return exe


class Browser:
    """Headless Chromium over the DevTools pipe: we write fd 3, it answers on fd 4 (NUL-framed JSON)."""

    def __init__(self, exe: str, width: int = 1280, height: int = 1000):
        self.profile = tempfile.TemporaryDirectory(prefix="trainlab-chromium-")
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()
        # lift the child's ends above fd 4 so dup2 onto 3 and 4 cannot clobber one another
        child_r, child_w = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
        for fd in (cmd_r, out_w):
            os.close(fd)

        def wire_pipes():  # runs in the child, before exec
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        self.proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile.name}", "--remote-debugging-pipe",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=wire_pipes, close_fds=False)  # our own fds are non-inheritable anyway
        for fd in (child_r, child_w):
            os.close(fd)
        self.w, self.r = cmd_w, out_r
        self.buf, self.next_id, self.events = b"", 0, []
        self.session = None

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium exited: " + self.proc.stderr.read().decode(errors="replace")[-2000:])
            self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, timeout: float = 30, session=True) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        for i, m in enumerate(self.events):
            if m.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if m.get("method") == method:
                return m
            self.events.append(m)

    def open(self, path: Path | str) -> None:
        """Load a file (a Path) or a URL (a str) and wait for its load event."""
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        self.session = self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Page.navigate", {"url": path if isinstance(path, str) else Path(path).resolve().as_uri()})
        self.wait_for("Page.loadEventFired", timeout=60)  # fires after every image has loaded

    def evaluate(self, expression: str):
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return res["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (failed loads, ...)."""
        out = []
        for m in self.events:
            p = m.get("params", {})
            if m.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m.get("method") == "Runtime.exceptionThrown":
                out.append("exception: " + p["exceptionDetails"].get("text", ""))
            elif m.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        return out

    def requested_urls(self) -> list[str]:
        return [m["params"]["request"]["url"] for m in self.events
                if m.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, full_page: bool = False) -> bytes:
        params = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        return base64.b64decode(self.send("Page.captureScreenshot", params)["data"])

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10, session=False)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stderr.close()
        os.close(self.w)
        os.close(self.r)
        self.profile.cleanup()


IMAGES_JS = ("JSON.stringify(Array.from(document.images).map(i => "
             "({complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, alt: i.alt})))")


def check_in_browser(exe: str, page: Path) -> dict:
    """Load `page` and return what a person would notice: errors, images, the picture, requests."""
    browser = Browser(exe)
    try:
        browser.open(page)
        images = json.loads(browser.evaluate(IMAGES_JS))
        title = browser.evaluate("document.title")
        shot = browser.screenshot()
        # late console messages: all the page had queued has run once a marker set two tasks
        # later is seen (its events reach us before the answer that reads the marker)
        browser.evaluate("window.__settled = false; "
                         "setTimeout(() => setTimeout(() => { window.__settled = true }, 0), 0); 1")
        assert wait_until(lambda: browser.evaluate("window.__settled"), timeout=30), "the page never settled"
        return {"errors": browser.errors(), "images": images, "title": title, "screenshot": shot,
                "requests": browser.requested_urls()}
    finally:
        browser.close()


def pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def background_share(png: bytes) -> float:
    """The share of pixels in the most common colour: ~1.0 for a blank page."""
    _, counts = np.unique(pixels(png).reshape(-1, 3), axis=0, return_counts=True)
    return counts.max() / counts.sum()


# ---------------------------------------------------------------- fixtures: runs on disk

@pytest.fixture(scope="module")
def idx_runs(tmp_path_factory):
    """Three tiny runs on an IDX folder (with class names): two seeds of one config and a
    textbook run, each at its recipe's own batch (fast: 256, textbook: 64), not train_tiny's 32."""
    root = tmp_path_factory.mktemp("report")
    data_dir = write_idx_folder(root / "data", gz=False, classes=CLOTHES)
    dataset, runs_dir = f"idx:{data_dir}", root / "runs"
    runs = [train_tiny(runs_dir, dataset=dataset, seed=s, name=f"fast-s{s}", batch_size=256).run_dir
            for s in (0, 1)]
    runs.append(train_tiny(runs_dir, dataset=dataset, recipe="textbook", lr=2e-4, name="textbook",
                           batch_size=64).run_dir)
    return root, runs


@pytest.fixture(scope="module")
def report_file(idx_runs):
    from trainlab.analysis.report import write_report

    root, runs = idx_runs
    return write_report(runs, root / "out" / "report.html")


# ---------------------------------------------------------------- tests

def test_report_is_one_self_contained_file(report_file, idx_runs):
    text = report_file.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    # every src/href is a data: URI or an in-page anchor: nothing to fetch
    refs = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), [r[:40] for r in refs if not r.startswith(("data:", "#"))]
    assert "@import" not in text and "url(" not in text
    imgs = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', text)
    assert len(imgs) >= 1 + 3 * 3  # overlay + per run: curves, confusion, misclassified
    for b64 in imgs:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    for run in idx_runs[1]:
        assert run.name in text
    for heading in ("Comparison", "Per class", "Confusion matrix", "Highest-loss mistakes", "Train vs validation"):
        assert heading in text
    assert "shirt" in text and "(+1 seeds)" in text  # class names; the seed group


def test_report_shows_one_test_accuracy_per_run_its_model_and_the_epochs_trained(tiny_data, tmp_path):
    """One test figure per run, named by the model it is of; an extended run's real epoch count
    (resume --epochs rewrites config.toml) and an early stop's trained-of-planned."""
    from trainlab.analysis.report import write_report
    from trainlab.training.resume import resume

    plain = train_tiny(tmp_path, tiny_data, name="plain", epochs=1)
    resume(plain.run_dir, epochs=2, data=tiny_data, progress=False)
    assert "epochs = 2" in (plain.run_dir / "config.toml").read_text()
    stopped = train_tiny(tmp_path, tiny_data, name="es", epochs=6, patience=1, lr=5.0, val_size=100)
    text = write_report([plain.run_dir, stopped.run_dir], tmp_path / "r.html", data=tiny_data).read_text()
    assert "test acc @best val" not in text and "final test acc" not in text
    assert re.findall(r"<th>[^<]*test acc[^<]*</th>", text) == ["<th>test acc</th>"]
    assert "2 epochs, optimizer" in text and "of the model at epoch 2 (last)" in text
    trained, best = stopped.results["epochs"], stopped.results["best"]["epoch"]
    assert trained < 6, "the premise: early stopping stopped it"
    assert f"{trained} epochs (of 6 planned)" in text
    assert f"of the model at epoch {best} (best val_loss)" in text


def test_report_in_headless_chromium(chromium, report_file):
    seen = check_in_browser(chromium, report_file)
    assert seen["title"] == "trainlab report"
    assert seen["errors"] == []
    assert len(seen["images"]) >= 10
    bad = [i for i in seen["images"] if not (i["complete"] and i["w"] > 0 and i["h"] > 0)]
    assert bad == [], bad
    assert all(u.startswith(("file:", "data:")) for u in seen["requests"]), seen["requests"]
    px = pixels(seen["screenshot"])
    assert px.shape[0] > 500 and px.shape[1] > 500
    assert background_share(seen["screenshot"]) < 0.9, "the screenshot is (nearly) one colour: a blank page"


def test_browser_check_notices_broken_pages(chromium, tmp_path):
    """The check above can fail: a missing image and a console error are both caught."""
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><title>t</title><img src="missing.png">'
                    '<script>console.error("boom")</script>')
    seen = check_in_browser(chromium, page)
    assert any("boom" in e for e in seen["errors"])
    assert any("missing.png" in e for e in seen["errors"])
    assert seen["images"][0]["w"] == 0
    assert background_share(seen["screenshot"]) > 0.99  # only a broken-image icon on white


def test_report_cli(cli, idx_runs, tmp_path):
    _, runs = idx_runs
    out = tmp_path / "r.html"
    proc = cli("report", *runs, "-o", out, "--title", "my runs")
    assert proc.returncode == 0, proc.stderr
    assert "<title>my runs</title>" in out.read_text()
    assert str(out) in proc.stdout


def test_report_cli_error_is_one_line(cli, tmp_path):
    proc = cli("report", tmp_path, "-o", tmp_path / "x.html")
    assert proc.returncode == 1
    err = proc.stderr
    assert "not a trainlab run folder" in err and "Traceback" not in err


def test_experiment_ladder_quick(cli, tmp_path):
    data_dir = write_idx_folder(tmp_path / "data", gz=False, classes=CLOTHES)
    proc = cli("experiment", "fashion", "--quick", "--dataset", f"idx:{data_dir}", "--val-size", "100",
               "--runs-dir", tmp_path / "runs", "--name", "ladder", "--threads", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    exp = tmp_path / "runs" / "ladder"
    names = sorted(p.name for p in exp.iterdir() if p.is_dir())
    assert names == ["1-mlp-textbook", "2-mlp-textbook-longer", "3-mlp-reg-fast", "4-cnn-fast"]
    epochs = [json.loads(line)["epoch"] for line in (exp / "2-mlp-textbook-longer" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # 30 epochs x 0.05, the "longer" step stays longer
    assert (exp / "report.html").stat().st_size > 10_000
    out = proc.stdout
    assert "4-cnn-fast" in out and str(exp / "report.html") in out
    # a second run with the same name is refused, not overwritten
    assert cli("experiment", "fashion", "--quick", "--dataset", f"idx:{data_dir}", "--val-size", "100",
               "--runs-dir", tmp_path / "runs", "--name", "ladder", "--quiet").returncode == 2


def test_report_shows_resume_with_vs_without_optimizer_state(idx_runs, tmp_path):
    """Two real forks of one run at the same epoch, differing by reset_optimizer: one overlay."""
    from trainlab.analysis.report import write_report
    from trainlab.api import resume

    _, runs = idx_runs
    forks = [resume(runs[0], epochs=3, into=tmp_path / f"fork-reset-{reset}", reset_optimizer=reset,
                    progress=False).run_dir for reset in (False, True)]
    text = write_report(forks, tmp_path / "r.html").read_text()
    assert "Resume at epoch 2: with vs without optimizer state" in text
