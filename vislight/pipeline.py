"""Runs the configured stages of one job and owns the run-folder layout.

Run folder (``paths.output_dir``): ``config.yaml`` (the composed config), ``classifier.ckpt`` (the
explained weights, when trained), ``metrics.json`` (rewritten atomically after every stage, so an
interrupted run keeps what it finished), ``summaries/regions/<source>/<class>.npz`` (each class's
measured regions, re-used when only clustering settings change), ``wandb/`` (offline W&B run).

``metrics.json`` contract: ``accuracy`` (test accuracy of the explained classifier on the evaluated
split), ``model``, ``dataset``, ``timings`` (seconds per stage), plus ``classes`` (per-class
accuracy and image counts), ``classifier`` (training facts) and ``skipped`` (unusable input files
with the reason).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from vislight.config_ranges import check_ranges
from vislight.data.datamodule import ClassificationDataModule, build_datamodule
from vislight.data.folder import IMAGE_FOLDER_EXAMPLE, require_folder
from vislight.data.imagenet import check_synset_folder, resolve_classes
from vislight.distributed import global_rank, local_rank
from vislight.errors import ConfigError
from vislight.evaluation.accuracy import evaluate_accuracy
from vislight.interrupt import RunInterrupted, StopCallback, stop_on_signals
from vislight.io import write_json, write_text
from vislight.masks.optimize import MaskConfig
from vislight.masks.stage import run_masks
from vislight.models.classifier import Classifier
from vislight.models.registry import build_classifier
from vislight.training.fit import classifier_cache_key, fit_or_load_classifier

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What the stages share within one job."""

    cfg: DictConfig
    output_dir: Path
    device: torch.device
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

    def save_metrics(self) -> None:
        if global_rank() == 0:  # one writer under a multi-device strategy
            write_json(self.output_dir / "metrics.json", self.metrics)


def assign_job_device(cfg: DictConfig, job_num: int) -> None:
    """Multirun jobs on a machine with several GPUs: job k takes GPU k mod count (for the stages
    and the Lightning trainer). Leaves explicit devices and multi-device strategies alone."""
    count = torch.cuda.device_count()
    if count < 2 or cfg.device != "auto" or cfg.trainer.get("strategy") not in (None, "auto"):
        return
    index = job_num % count
    cfg.device = f"cuda:{index}"
    cfg.trainer.accelerator = "gpu"
    cfg.trainer.devices = [index]


