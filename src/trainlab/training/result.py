"""What a finished run returns (TrainResult), and the words every report uses for where a run
stands and which weights its test evaluation saw."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainlab.config import Config


def resume_point(epoch: int, step: int) -> str:
    """The one way a point of a run is named, in the interrupt message, the resume line and the
    resume event: `epoch` epochs complete (the files' count), `step` steps into the next one."""
    return f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"


def tested_model(tested: dict, metric: str, ema: bool) -> dict:
    """Which weights the final test evaluation saw, with the words every report prints for it."""
    which = f"best {metric}" if tested["weights"] == "best" else "last"
    return {**tested, "ema": ema, "label": f"epoch {tested['epoch']} ({which})" + (", EMA weights" if ema else "")}


@dataclass
class TrainResult:
    run_dir: Path
    config: Config
    history: list[dict]
    test: dict  # metrics.summarize() of the final model on the test split
    device: str
    results: dict

    @property
    def test_accuracy(self) -> float:
        return self.test["accuracy"]
