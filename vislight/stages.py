"""The stages of a job, each a function of the run's :class:`RunContext`.

A stage reads what earlier stages left in the context (:data:`NEEDS` declares it, and
:func:`vislight.pipeline.validate` refuses another order before any work) and writes its numbers
into ``ctx.metrics``. Algorithms live in their packages; a stage only wires them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vislight.data.datamodule import ClassificationDataModule, build_datamodule
from vislight.data.decoded import decoded_once
from vislight.data.parts import TaggingSettings
from vislight.distributed import global_rank
from vislight.errors import ConfigError
from vislight.evaluation.accuracy import evaluate_accuracy
from vislight.interrupt import StopCallback
from vislight.io import write_json
from vislight.loggers import log_media
from vislight.masks.optimize import MaskConfig
from vislight.masks.stage import run_masks
from vislight.models.classifier import Classifier
from vislight.models.registry import build_classifier
from vislight.run_folder import RunFolder
from vislight.training.fit import classifier_cache_key, fit_or_load_classifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """The typed config groups of a run, built and checked once by
    :func:`vislight.pipeline.validate` (None: no stage of the run uses the group)."""

    masks: MaskConfig | None = None
    tagging: TaggingSettings | None = None


@dataclass
class RunContext:
    """What the stages share within one job."""

    cfg: DictConfig
    run: RunFolder
    device: torch.device
    settings: Settings = field(default_factory=Settings)
    metrics: dict = field(default_factory=dict)
    loggers: list = field(default_factory=list)
    classifier: Classifier | None = None
    datamodule: ClassificationDataModule | None = None
    # Predicted and true labels of the evaluated split, by dataset index (set by `evaluate`).
    predictions: list[int] | None = None
    labels: list[int] | None = None
    # Cached mask files of the explained images, per class (set by `masks`).
    mask_files: dict[str, list[tuple[int, Path]]] | None = None
    # Groups of confused classes (class indices) to specialise on (set by `groups`).
    groups: list[list[int]] | None = None
    # The content of summaries.json (set by `summaries`; later stages read it from here).
    summaries: dict | None = None

    def save_metrics(self) -> None:
        if global_rank() == 0:  # one writer under a multi-device strategy
            write_json(self.run.metrics, self.metrics)


def model_config(cfg: DictConfig, num_classes: int | None = None) -> dict:
    model = OmegaConf.to_container(cfg.model, resolve=True)
    if model.get("num_classes") is None:
        model["num_classes"] = num_classes
    return model


def check_class_names(cfg: DictConfig, dm: ClassificationDataModule) -> None:
    """The class names the config lists (``masks.classes``, ``specialize.groups``) must be classes
    of the evaluated data."""
    named = {"masks.classes": cfg.masks.get("classes") if "masks" in cfg.stages else None}
    if "groups" in cfg.stages and cfg.specialize.get("groups"):
        named["specialize.groups"] = [c for g in cfg.specialize.groups for c in g]
    for key, wanted in named.items():
        unknown = [c for c in wanted or [] if c not in dm.classes]
        if unknown:
            raise ConfigError(
                f"{key}={list(wanted)} lists {unknown}, which are not classes of "
                f"{dm.name}; its classes: {[c for c in dm.classes if not c.isdigit()][:20]}"
            )


def stage_classifier(ctx: RunContext) -> None:
    """Build the explained classifier and its data; train it (or reuse the cached training).

    A classifier or datamodule already in ``ctx`` (given through the Python API,
    :func:`vislight.api.explain`) is used as it is."""
    cfg = ctx.cfg
    model_cfg = model_config(cfg)
    dm = ctx.datamodule or build_datamodule(
        cfg.data, input_size=model_cfg["input_size"], resize_size=model_cfg.get("resize_size")
    )
    dm.setup("test")
    check_class_names(cfg, dm)  # before any training or evaluation
    ctx.datamodule = dm
    if ctx.classifier is not None:
        ctx.classifier = ctx.classifier.to(ctx.device).eval()
        ctx.metrics["classifier"] = {"trained": False, "reused": False, "given": True}
        return
    if model_cfg["num_classes"] is None:
        model_cfg["num_classes"] = len(dm.classes)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # same random init on every rank
    classifier = build_classifier(model_cfg)  # fails early on missing weights
    new_head = getattr(classifier.net, "vislight_new_head", None)
    if new_head and not cfg.train.enabled:
        raise ConfigError(
            f"the checkpoint's head {new_head!r} has another class count than model.num_classes="
            f"{model_cfg['num_classes']}: it was replaced by a random one, and an untrained head "
            "cannot be explained. Train it first (train.enabled=true train.trainable=head), or "
            "set model.num_classes to the checkpoint's"
        )
    info: dict = {"trained": False, "reused": False}
    if cfg.train.enabled:
        key = classifier_cache_key(
            model_cfg,
            OmegaConf.to_container(cfg.data, resolve=True),
            OmegaConf.to_container(cfg.train, resolve=True),
            cfg.seed,
            OmegaConf.to_container(cfg.trainer, resolve=True),
        )
        cache = Path(cfg.train.cache_dir) / f"{model_cfg['name']}-{cfg.data.name}-{key}"

        def make_trainer(callbacks):
            return instantiate(
                cfg.trainer, callbacks=[*callbacks, StopCallback()], logger=ctx.loggers or False
            )

        info = fit_or_load_classifier(classifier, dm, cfg.train, cache, make_trainer, ctx.run)
    ctx.classifier = classifier.to(ctx.device).eval()
    ctx.metrics["classifier"] = info


def stage_evaluate(ctx: RunContext) -> None:
    """Test accuracy of the explained classifier on the evaluated split."""
    dm = ctx.datamodule
    dm.setup("test")
    result = evaluate_accuracy(ctx.classifier, dm.test_dataloader(), ctx.device, dm.classes)
    ctx.metrics["accuracy"] = result["accuracy"]
    ctx.metrics["test_images"] = result["images"]
    # the classifier's outputs, in order (outputs the data does not name: their index)
    outputs = int(getattr(ctx.classifier, "num_classes", None) or len(dm.classes))
    ctx.metrics["class_names"] = [*dm.classes, *map(str, range(len(dm.classes), outputs))]
    ctx.metrics["classes"] = {**ctx.metrics.get("classes", {}), **result["classes"]}
    ctx.metrics["skipped"] = dm.skipped
    ctx.predictions, ctx.labels = result["predictions"], result["labels"]
    log.info(
        "test accuracy of %s on %s: %.4f (%d images)",
        ctx.cfg.model.name,
        dm.name,
        result["accuracy"],
        result["images"],
    )


def stage_masks(ctx: RunContext) -> None:
    """Crisp masks of the correctly classified images of each class (cached, resumable). From here
    on the explained images are decoded from their files once (:func:`decoded_once`)."""
    dm = ctx.datamodule
    dm.test_set = decoded_once(dm.test_set)
    masks_cfg = ctx.cfg.masks
    if ctx.groups is not None:  # specialisation: the classes of the groups only
        masks_cfg = OmegaConf.merge(
            masks_cfg, {"classes": [dm.classes[c] for g in ctx.groups for c in g]}
        )
    section = run_masks(
        ctx.classifier,
        dm.test_set,
        ctx.labels,
        ctx.predictions,
        dm.classes,
        masks_cfg,
        ctx.cfg.trainer,
        ctx.run,
        mask_config=ctx.settings.masks,
    )
    ctx.mask_files = section.pop("files")
    per_class = section.pop("per_class")
    ctx.metrics["mask"] = section
    for name, values in per_class.items():
        ctx.metrics.setdefault("classes", {}).setdefault(name, {}).update(values)
    log.info(
        "masks: %d masked (%d reused), mean drop %.3f, area %.3f, binarisation %.3f",
        section["masked"],
        section["reused"],
        section["mean_drop"] or float("nan"),
        section["mean_area"] or float("nan"),
        section["binarization"] or float("nan"),
    )


def stage_summaries(ctx: RunContext) -> None:
    """Regions, similarity graph, affinity propagation and pruning per class; tags where known."""
    from vislight.summaries.stage import run_summaries  # faiss, OpenCV: only when needed

    dm = ctx.datamodule
    files = {name: items for name, items in ctx.mask_files.items() if items}
    targets = {name: int(ctx.labels[items[0][0]]) for name, items in files.items()}
    baseline_summaries: dict = {}
    summaries, metrics = run_summaries(
        ctx.classifier,
        dm.test_set,
        files,
        targets,
        ctx.cfg,
        ctx.device,
        cache_dir=ctx.run.regions,
        tagging=ctx.settings.tagging,
        baseline_summaries=baseline_summaries,
    )
    write_json(ctx.run.summaries, summaries)
    for name, content in baseline_summaries.items():
        write_json(ctx.run.baseline_summaries(name), content)
    ctx.summaries = summaries
    for name, values in metrics.pop("classes").items():
        ctx.metrics.setdefault("classes", {}).setdefault(name, {}).update(values)
    ctx.metrics.update(metrics)
    # the layer the region descriptors read (found automatically when the config leaves it null)
    ctx.metrics["feature_layer"] = ctx.classifier.feature_layer_name(
        ctx.cfg.similarity.get("layer")
    )
    log.info(
        "summaries: mean %.2f per class, mean purity %s, background share %s, part recall %s",
        metrics["mean_summaries"],
        metrics["mean_purity"],
        metrics["background_share"],
        metrics["part_recall"],
    )


def stage_groups(ctx: RunContext) -> None:
    """The groups of classes to specialise on: ``specialize.groups`` (class names), or the
    ``specialize.num_groups`` groups of ``specialize.group_size`` classes the base model confuses
    most on ``specialize.groups_split`` (val, or the evaluated split when cross-fitting; soft
    confusion). Later stages explain these classes only."""
    from vislight.specialization.stage import choose_groups, layer_names

    cfg, dm = ctx.cfg.specialize, ctx.datamodule
    for name in layer_names(cfg.get("layer")):  # a misnamed layer fails before the masks
        try:
            ctx.classifier.feature_module(name)
        except ValueError as e:
            raise ConfigError(f"specialize.layer: {e}") from None
    dm.setup("fit")
    dm.setup("test")
    if cfg.get("groups"):  # names checked by `evaluate`
        groups = [sorted(dm.classes.index(c) for c in g) for g in cfg.groups]
        confusion = None
    else:
        choose_on = dm.test_set if cfg.get("groups_split", "val") == "evaluated" else dm.val_set
        groups, confusion = choose_groups(
            ctx.classifier,
            choose_on,
            len(dm.classes),
            int(cfg.num_groups),
            int(cfg.group_size),
            ctx.device,
        )
    if not groups:
        raise ConfigError(
            f"no group of {cfg.group_size} classes found among the {len(dm.classes)} classes "
            f"of {dm.name}: lower specialize.group_size or name specialize.groups"
        )
    ctx.groups = groups
    section = ctx.metrics.setdefault("specialization", {})
    section["chosen_groups"] = [[dm.classes[c] for c in g] for g in groups]
    split = "the evaluated split" if cfg.get("groups_split", "val") == "evaluated" else "val"
    section["groups_from"] = (
        "specialize.groups" if confusion is None else f"soft confusion on {split}"
    )
    if confusion is not None:
        section["group_confusion"] = [
            float(confusion[np.ix_(g, g)].sum() - np.trace(confusion[np.ix_(g, g)])) for g in groups
        ]
    log.info("groups to specialise on: %s", section["chosen_groups"])


def stage_specialize(ctx: RunContext) -> None:
    """Summary-prototype heads vs k-means-prototype heads vs head fine-tuning, per group, over
    ``specialize.seeds``, measured on the held-out ``specialize.heldout_split``."""
    from vislight.specialization.stage import specialize_group, summarize_groups

    cfg, dm = ctx.cfg.specialize, ctx.datamodule
    summaries = ctx.summaries["classes"]  # this run's (see validate)
    heldout = dm.split_set(cfg.heldout_split)
    if cfg.get("heads_split", "train") == "evaluated":  # cross-fitting: the summaries' images
        heads_on = dm.test_set
    else:
        dm.setup("fit")
        heads_on = dm.train_set
    groups = [
        specialize_group(
            ctx.classifier, g, dm.classes, summaries, dm.test_set, heads_on, heldout,
            OmegaConf.to_container(cfg, resolve=True), ctx.device,
        )
        for g in ctx.groups
    ]  # fmt: skip
    section = ctx.metrics.setdefault("specialization", {})
    section.update(
        heldout_split=cfg.heldout_split,
        seeds=list(cfg.seeds),
        groups=groups,
        overall=summarize_groups(groups, list(cfg.seeds)),
    )
    overall = section["overall"]
    if "specialized" in overall:
        log.info(
            "specialisation over %d groups (%d held-out images): base %.4f, specialised %.4f±%.4f,"
            " k-means control %.4f±%.4f, head fine-tuning %.4f±%.4f; beats all by > std: %s",
            overall["specialized_groups"], overall["heldout_images"], overall["base"],
            overall["specialized"]["mean"], overall["specialized"]["std"],
            overall["kmeans_control"]["mean"], overall["kmeans_control"]["std"],
            overall["head_control"]["mean"], overall["head_control"]["std"], overall["beats_all"],
        )  # fmt: skip


def stage_report(ctx: RunContext) -> None:
    """Static HTML report (report/index.html, report/masks.html) from summaries.json and the masks."""
    from vislight.report.html import write_report

    out = write_report(
        ctx.run,
        ctx.datamodule.test_set,
        ctx.summaries,
        ctx.metrics,
        ctx.run.config.read_text(),
        ctx.mask_files,
        max_members=int(ctx.cfg.report.max_members),
        max_masks=int(ctx.cfg.report.max_masks),
    )
    ctx.metrics["report"] = str(out["index"])
    log_media(ctx.loggers, ctx.summaries, out)
    log.info("report: %s", out["index"])


STAGES: dict[str, Callable[[RunContext], None]] = {
    "classifier": stage_classifier,
    "evaluate": stage_evaluate,
    "groups": stage_groups,
    "masks": stage_masks,
    "summaries": stage_summaries,
    "specialize": stage_specialize,
    "report": stage_report,
}


# What each stage reads from the stages before it (validate refuses another order before any work).
NEEDS: dict[str, tuple[str, ...]] = {
    "evaluate": ("classifier",),
    "groups": ("classifier",),
    "masks": ("evaluate",),
    "summaries": ("masks",),
    "specialize": ("groups", "masks", "summaries"),
    "report": ("summaries",),
}

# Stages every process of a multi-device run takes part in (the later ones run on rank 0 alone).
ALL_RANK_STAGES = ("classifier", "evaluate", "groups", "masks")