def resolve_device(name: str) -> torch.device:
    """``auto`` = this process's GPU (``cuda:LOCAL_RANK``) when one is visible, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{local_rank() % torch.cuda.device_count()}")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={name!r} but no CUDA device is visible: use device=cpu or device=auto"
        )
    return dev


def validate(cfg: DictConfig) -> None:
    """Check the config before any heavy work: every numeric value against its declared range
    (``vislight/config_ranges.py``), then the choices and combinations a user may get wrong."""
    check_ranges(cfg)
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(
            f"stages={list(cfg.stages)} holds unknown stages {unknown}; available, in order: {list(STAGES)}"
        )
    if cfg.stages and cfg.stages[0] != "classifier":
        raise ConfigError(
            f"stages={list(cfg.stages)} must start with 'classifier' (the other stages need the model)"
        )
    if "masks" in cfg.stages:
        try:
            MaskConfig.from_cfg(cfg.masks)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    checks = []
    if "summaries" in cfg.stages:
        checks.append(
            (
                "similarity.mode",
                cfg.similarity.mode,
                lambda v: v in ("faiss", "dense"),
                "faiss or dense",
            )
        )
    if "groups" in cfg.stages or "specialize" in cfg.stages:
        for key, (ok, allowed) in {
            "specialize.seeds": (
                lambda v: len(v) >= 1 and all(isinstance(x, int) for x in v),
                "a non-empty list of integers",
            ),
            "specialize.groups": (
                lambda v: v is None or all(not isinstance(g, str) and len(g) >= 2 for g in v),
                "null or a list of groups of >= 2 class names, e.g. [[a,b],[c,d]]",
            ),
        }.items():
            checks.append((key, OmegaConf.select(cfg, key), ok, allowed))
        if "specialize" in cfg.stages:
            _validate_specialize(cfg)
    if cfg.data.kind in ("folder", "csv", "cub", "imagenet"):
        root = cfg.data.get("root")
        if not root:
            example = (
                "/path/to/ILSVRC2012/val (a folder of ImageNet synset folders n01440764/ ...)"
                if cfg.data.kind == "imagenet"
                else IMAGE_FOLDER_EXAMPLE
            )
            raise ConfigError(f"data.root is not set: pass data.root={example}")
        try:
            if cfg.data.kind == "imagenet":  # the synset folders of every requested class
                check_synset_folder(root, resolve_classes(cfg.data.get("classes") or range(1000)))
            else:
                require_folder(root, "data.root", IMAGE_FOLDER_EXAMPLE)
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from None
    for key, value, ok, allowed in checks:
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"{key}={value!r} is invalid: it must be {allowed}")


# Held-out splits specialisation can measure on, per data kind. The heads train on `train` and the
# groups come from `val`, so only `test` is unseen (synth's `val` too when specialize.groups names
# the groups).
_HELDOUT_SPLITS = {"synth": ("test", "val"), "cub": ("test",)}


def _validate_specialize(cfg: DictConfig) -> None:
    stages = list(cfg.stages)
    order = [s for s in stages if s in ("groups", "masks", "summaries", "specialize")]
    if order != ["groups", "masks", "summaries", "specialize"]:
        raise ConfigError(
            f"stages={stages}: 'specialize' needs 'groups', 'masks' and 'summaries' before it, in "
            "that order (e.g. [classifier, evaluate, groups, masks, summaries, specialize, report])"
        )
    kind, heldout = cfg.data.kind, cfg.specialize.heldout_split
    if kind not in _HELDOUT_SPLITS:
        raise ConfigError(
            f"data.kind={kind!r} has no named held-out split: specialisation runs on data=synth or "
            "a CUB config (data=cub40)"
        )
    allowed = _HELDOUT_SPLITS[kind]
    if kind == "synth" and heldout == "val" and not cfg.specialize.get("groups"):
        allowed = ("test",)  # val chooses the groups
    if heldout not in allowed:
        raise ConfigError(
            f"specialize.heldout_split={heldout!r} is invalid: it must be one of {list(allowed)} "
            "(the heads train on train, the groups come from val unless specialize.groups names them)"
        )
    evaluated = cfg.data.get("split", "test")
    if evaluated in (heldout, "all"):
        raise ConfigError(
            f"specialize.heldout_split={heldout!r} is the split the summaries come from "
            f"(data.split={evaluated!r}): set data.split=train so the held-out split stays unseen"
        )


def _model_cfg(cfg: DictConfig, num_classes: int | None = None) -> dict:
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
    """Build the explained classifier and its data; train it (or reuse the cached training)."""
    cfg = ctx.cfg
    model_cfg = _model_cfg(cfg)
    dm = build_datamodule(
        cfg.data, input_size=model_cfg["input_size"], resize_size=model_cfg.get("resize_size")
    )
    dm.setup("test")
    check_class_names(cfg, dm)  # before any training or evaluation
    if model_cfg["num_classes"] is None:
        model_cfg["num_classes"] = len(dm.classes)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # same random init on every rank
    classifier = build_classifier(model_cfg)  # fails early on missing weights
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

        info = fit_or_load_classifier(
            classifier, dm, cfg.train, cache, make_trainer, ctx.output_dir
        )
    ctx.classifier = classifier.to(ctx.device).eval()
    ctx.datamodule = dm
    ctx.metrics["classifier"] = info


def stage_evaluate(ctx: RunContext) -> None:
    """Test accuracy of the explained classifier on the evaluated split."""
    dm = ctx.datamodule
    dm.setup("test")
    result = evaluate_accuracy(ctx.classifier, dm.test_dataloader(), ctx.device, dm.classes)
    ctx.metrics["accuracy"] = result["accuracy"]
    ctx.metrics["test_images"] = result["images"]
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
    """Crisp masks of the correctly classified images of each class (cached, resumable)."""
    if ctx.predictions is None:
        stage_evaluate(ctx)
    dm = ctx.datamodule
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
        ctx.output_dir,
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

    if ctx.mask_files is None:
        raise ConfigError("stages: 'summaries' needs the 'masks' stage before it")
    dm = ctx.datamodule
    files = {name: items for name, items in ctx.mask_files.items() if items}
    targets = {name: int(ctx.labels[items[0][0]]) for name, items in files.items()}
    summaries, metrics = run_summaries(
        ctx.classifier,
        dm.test_set,
        files,
        targets,
        ctx.cfg,
        ctx.device,
        cache_dir=ctx.output_dir / "summaries" / "regions",
    )
    write_json(ctx.output_dir / "summaries.json", summaries)
    for name, values in metrics.pop("classes").items():
        ctx.metrics.setdefault("classes", {}).setdefault(name, {}).update(values)
    ctx.metrics.update(metrics)
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
    most on the val split (soft confusion). Later stages explain these classes only."""
    from vislight.specialization.stage import choose_groups

    cfg, dm = ctx.cfg.specialize, ctx.datamodule
    dm.setup("fit")
    dm.setup("test")
    if cfg.get("groups"):  # names checked by `evaluate`
        groups = [sorted(dm.classes.index(c) for c in g) for g in cfg.groups]
        confusion = None
    else:
        groups, confusion = choose_groups(
            ctx.classifier,
            dm.val_set,
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
    section["groups_from"] = "specialize.groups" if confusion is None else "soft confusion on val"
    if confusion is not None:
        section["group_confusion"] = [
            float(confusion[np.ix_(g, g)].sum() - np.trace(confusion[np.ix_(g, g)])) for g in groups
        ]
    log.info("groups to specialise on: %s", section["chosen_groups"])


def stage_specialize(ctx: RunContext) -> None:
    """Summary-prototype heads vs k-means-prototype heads vs head fine-tuning, per group, over
    ``specialize.seeds``, measured on the held-out ``specialize.heldout_split``."""
    from vislight.specialization.stage import specialize_group, summarize_groups

    summaries_file = ctx.output_dir / "summaries.json"  # written by this run (see validate)
    cfg, dm = ctx.cfg.specialize, ctx.datamodule
    summaries = json.loads(summaries_file.read_text())["classes"]
    heldout = dm.split_set(cfg.heldout_split)
    groups = [
        specialize_group(
            ctx.classifier, g, dm.classes, summaries, dm.test_set, dm.train_set, heldout,
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

    summaries_file = ctx.output_dir / "summaries.json"
    if not summaries_file.is_file():
        raise ConfigError("stages: 'report' needs the 'summaries' stage before it")
    out = write_report(
        ctx.output_dir,
        ctx.datamodule.test_set,
        json.loads(summaries_file.read_text()),
        ctx.metrics,
        (ctx.output_dir / "config.yaml").read_text(),
        ctx.mask_files,
        max_members=int(ctx.cfg.report.max_members),
        max_masks=int(ctx.cfg.report.max_masks),
    )
    ctx.metrics["report"] = str(out["index"])
    log_media(ctx.loggers, json.loads(summaries_file.read_text()), out)
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


# Stages every process of a multi-device run takes part in (the later ones run on rank 0 alone).
ALL_RANK_STAGES = ("classifier", "evaluate", "groups", "masks")


def log_media(loggers: list, summaries: dict, report: dict, max_masks: int = 16) -> None:
    """W&B media: summary mosaics and example masks as images, and a table of the summaries."""
    from pytorch_lightning.loggers import WandbLogger

    for lg in loggers:
        if not isinstance(lg, WandbLogger):
            continue
        if report["mosaics"]:
            lg.log_image(
                "summaries/mosaics",
                images=[str(p) for _, _, p in report["mosaics"]],
                caption=[f"{c} #{k}" for c, k, _ in report["mosaics"]],
            )
        if report["masks"]:
            lg.log_image("masks/examples", images=[str(p) for p in report["masks"][:max_masks]])
        columns = [
            "class",
            "summary",
            "tag",
            "purity",
            "support",
            "coherence",
            "faithfulness_ratio",
            "mean_region_drop",
        ]
        rows = [
            [
                c,
                k + 1,
                s.get("tag"),
                s.get("purity"),
                s["support"],
                s["coherence"],
                (s.get("faithfulness") or {}).get("ratio"),
                s["mean_region_drop"],
            ]
            for c, ss in summaries.get("classes", {}).items()
            for k, s in enumerate(ss)
        ]
        lg.log_table("summaries/table", columns=columns, data=rows)


def _make_loggers(cfg: DictConfig) -> list:
    return [
        instantiate(c)
        for c in (cfg.get("logger") or {}).values()
        if c is not None and "_target_" in c
    ]


def _log_to_loggers(loggers: list, metrics: dict) -> None:
    flat = {
        f"metrics/{k}": v
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    for k, v in metrics.get("timings", {}).items():
        flat[f"timings/{k}"] = v
    overall = (metrics.get("specialization") or {}).get("overall") or {}
    for k, v in overall.items():  # held-out accuracy of base, specialised and controls
        if isinstance(v, dict) and "mean" in v:
            flat[f"specialization/{k}"] = v["mean"]
        elif k == "base":
            flat["specialization/base"] = v
    for lg in loggers:
        lg.log_metrics(flat)


def run(cfg: DictConfig, output_dir: Path | None = None) -> dict:
    """Run ``cfg.stages`` in order; returns the metrics (also written to ``metrics.json``)."""
    validate(cfg)
    output_dir = Path(output_dir or cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if global_rank() == 0:
        write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    ctx = RunContext(cfg=cfg, output_dir=output_dir, device=resolve_device(cfg.device))
    ctx.metrics.update(model=cfg.model.name, dataset=cfg.data.name, accuracy=None, timings={})
    ctx.loggers = _make_loggers(cfg) if global_rank() == 0 else []
    name = None
    try:
        with stop_on_signals():  # SIGINT / SIGTERM: stop at the next safe point, resumable
            for name in cfg.stages:
                if name not in ALL_RANK_STAGES and global_rank() != 0:
                    # Multi-device run: the other ranks helped with training and masks; rank 0 goes on.
                    log.info("rank %d: done after the multi-device stages", global_rank())
                    return ctx.metrics
                t0 = time.perf_counter()
                log.info("stage %s", name)
                try:
                    STAGES[name](ctx)
                except SIGTERMException:  # Lightning's own stop on SIGTERM (a SystemExit)
                    raise RunInterrupted(signal.SIGTERM) from None
                ctx.metrics["timings"][name] = round(time.perf_counter() - t0, 3)
                ctx.save_metrics()
            _log_to_loggers(ctx.loggers, ctx.metrics)
    except RunInterrupted as stop:
        stop.stage, stop.finished = name, list(ctx.metrics["timings"])
        raise
    finally:
        if ctx.loggers:
            import wandb

            wandb.finish()
    log.info("metrics written to %s", output_dir / "metrics.json")
    return ctx.metrics
