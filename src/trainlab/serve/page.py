"""The server's one HTML page: the upload form, the results, the model card.

Every name on it (class, file, data set, folder) goes through html.escape: names can be
hostile. The only script is the page's own (drop onto the page = pick the files), allowed by
its hash in the Content-Security-Policy; images are data: URIs, nothing is fetched."""

from __future__ import annotations

import base64
import hashlib
import html
import io

from trainlab.analysis.report import CSS, _table, hardest_classes
from trainlab.analysis.tables import per_class_rows
from trainlab.metrics import percent
from trainlab.serve.model import Card
from trainlab.serve.uploads import MAX_BODY, MAX_FILES

SCRIPT = """
const form = document.getElementById("upload"), input = document.getElementById("file");
input.addEventListener("change", () => { if (input.files.length) form.submit(); });
document.addEventListener("dragover", e => { e.preventDefault(); document.body.classList.add("over"); });
document.addEventListener("dragleave", () => document.body.classList.remove("over"));
document.addEventListener("drop", e => {
  e.preventDefault(); document.body.classList.remove("over");
  if (e.dataTransfer.files.length) { input.files = e.dataTransfer.files; form.submit(); }
});
"""
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; form-action 'self'; "
       f"script-src 'sha256-{base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()}'")
EXTRA_CSS = """
#drop { border: 2px dashed #aaa; border-radius: 8px; padding: 1.2em; text-align: center; background: #fafafa; }
body.over #drop { border-color: #4a90e2; background: #eef5ff; }
.result { display: flex; gap: 1.5em; align-items: flex-start; margin: 1em 0; }
.result img { width: 112px; image-rendering: pixelated; }
.top td { font-weight: 700; background: #e8f5e9; }
"""


def _esc(x) -> str:
    return html.escape(str(x))


def _png(raw: bytes | None, alt: str) -> str:
    if not raw:
        return f'<p class="meta">({_esc(alt)}: not available)</p>'
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(raw).decode("ascii")}">'


def seen_png(pixels) -> bytes:
    """The C,H,W uint8 image the model was given, as PNG bytes (what it saw, not the upload)."""
    from PIL import Image

    a = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def _results(results: list[dict], seen: list[bytes]) -> str:
    out = ["<section id=\"results\"><h2>Results</h2>"]
    for r, png in zip(results, seen):
        rows = [[t["class"], percent(t["probability"])] for t in r["top"]]
        out.append(f'<div class="result"><div><b class="file">{_esc(r["file"])}</b>'
                   f'{_png(png, "the image as the model saw it")}</div>'
                   + _table(["class", "probability"], rows, ["top"] + [""] * (len(rows) - 1)) + "</div>")
    return "".join(out) + "</section>"


def _card(card: Card) -> str:
    cfg = card.config
    out = ['<section id="card"><h2>Model card</h2>',
           f'<p class="meta">model <code>{_esc(card.model)}</code> on {_esc(card.input_shape)} (C,H,W) images, '
           f'{len(card.classes)} classes: {_esc(", ".join(card.classes))}</p>',
           f'<p class="meta">data <code>{_esc(cfg.get("dataset", "?"))}</code>; recipe <code>{_esc(cfg.get("recipe"))}'
           f'</code>, {_esc(cfg.get("epochs"))} epochs, optimizer {_esc(cfg.get("optimizer"))} lr {_esc(cfg.get("lr"))}, '
           f'batch {_esc(cfg.get("batch_size"))}, seed {_esc(cfg.get("seed"))}</p>',
           f'<p class="meta">loaded from <code>{_esc(card.source)}</code>'
           + (f'; run folder <code>{_esc(card.run_dir)}</code>' if card.run_dir else "") + "</p>"]
    test = card.test
    if test and isinstance(test.get("accuracy"), (int, float)):
        out.append(f'<p><b>test accuracy {percent(test["accuracy"])}</b> on {_esc(test.get("n"))} test images'
                   + (f'; hardest classes: {_esc(hardest_classes(test))}' if test.get("per_class") else "") + "</p>")
    else:
        out.append('<p class="meta">(no test results: not a finished run folder)</p>')
    if test and test.get("per_class"):
        out.append('<h3>Per class</h3><div class="side">'
                   + _table(["class", "accuracy (= recall)", "precision", "F1", "n"], per_class_rows(test))
                   + (_png(card.figures["per_class"], "per-class accuracy") if "per_class" in card.figures else "")
                   + "</div>")
    out.append("<h3>Training curves</h3>" + _png(card.figures.get("curves"), "train and test curves"))
    return "\n".join(out) + "</section>"


def page(card: Card, results: list[dict] | None = None, seen: list[bytes] | None = None,
         error: str | None = None) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trainlab serve: {_esc(card.model)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}{EXTRA_CSS}</style></head><body>
<h1>{_esc(card.model)}: classify images</h1>
<form id="upload" method="post" action="/" enctype="multipart/form-data">
<div id="drop">Drop images here, or pick them: <input id="file" type="file" name="file" accept="image/*" multiple>
<button type="submit">Classify</button>
<p class="meta">PNG, JPEG, BMP, GIF or WebP; up to {MAX_FILES} files and {MAX_BODY // 2**20} MB per upload.
Scripts: <code>curl -F file=@image.png http://HOST:PORT/predict</code></p></div></form>
{f'<p class="warn" id="error">{_esc(error)}</p>' if error else ""}
{_results(results, seen or []) if results else ""}
{_card(card)}
<script>{SCRIPT}</script>
</body></html>
"""
