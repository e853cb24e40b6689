"""Export a trained model as ONNX: the graph takes uint8 images N,C,H,W (any batch size) and
returns class probabilities, with the run's normalization (and its flip test-time
augmentation, when the run used it) inside, so a user needs no trainlab and no preprocessing.

The export is checked before a file is written: ONNX Runtime and PyTorch classify the run's
test split and must agree on every argmax, with probabilities within 1e-4; otherwise it is
refused and nothing is written. The exporter is torch.onnx's current one (dynamo=True, opset
18, needs `onnxscript`); when it fails, or its graph fails onnx_guard or the parity check, the
TorchScript exporter (dynamo=False, opset 17) is used instead, and the metadata says so
("exporter", "fallback": why). onnx, onnxscript and onnxruntime are imported only when
used (onnx_guard._need; pip install 'trainlab[onnx]'); importing trainlab never needs them.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainlab.data import data_options, load_dataset
from trainlab.errors import ConfigError, TrainlabError
from trainlab.export import onnx_guard
from trainlab.export.exported import export_metadata
from trainlab.export.onnx_guard import _need, check_file
from trainlab.export.onnx_run import BATCH, DEFAULT_TIMEOUT, run
from trainlab.inference import check_data_fits, predict_images
from trainlab.store.atomic import atomic_write_bytes, atomic_write_text

OPSET = 17  # the TorchScript exporter's
DYNAMO_OPSET = 18  # torch.onnx's current exporter's
EXPORTERS = (("dynamo", DYNAMO_OPSET), ("torchscript", OPSET))  # tried in this order
log = logging.getLogger("trainlab")
INPUT, OUTPUT = "images", "probabilities"
MAX_ARGMAX_DISAGREEMENT = 0.0  # every test image classified the same
MAX_PROB_DIFF = 1e-4
PARITY_CHECK_LINE = ("parity on {images} test images: argmax agreement {argmax_agreement:.2%}, "
                     "max probability difference {max_prob_diff:.2g} (ONNX Runtime vs PyTorch)")


class Packaged(nn.Module):
    """uint8 N,C,H,W -> probabilities: (x / 255 - mean) / std as the training loader does it
    (one multiply-add), the model, softmax; with tta_flip the mean of it and its mirror image."""

    def __init__(self, model: nn.Module, mean, std, channels: int, tta_flip: bool):
        super().__init__()
        self.model, self.tta_flip = model, tta_flip
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, channels, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, channels, 1, 1)
        self.register_buffer("mul", 1.0 / (255.0 * std_t))
        self.register_buffer("add", -mean_t / std_t)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() * self.mul + self.add
        probs = self.model(x).float().softmax(1)
        if self.tta_flip:
            probs = (probs + self.model(x.flip(3)).float().softmax(1)) / 2
        return probs


def wrap(model: nn.Module, ckpt: dict) -> nn.Module:
    spec = ckpt["model_spec"]
    tta = bool((ckpt.get("config") or {}).get("tta_flip", False))
    return Packaged(model.float().to(memory_format=torch.contiguous_format), ckpt["mean"], ckpt["std"],
                    spec["input_shape"][0], tta).eval()


def metadata(ckpt: dict, src: Path) -> dict:
    """The schema-1 table (export/exported.py), inside the graph and beside it as model.onnx.json."""
    return {**export_metadata(ckpt, src, "onnx", "model.onnx"), "opset": OPSET}


def _graph(packaged: nn.Module, input_shape, exporter: str):
    """The ONNX ModelProto of `packaged`, batch dimension "N", by torch.onnx's `exporter`."""
    onnx = _need("onnx")
    example = torch.zeros((2, *input_shape), dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        if exporter == "torchscript":
            buf = io.BytesIO()
            torch.onnx.export(packaged, (example,), buf, dynamo=False, input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "N"}, OUTPUT: {0: "N"}}, opset_version=OPSET)
            return onnx.load_from_string(buf.getvalue())
        try:
            import onnxscript  # noqa: F401 -- what dynamo=True needs
        except ImportError:
            raise TrainlabError("onnxscript is not installed (pip install 'trainlab[onnx]')") from None
        quiet = logging.getLogger("torch.onnx")
        level, quiet.level = quiet.level, logging.ERROR  # its notes on torchvision ops, progress lines
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                program = torch.onnx.export(packaged, (example,), dynamo=True, input_names=[INPUT],
                                            output_names=[OUTPUT], opset_version=DYNAMO_OPSET, verbose=False,
                                            dynamic_shapes=({0: torch.export.Dim("N")},))
        finally:
            quiet.level = level
        return onnx.load_from_string(program.model_proto.SerializeToString())


def to_onnx(packaged: nn.Module, input_shape, meta: dict, exporter: str = "torchscript") -> bytes:
    onnx = _need("onnx")
    proto = _graph(packaged, input_shape, exporter)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "trainlab", json.dumps(meta)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def run_graph(blob: bytes, images: torch.Tensor, num_classes: int, timeout=None, name="the exported graph",
              batch: int | None = None) -> np.ndarray:
    """Probabilities from ONNX Runtime, run in a child process (onnx_run.py), `batch` images at a
    time (onnx_guard.check_sizes)."""
    _need("onnxruntime")
    return run(blob, images.numpy(), num_classes, timeout=timeout, name=name, batch=batch or BATCH)


