"""The ``masks`` stage: pick the correctly classified images of each class, optimise their masks
through :class:`~vislight.masks.module.MaskModule` (skipping cached ones) and aggregate diagnostics."""

from __future__ import annotations

import logging
import time
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset, Sampler

from vislight.data.parts import part_truth
from vislight.interrupt import RunInterrupted, StopCallback
from vislight.masks.cache import MaskCache, config_fingerprint, model_fingerprint
from vislight.masks.module import MaskModule
from vislight.masks.optimize import SCORING_PASSES, MaskConfig
from vislight.run_folder import RunFolder

log = logging.getLogger(__name__)


class MaskJobDataset(Dataset):
    """Items of ``base`` at ``indices`` with their mask ``target`` and ``class_name`` added."""

    def __init__(
        self,
        base: Dataset,
        indices: Sequence[int],
        targets: Sequence[int],
        class_names: Sequence[str],
    ):
        self.base, self.indices, self.targets, self.class_names = (
            base,
            list(indices),
            list(targets),
            list(class_names),
        )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict:
        item = dict(self.base[self.indices[j]])
        item.pop("path", None)
        item["target"] = self.targets[j]
        item["class_name"] = self.class_names[j]
        return item


class BatchesOfThisRank(Sampler):
    """Consecutive batches of the given sizes (those one process forms), dealt out whole to the
    processes of a multi-device run (batch k to rank k mod world size).

    Each image is then optimised beside the same images as in a one-process run, so several
    processes write the masks of one, bit for bit (Lightning's distributed sampler would interleave
    the images and change every batch)."""

    def __init__(self, sizes: Sequence[int]):
        starts = np.cumsum([0, *sizes])
        self.batches = [list(range(a, b)) for a, b in zip(starts[:-1], starts[1:])]

    def _mine(self) -> list[list[int]]:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return self.batches[dist.get_rank() :: dist.get_world_size()]
        return self.batches

    def __iter__(self):
        return iter(self._mine())

    def __len__(self) -> int:
        return len(self._mine())


def pending_batches(jobs: Sequence, done: Sequence[bool], batch_size: int) -> list[list]:
    """The batches to run: every batch of ``batch_size`` consecutive jobs (the batches an
    uninterrupted run forms) with at least one mask not done, whole.

    A batch's masks depend, in the last float digits, on which images share it (the kernels a
    batch shape selects), and mask optimisation amplifies such digits; re-running the unfinished
    batches exactly as first formed makes a resumed run's masks the uninterrupted run's, bit for
    bit. The masks already on disk in a re-run batch are kept, not rewritten."""
    return [
        list(jobs[start : start + batch_size])
        for start in range(0, len(jobs), batch_size)
        if not all(done[start : start + batch_size])
    ]


def select_images(
    labels: Sequence[int],
    predictions: Sequence[int],
    class_names: Sequence[str],
    classes: Sequence[str] | None,
    per_class: int,
) -> tuple[dict[str, list[int]], list[dict]]:
    """Up to ``per_class`` correctly classified indices per class, in dataset order.

    Misclassified images met on the way are returned as skipped entries with the reason.
    """
    wanted = list(classes) if classes else list(dict.fromkeys(class_names[y] for y in labels))
    unknown = [c for c in wanted if c not in class_names]
    if unknown:
        raise ValueError(
            f"masks.classes lists {unknown}, not classes of this dataset; known: {list(class_names)[:20]}"
        )
    chosen: dict[str, list[int]] = {c: [] for c in wanted}
    skipped = []
    for i, (y, p) in enumerate(zip(labels, predictions)):
        name = class_names[y]
        if name not in chosen or len(chosen[name]) >= per_class:
            continue
        if p == y:
            chosen[name].append(i)
        else:
            pred = class_names[p] if p < len(class_names) else str(p)
            skipped.append(
                {"index": i, "class": name, "reason": f"misclassified (predicted {pred})"}
            )
    return chosen, skipped


