#!/usr/bin/env bash
# The GPU check: one prepared script for a single H100/H200 machine (~6 minutes) covering
# every GPU item of the open issues. Writes logs under ${OUT:-gpu_check_out}.
#
# The data does not travel with the repo: copy it beside the checkout first, e.g.
#   mkdir -p .data && cp -r ../shared/data/fashion-mnist .data/   (and carry .data)
# The machine has no network: tqdm and tomli-w travel as wheels (pip download ... -d .whl,
# carry .whl, then `pip install --no-index .whl/*.whl` before this script).
# Usage: bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export TRAINLAB_DATA=${TRAINLAB_DATA:-$PWD/.data/fashion-mnist}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
R=$(mktemp -d)
log() { echo; echo "=== $* ($(date +%T))"; }

{
log "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', platform.python_version()); print(torch.cuda.get_device_name())"
[ -d .whl ] && $PY -m pip install -q --no-index --no-deps .whl/*.whl

log "cnn, 3 epochs each: 32 / bf16-mixed / 16-mixed (time and accuracy)"
for p in 32 bf16-mixed 16-mixed; do
  $PY -m trainlab train --model cnn --epochs 3 --precision $p --runs-dir $R --name cnn-$p --quiet | head -3
done
log "cnn with tf32 and with channels_last (bf16-mixed)"
$PY -m trainlab train --model cnn --epochs 3 --precision 32 --tf32 --runs-dir $R --name cnn-tf32 --quiet | head -3
$PY -m trainlab train --model cnn --epochs 3 --precision bf16-mixed --channels-last --runs-dir $R --name cnn-cl --quiet | head -3

log "a CUDA checkpoint loaded on the CPU via map_location"
$PY - <<PYEOF
import torch
from trainlab.checkpoint import load_checkpoint, safe_load
from trainlab.api import load_model
ck = "$R/cnn-bf16-mixed/checkpoints/last.pt"
raw = torch.load(ck, weights_only=True)  # saved device-neutral: tensors come back on CPU
print("stored device:", next(iter(raw["model"].values())).device)
model, c = load_model("$R/cnn-bf16-mixed", map_location="cpu")
print("loaded on", next(model.parameters()).device, "epoch", c["epoch"])
PYEOF

log "16-mixed resume on CUDA: interrupt with SIGTERM after epoch 1, resume, compare to uninterrupted"
$PY -m trainlab train --model cnn --epochs 2 --precision 16-mixed --runs-dir $R --name h-full --quiet --seed 1 >/dev/null
$PY -m trainlab train --model cnn --epochs 2 --precision 16-mixed --runs-dir $R --name h-cut --quiet --seed 1 >/dev/null &
pid=$!
while [ ! -s $R/h-cut/metrics.jsonl ]; do sleep 0.2; done
kill -TERM $pid; wait $pid; echo "exit code $? (143 expected)"
$PY -m trainlab resume $R/h-cut >/dev/null
$PY - <<PYEOF
import torch
from trainlab.checkpoint import load_checkpoint
a = load_checkpoint("$R/h-full/checkpoints/last.pt"); b = load_checkpoint("$R/h-cut/checkpoints/last.pt")
same = all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
print("weights bitwise equal after resume:", same, "| max abs diff:",
      max(float((a["model"][k].float() - b["model"][k].float()).abs().max()) for k in a["model"]))
print("scaler", b["scaler"])
PYEOF

log "bench-device"
$PY -m trainlab bench-device --model cnn --batch-size 256
$PY -m trainlab bench-device --model mlp --batch-size 64

log "DDP with torchrun --nproc_per_node=1 (NCCL)"
if $PY -m trainlab train --help | grep -q -- "--nproc"; then
  timeout 120 $PY -m torch.distributed.run --nproc_per_node=1 -m trainlab train --model cnn --epochs 1 --runs-dir $R --name ddp --quiet | head -3
else
  echo "DDP not available in this version"
fi

log "time to accuracy (GPU rows)"
if [ -f benchmarks/time_to_accuracy.py ]; then
  timeout 90 $PY benchmarks/time_to_accuracy.py --models cnn-fast --no-textbook --seeds 1 \
    --epochs-list 5,10 --json "$OUT/tta_cnn_fast.json" || echo "time_to_accuracy exited $?"
  timeout 150 $PY benchmarks/time_to_accuracy.py --models resnet --no-textbook --seeds 1 \
    --epochs-list 10,30 --set 'model_kwargs={"width":64}' --json "$OUT/tta_resnet.json" || echo "time_to_accuracy exited $?"
fi
log "done"
} 2>&1 | tee "$OUT/gpu_check.log"
