"""``python -m vislight [experiment=NAME] [overrides]``: the Hydra entry point."""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from vislight import CONF_DIR
from vislight.distributed import global_rank
from vislight.models.registry import MissingWeightsError
from vislight.pipeline import ConfigError, assign_job_device, run

log = logging.getLogger("vislight")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run one job; returns the metric to optimise (``objective`` if configured, else ``accuracy``)."""
    # In multirun each job gets its own folder: make paths.output_dir point at it.
    hc = HydraConfig.get()
    with open_dict(cfg):
        cfg.paths.output_dir = hc.runtime.output_dir
        if hc.mode == RunMode.MULTIRUN:
            assign_job_device(cfg, int(hc.job.num))
    try:
        metrics = run(cfg)
        if global_rank() != 0:  # the other processes of a multi-device run report nothing
            return None
        return objective_value(metrics, cfg.get("objective") or "accuracy")
    except (ConfigError, MissingWeightsError, FileNotFoundError, ValueError) as e:
        # Bad input or config: one line that names the problem, no traceback (VISLIGHT_DEBUG=1 shows it).
        if os.environ.get("VISLIGHT_DEBUG"):
            raise
        log.error("%s", e)
        print(f"vislight: error: {e}", file=sys.stderr)
        sys.exit(2)


def objective_value(metrics: dict, key: str) -> float:
    """The metric a sweep optimises; NaN when this run has no value for it (Optuna fails the trial)."""
    if key not in metrics:
        numeric = sorted(k for k, v in metrics.items() if isinstance(v, int | float) or v is None)
        raise ConfigError(f"objective={key!r} is not a metrics.json key; use one of {numeric}")
    value = metrics[key]
    return float(value) if isinstance(value, int | float) else float("nan")


if __name__ == "__main__":
    main()
