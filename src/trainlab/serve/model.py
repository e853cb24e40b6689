"""A trained model, loaded once, classifying uploaded image files, and what its card shows.

Files are decoded by folder:'s safe decoder (only PNG, JPEG, BMP, GIF and WebP; the
decompression-bomb limit is an error) with the training's channel count and size policy, then
classified by inference.predict_images, as `trainlab predict FILES` does: the same numbers."""

from __future__ import annotations

import io
import logging
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from trainlab.errors import ConfigError, DataError, TrainlabError
from trainlab.serve.uploads import UploadError
from trainlab import plots
from trainlab.analysis.compare import load_run
from trainlab.analysis.evaluation import PLOTS_DIR
from trainlab.analysis.evaluation import load_evaluation
from trainlab.analysis.tables import printable
from trainlab.data.folder.decode import _pillow
from trainlab.data.folder.decode import _reason, decode_one
from trainlab.inference import load_model
from trainlab.inference import predict_images
from trainlab.store import runs

log = logging.getLogger("trainlab")

# Files decoded at once. One: each may hold a raster up to Pillow's bomb limit, and decode.py
# turns the bomb warning into an error with warnings.catch_warnings, which is process-wide
# state: two threads in it at once could undo each other's filter and let a bomb through.
DECODERS = 1


@dataclass
class Card:
    """What the page shows about the model: all read once, at start."""
    source: str
    model: str
    classes: list[str]
    input_shape: tuple[int, int, int]
    config: dict
    run_dir: Path | None = None
    test: dict | None = None  # results.json's test summary (metrics.summarize, from JSON)
    figures: dict[str, bytes] = field(default_factory=dict)  # name -> PNG bytes


def run_folder(path: Path) -> Path | None:
    """The run folder a path belongs to: itself, model.pt's folder or checkpoints/X.pt's parent."""
    for folder in (path, path.parent, path.parent.parent):
        if folder.is_dir() and (folder / "config.toml").is_file():
            return folder
    return None


def _figures(run_dir: Path) -> dict[str, bytes]:
    """The run's own figures (plots/curves.png, plots/per_class.png, as evaluate and report
    write them); curves missing are drawn by plots.curves into a temporary folder, never into
    the run's."""

    out = {}
    for name in ("curves", "per_class"):
        png = run_dir / PLOTS_DIR / f"{name}.png"
        if png.is_file() and not png.is_symlink():  # a planted link is never followed
            raw = png.read_bytes()
            if raw.startswith(b"\x89PNG\r\n\x1a\n"):
                out[name] = raw
    if "curves" not in out:
        try:
            run = load_run(run_dir)
            if run.history:
                with tempfile.TemporaryDirectory(prefix="trainlab-serve-") as tmp:
                    saved = plots.curves(run.history, Path(tmp) / "curves", f"{run.name}: train vs test")
                    out["curves"] = Path(saved.png).read_bytes()
        except (TrainlabError, ImportError, OSError) as e:  # the card goes without; the model serves
            log.warning("serve: no training curves for %s (%s)", run_dir, e)
    return out


def _test_summary(run_dir: Path) -> dict | None:
    try:
        evaluation = load_evaluation(run_dir)
        if evaluation and isinstance(evaluation.get("test"), dict):
            return evaluation["test"]
        if (run_dir / runs.RESULTS_FILE).is_file():
            test = (runs.read_results(run_dir / runs.RESULTS_FILE) or {}).get("test")
            return test if isinstance(test, dict) else None
    except (TrainlabError, OSError, ValueError) as e:
        log.warning("serve: no test results for %s (%s)", run_dir, e)
    return None


class ServedModel:
    """Load once (`path`: run folder, checkpoint or model.pt), then `classify` from any thread."""

    def __init__(self, path: str | Path, device: str = "cpu", allow_import=()):
        self.Image = _pillow()  # Pillow missing: one sentence now, not at the first upload
        self.model, self.ckpt = load_model(path, map_location=device, allow_import=allow_import)
        spec = self.ckpt["model_spec"]
        c, h, w = spec["input_shape"]
        if c not in (1, 3):
            raise DataError(f"{path}: its model takes {c}-channel images; image files give 1 (grey) or 3 (colour)")
        classes = [str(x) for x in (self.ckpt.get("classes") or range(spec["num_classes"]))]
        run_dir = run_folder(Path(path))
        self.card = Card(str(path), str(spec.get("name")), classes, (c, h, w), dict(self.ckpt.get("config") or {}),
                         run_dir, _test_summary(run_dir) if run_dir else None,
                         _figures(run_dir) if run_dir else {})
        self._model_lock = threading.Lock()  # predict() flips train/eval: one forward at a time
        self._decoders = threading.BoundedSemaphore(DECODERS)

    def decode(self, name: str, data: bytes):
        """One file as uint8 C,H,W, or an UploadError naming the file and why."""

        c, h, w = self.card.input_shape
        if not data:
            raise UploadError(400, f"{printable(name)}: empty file (0 bytes)")
        with self._decoders:
            try:
                return decode_one(self.Image, io.BytesIO(data), c, w, h)
            except Exception as e:  # noqa: BLE001 - any failure of a file is that file's reason
                why = _reason(e, "")
                hint = "" if "PNG" in why else "; send a PNG, JPEG, BMP, GIF or WebP image that opens whole"
                raise UploadError(400, f"{printable(name)}: {why}{hint}") from None

    def decode_all(self, files: list[tuple[str, bytes]]):
        """uint8 N,C,H,W of the files; one bad file refuses them all (an UploadError naming it)."""
        import numpy as np
        import torch

        return torch.from_numpy(np.stack([self.decode(name, data) for name, data in files]))

    def top_k(self, images, names: list[str], k: int = 5) -> list[dict]:
        """[{"file", "top": [{"class", "probability"}, ...]}] per image, most probable first."""

        if not 1 <= k <= len(self.card.classes):
            raise ConfigError(f"k must be 1 to {len(self.card.classes)}")
        with self._model_lock:
            probs = predict_images(self.model, self.ckpt, images)
        top = probs.topk(k, dim=1)
        return [{"file": name, "top": [{"class": self.card.classes[i], "probability": round(float(p), 6)}
                                       for p, i in zip(values.tolist(), indices.tolist())]}
                for name, values, indices in zip(names, top.values, top.indices)]

    def classify(self, files: list[tuple[str, bytes]], k: int = 5) -> list[dict]:
        """decode_all, then top_k: what POST /predict answers."""
        return self.top_k(self.decode_all(files), [name for name, _ in files], k)
