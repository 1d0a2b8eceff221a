"""Agreement of the masks of two runs (e.g. float32 vs bf16, one device vs several).

Matches mask files by image key and prints one JSON line: pairs, mean IoU of the salient sets
(mask < 0.5), mean |difference|, and each run's mean drop over the matched images.

    python experiments/compare_masks.py RUN_A RUN_B
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vislight.masks.cache import MaskCache
from vislight.run_folder import RunFolder


def by_key(run: Path) -> dict[str, Path]:
    return {
        MaskCache.read_diagnostics(f)["key"]: f for f in sorted(RunFolder(run).masks.rglob("*.npz"))
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    args = ap.parse_args()
    a, b = by_key(args.run_a), by_key(args.run_b)
    keys = sorted(a.keys() & b.keys())
    if not keys:
        raise SystemExit(f"no image has masks in both {args.run_a} and {args.run_b}")
    ious, diffs, drops_a, drops_b = [], [], [], []
    for k in keys:
        ma, mb = MaskCache.read(a[k]), MaskCache.read(b[k])
        sa, sb = ma["sharp"] < 0.5, mb["sharp"] < 0.5
        union = (sa | sb).sum()
        ious.append(float((sa & sb).sum() / union) if union else 1.0)
        diffs.append(float(np.abs(ma["sharp"] - mb["sharp"]).mean()))
        drops_a.append(ma["drop"])
        drops_b.append(mb["drop"])
    print(
        json.dumps(
            {
                "pairs": len(keys),
                "mean_salient_iou": round(float(np.mean(ious)), 4),
                "min_salient_iou": round(float(np.min(ious)), 4),
                "mean_abs_diff": round(float(np.mean(diffs)), 5),
                "mean_drop_a": round(float(np.mean(drops_a)), 4),
                "mean_drop_b": round(float(np.mean(drops_b)), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
