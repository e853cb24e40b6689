"""`make demo`: the baseline, then the improvement, each with its per-class table.

1. `mlp` with the `textbook` recipe (Adam 1e-3, batch 64, no schedule): the baseline.
2. `mlp-reg` (BatchNorm, Dropout) with the default recipe: the first step up the ladder.
"""

from __future__ import annotations

import argparse
import logging
import sys

from trainlab.analysis.tables import run_summary
from trainlab.api import train
from trainlab.config import resolve
from trainlab.errors import TrainlabError

STEPS = [
    ("baseline", {"model": "mlp", "recipe": "textbook"}),
    ("regularized", {"model": "mlp-reg", "recipe": "fast"}),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainlab.cli.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        for label, values in STEPS:
            cfg = resolve({**values, "epochs": args.epochs, "runs_dir": args.runs_dir,
                           "data_dir": args.data_dir, "quiet": True})
            result = train(cfg, progress=False)
            print(run_summary(f"== {label}: {cfg.model} / recipe {cfg.recipe} -> {result.run_dir}", result)
                  + "\n", flush=True)
    except TrainlabError as e:
        print(f"trainlab demo: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