def run_masks(
    classifier: torch.nn.Module,
    dataset: Dataset,
    labels: Sequence[int],
    predictions: Sequence[int],
    class_names: Sequence[str],
    cfg: Mapping,
    trainer_cfg: Mapping,
    run: RunFolder,
    mask_config: MaskConfig | None = None,
) -> dict:
    """Optimise (or reuse) the masks of the selected images; returns the ``mask`` metrics section
    plus ``per_class`` diagnostics and the list of mask ``files``. ``mask_config``: the typed
    ``cfg`` when the caller built it already (the pipeline's validate does)."""
    mask_cfg = mask_config or MaskConfig.from_cfg(cfg)
    chosen, skipped = select_images(
        labels, predictions, class_names, cfg.get("classes"), int(cfg["images_per_class"])
    )
    cache = MaskCache(
        Path(cfg.get("cache_dir") or run.masks),
        model_fingerprint(classifier),
        config_fingerprint(mask_cfg),
    )
    jobs, files = [], {}
    for name, indices in chosen.items():
        if not indices:
            skipped.append({"class": name, "reason": "no correctly classified image of this class"})
        for i in indices:
            item = dataset[i]
            files[i] = cache.path(name, item["image"], item["key"])
            jobs.append((i, name))
    done = [files[i].is_file() for i, _ in jobs]
    reused = sum(done)
    batches = pending_batches(jobs, done, int(cfg["batch_size"]))
    pending = [job for batch in batches for job in batch]
    log.info(
        "masks: %d images selected, %d cached, %d to optimise (+%d cached re-run in their batch)",
        len(jobs),
        reused,
        len(jobs) - reused,
        len(pending) - (len(jobs) - reused),
    )
    seconds = 0.0
    if pending:
        job = MaskJobDataset(
            dataset,
            [i for i, _ in pending],
            [int(predictions[i]) for i, _ in pending],
            [n for _, n in pending],
        )
        loader = DataLoader(
            job,
            batch_sampler=BatchesOfThisRank([len(batch) for batch in batches]),
            num_workers=int(cfg.get("num_workers", 0)),
        )
        trainer = instantiate(
            trainer_cfg,
            inference_mode=False,
            logger=False,
            callbacks=[StopCallback()],
            enable_checkpointing=False,
            use_distributed_sampler=False,  # BatchesOfThisRank deals the batches out
        )
        module = MaskModule(classifier, mask_cfg, cache)
        device = next(iter(classifier.buffers())).device
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # BatchesOfThisRank yields every index (it is ours); Lightning cannot know and warns.
                warnings.filterwarnings("ignore", message="You are using a custom batch sampler")
                trainer.predict(module, dataloaders=loader, return_predictions=False)
        except RunInterrupted as stop:
            stop.progress.append(
                f"{reused + len(module.written)} of {len(jobs)} masks (the rest are computed on rerun)"
            )
            raise
        # Under a multi-device strategy every rank wrote its share of the files: wait for all.
        trainer.strategy.barrier("vislight-masks")
        seconds = time.perf_counter() - t0
        classifier.to(device)
    per_class: dict[str, list[dict]] = defaultdict(list)
    truth = part_truth(dataset)
    for i, name in jobs:
        d = MaskCache.read_diagnostics(files[i]) if files[i].is_file() else None
        if d is None:
            skipped.append(
                {
                    "index": i,
                    "class": name,
                    "reason": "mask missing after optimisation (another rank failed?)",
                }
            )
            continue
        near = truth.near_part_share(i, MaskCache.read(files[i])["sharp"] < 0.5) if truth else None
        if near is not None:
            d["near_part_share"] = near
        per_class[name].append(d)
    by_class = {
        name: [(i, files[i]) for i in indices if files[i].is_file()]
        for name, indices in chosen.items()
    }
    return summarize(per_class, skipped, len(jobs) - reused, reused, seconds) | {
        "schedule": mask_cfg.describe(),
        "files": by_class,
    }


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r and r[key] == r[key]]
    return float(np.mean(vals)) if vals else None


def summarize(
    per_class: Mapping[str, list[dict]],
    skipped: list[dict],
    computed: int,
    reused: int,
    seconds: float,
) -> dict:
    """Aggregate per-image diagnostics into the ``mask`` section of ``metrics.json``."""
    rows = [d for ds in per_class.values() for d in ds]
    section = {
        "mean_drop": _mean(rows, "drop"),
        "mean_normalized_score": _mean(rows, "normalized_score"),
        "mean_area": _mean(rows, "area"),
        "binarization": _mean(rows, "binarization"),
        "images_per_s": computed / seconds if computed and seconds else None,
        "masked": len(rows),
        "skipped": skipped,
        "computed": computed,
        "reused": reused,
        "seconds": round(seconds, 3),
        "mean_p_x": _mean(rows, "p_x"),
        "mean_p_masked": _mean(rows, "p_masked"),
        "mean_p_blurred": _mean(rows, "p_blurred"),
        "mean_iterations": _mean(rows, "iterations"),
    }
    # Every network pass an image cost: its iterations plus the scoring forwards.
    iters = section["mean_iterations"]
    section["mean_passes"] = None if iters is None else iters + SCORING_PASSES
    if any("near_part_share" in r for r in rows):
        section["near_part_share"] = _mean(rows, "near_part_share")
    section["per_class"] = {
        name: {
            "masked": len(ds),
            "mean_drop": _mean(ds, "drop"),
            "mean_area": _mean(ds, "area"),
            "binarization": _mean(ds, "binarization"),
        }
        for name, ds in per_class.items()
    }
    return section
