"""Comparing architectures across the jobs of a multirun: rows, correlations, files, report links,
W&B, and ``python -m vislight -m experiment=compare_synth`` end to end (tiny settings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import SUBPROCESS_ENV, tiny_multirun
from PIL import Image

from vislight.compare import REPORT_MARK, correlation, write_comparison

JOBS = [  # model, accuracy, mean summaries per class
    ("tiny_cnn", 0.21, 0.5),
    ("small_cnn", 0.90, 2.0),
    ("vgg_small", 1.00, 3.5),
    ("resnet_small", 0.99, 3.0),
]


def _fake_sweep(root: Path, jobs=JOBS) -> Path:
    for k, (model, acc, summ) in enumerate(jobs):
        job = root / str(k)
        (job / "report").mkdir(parents=True)
        metrics = {
            "model": model,
            "dataset": "synth",
            "accuracy": acc,
            "mean_summaries": summ,
            "mean_purity": 0.9,
            "faithful_fraction": 1.0,
            "mask": {"masked": 10},
            "classes": {"a": {"accuracy": acc, "masked": 5}, "b": {"accuracy": acc, "masked": 0}},
        }
        (job / "metrics.json").write_text(json.dumps(metrics))
        (job / "report" / "index.html").write_text(
            f"<html><body><h1>{model}</h1>{REPORT_MARK}</body></html>"
        )
    return root


def test_comparison_files_rows_and_correlations(tmp_path):
    root = _fake_sweep(tmp_path / "sweep")
    result = write_comparison(root)
    saved = json.loads((root / "comparison.json").read_text())
    assert {"rows", "spearman", "pearson"} <= set(saved)
    assert [r["model"] for r in saved["rows"]] == [m for m, _, _ in JOBS]
    assert saved["rows"][0]["explained_classes"] == 1 and saved["rows"][0]["evaluated_classes"] == 2
    acc = np.array([a for _, a, _ in JOBS])
    summ = np.array([s for _, _, s in JOBS])
    assert saved["pearson"]["r"] == pytest.approx(np.corrcoef(acc, summ)[0, 1])
    # ranks: accuracy 1,2,4,3 vs summaries 1,2,4,3 -> perfectly monotone
    assert saved["spearman"]["r"] == pytest.approx(1.0) and saved["spearman"]["n"] == 4
    assert result["spearman"] == saved["spearman"]
    with Image.open(root / "comparison.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200
    md = (root / "comparison.md").read_text()
    assert "| vgg_small | 1.000 | 3.500 |" in md and "Spearman r = 1.000" in md
    page = (root / "0" / "report" / "index.html").read_text()
    assert "href='../../comparison.html'" in page
    html = (root / "comparison.html").read_text()
    assert "href='0/report/index.html'" in html


def test_correlation_is_undefined_with_a_reason():
    assert correlation([0.5, 0.6], [1, 2], "spearman")["reason"].startswith("needs >= 3")
    assert "constant" in correlation([0.5, 0.6, 0.7], [2, 2, 2], "pearson")["reason"]
    assert correlation([0.1, None, 0.3, 0.5], [1, 5, 2, 3], "spearman")["n"] == 3


def test_cli_on_a_folder_without_jobs_fails_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vislight.compare", str(tmp_path)],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("vislight.compare: error: no metrics.json under")
    assert "Traceback" not in proc.stderr


def test_comparison_is_logged_to_an_offline_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    root = _fake_sweep(tmp_path / "sweep")
    write_comparison(root, {"offline": True, "project": "vislight-test"}, group="compare_test")
    runs = list((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = runs[0] / "files"
    assert list((files / "media" / "images").rglob("*.png"))
    table = next((files / "media" / "table").rglob("*.table.json"))
    assert len(json.loads(table.read_text())["data"]) == len(JOBS)
    # a later comparison of the same folder does not count the W&B files as jobs
    assert len(write_comparison(root)["rows"]) == len(JOBS)


@pytest.mark.slow  # end-to-end study: four models trained (make test-all)
def test_compare_synth_multirun_end_to_end(tmp_path):
    sweep, proc = tiny_multirun(
        tmp_path,
        "experiment=compare_synth",
        "model=tiny_cnn,small_cnn,resnet_small",  # three of the four, to keep CI short
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((sweep / "comparison.json").read_text())
    assert [r["model"] for r in result["rows"]] == ["tiny_cnn", "small_cnn", "resnet_small"]
    for r in result["rows"]:
        assert 0 <= r["accuracy"] <= 1 and r["report"] is not None
    for key in ("spearman", "pearson"):
        c = result[key]
        assert c["n"] == 3 and (c["r"] is None) == ("reason" in c)
    assert (sweep / "comparison.png").is_file() and (sweep / "comparison.md").is_file()
    for r in result["rows"]:
        assert "comparison.html" in (sweep / r["report"]).read_text()
