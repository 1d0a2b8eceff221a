"""Architecture-comparison studies: run ``python -m vislight -m experiment=compare_<study>`` and
commit its comparison (table, plot, correlations) with the exact command, machine and wall time.

    python experiments/compare_study.py synth        # 4 CNNs of graded accuracy, synthetic world
    python experiments/compare_study.py cifar        # CIFAR-10 ResNet-20/32/44/56 (../shared)
    python experiments/compare_study.py cub_effnet   # EfficientNet-Lite0/1/2 on CUB birds (../shared)

Extra arguments are passed to vislight as overrides. Results: experiments/results/compare_<study>/.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from jobs import vislight_command

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ("synth", "cifar", "cub_effnet")


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in STUDIES:
        print(f"usage: python experiments/compare_study.py {{{','.join(STUDIES)}}} [overrides]")
        return 2
    study, extra = sys.argv[1], sys.argv[2:]
    sweep = ROOT / "outputs" / "studies" / f"compare_{study}"
    if sweep.exists():
        shutil.rmtree(sweep)
    cmd = vislight_command(
        f"experiment=compare_{study}", f"hydra.sweep.dir={sweep}", *extra, multirun=True
    )
    shown = " ".join(["python", *cmd[1:]]).replace(str(ROOT) + "/", "")
    print(shown, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not (sweep / "comparison.json").is_file():
        print(f"study failed (exit {proc.returncode}); see {sweep}", file=sys.stderr)
        return 1
    out = ROOT / "experiments" / "results" / f"compare_{study}"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("comparison.json", "comparison.png"):
        shutil.copy(sweep / name, out / name)
    facts = {
        "command": shown,
        "machine": machine(),
        "wall_seconds": round(wall, 1),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    (out / "study.json").write_text(json.dumps(facts, indent=2) + "\n")
    md = (sweep / "comparison.md").read_text()
    md += (
        f"\nCommand: `{facts['command']}`  \nMachine: {facts['machine']}  \n"
        f"Wall time: {facts['wall_seconds']:.0f} s ({facts['date']})\n"
    )
    (out / "comparison.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
