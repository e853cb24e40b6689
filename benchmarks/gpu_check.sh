#!/usr/bin/env bash
# The GPU check: one prepared call on a lent H100/H200 machine (~8 minutes), every GPU item of
# the open issues (benchmarks/gpu_check.py says which). Logs and JSON lines under ${OUT:-gpu_check_out}.
#
#   bash benchmarks/gpu_check.sh              on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run    every Python step on this CPU, tiny settings
#                                             (tests/test_gpu_check.py runs it in `make test`)
#
# The data does not travel with the repo: copy it beside the checkout first, e.g.
#   mkdir -p .data && cp -r ../shared/data/fashion-mnist .data/   (and carry .data)
# The machine has no network: what torch lacks travels as wheels (pip download tqdm tomli-w
# -d .whl, carry .whl); they are installed first when present.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
[ -d .data/fashion-mnist ] && export TRAINLAB_DATA=${TRAINLAB_DATA:-$PWD/.data/fashion-mnist}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
dry=0
for a in "$@"; do [ "$a" = --dry-run ] && dry=1; done

{
echo "=== $(date -u +%FT%TZ) gpu_check $*"
if [ $dry = 0 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
  [ -d .whl ] && $PY -m pip install -q --no-index --no-deps .whl/*.whl
fi
$PY benchmarks/gpu_check.py "$@"
} 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
