"""Specialisation studies: run ``python -m vislight experiment=specialize_<study>`` and commit its
held-out results (per group and over groups, every seed) with the command, machine, wall time
and mask schedule.

    python experiments/specialize_study.py synth   # weak small_cnn on the synthetic world
    python experiments/specialize_study.py cub     # EfficientNet-Lite0 linear probe, CUB 001-040 (../shared)
    python experiments/specialize_study.py synth_crossfit   # the same with cross-fitting: the
    python experiments/specialize_study.py cub_crossfit     # groups, summaries and heads on data
                                                            # the base model did not train on
    python experiments/specialize_study.py cub_select       # specialist variants compared inside
                                                            # the held-in half (no test images)

Extra arguments are passed to vislight as overrides (e.g. masks.cache_dir=.cache/masks to reuse
masks computed elsewhere). Results: experiments/results/specialize_<study>.{json,md}.
"""

from __future__ import annotations

import json
import sys
import time

from jobs import (
    ROOT,
    commit,
    machine,
    provenance_line,
    run_study,
    schedule_of,
    study_args,
    vislight_command,
)

from vislight.masks.cache import safe_name
from vislight.run_folder import RunFolder

STUDIES = ("synth", "cub", "synth_crossfit", "cub_crossfit", "cub_select")
# Specialist variants compared by `cub_select` (summaries and heads on train_b1, accuracy on
# train_b2): each is a set of overrides of experiment=specialize_cub_select; the masks are shared.
VARIANTS = {
    "as cub_crossfit": [],
    "base logits frozen (W only)": ["specialize.train_head=false"],
    "60 epochs": ["specialize.epochs=60"],
    "15 epochs": ["specialize.epochs=15"],
    "lr 0.003": ["specialize.lr=0.003"],
    "prototypes at _blocks.8": ["specialize.layer=_blocks.8"],
    "prototypes at _blocks.12": ["specialize.layer=_blocks.12"],
    "prototypes at _blocks.8 + _blocks.10": ["specialize.layer=[_blocks.8,_blocks.10]"],
    "prototypes at _blocks.10 + _blocks.12": ["specialize.layer=[_blocks.10,_blocks.12]"],
}
# The rule: the variant whose specialised heads lead the best of the base model and both controls
# by the most on train_b2 (accuracy over the groups, mean over seeds); ties: the first listed.
SELECT_RULE = "max of specialised minus the best of base, k-means control and head fine-tuning"
METHODS = ("base", "specialized", "kmeans_control", "head_control")
NOTES = "\nNotes:\n"


def write_keeping_notes(path, md: str) -> None:
    """Write ``md`` to ``path``, then the hand-written "Notes:" of its previous version."""
    if path.is_file() and NOTES in path.read_text():  # hand-written notes survive reruns
        md += NOTES + path.read_text().split(NOTES, 1)[1]
    path.write_text(md)


def _p(v) -> str:
    return "–" if v is None else f"{v:.3g}"


def _cell(v) -> str:
    return f"{v['mean']:.4f} ± {v['std']:.4f}" if isinstance(v, dict) else f"{v:.4f}"


