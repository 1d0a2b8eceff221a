"""``python -m vislight``: help, an end-to-end tiny run, cache reuse and config errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import SUBPROCESS_ENV, run_vislight

import vislight


def _vislight(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return run_vislight(*args, timeout=timeout)


def test_help_lists_the_experiments():
    proc = _vislight("--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    experiments = next(line for line in proc.stdout.splitlines() if line.startswith("experiment:"))
    for name in ("synth_summaries", "cifar_resnet_eval", "imagenet_examples_eval"):
        assert name in experiments
    assert "Usage: python -m vislight" in proc.stdout


@pytest.mark.parametrize(
    ("arg", "exit_code"),
    [
        ("--help", 0),
        ("model=bogus", 1),
        ("masks.smooth.lr=-1", 2),
        ("cluster.preference_factor=[1,-2]", 2),
    ],
)
def test_help_an_unknown_option_and_a_bad_number_answer_without_importing_the_pipeline(
    arg, exit_code, tmp_path
):
    """Hydra answers the first two before ``main`` runs, and ``main`` checks the numbers' ranges
    first: torch and Lightning (seconds to import) are never loaded."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['vislight', {arg!r}, {f'paths.output_dir={tmp_path}/run'!r}]\n"
        "try:\n"
        "    runpy.run_module('vislight', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "heavy = [m for m in ('torch', 'pytorch_lightning') if m in sys.modules]\n"
        "print('exit', code, 'imported', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=vislight.PROJECT_ROOT,
        # HYDRA_FULL_ERROR=1 would raise the unknown option instead of exiting
        env={k: v for k, v in SUBPROCESS_ENV.items() if k != "HYDRA_FULL_ERROR"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    last = (proc.stderr.splitlines() or [""])[-1]
    assert last == f"exit {exit_code} imported []", proc.stderr[-2000:]
    if exit_code == 2:  # one line naming the key, no traceback
        assert f"vislight: error: {arg.split('=')[0]}" in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


def test_tiny_run_writes_the_run_folder(tiny_cli_runs):
    tmp, first, _ = tiny_cli_runs
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp / "run1"
    metrics = json.loads((run / "metrics.json").read_text())
    assert isinstance(metrics["accuracy"], float) and 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["model"] == "resnet_small" and metrics["dataset"] == "synth"
    assert set(metrics["timings"]) == {"classifier", "evaluate", "masks", "summaries", "report"}
    assert all(t >= 0 for t in metrics["timings"].values())
    assert metrics["test_images"] == 30
    # every network pass an image costs: its iterations (at most TINY_PIPELINE's 60 + 30; early
    # stopping, on by default, ends most images sooner) and 3 scoring passes
    mask = metrics["mask"]
    assert 20 < mask["mean_iterations"] < 90 and mask["mean_passes"] == mask["mean_iterations"] + 3
    assert metrics["classifier"]["trained"] is True and metrics["classifier"]["reused"] is False
    assert len(metrics["classes"]) == 3 and all(
        "accuracy" in c for c in metrics["classes"].values()
    )
    config = (run / "config.yaml").read_text()
    assert "train_per_class: 80" in config and str(run) in config
    assert (run / "classifier.ckpt").stat().st_size > 0
    assert (tmp / "cache").is_dir()


def test_second_run_reuses_the_classifier(tiny_cli_runs):
    tmp, first, second = tiny_cli_runs
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-3000:]
    m1 = json.loads((tmp / "run1" / "metrics.json").read_text())
    m2 = json.loads((tmp / "run2" / "metrics.json").read_text())
    assert m2["classifier"]["reused"] is True and m2["classifier"]["trained"] is False
    assert m2["accuracy"] == m1["accuracy"]
    assert m2["classes"] == m1["classes"]
    assert m2["mask"]["computed"] == m1["mask"]["computed"] > 0  # a new run folder: new masks
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
