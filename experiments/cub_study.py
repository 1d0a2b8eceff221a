"""EfficientNet-Lite0 (ImageNet weights) on CUB birds: masks and summaries, written by a script.

    python experiments/cub_study.py albatross [--out DIR] [overrides]   # ~4 min on 2 CPU cores
    python experiments/cub_study.py summaries [--out DIR] [overrides]   # ~12 min on 2 CPU cores

``albatross`` writes one result per job:
  * cub_albatross_masks.json: experiment=cub_albatross_masks (16 of the CUB folder's albatross
    photos, train and test, labelled ImageNet "albatross"): accuracy and masks;
  * cub_albatross_parts_summaries.json: the same on the CUB *test* albatross photos
    (data=cub_parts data.classes=[1,2,3]), with the summaries tagged by part keypoints.
``summaries`` runs experiment=cub_summaries (albatross + indigo bunting test photos, with the
Grad-CAM / random / k-means baselines), then the same on albatross alone (its masks reused from the
first job's), and writes cub_summaries.{json,md}: ours against each baseline on both.

Every result records its command, commit, machine, wall time and mask schedule; the .md keeps a
"## Notes" section written by hand. Extra overrides go to every job (e.g. masks=paper).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from jobs import ROOT, commit, machine, run_job, schedule_of, write_md_keeping_notes

from vislight.run_folder import RunFolder
from vislight.summaries.stage import HEADLINE_MEASURES

STUDIES = {
    "albatross": {
        "cub_albatross_masks": ["experiment=cub_albatross_masks"],
        "cub_albatross_parts_summaries": [
            "experiment=cub_albatross_masks",
            "data=cub_parts",
            "data.classes=[1,2,3]",
        ],
    },
    "summaries": {
        "both_classes": ["experiment=cub_summaries"],
        "albatross": ["experiment=cub_summaries", "data.classes=[1,2,3]"],
    },
}


def mask_section(metrics: dict) -> dict:
    return {k: v for k, v in metrics["mask"].items() if k not in ("skipped", "per_class")}


def summary_rows(summaries: dict) -> list[dict]:
    """Each summary of the run: its tag, purity, support, coherence and its members' tags."""
    return [
        {
            "class": c,
            "tag": x.get("tag"),
            "purity": x.get("purity"),
            "support": x.get("support"),
            "coherence": round(x["coherence"], 3),
            "faithful": (x.get("faithfulness") or {}).get("faithful"),
            "member_tags": [m.get("tag") for m in x.get("members", [])],
        }
        for c, ss in summaries["classes"].items()
        for x in ss
    ]


def methods(metrics: dict) -> dict[str, dict]:
    """Ours and each baseline: the headline measures."""
    rows = {"vislight": metrics} | (metrics.get("baselines") or {})
    return {name: {k: m.get(k) for k in HEADLINE_MEASURES} for name, m in rows.items()}


def fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def methods_table(rows: dict[str, dict]) -> list[str]:
    out = [
        "| method | " + " | ".join(k.replace("_", " ") for k in HEADLINE_MEASURES) + " |",
        "|---" * (len(HEADLINE_MEASURES) + 1) + "|",
    ]
    out += [
        f"| {name} | " + " | ".join(fmt(m[k]) for k in HEADLINE_MEASURES) + " |"
        for name, m in rows.items()
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", choices=list(STUDIES))
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix=f"vislight-cub-{args.study}-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    facts = {
        "command": " ".join(["python", "experiments/cub_study.py", *sys.argv[1:]]),
        "commit": commit(),
        "machine": machine(),
    }
    # one mask cache per study, new and thrown away: no mask of an earlier run or schedule is reused
    shared_cache = [f"masks.cache_dir={tmp / 'masks'}"]
    results = {}
    for name, overrides in STUDIES[args.study].items():
        run_dir = tmp / name
        metrics, wall = run_job(run_dir, [*overrides, *shared_cache, *args.overrides])
        path = RunFolder(run_dir).summaries
        summaries = json.loads(path.read_text()) if path.is_file() else None
        results[name] = facts | {
            "job": " ".join(["python -m vislight", *overrides, *args.overrides]),
            "wall_seconds": round(wall, 1),
            "mask_schedule": schedule_of(run_dir),
            "accuracy": metrics["accuracy"],
            "test_images": metrics["test_images"],
            "timings": metrics["timings"],
            "mask": mask_section(metrics),
            "methods": methods(metrics),
            "per_class": {
                c: {k: v.get(k) for k in ("images", "summaries", "purity", "found_parts")}
                for c, v in metrics.get("classes", {}).items()
            },
            "summaries": summary_rows(summaries) if summaries else None,
        }
        print(json.dumps({k: results[name][k] for k in ("job", "wall_seconds", "mask_schedule")}))
    shutil.rmtree(tmp, ignore_errors=True)
    if args.study == "albatross":
        for name, result in results.items():
            (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        return
    (out / "cub_summaries.json").write_text(json.dumps(results, indent=2) + "\n")
    both, alba = results["both_classes"], results["albatross"]
    lines = [
        "# CUB summaries: EfficientNet-Lite0 against the baselines",
        "",
        f"`{facts['command']}` at {facts['commit']} on {facts['machine']}; jobs "
        f"`{both['job']}` ({both['wall_seconds']:.0f} s) and `{alba['job']}` "
        f"({alba['wall_seconds']:.0f} s, masks reused).",
        "",
        f"Mask schedule: {both['mask_schedule']}; {both['mask']['masked']} masked images, "
        f"{both['mask']['mean_passes']:.1f} network passes each, mean drop "
        f"{both['mask']['mean_drop']:.4f}, area {both['mask']['mean_area']:.3f}.",
        "",
        f"## Albatross ({alba['mask']['masked']} CUB test photos)",
        "",
        *methods_table(alba["methods"]),
        "",
        f"## Both classes (albatross + indigo bunting, {both['mask']['masked']} photos)",
        "",
        *methods_table(both["methods"]),
        "",
        "## Our albatross summaries",
        "",
        "| tag | purity | support | faithful |",
        "|---|---|---|---|",
        *[
            f"| {s['tag']} | {fmt(s['purity'])} | {s['support']} | {s['faithful']} |"
            for s in alba["summaries"] or []
        ],
        "",
    ]
    write_md_keeping_notes(out / "cub_summaries.md", lines)
    print((out / "cub_summaries.md").read_text())


if __name__ == "__main__":
    main()
