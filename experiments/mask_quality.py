"""Mask and summary quality of the default job: the default mask schedule against the paper's.

Runs the default job (experiment=synth_summaries: default classifier, 40 images per class) with the
default schedule (conf/masks/default.yaml) and with the paper's (masks=paper), each at seeds 0 and 1
(the seed trains another classifier), and writes mask_quality.{json,md} to --out: per run the mask
metrics (network passes per image, drop, area, binarisation, share of salient pixels within 3 px of
a true part, images/s) and the summaries' (summaries per class, purity, part recall); then, per
seed, the default's difference from the paper's beside the paper's own seed-to-seed spread. A
"## Notes" section written by hand in the .md survives a rerun.

    python experiments/mask_quality.py [--out experiments/results] [--seeds 0 1] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from jobs import ROOT, commit, machine, run_job, write_md_keeping_notes

MASK_KEYS = (
    "mean_passes",
    "mean_drop",
    "mean_area",
    "binarization",
    "near_part_share",
    "images_per_s",
    "masked",
)
SUMMARY_KEYS = ("mean_summaries", "mean_purity", "part_recall")
SCHEDULES = {"default": [], "paper": ["masks=paper"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="vislight-maskq-"))
    rows: dict[str, dict] = {}
    for seed in args.seeds:
        for name, extra in SCHEDULES.items():
            label = f"{name}, seed {seed}"
            print(f"== {label}", flush=True)
            m, wall = run_job(tmp / f"{name}-{seed}", [f"seed={seed}", *extra, *args.overrides])
            rows[label] = (
                {"accuracy": m["accuracy"]}
                | {k: m["mask"].get(k) for k in MASK_KEYS}
                | {k: m.get(k) for k in SUMMARY_KEYS}
                | {"wall_seconds": round(wall, 1)}
            )
    compared = ("mean_drop", "mean_area", "binarization", "near_part_share", *SUMMARY_KEYS)
    paper = [rows[f"paper, seed {s}"] for s in args.seeds]
    spread = {k: max(r[k] for r in paper) - min(r[k] for r in paper) for k in compared}
    delta = {
        s: {k: rows[f"default, seed {s}"][k] - rows[f"paper, seed {s}"][k] for k in compared}
        for s in args.seeds
    }
    result = {
        "command": " ".join(["python", "experiments/mask_quality.py", *sys.argv[1:]]),
        "commit": commit(),
        "machine": machine(),
        "schedules": {
            "default": "conf/masks/default.yaml",
            "paper": "masks=paper (300 smooth + 150 sharp iterations, lr 0.1)",
        },
        "rows": rows,
        "default_minus_paper": delta,
        "paper_seed_spread": spread,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mask_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    md = out / "mask_quality.md"
    lines = [
        "# Mask quality of the default job: default schedule vs the paper's",
        "",
        f"`{result['command']}` at {result['commit']} on {result['machine']}, "
        f"{result['wall_seconds']} s.",
        "",
        "| run | accuracy | passes/image | drop | area | binarisation | near part (3 px) | images/s "
        "| summaries/class | purity | part recall | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['accuracy']:.4f} | {r['mean_passes']:.1f} | {r['mean_drop']:.4f} "
            f"| {r['mean_area']:.4f} | {r['binarization']:.4f} | {r['near_part_share']:.4f} "
            f"| {r['images_per_s']:.3f} | {r['mean_summaries']:.2f} | {r['mean_purity']:.4f} "
            f"| {r['part_recall']:.4f} | {r['wall_seconds']} |"
        )
    lines += [
        "",
        "Default minus paper, per seed, beside the paper schedule's spread over the seeds:",
        "",
        "| measure | " + " | ".join(f"seed {s}" for s in args.seeds) + " | paper spread |",
        "|---|" + "---|" * (len(args.seeds) + 1),
    ]
    for k in compared:
        lines.append(
            f"| {k} | "
            + " | ".join(f"{delta[s][k]:+.4f}" for s in args.seeds)
            + f" | {spread[k]:.4f} |"
        )
    write_md_keeping_notes(md, lines)
    print(md.read_text())


if __name__ == "__main__":
    main()
