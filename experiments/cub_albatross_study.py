"""EfficientNet-Lite0 (ImageNet weights) masks and summaries on 16 CUB albatross photos.

Runs two jobs and writes one result file each to --out (default experiments/results):
  * cub_albatross_masks.json: experiment=cub_albatross_masks (every albatross photo of
    ../shared's CUB folder, train and test, labelled ImageNet "albatross"): accuracy and masks;
  * cub_albatross_parts_summaries.json: the same on the CUB *test* albatross photos
    (data=cub_parts data.classes=[1,2,3]), with the summaries tagged by part keypoints.
Each records its command, commit, machine, wall time and mask schedule.

    python experiments/cub_albatross_study.py [--out DIR] [extra overrides, e.g. masks=paper]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jobs import ROOT, commit, machine, vislight_command
from summaries_study import schedule_of

JOBS = {
    "cub_albatross_masks": ["experiment=cub_albatross_masks"],
    "cub_albatross_parts_summaries": [
        "experiment=cub_albatross_masks",
        "data=cub_parts",
        "data.classes=[1,2,3]",
    ],
}
SUMMARY_KEYS = (
    "mean_summaries",
    "mean_purity",
    "background_share",
    "on_object_share",
    "faithful_fraction",
    "median_faithfulness_ratio",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    at = commit()
    tmp = Path(tempfile.mkdtemp(prefix="vislight-cub-albatross-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, overrides in JOBS.items():
        run_dir = tmp / name
        cmd = vislight_command(f"paths.output_dir={run_dir}", *overrides, *args.overrides)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        m = json.loads((run_dir / "metrics.json").read_text())
        result = {
            "command": " ".join(["python", "experiments/cub_albatross_study.py", *sys.argv[1:]]),
            "job": " ".join(["python -m vislight", *overrides, *args.overrides]),
            "commit": at,
            "machine": machine(),
            "wall_seconds": round(wall, 1),
            "mask_schedule": schedule_of(run_dir),
            "accuracy_on_albatross_photos": m["accuracy"],
            "test_images": m["test_images"],
            "timings": m["timings"],
            "mask": {k: v for k, v in m["mask"].items() if k not in ("skipped", "per_class")},
        }
        if (run_dir / "summaries.json").is_file():
            s = json.loads((run_dir / "summaries.json").read_text())
            result["summaries"] = {k: m.get(k) for k in SUMMARY_KEYS}
            result["albatross_summaries"] = [
                {
                    "tag": x.get("tag"),
                    "purity": x.get("purity"),
                    "support": x.get("support"),
                    "coherence": round(x["coherence"], 3),
                    "member_tags": [mem.get("tag") for mem in x.get("members", [])],
                }
                for ss in s["classes"].values()
                for x in ss
            ]
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: result[k] for k in ("job", "wall_seconds", "mask_schedule")}))


if __name__ == "__main__":
    main()
