"""Shared fixtures: offline W&B, the ../shared folder, the tiny pipeline run once per session.
Helpers the tests import live in ``tests/helpers``."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

# Before anything imports wandb / Lightning loggers: never log anywhere from the tests.
os.environ["WANDB_MODE"] = "disabled"

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import (  # noqa: E402
    TINY_PIPELINE,
    compose_config,
    require_shared,
    run_vislight,
    tiny_args,
)
from omegaconf import DictConfig, open_dict  # noqa: E402

# The suite runs many tiny convolutions; with 2 cores shared with other processes, OpenMP's
# spinning threads make a multi-threaded step 10-20x slower than a single-threaded one.
torch.set_num_threads(1)


@pytest.fixture
def shared_dir() -> Path:
    return require_shared()


@pytest.fixture
def make_cfg(tmp_path) -> Callable[..., DictConfig]:
    """``make_cfg(*overrides)``: a composed config writing under this test's tmp_path."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(overrides, tmp_path)

    return make


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """``train.cache_dir`` shared by the whole test run: the tiny pipeline's classifier is trained
    once (by :func:`tiny_reference`) and reused by every test that passes this folder."""
    return tmp_path_factory.mktemp("tiny_cache")


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory, tiny_cache) -> Path:
    """The run folder of one uninterrupted tiny pipeline (every stage of the default job, in this
    process): its trained classifier is cached in ``tiny_cache``; its masks, summaries.json and
    report are the reference that reruns, resumed and interrupted runs are compared with."""
    from vislight.pipeline import run

    out = tmp_path_factory.mktemp("tiny_reference") / "run"
    cfg = compose_config([*TINY_PIPELINE, "logger=none"])
    with open_dict(cfg):
        del cfg["hydra"]  # what @hydra.main hands to the task function
        cfg.paths.output_dir = str(out)
        cfg.train.cache_dir = str(tiny_cache)
        cfg.masks.cache_dir = str(out / "masks")
    run(cfg, out)
    assert json.loads((out / "summaries.json").read_text())["classes"], "no summary"
    return out


@pytest.fixture(scope="session")
def tiny_cli_runs(
    tmp_path_factory,
) -> tuple[Path, subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """The tiny pipeline through ``python -m vislight`` twice with one fresh classifier cache
    (``tmp/cache``): ``run1`` trains its own classifier, ``run2`` reuses it."""
    tmp = tmp_path_factory.mktemp("cli")
    first = run_vislight(*tiny_args(tmp / "run1", tmp / "cache"))
    second = run_vislight(*tiny_args(tmp / "run2", tmp / "cache"))
    return tmp, first, second
