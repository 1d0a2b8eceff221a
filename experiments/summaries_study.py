"""Summaries on the synthetic world: tagging quality, needed parts, the planted shortcut, and the
agreement of the faiss and exact dense modes.

Runs (or reads, with --off-dir/--on-dir pointing at finished run folders) two jobs:
  * experiment=synth_summaries with similarity.compare_dense=true (shortcut off);
  * experiment=synth_shortcut (watermark on half of disc_bar's images).
Writes summaries_study.{json,md} to --out: per class the needed parts (with their deletion drops),
the parts the summaries found, summary count and purity; the watermark summaries of both runs;
stage timings; the command, machine and wall time.

    python experiments/summaries_study.py [--out experiments/results] [--off-dir D] [--on-dir D]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jobs import commit, machine, schedule_of, vislight_command, write_md_keeping_notes

from vislight.run_folder import RunFolder


def run_job(out: Path, overrides: list[str]) -> None:
    subprocess.run(vislight_command(f"paths.output_dir={out}", *overrides), check=True)


def load(run_dir: Path) -> tuple[dict, dict]:
    run = RunFolder(run_dir)
    return json.loads(run.metrics.read_text()), json.loads(run.summaries.read_text())


def watermark_summaries(summaries: dict) -> list[dict]:
    return [
        {
            "class": c,
            "purity": s["purity"],
            "support": s["support"],
            "coherence": round(s["coherence"], 3),
        }
        for c, ss in summaries["classes"].items()
        for s in ss
        if s.get("tag") == "watermark"
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--off-dir", help="finished synth_summaries run (with compare_dense) to read")
    ap.add_argument("--on-dir", help="finished synth_shortcut run to read")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vislight-summaries-"))
    t0 = time.perf_counter()
    off = Path(args.off_dir) if args.off_dir else tmp / "off"
    on = Path(args.on_dir) if args.on_dir else tmp / "on"
    if not args.off_dir:
        run_job(off, ["experiment=synth_summaries", "similarity.compare_dense=true"])
    if not args.on_dir:
        run_job(on, ["experiment=synth_shortcut"])
    wall = time.perf_counter() - t0
    (m_off, s_off), (m_on, s_on) = load(off), load(on)
    per_class = {
        c: {
            "summaries": v.get("summaries"),
            "purity": v.get("purity"),
            "needed_parts": v.get("needed_parts"),
            "part_drops": {k: round(x, 3) for k, x in v.get("part_drops", {}).items()},
            "found_parts": v.get("found_parts"),
            "summaries_per_part": v.get("summaries_per_part"),
            "summary_tags": [
                (s["tag"], round(s["purity"], 2), s["support"]) for s in s_off["classes"].get(c, [])
            ],
        }
        for c, v in m_off["classes"].items()
    }
    result = {
        "command": " ".join(["python", "experiments/summaries_study.py", *sys.argv[1:]]),
        "commit": commit(),
        "machine": machine(),
        "wall_seconds": round(wall, 1),
        "mask_schedule": schedule_of(off),
        "shortcut_off": {
            "accuracy": m_off["accuracy"],
            "mean_summaries": m_off["mean_summaries"],
            "summaries_per_part": m_off.get("summaries_per_part"),
            "distinctiveness": m_off.get("distinctiveness"),
            "pipnet_purity": m_off.get("pipnet_purity"),
            "stability_count_std": m_off.get("stability_count_std"),
            "mean_purity": m_off["mean_purity"],
            "background_share": m_off["background_share"],
            "part_recall": m_off["part_recall"],
            "ari_dense_vs_faiss": m_off.get("ari_dense_vs_faiss"),
            "timings": m_off["timings"],
            "watermark_summaries": watermark_summaries(s_off),
        },
        "shortcut_on": {
            "accuracy": m_on["accuracy"],
            "mean_purity": m_on["mean_purity"],
            "part_recall": m_on["part_recall"],
            "timings": m_on["timings"],
            "watermark_summaries": watermark_summaries(s_on),
            "disc_bar_part_drops": m_on["classes"]["disc_bar"].get("part_drops"),
        },
        "per_class": per_class,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summaries_study.json").write_text(json.dumps(result, indent=2) + "\n")
    o = result["shortcut_off"]
    md = out / "summaries_study.md"
    lines = [
        f"`{result['command']}` at {result['commit']} on {result['machine']}, "
        f"{result['wall_seconds']} s; masks: {result['mask_schedule']}.",
        "",
        f"Shortcut off: accuracy {o['accuracy']:.4f}, {o['mean_summaries']:.2f} summaries per class, "
        f"{o['summaries_per_part']:.2f} per distinct part, distinctiveness {o['distinctiveness']:.3f}, "
        f"PIP-Net purity {o['pipnet_purity']:.3f}, bootstrap count std {o['stability_count_std']:.2f}, mean purity "
        f"{o['mean_purity']:.3f}, background share {o['background_share']:.3f}, part recall {o['part_recall']:.3f}, "
        f"ARI faiss vs dense {o['ari_dense_vs_faiss']}, watermark summaries {len(o['watermark_summaries'])}; "
        f"stage seconds {o['timings']}.",
        "",
        "| class | summaries | purity | needed parts (drop) | parts found | summaries (tag, purity, support) |",
        "|---|---|---|---|---|---|",
    ]
    for c, v in per_class.items():
        needed = (
            ", ".join(f"{p} ({v['part_drops'][p]:.2f})" for p in v["needed_parts"] or []) or "none"
        )
        purity = f"{v['purity']:.3f}" if v["purity"] is not None else "-"
        lines.append(
            f"| {c} | {v['summaries']} | {purity} | {needed} | {', '.join(v['found_parts'] or [])} | {v['summary_tags']} |"
        )
    w = result["shortcut_on"]
    lines += [
        "",
        f"Shortcut on (watermark on half of disc_bar's images): watermark summaries {w['watermark_summaries']}; "
        f"disc_bar deletion drops {w['disc_bar_part_drops']}.",
    ]
    write_md_keeping_notes(md, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
