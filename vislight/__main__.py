"""``python -m vislight [experiment=NAME] [overrides]``: the Hydra entry point."""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vislight import CONF_DIR
from vislight.models.registry import MissingWeightsError
from vislight.pipeline import ConfigError, run

log = logging.getLogger("vislight")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run one job; returns the metric to optimise (``objective`` if configured, else ``accuracy``)."""
    # In multirun each job gets its own folder: make paths.output_dir point at it.
    with open_dict(cfg):
        cfg.paths.output_dir = HydraConfig.get().runtime.output_dir
    try:
        metrics = run(cfg)
    except (ConfigError, MissingWeightsError, FileNotFoundError, ValueError) as e:
        # Bad input or config: one line that names the problem, no traceback (VISLIGHT_DEBUG=1 shows it).
        if os.environ.get("VISLIGHT_DEBUG"):
            raise
        log.error("%s", e)
        print(f"vislight: error: {e}", file=sys.stderr)
        sys.exit(2)
    objective = cfg.get("objective") or "accuracy"
    return metrics.get(objective)


if __name__ == "__main__":
    main()
