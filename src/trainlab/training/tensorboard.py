"""Optional TensorBoard logging: `pip install trainlab[tensorboard]`.

Event files go straight into the run folder, so `tensorboard --logdir runs` lists each
run under its folder name. Steps are epochs: runs with different batch sizes line up; the
train loss every N optimizer steps (loss/train_step) has the global step as its step.

    tb = TensorBoardLogger(run_dir)
    tb.log_hparams(config)                     # the HParams view: the run's config and metrics
    tb.log_epoch(row)                          # each metrics.jsonl row
    tb.log_step(global_step, loss)             # the train loss every N steps
    tb.log_confusion(cm, classes, step=epoch)  # counts, or a matplotlib Figure
    tb.close()
"""

from __future__ import annotations

import math
from pathlib import Path

from trainlab.errors import TrainlabError

# metrics.jsonl key -> TensorBoard tag (grouped by the prefix before "/")
# (per-epoch test metrics exist only with test_every_epoch, and their tags say what they are for)
SCALARS = {"train_loss": "loss/train", "val_loss": "loss/val", "test_loss": "loss/test_not_for_selection",
           "train_acc": "acc/train", "val_acc": "acc/val", "test_acc": "acc/test_not_for_selection",
           "lr": "lr", "train_seconds": "time/train_seconds"}

STEP_TAG = "loss/train_step"
HPARAM_METRICS = ("loss/val", "acc/val", "loss/train", "acc/train")  # scalars of the run the HParams view shows


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises this when the tensorboard package is absent
        raise TrainlabError("TensorBoard logging needs the tensorboard package: "
                            "pip install trainlab[tensorboard] (or turn TensorBoard logging off)") from None
    return SummaryWriter


class TensorBoardLogger:
    def __init__(self, run_dir: str | Path):
        self.writer = _summary_writer()(log_dir=str(run_dir))

    def log_epoch(self, row: dict) -> None:
        """Scalars of one metrics row; marker rows ({"event": "resume", ...}) are skipped."""
        if "epoch" not in row or "event" in row:
            return
        for key, tag in SCALARS.items():
            v = row.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(tag, v, row["epoch"])
        self.writer.flush()

    def log_step(self, step: int, loss: float) -> None:
        """The mean train loss of the last N optimizer steps (no flush: the epoch's flushes)."""
        if math.isfinite(loss):
            self.writer.add_scalar(STEP_TAG, loss, step)

    def log_hparams(self, config: dict) -> None:
        """The run's config in TensorBoard's hyper-parameter view, in this run's own events, with
        the epoch scalars as its metrics (torch's add_hparams would write a second run folder)."""
        from torch.utils.tensorboard.summary import hparams

        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items()}
        for summary in hparams(values, {tag: 0.0 for tag in HPARAM_METRICS}):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def log_confusion(self, figure_or_cm, classes: list[str] | None = None, step: int = 0,
                      tag: str = "confusion_matrix") -> None:
        """The confusion matrix as an image: pass counts (rows = true) or a matplotlib Figure."""
        import numpy as np

        fig = figure_or_cm
        if not hasattr(fig, "savefig"):
            from trainlab.plots import confusion_figure  # says how to install matplotlib if missing

            cm = fig.tolist() if hasattr(fig, "tolist") else fig
            fig = confusion_figure(cm, classes or [str(i) for i in range(len(cm))])
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        # rendered on the Agg canvas directly (SummaryWriter.add_figure would go via pyplot)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        image = np.asarray(canvas.buffer_rgba())[:, :, :3].copy()
        self.writer.add_image(tag, image, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
