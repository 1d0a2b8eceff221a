"""Test accuracy of the graded small CNNs on the synthetic world (one Hydra multirun job each).

Usage: python experiments/zoo_accuracy.py [--out experiments/results] [extra hydra overrides ...]
Writes synth_zoo_accuracy.json and .md to --out with the exact command, machine and wall time.
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

from vislight.run_folder import RunFolder

MODELS = ["tiny_cnn", "small_cnn", "vgg_small", "resnet_small"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. train.epochs=4")
    args = ap.parse_args()
    sweep = Path(tempfile.mkdtemp(prefix="vislight-zoo-"))
    cmd = vislight_command(
        f"model={args.models}",
        "stages=[classifier,evaluate]",
        f"hydra.sweep.dir={sweep}",
        *args.overrides,
        multirun=True,
    )
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    rows = []
    for run in sorted(RunFolder.find_runs(sweep), key=lambda r: int(r.root.name)):
        m = json.loads(run.metrics.read_text())
        rows.append(
            {
                "model": m["model"],
                "accuracy": m["accuracy"],
                "test_images": m["test_images"],
                # seconds the training took when it ran (this run, or the run that cached it)
                "train_seconds": round(
                    m["classifier"].get("cached_train_seconds")
                    or m["classifier"].get("train_seconds")
                    or 0.0,
                    1,
                ),
                "reused_cache": m["classifier"].get("reused", False),
            }
        )
    result = {
        "command": " ".join(["python", "experiments/zoo_accuracy.py", *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "wall_seconds": round(wall, 1),
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "synth_zoo_accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| model | test accuracy | train s |", "|---|---|---|"]
    lines += [f"| {r['model']} | {r['accuracy']:.4f} | {r['train_seconds']} |" for r in rows]
    md = "\n".join(
        [
            f"`{result['command']}` on {result['machine']}, wall {result['wall_seconds']} s",
            "",
            *lines,
        ]
    )
    (out / "synth_zoo_accuracy.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
