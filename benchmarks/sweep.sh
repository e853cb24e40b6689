#!/bin/bash
# A sweep of mlp-reg (lr, weight decay, dropout, batch size; TRIALS trials, 2 workers, pruning)
# against the `fast` preset at the same epochs, both over 3 seeds, in one run.
#   usage: benchmarks/sweep.sh [TRIALS] [OUT]
set -euo pipefail
trials=${1:-30}
out=${2:-$(mktemp -d)/sweep}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
start=$(date +%s)
"$py" -m trainlab sweep "$here/benchmarks/sweep_mlp_reg.toml" --trials "$trials" --out "$out" --workers 2 --confirm 3
sweep_s=$(( $(date +%s) - start ))
for seed in 1 2 3; do
  "$py" -m trainlab train --model mlp-reg --epochs 7 --threads 2 --quiet --seed "$seed" \
    --runs-dir "$out/preset" --name "fast-seed-$seed" | grep "test accuracy"
done
echo "sweep wall time: ${sweep_s} s ($trials trials, 2 workers, confirm 3 included)"
