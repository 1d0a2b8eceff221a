"""A whole run with W&B offline and the report stage: the offline run directory holds the metrics,
the summary mosaics and mask examples as images, and the summaries table; the report exists."""

from __future__ import annotations

import json

from helpers import TINY_PIPELINE, compose_config
from omegaconf import open_dict

from vislight.pipeline import run


def test_offline_wandb_run_holds_metrics_media_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_config(
        [
            "logger=wandb",
            "stages=[classifier,evaluate,masks,summaries,report]",
            "baselines.enabled=true",
            *TINY_PIPELINE,
        ],
        tmp_path,
    )
    with open_dict(cfg):
        del cfg["hydra"]
    out = tmp_path / "run"
    metrics = run(cfg, out)
    summaries = json.loads((out / "summaries.json").read_text())
    n_summaries = sum(len(v) for v in summaries["classes"].values())
    assert n_summaries >= 1
    for ss in summaries["classes"].values():
        for s in ss:
            f = s["faithfulness"]
            assert f["faithful"] == (f["drop"] > f["random_drop"])
            if f["ratio"] is not None:
                assert abs(f["ratio"] - f["drop"] / f["random_drop"]) < 1e-9
    faithful = [s["faithfulness"]["faithful"] for ss in summaries["classes"].values() for s in ss]
    assert metrics["faithful_fraction"] == sum(faithful) / len(faithful)
    assert (out / "report" / "index.html").is_file() and (out / "report" / "masks.html").is_file()
    # the baselines went through the same code and are compared in the report
    assert set(metrics["baselines"]) == {"gradcam", "random", "kmeans"}
    for b in metrics["baselines"].values():
        assert {"mean_summaries", "mean_purity", "background_share", "faithful_fraction"} <= set(b)
        assert set(b["classes"]) == set(summaries["classes"])
    assert "Against baselines" in (out / "report" / "index.html").read_text()
    assert metrics["report"].endswith("index.html")
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    files = runs[0] / "files"
    images = list((files / "media" / "images").rglob("*.png"))
    # every summary's mosaic plus the example masks
    assert len(images) >= n_summaries + 1, images
    tables = list((files / "media" / "table").rglob("*.table.json"))
    assert tables, list(files.rglob("*"))
    rows = json.loads(tables[0].read_text())["data"]
    assert len(rows) == n_summaries
    # the run's metrics were logged too (offline runs keep them in the .wandb record file)
    records = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (b"metrics/accuracy", b"metrics/mean_summaries", b"timings/masks"):
        assert key in records, key
