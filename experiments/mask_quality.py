"""Mask quality on the synthetic world, with and without per-image early stopping.

Runs the default job (experiment=synth_summaries: default classifier, 40 images per class) twice,
once with masks.early_stopping.enabled=true, and writes mask_quality.{json,md} to --out with the
mask metrics (drop, area, binarisation, share of salient pixels within 3 px of a ground-truth part,
iterations, images/s), the share of iterations early stopping saves, and the command/machine/time.

    python experiments/mask_quality.py [--out experiments/results] [extra hydra overrides ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jobs import vislight_command

KEYS = (
    "mean_drop",
    "mean_area",
    "binarization",
    "near_part_share",
    "mean_iterations",
    "images_per_s",
    "masked",
)


def run(out: Path, overrides: list[str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    subprocess.run(vislight_command(f"paths.output_dir={out}", *overrides), check=True)
    return json.loads((out / "metrics.json").read_text()), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vislight-maskq-"))
    full, t_full = run(tmp / "full", args.overrides)
    early, t_early = run(tmp / "early", [*args.overrides, "masks.early_stopping.enabled=true"])
    rows = {
        name: {k: m["mask"].get(k) for k in KEYS} | {"wall_seconds": round(t, 1)}
        for name, m, t in (("full", full, t_full), ("early_stopping", early, t_early))
    }
    saved = 1 - rows["early_stopping"]["mean_iterations"] / rows["full"]["mean_iterations"]
    result = {
        "command": " ".join(["python", "experiments/mask_quality.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "accuracy": full["accuracy"],
        "rows": rows,
        "early_stopping": {
            "iterations_saved_share": round(saved, 4),
            "delta_mean_drop": rows["early_stopping"]["mean_drop"] - rows["full"]["mean_drop"],
            "delta_mean_area": rows["early_stopping"]["mean_area"] - rows["full"]["mean_area"],
            "delta_binarization": rows["early_stopping"]["binarization"]
            - rows["full"]["binarization"],
        },
        "per_class": full.get("classes"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mask_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"`{result['command']}` on {result['machine']}; classifier test accuracy {full['accuracy']:.4f}",
        "",
        "| run | mean drop | mean area | binarisation | near part (3 px) | iterations | images/s | masked | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['mean_drop']:.4f} | {r['mean_area']:.4f} | {r['binarization']:.4f} | {r['near_part_share']:.4f} "
            f"| {r['mean_iterations']:.1f} | {r['images_per_s']:.3f} | {r['masked']} | {r['wall_seconds']} |"
        )
    lines += ["", f"Early stopping saves {saved:.1%} of the iterations."]
    (out / "mask_quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
