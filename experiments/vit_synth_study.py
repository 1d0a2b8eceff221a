"""A vision transformer explained like a CNN: timm ViT trained by vislight on the synthetic world.

    python experiments/vit_synth_study.py      # ~25 min on 2 CPU cores (the ViT trains ~20 min)

Runs two jobs side by side on the same world (default settings otherwise):
  * ``experiment=vit_synth``: a timm ViT (ViT-Tiny width, 6 blocks, 8-px patches, 64 px input)
    trained from scratch, its summaries read from the last token sequence as an 8x8 grid;
  * ``experiment=synth_summaries``: the default CNN (resnet_small), for reference.
Writes results/vit_synth.{json,md}: test accuracy, summaries per class and per part, purity, part
recall, per class, against the targets of the issue (accuracy >= 0.9, purity >= 0.8, recall >= 0.8).
Run folders live under ``outputs/studies/vit_synth/`` (trained classifiers in the classifier cache
and masks in the run folders are reused by a rerun).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone

from jobs import (
    ROOT,
    commit,
    machine,
    provenance_line,
    run_job,
    schedule_of,
    write_md_keeping_notes,
)

RUNS = ROOT / "outputs" / "studies" / "vit_synth"
OUT = ROOT / "experiments" / "results"
JOBS = {"vit_tiny": "experiment=vit_synth", "resnet_small": "experiment=synth_summaries"}
TARGETS = {"accuracy": 0.9, "mean_purity": 0.8, "part_recall": 0.8}
KEYS = ("accuracy", "mean_summaries", "summaries_per_part", "mean_purity", "part_recall",
        "pipnet_purity", "distinctiveness", "background_share")  # fmt: skip


def fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    t0 = time.perf_counter()
    models = {}
    for name, experiment in JOBS.items():
        run_dir = RUNS / name
        metrics, wall = run_job(run_dir, [experiment])
        models[name] = {
            "job": f"python -m vislight {experiment}",
            "wall_seconds": round(wall, 1),
            "timings": metrics["timings"],
            "classifier": metrics.get("classifier"),
            "feature_layer": metrics.get("feature_layer"),
            "mask_schedule": schedule_of(run_dir),
            **{k: metrics.get(k) for k in KEYS},
            "classes": {
                c: {
                    k: v.get(k)
                    for k in (
                        "accuracy",
                        "summaries",
                        "purity",
                        "found_parts",
                        "needed_parts",
                        "summaries_per_part",
                    )
                }
                for c, v in metrics["classes"].items()
            },  # fmt: skip
        }
    vit = models["vit_tiny"]
    targets = {k: {"target": t, "value": vit[k], "met": vit[k] is not None and vit[k] >= t}
               for k, t in TARGETS.items()}  # fmt: skip
    result = {
        "command": " ".join(["python", "experiments/vit_synth_study.py", *sys.argv[1:]]),
        "commit": commit(),
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "targets": targets,
        "models": models,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vit_synth.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# A vision transformer on the synthetic world",
        "",
        provenance_line(result),
        "",
        *[f"- {n}: `{m['job']}` ({m['wall_seconds']:.0f} s; feature layer `{m['feature_layer']}`; "
          f"classifier {m['classifier']}; masks: {m['mask_schedule']})" for n, m in models.items()],
        "",
        "Targets (ViT): " + ", ".join(
            f"{k} {fmt(v['value'])} (>= {v['target']}: {'MET' if v['met'] else 'MISSED'})"
            for k, v in targets.items()
        ),
        "",
        "| model | " + " | ".join(k.replace("_", " ") for k in KEYS) + " |",
        "|---" * (len(KEYS) + 1) + "|",
        *[f"| {n} | " + " | ".join(fmt(m[k]) for k in KEYS) + " |" for n, m in models.items()],
        "",
        "Per class (ViT / CNN): summaries, purity, parts found of the needed parts.",
        "",
        "| class | ViT summaries | ViT purity | ViT found / needed | CNN summaries | CNN purity | CNN found / needed |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for c, v in vit["classes"].items():
        w = models["resnet_small"]["classes"].get(c, {})
        lines.append(
            f"| {c} | {fmt(v['summaries'])} | {fmt(v['purity'])} | "
            f"{v['found_parts']} / {v['needed_parts']} | {fmt(w.get('summaries'))} | "
            f"{fmt(w.get('purity'))} | {w.get('found_parts')} / {w.get('needed_parts')} |"
        )
    write_md_keeping_notes(OUT / "vit_synth.md", lines)
    print((OUT / "vit_synth.md").read_text())


if __name__ == "__main__":
    main()
