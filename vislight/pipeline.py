"""Runs the configured stages of one job, in order, in one run folder.

:func:`validate` checks the whole config before any work: every numeric value against its range
(``vislight/config_ranges.py``), the stage order against what each stage needs
(:data:`vislight.stages.NEEDS`), then each config group's own checks (masks, data, similarity,
specialisation). :func:`execute` then runs the stages (``vislight/stages.py``) on a shared
:class:`~vislight.stages.RunContext`; the CLI (``python -m vislight``) calls :func:`run`, the Python
API (:func:`vislight.api.explain`) calls :func:`execute` with a model and images in memory.

The run folder's layout is :class:`~vislight.run_folder.RunFolder`'s. ``metrics.json`` is rewritten
atomically after every stage, so an interrupted run keeps what it finished. Its contract:
``accuracy`` (test accuracy of the explained classifier on the evaluated split), ``model``,
``dataset``, ``timings`` (seconds per stage), plus ``classes`` (per-class accuracy and image
counts), ``classifier`` (training facts) and ``skipped`` (unusable input files with the reason).
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from vislight.config_ranges import check_ranges
from vislight.data.datamodule import ClassificationDataModule, check_data_root
from vislight.data.parts import TaggingSettings
from vislight.devices import assign_job_device, resolve_device
from vislight.distributed import global_rank
from vislight.errors import ConfigError
from vislight.interrupt import RunInterrupted, stop_on_signals
from vislight.io import write_text
from vislight.loggers import log_metrics, make_loggers
from vislight.masks.optimize import MaskConfig
from vislight.models.classifier import Classifier
from vislight.run_folder import RunFolder
from vislight.specialization.config import validate_specialize
from vislight.stages import ALL_RANK_STAGES, NEEDS, STAGES, RunContext, Settings, model_config
from vislight.summaries.cluster import preference_factors

__all__ = ["ConfigError", "assign_job_device", "execute", "model_config", "run", "validate"]

log = logging.getLogger(__name__)

SIMILARITY_MODES = ("faiss", "dense")


def validate(cfg: DictConfig) -> Settings:
    """Check the config before any heavy work; raises :class:`ConfigError` naming the key.
    Returns the typed config groups the run's stages use, built once here."""
    check_ranges(cfg)
    stages = list(cfg.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(
            f"stages={stages} holds unknown stages {unknown}; available, in order: {list(STAGES)}"
        )
    if stages and stages[0] != "classifier":
        raise ConfigError(
            f"stages={stages} must start with 'classifier' (the other stages need the model)"
        )
    for i, name in enumerate(stages):
        missing = [need for need in NEEDS.get(name, ()) if need not in stages[:i]]
        if missing:
            raise ConfigError(
                f"stages={stages}: {name!r} needs {missing} before it (no stage runs another); "
                f"the full order is {list(STAGES)}"
            )
    masks = tagging = None
    if "masks" in stages:
        try:
            masks = MaskConfig.from_cfg(cfg.masks)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if "summaries" in stages:
        tagging = TaggingSettings.from_cfg(cfg.tagging)
        preference_factors(cfg.cluster)  # one number or a list, each > 0
    if "summaries" in stages and cfg.similarity.mode not in SIMILARITY_MODES:
        raise ConfigError(
            f"similarity.mode={cfg.similarity.mode!r} is invalid: it must be faiss or dense"
        )
    if "groups" in stages or "specialize" in stages:
        validate_specialize(cfg)
    check_data_root(cfg.data)
    return Settings(masks=masks, tagging=tagging)


def run(cfg: DictConfig, output_dir: Path | None = None) -> dict:
    """Run ``cfg.stages`` in order; returns the metrics (also written to ``metrics.json``)."""
    return execute(cfg, output_dir).metrics


def execute(
    cfg: DictConfig,
    output_dir: Path | None = None,
    classifier: Classifier | None = None,
    datamodule: ClassificationDataModule | None = None,
) -> RunContext:
    """Run ``cfg.stages`` in order, optionally on a classifier and data given in memory (the
    Python API); returns the run's context (metrics, summaries, classifier, data, run folder).

    SIGINT / SIGTERM stop the run at the next safe point (:class:`RunInterrupted`); rerunning the
    same config resumes it (trained weights, masks and regions are cached)."""
    settings = validate(cfg)
    run_folder = RunFolder(Path(output_dir or cfg.paths.output_dir))
    run_folder.root.mkdir(parents=True, exist_ok=True)
    if global_rank() == 0:
        write_text(run_folder.config, OmegaConf.to_yaml(cfg, resolve=True))
    ctx = RunContext(
        cfg=cfg,
        run=run_folder,
        device=resolve_device(cfg.device),
        settings=settings,
        classifier=classifier,
        datamodule=datamodule,
    )
    ctx.metrics.update(model=cfg.model.name, dataset=cfg.data.name, accuracy=None, timings={})
    ctx.loggers = make_loggers(cfg) if global_rank() == 0 else []
    name = None
    try:
        with stop_on_signals():  # SIGINT / SIGTERM: stop at the next safe point, resumable
            for name in cfg.stages:
                if name not in ALL_RANK_STAGES and global_rank() != 0:
                    # Multi-device run: the other ranks helped with training and masks; rank 0 goes on.
                    log.info("rank %d: done after the multi-device stages", global_rank())
                    return ctx
                t0 = time.perf_counter()
                log.info("stage %s", name)
                try:
                    STAGES[name](ctx)
                except SIGTERMException:  # Lightning's own stop on SIGTERM (a SystemExit)
                    raise RunInterrupted(signal.SIGTERM) from None
                ctx.metrics["timings"][name] = round(time.perf_counter() - t0, 3)
                ctx.save_metrics()
            log_metrics(ctx.loggers, ctx.metrics)
    except RunInterrupted as stop:
        stop.stage, stop.finished = name, list(ctx.metrics["timings"])
        raise
    finally:
        if ctx.loggers:
            import wandb

            wandb.finish()
    log.info("metrics written to %s", run_folder.metrics)
    return ctx
