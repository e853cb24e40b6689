"""Ready-made experiments: a sequence of runs on one data set, then the report on them.

`run_ladder` is what `trainlab experiment fashion` runs: the textbook baseline, the same
trained longer, then a regularized MLP and a small CNN with the default recipe.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from trainlab.analysis.report import write_report
from trainlab.config import resolve
from trainlab.data import load_dataset
from trainlab.errors import ConfigError
from trainlab.recipes import PRESETS
from trainlab.training.start import train

log = logging.getLogger("trainlab")

# (run name, settings, what the step tries); epochs None = the recipe's own
LADDER = [
    ("1-mlp-textbook", {"model": "mlp", "recipe": "textbook", "epochs": 10},
     "baseline: the MLP with the textbook loop"),
    ("2-mlp-textbook-longer", {"model": "mlp", "recipe": "textbook", "epochs": 30},
     "the same, trained 3x longer: does it just overfit?"),
    ("3-mlp-reg-fast", {"model": "mlp-reg", "recipe": "fast", "epochs": None},
     "dropout MLP with the default recipe"),
    ("4-cnn-fast", {"model": "cnn", "recipe": "fast", "epochs": None},
     "a small CNN with the default recipe"),
]
QUICK_SCALE = 0.05  # --quick: 1 epoch per step (2 for the longer one): a smoke test


def run_ladder(runs_dir: str | Path = "runs", *, dataset: str = "fashion-mnist", data_dir=None,
               scale: float = 1.0, threads: int | None = None, device: str = "auto", seed: int = 0,
               val_size: int | None = None, name: str | None = None, data=None,
               quiet: bool = False) -> tuple[list, Path]:
    """Train the ladder into runs_dir/<name>/ and write the report there; returns (results, report)."""
    if not scale > 0:
        raise ConfigError(f"epochs scale = {scale} is invalid: must be greater than 0")
    exp_dir = Path(runs_dir) / (name or f"fashion-ladder-{time.strftime('%Y%m%d-%H%M%S')}")
    if exp_dir.exists():
        raise ConfigError(f"{exp_dir} already exists and is never overwritten: choose another --name")
    common = {"dataset": dataset, "device": device, "seed": seed, "runs_dir": str(exp_dir),
              "quiet": quiet}
    for key, value in (("data_dir", data_dir), ("threads", threads), ("val_size", val_size)):
        if value is not None:
            common[key] = value
    # validate every step before the (long) training starts
    steps = []
    for run_name, settings, why in LADDER:
        base = settings["epochs"] or PRESETS[settings["recipe"]].epochs
        cfg = resolve({**common, "model": settings["model"], "recipe": settings["recipe"],
                       "epochs": max(1, round(base * scale)), "name": run_name})
        steps.append((cfg, why))
    if data is None:
        data = load_dataset(dataset, data_dir)  # once, shared by all steps
    results = []
    for i, (cfg, why) in enumerate(steps, 1):
        log.info("experiment %d/%d: %s (%s, %d epochs)", i, len(steps), why, cfg.name, cfg.train.epochs)
        results.append(train(cfg, data=data))
    report = write_report([r.run_dir for r in results], exp_dir / "report.html", device=device,
                          data=data, title="Fashion-MNIST: from the textbook baseline up")
    return results, report
