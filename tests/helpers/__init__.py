"""What the tests share besides fixtures: Hydra composition of conf/, the ../shared folder, the
tiny pipeline's settings and running ``python -m vislight`` in a subprocess."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import vislight

# Subprocesses (the CLI tests) never log to W&B and run single-threaded.
SUBPROCESS_ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def shared_path() -> Path:
    """Where the read-only real data and weights live (``../shared`` or ``$VISLIGHT_SHARED``)."""
    env = os.environ.get("VISLIGHT_SHARED")
    return Path(env) if env else (vislight.PROJECT_ROOT.parent / "shared").resolve()


def require_shared(*relative: str) -> Path:
    """The shared folder (or a path inside it); skips the calling test when it is absent."""
    root = shared_path()
    path = root.joinpath(*relative)
    if not path.exists():
        pytest.skip(
            f"../shared is absent: {path} not found (set VISLIGHT_SHARED to the shared folder)"
        )
    return root


@cache
def _compose_cached(overrides: tuple[str, ...]) -> DictConfig:
    with initialize_config_dir(config_dir=str(vislight.CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def compose_config(overrides: Sequence[str] = (), tmp: Path | None = None) -> DictConfig:
    """The composed ``conf/config.yaml`` (composed once per overrides; each call gets a copy).

    With ``tmp``, ``paths.output_dir`` and ``train.cache_dir`` point inside it, so that nothing
    is written to the project tree.
    """
    cfg = copy.deepcopy(_compose_cached(tuple(overrides)))
    if tmp is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp / "run")
            cfg.train.cache_dir = str(tmp / "cache")
    return cfg


def compose_job_config(overrides: Sequence[str] = (), tmp: Path | None = None) -> DictConfig:
    """What ``python -m vislight OVERRIDES`` hands to ``run``: the composed config without Hydra's
    own node (see :func:`compose_config` for ``tmp``)."""
    cfg = compose_config(overrides, tmp)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def small_cnn_cfg(arch: str = "resnet_small", num_classes: int = 6, input_size: int = 32, **kw):
    """A ``conf/model`` node for a small CNN, without going through Hydra."""
    return {
        "name": arch,
        "_target_": "vislight.models.zoo.small_cnn",
        "arch": arch,
        "width": kw.pop("width", None),
        "num_classes": num_classes,
        "input_size": input_size,
        "resize_size": None,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "weights_path": None,
        "trusted_checkpoint": False,
        "pretrained": False,
        "feature_layer": None,
        **kw,
    }


# A whole pipeline in a few seconds: 3 classes at 32 px, a briefly trained resnet_small, 6 masked
# images per class with short mask optimisation (3 epochs leave resnet_small at chance: no masks),
# in batches of one class: runs stopped between them resume to the same masks bit for bit.
TINY_PIPELINE = [
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "data.num_classes=3",
    "data.image_size=32",
    "data.train_per_class=80",
    "data.val_per_class=5",
    "data.test_per_class=10",
    "train.epochs=10",
    "masks.images_per_class=6",
    "masks.batch_size=6",  # 3 batches: stops and kills fall between them
    "masks.smooth.iterations=60",
    "masks.sharp.iterations=30",
    "masks.blur_kernel=41",
    "masks.blur_sigma=30",
    "cluster.min_support=2",
]


def tiny_args(out: Path, cache: Path, *extra: str) -> list[str]:
    """CLI arguments of the tiny pipeline writing to ``out`` with the classifier cache ``cache``."""
    return [
        *TINY_PIPELINE,
        "logger=none",
        f"paths.output_dir={out}",
        f"train.cache_dir={cache}",
        *extra,
    ]


def no_partial_files(folder: Path) -> list[Path]:
    """Every result file under ``folder`` is complete (mask and region-set .npz files and .json
    files parse); returns the leftover temporary files of writes cut short (never read: a rerun
    replaces them)."""
    from vislight.masks.cache import MaskCache
    from vislight.run_folder import RunFolder
    from vislight.summaries.regionset import RegionSet

    leftovers = []
    for p in folder.rglob("*"):
        if not p.is_file():
            continue
        if p.name.endswith(".tmp"):
            assert p.name.startswith("."), p
            leftovers.append(p)
        elif p.suffix == ".npz" and RunFolder(folder).regions in p.parents:
            assert RegionSet.load(p, None) is not None, p  # the summaries stage's region cache
        elif p.suffix == ".npz":
            MaskCache.read(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())
    return leftovers


def run_vislight(
    *args: str, timeout: float = 180, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python -m vislight ARGS`` from the project root with W&B off (``env``: more variables);
    output captured."""
    return subprocess.run(
        [sys.executable, "-m", "vislight", *args],
        cwd=vislight.PROJECT_ROOT,
        env={**SUBPROCESS_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_multirun(
    tmp: Path, *overrides: str, cache: Path | None = None
) -> tuple[Path, subprocess.CompletedProcess]:
    """``python -m vislight -m OVERRIDES`` on the tiny pipeline; returns (sweep folder, process)."""
    sweep = tmp / "sweep"
    proc = run_vislight(
        "-m",
        *overrides,
        *TINY_PIPELINE,
        "logger=none",
        f"hydra.sweep.dir={sweep}",
        f"train.cache_dir={cache or tmp / 'cache'}",
        timeout=900,
    )
    return sweep, proc


def popen_vislight(args: Sequence[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """``python -m vislight ARGS`` started in the background (``env``: more variables), its output
    going to ``log``."""
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "vislight", *args],
            cwd=vislight.PROJECT_ROOT,
            env={**SUBPROCESS_ENV, **(env or {})},
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def kill_when(
    proc: subprocess.Popen,
    trigger: Callable[[], bool],
    delay: float,
    timeout: float = 150,
    sig: int = signal.SIGKILL,
) -> bool:
    """Send ``sig`` (SIGKILL) to ``proc`` ``delay`` s after ``trigger()`` first holds and wait for it
    to end. False when it never held (the process ended first, or ``timeout`` s passed: then it is
    killed anyway)."""
    deadline = time.monotonic() + timeout
    while not trigger() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if not trigger():
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        return False
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return True
