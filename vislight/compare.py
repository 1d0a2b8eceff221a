"""Compare architectures by their summaries across the jobs of a multirun.

``python -m vislight -m experiment=compare_synth`` runs one job per model; when the sweep ends,
:class:`CompareCallback` (or ``python -m vislight.compare DIR`` at any time) reads every job's
``metrics.json`` under DIR and writes, in DIR:

* ``comparison.json``: ``rows`` (per job: model, accuracy, mean summaries per class, purity,
  background share, faithfulness, ...), ``spearman`` and ``pearson`` (accuracy vs mean summaries
  per class: ``{"r", "p", "n"}``, or ``{"r": null, "reason"}`` when undefined);
* ``comparison.md`` and ``comparison.html`` (table, plot, links to each job's report);
* ``comparison.png``: accuracy vs mean summaries per class, one labelled point per job.

Each job's ``report/index.html`` gets a link to ``comparison.html``; with W&B on, the table and the
plot are logged to an offline run of their own (job type ``comparison``).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from hydra.experimental.callback import Callback

from vislight.io import atomic_write, write_json, write_text
from vislight.report.render import fmt, render
from vislight.run_folder import RunFolder

log = logging.getLogger(__name__)

COLUMNS = (
    ("model", "model"),
    ("accuracy", "accuracy"),
    ("mean_summaries", "summaries / class"),
    ("mean_purity", "purity"),
    ("background_share", "background share"),
    ("faithful_fraction", "faithful fraction"),
    ("median_faithfulness_ratio", "median faithfulness ratio"),
    ("masked", "masked images"),
    ("explained_classes", "classes with masks"),
)
REPORT_MARK = "<!-- vislight:comparison -->"  # left by vislight/report/templates/index.html.j2


def collect_rows(root: str | Path) -> list[dict]:
    """One row per job folder under ``root`` holding a ``metrics.json`` (job order, then name)."""
    root = Path(root)
    runs = sorted(
        RunFolder.find_runs(root),
        key=lambda r: (not r.root.name.isdigit(), int(r.root.name) if r.root.name.isdigit() else 0, str(r.root)),
    )  # fmt: skip
    rows = []
    for run in runs:
        f = run.metrics
        try:
            m = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("skipping %s: %s", f, e)
            continue
        classes = m.get("classes") or {}
        report = run.report_index
        rows.append(
            {
                "job": str(run.root.relative_to(root)) if run.root != root else ".",
                "model": m.get("model"),
                "dataset": m.get("dataset"),
                "accuracy": m.get("accuracy"),
                "mean_summaries": m.get("mean_summaries"),
                "mean_purity": m.get("mean_purity"),
                "background_share": m.get("background_share"),
                "faithful_fraction": m.get("faithful_fraction"),
                "median_faithfulness_ratio": m.get("median_faithfulness_ratio"),
                "masked": (m.get("mask") or {}).get("masked"),
                "explained_classes": sum(1 for c in classes.values() if c.get("masked")),
                "evaluated_classes": sum(1 for c in classes.values() if "accuracy" in c),
                "report": str(report.relative_to(root)) if report.is_file() else None,
            }
        )
    return rows


def correlation(xs: Sequence[float | None], ys: Sequence[float | None], kind: str) -> dict:
    """Spearman or Pearson correlation of paired values (pairs with a missing side are dropped)."""
    from scipy import stats

    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
    n = len(pairs)
    if n < 3:
        return {
            "r": None,
            "p": None,
            "n": n,
            "reason": f"needs >= 3 jobs with both values, got {n}",
        }
    x, y = zip(*pairs)
    if len(set(x)) < 2 or len(set(y)) < 2:
        return {"r": None, "p": None, "n": n, "reason": "one of the two is constant across jobs"}
    res = stats.spearmanr(x, y) if kind == "spearman" else stats.pearsonr(x, y)
    r, p = float(res[0]), float(res[1])
    return {"r": None if math.isnan(r) else r, "p": None if math.isnan(p) else p, "n": n}


def _corr_text(name: str, c: Mapping) -> str:
    if c.get("r") is None:
        return f"{name}: undefined ({c.get('reason')})"
    return f"{name} r = {c['r']:.3f} (p = {c['p']:.3g}, n = {c['n']})"


def plot(rows: Sequence[Mapping], spearman: Mapping, pearson: Mapping, path: Path) -> None:
    """Scatter plot of accuracy vs mean summaries per class, one labelled point per job."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["accuracy"] is not None and r["mean_summaries"] is not None]
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    ax.scatter([r["accuracy"] for r in pts], [r["mean_summaries"] for r in pts], color="#1f6f8b")
    for r in pts:
        ax.annotate(
            str(r["model"]),
            (r["accuracy"], r["mean_summaries"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set_xlabel("test accuracy")
    ax.set_ylabel("summaries per class")
    ax.set_title(
        f"{_corr_text('Spearman', spearman)}\n{_corr_text('Pearson', pearson)}", fontsize=8
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()  # rendered first: a failed write is then a plain OSError
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data))


def _markdown(rows: Sequence[Mapping], spearman: Mapping, pearson: Mapping) -> str:
    head = "| " + " | ".join(label for _, label in COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(
        [
            "# Architectures compared by their summaries",
            "",
            head,
            sep,
            *body,
            "",
            f"Accuracy vs summaries per class: {_corr_text('Spearman', spearman)}; "
            f"{_corr_text('Pearson', pearson)}.",
            "",
            "Summaries per class is averaged over the classes that have masks (correctly classified "
            "images); `classes with masks` says how many that is.",
            "",
            "![accuracy vs summaries](comparison.png)",
            "",
        ]
    )


def _html(rows: Sequence[Mapping], spearman: Mapping, pearson: Mapping) -> str:
    """``comparison.html``: the table (each model linked to its job's report), the correlations
    and the plot (template ``vislight/report/templates/comparison.html.j2``)."""
    return render(
        "comparison.html.j2",
        labels=[label for _, label in COLUMNS],
        rows=[
            {
                "model": r["model"],
                "report": r.get("report"),
                "cells": [r.get(k) for k, _ in COLUMNS[1:]],
            }
            for r in rows
        ],
        spearman=_corr_text("Spearman", spearman),
        pearson=_corr_text("Pearson", pearson),
    )


def _link_reports(root: Path, rows: Sequence[Mapping]) -> None:
    """Put a link to the comparison into each job's report (where the report left a mark)."""
    target = root / "comparison.html"
    for r in rows:
        if not r.get("report"):
            continue
        page = root / r["report"]
        text = page.read_text(encoding="utf-8")
        if REPORT_MARK not in text:
            continue
        rel = os.path.relpath(target, page.parent)
        link = render("comparison_link.html.j2", href=rel)
        write_text(page, text.replace(REPORT_MARK, REPORT_MARK + link, 1))


def log_to_wandb(root: Path, result: Mapping, logger_cfg: Mapping, group: str | None) -> None:
    """The comparison table and plot as an offline (by default) W&B run of job type comparison."""
    import wandb

    if os.environ.get("WANDB_MODE") == "disabled":
        return
    run = wandb.init(
        project=logger_cfg.get("project", "vislight"),
        group=group,
        job_type="comparison",
        name=f"comparison-{root.name}",
        dir=str(root),
        mode="offline" if logger_cfg.get("offline", True) else "online",
        reinit=True,
    )
    columns = [k for k, _ in COLUMNS]
    run.log(
        {
            "comparison/table": wandb.Table(
                columns=columns, data=[[r.get(k) for k in columns] for r in result["rows"]]
            ),
            "comparison/plot": wandb.Image(str(root / "comparison.png")),
            "comparison/spearman": result["spearman"].get("r"),
            "comparison/pearson": result["pearson"].get("r"),
        }
    )
    run.finish()


def write_comparison(
    root: str | Path, wandb_cfg: Mapping | None = None, group: str | None = None
) -> dict:
    """Read the jobs under ``root`` and write the comparison files there; returns comparison.json."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: pass the sweep folder of a multirun")
    rows = collect_rows(root)
    if not rows:
        raise FileNotFoundError(
            f"no metrics.json under {root}: run `python -m vislight -m experiment=...` first"
        )
    acc = [r["accuracy"] for r in rows]
    summ = [r["mean_summaries"] for r in rows]
    result = {
        "rows": rows,
        "spearman": correlation(acc, summ, "spearman"),
        "pearson": correlation(acc, summ, "pearson"),
        "x": "accuracy",
        "y": "mean_summaries",
    }
    write_json(root / "comparison.json", result)
    plot(rows, result["spearman"], result["pearson"], root / "comparison.png")
    write_text(root / "comparison.md", _markdown(rows, result["spearman"], result["pearson"]))
    write_text(root / "comparison.html", _html(rows, result["spearman"], result["pearson"]))
    _link_reports(root, rows)
    if wandb_cfg is not None:
        log_to_wandb(root, result, wandb_cfg, group)
    log.info(
        "comparison of %d jobs in %s: %s; %s",
        len(rows),
        root,
        _corr_text("Spearman", result["spearman"]),
        _corr_text("Pearson", result["pearson"]),
    )
    return result


class CompareCallback(Callback):
    """Hydra callback: at the end of a multirun, compare its jobs (``hydra.callbacks.compare``)."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        loggers = config.get("logger") or {}
        wandb_cfg = loggers.get("wandb") if isinstance(loggers, Mapping) else None
        try:
            write_comparison(sweep_dir, wandb_cfg, group=config.get("task_name"))
        except FileNotFoundError as e:
            log.error("comparison not written: %s", e)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m vislight.compare",
        description="Compare the jobs of a multirun (every metrics.json under DIR): writes "
        "comparison.{json,md,html,png} into DIR.",
    )
    ap.add_argument("dir", type=Path, help="sweep folder of `python -m vislight -m ...`")
    ap.add_argument("--wandb", action="store_true", help="also log to an offline W&B run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = write_comparison(args.dir, {"offline": True} if args.wandb else None)
    except FileNotFoundError as e:
        print(f"vislight.compare: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: result[k] for k in ("spearman", "pearson")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