def parity(model_bytes: bytes, model: nn.Module, ckpt: dict, images: torch.Tensor, batch: int | None = None
           ) -> dict:
    """ONNX Runtime vs PyTorch (trainlab's own predict path) on `images`."""
    theirs = run_graph(model_bytes, images, ckpt["model_spec"]["num_classes"], batch=batch)
    ours = predict_images(model, ckpt, images).numpy()
    agree = float((theirs.argmax(1) == ours.argmax(1)).mean())
    return {"images": len(images), "argmax_agreement": agree, "max_prob_diff": float(np.abs(theirs - ours).max())}


def check_parity(p: dict) -> None:
    if 1.0 - p["argmax_agreement"] > MAX_ARGMAX_DISAGREEMENT or not p["max_prob_diff"] <= MAX_PROB_DIFF:
        raise TrainlabError(f"ONNX export refused: on {p['images']} test images ONNX Runtime and PyTorch agree "
                            f"on {p['argmax_agreement']:.2%} of the classes (100% needed) and the probabilities "
                            f"differ by up to {p['max_prob_diff']:.3g} (at most {MAX_PROB_DIFF:g} allowed); "
                            "nothing was written. Report it as a trainlab bug, with the model name")


def _test_split(ckpt: dict, src: Path, data=None, data_dir=None) -> torch.Tensor:
    if data is None:
        config = ckpt.get("config") or {}
        try:  # read as the run read it (image_size, skip_bad, seed), as evaluate does
            data = load_dataset(config.get("dataset"), data_dir, **data_options(config))
        except TrainlabError as e:
            raise type(e)(f"the ONNX parity check runs on the run's test split, which did not load ({e})") from None
    check_data_fits(ckpt, data, src)
    x = data.test_x
    if x.dtype != torch.uint8:
        raise ConfigError("ONNX export takes uint8 images and the run's test split is float: export needs "
                          "0-255 integer images")
    return x


def readable(blob: bytes) -> int:
    """An export predict would refuse (a registered model emitting an operator outside
    onnx_guard.ALLOWED_OPS) is refused now, before anything is written; the batch it runs with."""
    name = "ONNX export refused: the exported graph"
    proto = onnx_guard.parse(blob, name)
    onnx_guard.check_graph(proto, name, len(blob))
    meta = onnx_guard.check_meta(proto, name)
    onnx_guard.check_io(proto, name, meta)
    onnx_guard.check_windows(proto, name, meta)
    return onnx_guard.check_sizes(proto, name, len(blob))


def export_onnx(model: nn.Module, ckpt: dict, src: Path, out: Path, data=None, data_dir=None) -> tuple[Path, Path, dict]:
    """model.onnx + model.onnx.json in `out`, written only after the parity check passes."""
    images = _test_split(ckpt, src, data, data_dir)
    fallback = None
    for exporter, opset in EXPORTERS:
        meta = {**metadata(ckpt, src), "opset": opset, "exporter": exporter,
                **({"fallback": fallback} if fallback else {})}
        try:
            blob = to_onnx(wrap(model, ckpt), ckpt["model_spec"]["input_shape"], meta, exporter)
            p = parity(blob, model, ckpt, images, batch=readable(blob))
            check_parity(p)
            break
        except Exception as e:  # noqa: BLE001 -- any failure of the newer exporter: the older one, said
            if exporter == EXPORTERS[-1][0]:
                raise
            fallback = f"the {exporter} exporter failed: {(str(e).splitlines() or [type(e).__name__])[0][:300]}"
            log.warning("ONNX export: %s; using the TorchScript exporter", fallback)
    meta["parity"] = {**p, "split": "test", "max_prob_diff_allowed": MAX_PROB_DIFF}
    path, meta_path = out / "model.onnx", out / "model.onnx.json"
    atomic_write_bytes(path, blob)
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return path, meta_path, p


def load_onnx(path: str | Path) -> tuple[bytes, dict]:
    """(the bytes, trainlab metadata) of an exported model.onnx, checked (onnx_guard.py) before
    any runtime sees them."""
    return _checked(path)[:2]


def _checked(path) -> tuple[bytes, dict, int]:
    _need("onnx")
    return check_file(path)


def predict_onnx(path: str | Path, images: torch.Tensor, timeout: float | None = None
                 ) -> tuple[torch.Tensor, list[str]]:
    """Class probabilities of N,C,H,W uint8 images from model.onnx, and its class names;
    ONNX Runtime is stopped after `timeout` seconds (default onnx_run.DEFAULT_TIMEOUT)."""
    blob, meta, batch = _checked(path)
    expected = tuple(meta["input"]["shape"][1:])
    if tuple(images.shape[1:]) != expected:
        raise TrainlabError(f"the images are {tuple(images.shape[1:])} but the model expects {expected} (C,H,W)")
    if images.dtype != torch.uint8:
        raise TrainlabError("the ONNX model takes uint8 images (0-255); these are float")
    probs = run_graph(blob, images, meta["model_spec"]["num_classes"], timeout or DEFAULT_TIMEOUT, str(path),
                      batch=batch)
    return torch.from_numpy(probs), list(meta["classes"])
