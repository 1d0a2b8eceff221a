"""``python -m vislight``: help, an end-to-end tiny run, cache reuse and config errors."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import run_vislight


def _vislight(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return run_vislight(*args, timeout=timeout)


def test_help_lists_the_experiments():
    proc = _vislight("--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    experiments = next(line for line in proc.stdout.splitlines() if line.startswith("experiment:"))
    for name in ("synth_summaries", "cifar_resnet_eval", "imagenet_examples_eval"):
        assert name in experiments
    assert "Usage: python -m vislight" in proc.stdout


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The same tiny job run twice with one cache: trains, then reuses."""
    tmp = tmp_path_factory.mktemp("cli")

    def job(name):
        return _vislight(
            "logger=none",
            "stages=[classifier,evaluate]",  # the stages this test is about; later ones are slow
            f"paths.output_dir={tmp / name}",
            f"train.cache_dir={tmp / 'cache'}",
            "data.train_per_class=40",
            "data.val_per_class=5",
            "data.test_per_class=10",
            "train.epochs=1",
            "trainer.enable_progress_bar=false",
        )

    return tmp, job("run1"), job("run2")


def test_tiny_run_writes_the_run_folder(tiny_runs):
    tmp, first, _ = tiny_runs
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp / "run1"
    metrics = json.loads((run / "metrics.json").read_text())
    assert isinstance(metrics["accuracy"], float) and 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["model"] == "resnet_small" and metrics["dataset"] == "synth"
    assert {"classifier", "evaluate"} <= set(metrics["timings"])
    assert all(t >= 0 for t in metrics["timings"].values())
    assert metrics["test_images"] == 60
    assert metrics["classifier"]["trained"] is True and metrics["classifier"]["reused"] is False
    assert sum(c["images"] for c in metrics["classes"].values()) == 60
    config = (run / "config.yaml").read_text()
    assert "train_per_class: 40" in config and str(run) in config
    assert (run / "classifier.ckpt").stat().st_size > 0
    assert (tmp / "cache").is_dir()


def test_second_run_reuses_the_classifier(tiny_runs):
    tmp, first, second = tiny_runs
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-3000:]
    m1 = json.loads((tmp / "run1" / "metrics.json").read_text())
    m2 = json.loads((tmp / "run2" / "metrics.json").read_text())
    assert m2["classifier"]["reused"] is True and m2["classifier"]["trained"] is False
    assert m2["accuracy"] == m1["accuracy"]
    assert m2["classes"] == m1["classes"]
    assert (tmp / "run1" / "classifier.ckpt").read_bytes() == (
        tmp / "run2" / "classifier.ckpt"
    ).read_bytes()


def test_bad_value_exits_2_with_one_line(tmp_path):
    proc = _vislight("logger=none", f"paths.output_dir={tmp_path / 'run'}", "train.epochs=0")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if "train.epochs" in line]
    assert len(lines) == 1, proc.stderr
    assert "train.epochs=0" in lines[0]
    assert not (tmp_path / "run" / "metrics.json").exists()
