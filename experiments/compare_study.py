"""Architecture-comparison studies: run ``python -m vislight -m experiment=compare_<study>`` and
commit its comparison (table, plot, correlations) with the exact command, commit, machine, wall time
and mask schedule.

    python experiments/compare_study.py synth        # 4 CNNs of graded accuracy, synthetic world
    python experiments/compare_study.py cifar        # CIFAR-10 ResNet-20/32/44/56 (../shared)
    python experiments/compare_study.py cub_effnet   # EfficientNet-Lite0/1/2 on CUB birds (../shared)

Extra arguments are passed to vislight as overrides. Results: experiments/results/compare_<study>/.
"""

from __future__ import annotations

import json
import shutil
import sys

from jobs import (
    ROOT,
    commit,
    run_study,
    schedule_of,
    study_args,
    vislight_command,
    write_md_keeping_notes,
)

from vislight.run_folder import RunFolder

STUDIES = ("synth", "cifar", "cub_effnet")


def main() -> int:
    args = study_args("compare_study.py", STUDIES)
    if args is None:
        return 2
    study, extra = args
    sweep = ROOT / "outputs" / "studies" / f"compare_{study}"
    if sweep.exists():
        shutil.rmtree(sweep)
    cmd = vislight_command(
        f"experiment=compare_{study}", f"hydra.sweep.dir={sweep}", *extra, multirun=True
    )
    returncode, facts = run_study(cmd)
    if returncode != 0 or not (sweep / "comparison.json").is_file():
        print(f"study failed (exit {returncode}); see {sweep}", file=sys.stderr)
        return 1
    out = ROOT / "experiments" / "results" / f"compare_{study}"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("comparison.json", "comparison.png"):
        shutil.copy(sweep / name, out / name)
    (out / "study.json").write_text(json.dumps(facts, indent=2) + "\n")
    md = (sweep / "comparison.md").read_text().rstrip()
    md += (
        f"\n\nCommand: `{facts['command']}`  \nCommit: {commit()}  \nMachine: {facts['machine']}  \n"
        f"Wall time: {facts['wall_seconds']:.0f} s ({facts['date']})  \n"
        f"Mask schedule: {schedule_of(RunFolder.find_runs(sweep)[0].root)}\n"
    )
    write_md_keeping_notes(out / "comparison.md", md.splitlines())
    print((out / "comparison.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
