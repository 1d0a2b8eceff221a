"""vislight: visual summaries of image classifiers."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"
# The configs ship inside the package (``vislight/conf``; the checkout's ``conf/`` links to it).
CONF_DIR = Path(__file__).resolve().parent / "conf"
# Where run folders (``outputs/``) and caches (``.cache/``) go by default: the checkout's root in a
# source tree (editable install), the current folder when vislight is installed as a library.
_CHECKOUT = Path(__file__).resolve().parents[1]
PROJECT_ROOT = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else Path.cwd()


def run_stamp() -> str:
    """Name of a new run folder: the time, or ``slurm-<job>.<step>`` when several SLURM tasks run
    one job step (each task composes its own config; they must agree on the folder)."""
    job, step = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")
    if job and step and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return f"slurm-{job}.{step}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("vislight_root"):
        OmegaConf.register_new_resolver("vislight_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("vislight_run_stamp"):
        OmegaConf.register_new_resolver("vislight_run_stamp", run_stamp)
    if not OmegaConf.has_resolver("not"):
        OmegaConf.register_new_resolver("not", lambda x: not x)


_register_resolvers()


def __getattr__(name: str):
    """``vislight.explain`` and ``vislight.Explanation`` (the Python API, imported on first use)."""
    if name in ("explain", "Explanation"):
        from vislight import api

        return getattr(api, name)
    raise AttributeError(f"module 'vislight' has no attribute {name!r}")
