"""Hyperparameter sweeps and launchers: a small Optuna sweep returns its objective, the objective
must be a metrics key, the launcher configs compose, and multirun jobs spread over GPUs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from helpers import TINY_PIPELINE, compose_config, run_vislight, tiny_multirun
from omegaconf import open_dict

from vislight.__main__ import objective_value
from vislight.pipeline import ConfigError, assign_job_device


@pytest.mark.slow  # end-to-end study: an Optuna sweep (make test-all)
def test_small_optuna_sweep_returns_the_objective(tmp_path, tiny_cache, tiny_reference):
    # TINY_PIPELINE fixes cluster.min_support=2: the tiny world has 6 images per class
    sweep, proc = tiny_multirun(
        tmp_path, "hparams_search=synth_purity", "hydra.sweeper.n_trials=3", cache=tiny_cache
    )  # the session's trained classifier (tiny_reference trains it)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    purities = []
    for k in range(3):
        metrics = json.loads((sweep / str(k) / "metrics.json").read_text())
        if metrics["mean_purity"] is not None:
            purities.append(metrics["mean_purity"])
    # Optuna reports the best of what main() returned: the jobs' mean purity
    assert purities and results["best_value"] == pytest.approx(max(purities))
    swept = {"masks.smooth.l1", "masks.sharp.l1", "cluster.preference_factor", "similarity.w_xy"}
    assert swept <= set(results["best_params"])
    configs = [yaml.safe_load((sweep / str(k) / "config.yaml").read_text()) for k in range(3)]
    assert len({c["masks"]["sharp"]["l1"] for c in configs}) == 3  # trials differ
    assert all(c["cluster"]["min_support"] == 2 for c in configs)


def test_objective_must_be_a_metrics_key(tmp_path):
    assert objective_value({"accuracy": 0.5}, "accuracy") == 0.5
    assert math.isnan(objective_value({"mean_purity": None}, "mean_purity"))
    with pytest.raises(ConfigError, match=r"objective='purity' .* \['accuracy', 'mean_purity'\]"):
        objective_value({"accuracy": 0.5, "mean_purity": None, "classes": {}}, "purity")
    proc = run_vislight(
        "objective=purity",
        "stages=[classifier,evaluate]",
        *TINY_PIPELINE,
        "logger=none",
        f"paths.output_dir={tmp_path / 'run'}",
        f"train.cache_dir={tmp_path / 'cache'}",
    )
    assert proc.returncode == 2
    assert "objective='purity' is not a metrics.json key" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()  # the finished stages are kept


@pytest.mark.parametrize(
    ("launcher", "target", "keys"),
    [
        ("local_parallel", "joblib_launcher.JoblibLauncher", {"n_jobs": 2}),
        ("slurm", "submitit_launcher.SlurmLauncher", {"gpus_per_node": 1, "tasks_per_node": 1}),
    ],
)
def test_launcher_configs_compose(launcher, target, keys):
    cfg = compose_config([f"hydra/launcher={launcher}", "experiment=compare_synth"])
    node = cfg.hydra.launcher
    assert node._target_.endswith(target)
    for k, v in keys.items():
        assert node[k] == v
    assert cfg.hydra.callbacks.compare._target_ == "vislight.compare.CompareCallback"


def test_multirun_jobs_spread_over_gpus(monkeypatch):
    cfg = compose_config()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with open_dict(cfg):
        assign_job_device(cfg, 5)
    assert (cfg.device, list(cfg.trainer.devices), cfg.trainer.accelerator) == (
        "cuda:1",
        [1],
        "gpu",
    )
    for overrides in (["trainer=ddp"], ["device=cpu"]):
        cfg = compose_config(overrides)
        before = (cfg.device, cfg.trainer.devices)
        with open_dict(cfg):
            assign_job_device(cfg, 5)
        assert (cfg.device, cfg.trainer.devices) == before
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = compose_config()
    with open_dict(cfg):
        assign_job_device(cfg, 3)
    assert cfg.device == "auto"


def test_every_searched_parameter_is_a_config_key():
    from omegaconf import OmegaConf

    cfg = compose_config(["hparams_search=synth_purity"])
    params = cfg.hydra.sweeper.params
    assert params and cfg.objective == "mean_purity"
    for key in params:
        assert OmegaConf.select(cfg, key) is not None, key
