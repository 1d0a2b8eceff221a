#!/usr/bin/env bash
# GPU checks of the paper's path, as one script (run from the project root on a GPU machine):
# VGG16 mask benchmarks (fp32 and bf16 + channels-last; default and paper schedules), a profile, and the
# vgg16_summaries pipeline (classifier, evaluate, masks) on a fake ImageNet folder on CUDA, with
# fp32 vs bf16 mask agreement. Results go to ${OUT:-outputs/device}.
set -uo pipefail
OUT=${OUT:-outputs/device}
mkdir -p "$OUT"
PY=${PY:-python3}
# Knobs for a quick dry run on a CPU machine: TRAINER=cpu ITERS=6 PER_CLASS=2 BENCH=0
TRAINER=${TRAINER:-gpu}
ITERS=${ITERS:-450}
PER_CLASS=${PER_CLASS:-16}
BENCH=${BENCH:-1}
SMOOTH=$((ITERS * 2 / 3))
TIMECMD=""; [ -x /usr/bin/time ] && TIMECMD="/usr/bin/time -v"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi -L | tee "$OUT/device.txt"
$PY -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__)" | tee -a "$OUT/device.txt"
[ "$BENCH" = 1 ] && for args in "--batch 32 --images 32" "--batch 32 --images 32 --precision bf16 --channels-last" "--batch 64 --images 64 --precision bf16 --channels-last" "--batch 8 --images 8"; do
  $PY experiments/bench_masks.py --world random --model vgg16 --rounds 2 --loop-images 4 --torchray-images 1 $args 2>&1 | grep '^{' | tee -a "$OUT/bench_masks_gpu.jsonl"
done
[ "$BENCH" = 1 ] && $PY experiments/profile_masks.py --model vgg16 --batch 32 --iters 12 --top 25 > "$OUT/profile_fp32.txt" 2>&1 && tail -1 "$OUT/profile_fp32.txt"
[ "$BENCH" = 1 ] && $PY experiments/profile_masks.py --model vgg16 --batch 32 --iters 12 --precision bf16 --channels-last --top 25 > "$OUT/profile_bf16.txt" 2>&1; tail -1 "$OUT/profile_bf16.txt"
# The CLI on CUDA: fake ImageNet folder at 224 px, 16 images per class, the paper's 450 iterations.
FAKE=$(mktemp -d)
$PY - "$FAKE" "$PER_CLASS" <<'PYEOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from test_imagenet import build_fake_imagenet
root, weights = build_fake_imagenet(Path(sys.argv[1]), size=224, per_class=int(sys.argv[2]))
print(root, weights)
PYEOF
for prec in 32 bf16; do
  cl=false; [ "$prec" = bf16 ] && cl=true
  $TIMECMD $PY -m vislight experiment=vgg16_summaries data.root="$FAKE/val" data.classes=[15,22] \
    model.weights_path="$FAKE/vgg16-random.pth" model.resize_size=224 masks.images_per_class=$PER_CLASS masks.batch_size=32 \
    masks.smooth.iterations=$SMOOTH masks.sharp.iterations=$((ITERS - SMOOTH)) \
    masks.precision=$prec masks.channels_last=$cl stages=[classifier,evaluate,masks] logger=none \
    trainer=$TRAINER trainer.enable_progress_bar=false paths.output_dir="$FAKE/run_$prec" > "$OUT/cli_$prec.log" 2>&1
  echo "cli $prec rc=$?"; grep -E "masks:|Maximum resident|Elapsed" "$OUT/cli_$prec.log"
  cp "$FAKE/run_$prec/metrics.json" "$OUT/cli_metrics_$prec.json"
done
$PY - "$FAKE" <<'PYEOF' | tee "$OUT/bf16_vs_fp32.json"
import json, sys
from pathlib import Path
import numpy as np
fake = Path(sys.argv[1])
a = {f.relative_to(fake / "run_32"): f for f in (fake / "run_32" / "masks").rglob("*.npz")}
ious, diffs = [], []
for rel, f in a.items():
    stem = rel.name.rsplit("-", 1)[0]
    g = list((fake / "run_bf16" / "masks" / rel.parent.name).glob(stem + "-*.npz"))
    if not g:
        continue
    m32, m16 = np.load(f)["sharp"] < 0.5, np.load(g[0])["sharp"] < 0.5
    union = (m32 | m16).sum()
    ious.append(float((m32 & m16).sum() / union) if union else 1.0)
    diffs.append(float(np.abs(np.load(f)["sharp"].astype(np.float32) - np.load(g[0])["sharp"]).mean()))
print(json.dumps({"pairs": len(ious), "mean_salient_iou": float(np.mean(ious)), "mean_abs_diff": float(np.mean(diffs))}))
PYEOF
