#!/bin/bash
# The same time-to-accuracy benchmark on an earlier commit and on this checkout, alternating
# (old, new, old, new) so that machine drift falls on both; prints the per-epoch medians and
# each seed's final test accuracy (equal accuracies = the same numbers' path).
#   usage: benchmarks/compare_commits.sh OLD_REV [MODEL] [EPOCHS]
set -euo pipefail
old_rev=${1:?usage: benchmarks/compare_commits.sh OLD_REV [MODEL] [EPOCHS]}
model=${2:-mlp}
epochs=${3:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
work=$(mktemp -d)
trap 'git -C "$here" worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$here" worktree add -q --detach "$work/old" "$old_rev"
for i in 1 2; do
  for v in old new; do
    src=$([ $v = old ] && echo "$work/old" || echo "$here")
    PYTHONPATH=$src/src "$py" "$src/benchmarks/time_to_accuracy.py" --models "$model" --epochs-list "$epochs" \
      --seeds 3 --no-textbook --threads 2 --json "$work/$v-$i.json" > "$work/$v-$i.txt"
  done
done
"$py" - "$work" <<'PY'
import json, pathlib, statistics, sys
work = pathlib.Path(sys.argv[1])
def runs(o):
    if isinstance(o, dict):
        if "epoch_s" in o:
            yield o
        for v in o.values():
            yield from runs(v)
    elif isinstance(o, list):
        for v in o:
            yield from runs(v)
med = {}
for v in ("old", "new"):
    rs = [r for i in (1, 2) for r in runs(json.loads((work / f"{v}-{i}.json").read_text()))]
    med[v] = statistics.median(e for r in rs for e in r["epoch_s"])
    accs = sorted({(r["seed"], r["test_acc"]) for r in rs})
    print(f"{v}: median {med[v]:.3f} s/epoch over {sum(len(r['epoch_s']) for r in rs)} epochs; "
          f"test acc by seed {accs}")
print(f"new / old: {med['new'] / med['old']:.2f}")
PY
