"""Train a zoo classifier once per config and reuse it: ``fit_or_load_classifier``."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from vislight.data.datamodule import ClassificationDataModule
from vislight.distributed import global_rank
from vislight.io import save_torch, write_json
from vislight.models.classifier import Classifier
from vislight.models.registry import load_state_dict_file, model_family
from vislight.models.small_cnns import SMALL_CNNS
from vislight.run_folder import RunFolder
from vislight.training.module import ClassifierModule

log = logging.getLogger(__name__)
# Data settings that do not change what is learned.
_DATA_KEYS_IGNORED = {
    "num_workers",
    "eval_batch_size",
    "cache",
    "test_per_class",
    "val_per_class",
    "split",  # the evaluated split (training always uses the train split)
    "max_pixels",  # the decompression-bomb guard (which files are refused, not what is learned)
    "_target_",  # the builder of the data kind (the kind itself is hashed)
}
_TRAIN_KEYS_IGNORED = {"cache_dir", "force", "enabled"}
# Trainer settings that do not change the learned weights.
_TRAINER_KEYS_IGNORED = {
    "enable_progress_bar",
    "enable_model_summary",
    "log_every_n_steps",
    "default_root_dir",
    "_target_",
}


def classifier_cache_key(
    model_cfg: Mapping,
    data_cfg: Mapping,
    train_cfg: Mapping,
    seed: int,
    trainer_cfg: Mapping | None = None,
) -> str:
    """Hash of everything that determines the trained weights."""
    payload = {
        "trainer": {k: v for k, v in (trainer_cfg or {}).items() if k not in _TRAINER_KEYS_IGNORED},
        # (the family by name: keys made before conf/model named a _target_ stay valid)
        "model": {
            k: v
            for k, v in model_cfg.items()
            if k not in ("trusted_checkpoint", "feature_layer", "_target_")
        }
        | {"family": model_family(model_cfg)},
        "data": {
            k: v
            for k, v in data_cfg.items()
            if k not in _DATA_KEYS_IGNORED
            and not (k == "train_split" and v == "train")  # (how every training ran before)
            and not (k == "half_seed" and data_cfg.get("train_split", "train") == "train")
        },
        "train": {
            k: v
            for k, v in train_cfg.items()
            if k not in _TRAIN_KEYS_IGNORED and not (k == "trainable" and v == "all")
        },  # (trainable=all is how every training ran before the option existed)
        "seed": seed,
        # Architecture revisions invalidate cached trainings of the same config.
        "arch_version": getattr(SMALL_CNNS.get(model_cfg.get("arch")), "version", 1),
        "version": 1,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def fit_or_load_classifier(
    classifier: Classifier,
    datamodule: ClassificationDataModule,
    train_cfg: Mapping,
    cache_dir: Path,
    trainer_factory,
    run: RunFolder,
) -> dict:
    """Load the cached weights for this config into ``classifier``, or train it and cache them.

    ``cache_dir`` is the per-config folder (see :func:`classifier_cache_key`); it holds
    ``classifier.pt`` (a plain state dict, loaded with ``weights_only=True``), ``meta.json`` and,
    during training, Lightning's ``last.ckpt`` so that an interrupted training resumes from its last
    finished epoch. ``trainer_factory(callbacks)`` makes the Trainer. The weights are copied to
    the run folder (``classifier.ckpt``). Returns facts for ``metrics.json``.
    """
    cache_dir = Path(cache_dir)
    weights = cache_dir / "classifier.pt"
    info: dict = {"cache": str(weights)}
    if weights.is_file() and not train_cfg.get("force", False):
        classifier.net.load_state_dict(load_state_dict_file(weights))
        meta_file = cache_dir / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        info.update(
            trained=False,
            reused=True,
            train_seconds=0.0,
            cached_train_seconds=meta.get("train_seconds"),
            val_acc=meta.get("val_acc"),
        )
        log.info("reusing trained classifier %s", weights)
    else:
        ckpt_dir = cache_dir / "lightning"
        last = ckpt_dir / "last.ckpt"
        resume = last if last.is_file() and not train_cfg.get("force", False) else None
        module = ClassifierModule(
            classifier,
            lr=float(train_cfg["lr"]),
            weight_decay=float(train_cfg["weight_decay"]),
            label_smoothing=float(train_cfg.get("label_smoothing", 0.0)),
            augment=bool(train_cfg.get("augment", True)),
            trainable=str(train_cfg.get("trainable", "all")),
        )
        # last.ckpt rewritten after every epoch. (save_last with save_top_k=0 writes it only when
        # training ends, which a killed run never reaches.)
        ckpt_cb = ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_epochs=1,
            enable_version_counter=False,
        )
        trainer: pl.Trainer = trainer_factory([ckpt_cb])
        if resume:
            log.info("resuming interrupted training from %s", resume)
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
        seconds = time.perf_counter() - t0
        if trainer.interrupted:
            raise KeyboardInterrupt("training interrupted; rerun the same command to resume")
        val_acc = trainer.callback_metrics.get("val/acc")
        val_acc = float(val_acc) if val_acc is not None else None
        if trainer.is_global_zero:  # under DDP every rank holds the same weights: one writer
            state = {k: v.detach().cpu() for k, v in classifier.net.state_dict().items()}
            save_torch(weights, state)
            write_json(
                cache_dir / "meta.json",
                {"val_acc": val_acc, "epochs": trainer.current_epoch, "train_seconds": seconds},
            )
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        trainer.strategy.barrier("vislight-classifier-saved")
        info.update(
            trained=True,
            reused=False,
            resumed=resume is not None,
            train_seconds=seconds,
            val_acc=val_acc,
        )
    run.root.mkdir(parents=True, exist_ok=True)
    if global_rank() == 0:
        shutil.copyfile(weights, run.classifier)
    return info
