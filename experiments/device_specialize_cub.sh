#!/usr/bin/env bash
# GPU part of the specialize_cub study, as one script (run from the project root on a GPU machine):
# the masks of the groups' CUB train images, computed by the same code and config as on the CPU and
# written to a content-keyed mask cache that `experiments/specialize_study.py cub
# masks.cache_dir=<that folder>` then reuses (keys cover image, weights and mask settings).
#   CLASSES   CUB class ids of the chosen groups, comma-separated (from metrics.json of a run with
#             stages=[classifier,evaluate,groups])
#   WEIGHTS   the trained base classifier (classifier.pt from the classifier cache)
# Further arguments are vislight overrides (e.g. masks.smooth.iterations=2 for a dry run).
set -uo pipefail
OUT=${OUT:-outputs/device}
PY=${PY:-python3}
: "${CLASSES:?set CLASSES=9,23,...}" "${WEIGHTS:?set WEIGHTS=/path/to/classifier.pt}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
(nvidia-smi -L || echo "no GPU") | tee "$OUT/device.txt"
MAP=$(echo "$CLASSES" | tr ',' '\n' | awk '{printf "%s%d: %d", (NR>1?", ":""), $1, $1-1}')
start=$(date +%s)
$PY -m vislight experiment=specialize_cub logger=none trainer.enable_progress_bar=false \
  "stages=[classifier,evaluate,masks]" train.enabled=false "model.weights_path=$WEIGHTS" \
  "data.classes=[$CLASSES]" "data.label_map={$MAP}" \
  "masks.cache_dir=$OUT/masks" "paths.output_dir=$OUT/run" "$@" 2>&1 | grep -v "it/s" | tail -20
rc=${PIPESTATUS[0]}
echo "masks wall $(( $(date +%s) - start )) s (exit $rc)" | tee -a "$OUT/device.txt"
exit "$rc"