def markdown(metrics: dict, summaries: dict, facts: dict) -> str:
    spec = metrics["specialization"]
    lines = [
        f"# Specialisation study `{facts['experiment']}`",
        "",
        f"Base model `{metrics['model']}` on `{metrics['dataset']}`. Groups "
        f"({spec['groups_from']}): {spec['chosen_groups']}. Accuracy within each group on the "
        f"held-out `{spec['heldout_split']}` split, mean ± std over seeds {spec['seeds']}.",
        "",
        "| group | prototypes | train / held-out images | base | specialised | k-means control "
        "| head fine-tuning |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in spec["groups"]:
        cells = " | ".join(_cell(g[m]) if m in g else "–" for m in METHODS)
        lines.append(
            f"| {', '.join(g['classes'])} | {g['prototypes']} | {g['train_images']} / "
            f"{g['heldout_images']} | {cells} |"
        )
    overall = spec["overall"]
    if "specialized" in overall:
        cells = " | ".join(f"**{_cell(overall[m])}**" for m in METHODS)
        lines.append(f"| **all groups** | | / {overall['heldout_images']} | {cells} |")
        lines += [
            "",
            "Per seed (all groups): "
            + "; ".join(
                f"{m} {', '.join(f'{v:.4f}' for v in overall[m]['runs'])}" for m in METHODS[1:]
            ),
            "",
            f"Specialised beats the base model and both controls by more than the seed std: "
            f"**{'yes' if overall['beats_all'] else 'no'}**.",
        ]
    if overall.get("paired"):
        lines += ["", "Paired, specialised minus the other (one-sided p-values, H1: specialised is "
                  "more accurate), over every (group, seed) pair and, conservatively, over the "
                  "groups' seed means (the seeds of a group share its images):", "",
                  "| vs | pairs | mean difference | wins / losses | paired t p | Wilcoxon p "
                  "| groups | t p (groups) | Wilcoxon p (groups) |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for other, t in overall["paired"].items():
            lines.append(
                f"| {other} | {t['pairs']} | {t['mean_difference']:+.4f} | {t['wins']} / "
                f"{t['losses']} | {_p(t['t_test_p'])} | {_p(t['wilcoxon_p'])} | "
                f"{t.get('groups', '–')} | {_p(t.get('group_t_test_p'))} | "
                f"{_p(t.get('group_wilcoxon_p'))} |"
            )
    lines += ["", "Summaries the prototypes come from (tag, purity, support):", ""]
    for g in spec["groups"]:
        for c in g["classes"]:
            ss = summaries.get("classes", {}).get(c, [])
            desc = ", ".join(
                f"{s.get('tag', '?')} {s.get('purity', 0):.2f} ({s['support']})" for s in ss
            )
            lines.append(f"- {c}: {desc or 'none'}")
    lines += [
        "",
        f"Command: `{facts['command']}`  ",
        f"Commit: {facts.get('commit', '–')}  ",
        f"Machine: {facts['machine']}  ",
        f"Wall time: {facts['wall_seconds']:.0f} s ({facts['date']})  ",
        f"Mask schedule: {facts['mask_schedule']}",
        "",
    ]
    return "\n".join(lines)


FOLDS = {"b1 -> b2": [], "b2 -> b1": ["data.split=train_b2", "specialize.heldout_split=train_b1"]}


def select(extra: list[str]) -> int:
    """``cub_select``: every variant on the held-in half, both ways round (summaries and heads on
    one half of train_b, accuracy on the other); writes results/specialize_cub_select."""
    base_dir = ROOT / "outputs" / "studies" / "specialize_cub_select"
    rows, t0 = {}, time.perf_counter()
    for name, overrides in VARIANTS.items():
        folds = {}
        for fold, fold_overrides in FOLDS.items():
            run_dir = base_dir / safe_name(f"{name} {fold.replace(' -> ', '_to_')}")
            cmd = vislight_command("experiment=specialize_cub_select", f"paths.output_dir={run_dir}",
                                   f"masks.cache_dir={base_dir / 'masks'}", *fold_overrides,
                                   *overrides, *extra)  # fmt: skip
            returncode, _ = run_study(cmd)
            if returncode != 0:
                print(
                    f"variant {name!r} failed (exit {returncode}); see {run_dir}", file=sys.stderr
                )
                return 1
            overall = json.loads(RunFolder(run_dir).metrics.read_text())["specialization"][
                "overall"
            ]
            folds[fold] = {"heldout_images": overall["heldout_images"],
                           **{m: overall[m]["mean"] if isinstance(overall[m], dict) else overall[m]
                              for m in METHODS}}  # fmt: skip
        n = sum(f["heldout_images"] for f in folds.values())
        pooled = {m: sum(f[m] * f["heldout_images"] for f in folds.values()) / n for m in METHODS}
        lead = pooled["specialized"] - max(pooled[m] for m in METHODS if m != "specialized")
        rows[name] = {"overrides": overrides, "heldout_images": n, **pooled, "lead": lead,
                      "folds": folds}  # fmt: skip
    chosen = max(rows, key=lambda k: rows[k]["lead"])
    record = {"command": " ".join(["python experiments/specialize_study.py cub_select", *extra]),
              "commit": commit(), "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "wall_seconds": round(time.perf_counter() - t0, 1),
              "mask_schedule": schedule_of(run_dir), "rule": SELECT_RULE,
              "chosen": chosen, "variants": rows}  # fmt: skip
    out = ROOT / "experiments" / "results" / "specialize_cub_select"
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Specialist variants on the held-in half (`specialize_cub_select`)", "",
        provenance_line(record), "",
        "Base model on half A of the CUB 001-040 train split. Half B is cut in two (`train_b1`, "
        "`train_b2`); each variant runs both ways round (summaries and heads on one, accuracy on "
        "the other; the five cross-fitting groups, mean over 3 seeds), pooled over the held-in "
        f"images of both. The test split is not read. Rule: {SELECT_RULE}. **Chosen: {chosen}**.",
        "",
        "| variant | overrides | held-in images | base | specialised | k-means control "
        "| head fine-tuning | lead | lead b1 -> b2 / b2 -> b1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, r in rows.items():
        per_fold = " / ".join(
            f"{f['specialized'] - max(f[m] for m in METHODS if m != 'specialized'):+.4f}"
            for f in r["folds"].values()
        )
        lines.append(
            f"| {name} | `{' '.join(r['overrides']) or '–'}` | {r['heldout_images']} | "
            + " | ".join(f"{r[m]:.4f}" for m in METHODS)
            + f" | {r['lead']:+.4f} | {per_fold} |"
        )
    md = "\n".join(lines) + "\n"
    write_keeping_notes(out.with_suffix(".md"), md)
    print(md)
    return 0


def main() -> int:
    args = study_args("specialize_study.py", STUDIES)
    if args is None:
        return 2
    study, extra = args
    if study == "cub_select":
        return select(extra)
    run_dir = ROOT / "outputs" / "studies" / f"specialize_{study}"
    cmd = vislight_command(f"experiment=specialize_{study}", f"paths.output_dir={run_dir}", *extra)
    returncode, facts = run_study(cmd)
    metrics_file = RunFolder(run_dir).metrics
    if returncode != 0 or not metrics_file.is_file():
        print(f"study failed (exit {returncode}); see {run_dir}", file=sys.stderr)
        return 1
    metrics = json.loads(metrics_file.read_text())
    summaries = json.loads(RunFolder(run_dir).summaries.read_text())
    facts = {"experiment": f"specialize_{study}", "commit": commit(), **facts,
             "mask_schedule": schedule_of(run_dir)}  # fmt: skip
    out = ROOT / "experiments" / "results" / f"specialize_{study}"
    record = {
        **facts,
        "train_accuracy_of_base": metrics["accuracy"],
        "classifier": metrics.get("classifier"),
        "mask": {k: metrics.get("mask", {}).get(k) for k in ("masked", "reused", "mean_drop")},
        "specialization": metrics["specialization"],
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    md = markdown(metrics, summaries, facts)
    write_keeping_notes(out.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
