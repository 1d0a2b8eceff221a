"""``python -m vislight [experiment=NAME] [overrides]``: the Hydra entry point.

The pipeline (torch, Lightning) is imported inside :func:`main`, after Hydra has composed the
config: ``--help``, an unknown config option, a key that does not exist or a number out of its
range (:mod:`vislight.config_ranges`) answer in about a second, not after the seconds Lightning
takes to import (the pipeline checks the other values).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from vislight import CONF_DIR
from vislight.config_ranges import check_ranges
from vislight.errors import ConfigError

log = logging.getLogger("vislight")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run one job; returns the metric to optimise (``objective`` if configured, else ``accuracy``)."""
    try:  # before torch and Lightning are imported: a number out of range answers at once
        check_ranges(cfg)
    except ConfigError as e:
        _refuse(e)
    from vislight.distributed import global_rank
    from vislight.pipeline import assign_job_device

    # In multirun each job gets its own folder: make paths.output_dir point at it.
    hc = HydraConfig.get()
    with open_dict(cfg):
        cfg.paths.output_dir = hc.runtime.output_dir
        if hc.mode == RunMode.MULTIRUN:
            assign_job_device(cfg, int(hc.job.num))
    metrics = run_or_exit(cfg)
    if global_rank() != 0:  # the other processes of a multi-device run report nothing
        return None
    try:
        return objective_value(metrics, cfg.get("objective") or "accuracy")
    except ConfigError as e:
        _exit(f"error: {e}", 2)


def run_or_exit(cfg: DictConfig) -> dict:
    """``run(cfg)``; a run that cannot go on ends the process with one line on stderr (no
    traceback; ``VISLIGHT_DEBUG=1`` shows it) and the exit code: 2 = a bad config value or input,
    1 = a file the run could not write (full disk, unwritable folder), 130 / 143 = stopped by
    SIGINT / SIGTERM (rerun the same command to resume)."""
    from vislight.interrupt import RunInterrupted
    from vislight.io import WRITE_ERRNOS, WriteError, write_error
    from vislight.models.registry import MissingWeightsError
    from vislight.pipeline import run

    try:
        return run(cfg)
    except RunInterrupted as stop:
        _exit(str(stop), stop.exit_code)
    except (ConfigError, MissingWeightsError, FileNotFoundError, ValueError) as e:
        _refuse(e)
    except OSError as e:
        if os.environ.get("VISLIGHT_DEBUG") or not (
            isinstance(e, WriteError) or e.errno in WRITE_ERRNOS
        ):
            raise
        if not isinstance(e, WriteError):  # a write outside vislight.io (Lightning's checkpoints)
            e = write_error(Path(e.filename or cfg.paths.output_dir), e)
        _exit(f"error: {e}", 1)


def _refuse(error: Exception) -> NoReturn:
    """Exit 2 with one line naming a bad config value or input (``VISLIGHT_DEBUG=1``: re-raise it,
    traceback and all)."""
    if os.environ.get("VISLIGHT_DEBUG"):
        raise error
    _exit(f"error: {error}", 2)


def _exit(message: str, code: int) -> NoReturn:
    log.error("%s", message)
    print(f"vislight: {message}", file=sys.stderr)
    sys.exit(code)


def objective_value(metrics: dict, key: str) -> float:
    """The metric a sweep optimises; NaN when this run has no value for it (Optuna fails the trial)."""
    if key not in metrics:
        numeric = sorted(k for k, v in metrics.items() if isinstance(v, int | float) or v is None)
        raise ConfigError(f"objective={key!r} is not a metrics.json key; use one of {numeric}")
    value = metrics[key]
    return float(value) if isinstance(value, int | float) else float("nan")


if __name__ == "__main__":
    main()
