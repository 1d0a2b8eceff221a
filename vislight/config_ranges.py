"""The valid range of every numeric config value, checked before any work.

:data:`RANGES` maps a dotted config path to its :class:`Range`. A path ending in ``[]`` applies to
every element of a list (``data.scale_range[]``), one ending in ``.*`` to every value of a mapping
whose keys are data (``data.label_map.*``). :func:`check_ranges` stops a run at the first value out
of its range with one line naming the key; ``tests/test_config_ranges.py`` checks that every numeric
value of every committed config has a declared range (a new key without one fails the test).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig

from vislight.errors import ConfigError

SEED_MAX = 2**32 - 1  # numpy / Lightning seeds are unsigned 32-bit


@dataclass(frozen=True)
class Range:
    """Allowed values of one numeric key: optional lower/upper bounds, each open or closed.

    ``integer``: the value must be an ``int``; ``nullable``: null is meaningful for this key (e.g.
    "no limit", "taken from the dataset"); ``strings``: strings are also accepted, unchecked (e.g.
    ``trainer.devices=auto``, class names beside class indices). Bools are never numbers.
    """

    lower: float | None = None
    upper: float | None = None
    lower_open: bool = False
    upper_open: bool = False
    integer: bool = False
    nullable: bool = False
    strings: bool = False

    def text(self) -> str:
        """What is allowed, in words: "an integer >= 1", "a number in (0, 1)", "null or ..."."""
        kind = "an integer" if self.integer else "a number"
        lo, hi = self.lower, self.upper
        if lo is not None and hi is not None:
            left, right = "(" if self.lower_open else "[", ")" if self.upper_open else "]"
            body = f"{kind} in {left}{_num(lo)}, {_num(hi)}{right}"
        elif lo is not None:
            body = f"{kind} {'>' if self.lower_open else '>='} {_num(lo)}"
        elif hi is not None:
            body = f"{kind} {'<' if self.upper_open else '<='} {_num(hi)}"
        else:
            body = kind
        if self.nullable:
            body = f"null or {body}"
        if self.strings:
            body = f"{body} or a string"
        return body

    def contains(self, value: object) -> bool:
        """Whether ``value`` is allowed (bools and non-finite floats are never numbers)."""
        if value is None:
            return self.nullable
        if isinstance(value, str):
            return self.strings
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.lower is not None and (
            value <= self.lower if self.lower_open else value < self.lower
        ):
            return False
        return not (
            self.upper is not None
            and (value >= self.upper if self.upper_open else value > self.upper)
        )


def _num(x: float) -> str:
    return str(int(x)) if isinstance(x, int) or float(x).is_integer() else repr(float(x))


# Shorthands for the table below.
def _int(lower: int | None = None, upper: int | None = None, **kw) -> Range:
    return Range(lower=lower, upper=upper, integer=True, **kw)


COUNT = _int(1)  # an integer >= 1
COUNT0 = _int(0)  # an integer >= 0 (0 is meaningful)
SEED = _int(0, SEED_MAX)
SHARE = Range(0, 1)  # a share / probability / fraction in [0, 1]
POSITIVE = Range(0, lower_open=True)  # > 0 (learning rates, sigmas)
NONNEG = Range(0)  # >= 0 (weights, margins)

RANGES: dict[str, Range] = {
    # config.yaml: the global seed (python, numpy, torch).
    "seed": SEED,
    # data: loaders of every data kind, then the synthetic world (conf/data/synth.yaml), then the
    # file-based kinds (folder, csv, cub, imagenet).
    "data.batch_size": COUNT,
    "data.eval_batch_size": _int(1, nullable=True),  # null = data.batch_size
    "data.num_workers": COUNT0,
    "data.num_classes": _int(2, 10),  # the synthetic world has 2..10 classes
    "data.image_size": _int(16, 224),
    "data.seed": SEED,
    "data.half_seed": SEED,  # CUB: the cut of the train split into halves
    "data.train_per_class": COUNT,
    "data.val_per_class": COUNT,
    "data.test_per_class": COUNT,
    "data.max_rotation_deg": Range(0, 180),  # +- degrees
    "data.scale_range[]": POSITIVE,
    "data.max_shift": Range(0, 0.5),  # +- image sides around the centre
    "data.distractors[]": COUNT0,  # [min, max] shapes per image
    "data.noise_std": Range(0, 255),  # grey levels
    "data.watermark.class_index": _int(0, 9),  # a class of the (<= 10-class) world
    "data.watermark.rate": SHARE,
    "data.watermark.size": Range(0, 1, lower_open=True),  # image sides
    # CUB class ids / ImageNet indices; strings are folder names, synset ids or ImageNet names.
    "data.classes[]": _int(0, strings=True),
    "data.label_map.*": COUNT0,  # class -> label of the explained model
    # keyword arguments of a timm / custom network's factory: the factory checks them
    "model.kwargs.*": Range(nullable=True, strings=True),
    "data.max_per_class": _int(1, nullable=True),  # null = every file
    "data.max_pixels": _int(1, nullable=True),  # decompression-bomb limit; null = no limit
    # model: the explained network (conf/model/*.yaml).
    "model.num_classes": _int(2, nullable=True),  # null = taken from the dataset
    "model.input_size": _int(16),  # side of the network input in pixels
    "model.resize_size": _int(16, nullable=True),  # shorter side before the crop; null = input_size
    "model.width": COUNT,  # channels of the small CNNs' first stage
    "model.depth": _int(20, 56),  # CIFAR ResNet depth (20, 32, 44 or 56: checked by the model)
    "model.mean[]": SHARE,  # images arrive in [0, 1]
    "model.std[]": POSITIVE,
    # train: classifier training (conf/train/default.yaml).
    "train.epochs": COUNT,
    "train.lr": POSITIVE,
    "train.weight_decay": NONNEG,
    "train.label_smoothing": Range(0, 1, upper_open=True),
    # masks: crisp mask optimisation (conf/masks/default.yaml).
    "masks.images_per_class": COUNT,
    "masks.batch_size": COUNT,
    "masks.num_workers": COUNT0,
    "masks.blur_kernel": Range(1),  # pixels at reference_size (scaled, so not necessarily whole)
    "masks.blur_sigma": POSITIVE,
    "masks.reference_size": COUNT,
    "masks.downsample": COUNT,
    "masks.upsample_sigma": NONNEG,  # 0 = no blur after upsampling
    "masks.smooth.iterations": COUNT0,
    "masks.smooth.lr": POSITIVE,
    "masks.smooth.l1": NONNEG,
    "masks.smooth.tv": NONNEG,
    "masks.smooth.tv_beta": Range(1),  # |d|^(beta - 1) in the gradient: beta < 1 diverges at 0
    "masks.smooth.binarize": NONNEG,
    "masks.sharp.iterations": COUNT0,
    "masks.sharp.lr": POSITIVE,
    "masks.sharp.l1": NONNEG,
    "masks.sharp.tv": NONNEG,
    "masks.sharp.tv_beta": Range(1),
    "masks.sharp.binarize": NONNEG,
    "masks.smooth.beta2": Range(0, 1, upper_open=True),  # Adam's second-moment decay
    "masks.smooth.beta2_after": COUNT0,
    "masks.sharp.beta2": Range(0, 1, upper_open=True),
    "masks.sharp.beta2_after": COUNT0,
    "masks.early_stopping.every": COUNT,
    "masks.early_stopping.min_iou": Range(0, 1, lower_open=True),
    "masks.early_stopping.min_iterations": COUNT0,
    # regions: regions of a sharp mask (conf/regions/default.yaml); areas are shares of the image.
    "regions.min_area": Range(0, 1, lower_open=True, upper_open=True),
    "regions.proposal_min_salient": SHARE,
    "regions.dedup_overlap": SHARE,
    "regions.dedup_area_ratio": Range(1),  # larger / smaller area
    "regions.max_regions": COUNT,
    # similarity: the region similarity graph (conf/similarity/default.yaml).
    "similarity.k": COUNT,
    "similarity.w_xy": NONNEG,
    "similarity.w_scale": NONNEG,
    "similarity.approx_above": COUNT0,  # 0 = always the approximate index
    "similarity.nprobe": COUNT,
    # cluster: affinity propagation and pruning (conf/cluster/default.yaml).
    # one number, or a list of them: the factors scanned (vislight/summaries/cluster.py)
    "cluster.preference_factor": POSITIVE,
    "cluster.preference_factor[]": POSITIVE,
    "cluster.damping": Range(0.5, 1, upper_open=True),
    "cluster.max_iter": COUNT,
    "cluster.convergence_iter": COUNT,
    "cluster.min_support": COUNT,
    "cluster.min_support_fraction": SHARE,
    "cluster.coherence_ratio": NONNEG,
    "cluster.outlier_ratio": SHARE,
    "cluster.merge_ratio": POSITIVE,  # > 1: never merge
    "cluster.merge_max_side_by_side": Range(0, None, integer=True, nullable=True),
    "tagging.tag_min_share": SHARE,
    "tagging.keypoint_margin": SHARE,  # image sides
    "tagging.needed_drop": SHARE,  # a drop of class probability
    "cluster.stability_resamples": COUNT0,  # 0 = off
    "cluster.stability_fraction": Range(0, 1, lower_open=True),
    # report: the static HTML report (conf/report/default.yaml).
    "report.max_members": COUNT,
    "report.max_masks": COUNT0,
    # baselines: Grad-CAM / random / k-means baselines (conf/baselines/default.yaml).
    "baselines.kmeans_k": COUNT,
    "baselines.seed": SEED,
    # apply: a finished run's summaries in new images (conf/apply/default.yaml).
    "apply.min_p_value": Range(0, 1, upper_open=True),
    "apply.min_log_odds_drop": Range(),  # a difference of log-odds drops (nats)
    "apply.random_boxes": COUNT,
    "apply.seed": SEED,
    "apply.max_images_per_class": _int(1, nullable=True),
    "apply.batch_size": COUNT,
    "apply.max_shown_per_class": _int(1, nullable=True),
    # study: the user-study kit (conf/study/default.yaml).
    "study.members": _int(2),  # k >= 2: an intruder among 1 member is no question
    "study.min_support": _int(1, nullable=True),
    "study.max_trials": _int(1, nullable=True),
    "study.port": _int(0, 65535),  # 0 = any free port
    "study.seed": SEED,
    "study.confidence": Range(0, 1, lower_open=True, upper_open=True),
    # specialize: summary-driven specialisation (conf/specialize/default.yaml).
    "specialize.num_groups": COUNT,
    "specialize.group_size": _int(2),  # a group of confused classes
    "specialize.seeds[]": SEED,
    "specialize.epochs": COUNT,
    "specialize.batch_size": COUNT,
    "specialize.lr": POSITIVE,
    "specialize.weight_decay": NONNEG,
    "specialize.init_std": NONNEG,  # 0 = start exactly from the base model
    "specialize.feature_batch_size": COUNT,
    # trainer: pytorch_lightning.Trainer arguments (conf/trainer/*.yaml); strings such as
    # devices=auto are Lightning's own and not range-checked.
    "trainer.devices": _int(1, strings=True),
    "trainer.num_nodes": COUNT,
    "trainer.max_epochs": COUNT,  # = train.epochs
    "trainer.log_every_n_steps": COUNT,
}

_INDEX = re.compile(r"\[\d+\]")
_WILDCARDS = tuple(k[:-1] for k in RANGES if k.endswith(".*"))  # "data.label_map."


def declared_key(key: str) -> str | None:
    """The :data:`RANGES` key that covers ``key`` (``a.b[3]`` -> ``a.b[]``, ``m.x`` -> ``m.*``)."""
    general = _INDEX.sub("[]", key)
    if general in RANGES:
        return general
    for prefix in _WILDCARDS:
        if general.startswith(prefix) and len(general) > len(prefix):
            return prefix + "*"
    return None


def range_for(key: str) -> Range | None:
    """The declared range of a dotted key (list indices ``[i]`` map to ``[]``), or None."""
    declared = declared_key(key)
    return RANGES[declared] if declared else None


def _leaves(node: object, key: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, resolved value) of every scalar leaf, in config order; skips the ``hydra``
    node and values whose interpolation does not resolve here (or are missing, ``???``)."""
    if isinstance(node, DictConfig):
        for k in list(node.keys()):
            if not key and k == "hydra":
                continue
            try:
                value = node[k]
            except Exception:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra run, or ???
                continue
            yield from _leaves(value, f"{key}.{k}" if key else str(k))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            try:
                value = node[i]
            except Exception:  # noqa: BLE001
                continue
            yield from _leaves(value, f"{key}[{i}]")
    else:
        yield key, node


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_values(cfg: DictConfig) -> dict[str, object]:
    """Dotted key -> value of every int/float leaf of ``cfg`` (list elements as ``key[i]``), plus
    the null leaves of declared keys (so that nullable numeric keys are visible)."""
    return {
        key: value
        for key, value in _leaves(cfg)
        if _is_number(value) or (value is None and range_for(key) is not None)
    }


def check_group(group: str, values: Mapping) -> None:
    """Raise :class:`ConfigError` for the first value of one config group (``values``: its keys
    without the group prefix) out of its declared range."""
    for key, value in values.items():
        allowed = RANGES.get(f"{group}.{key}")
        if allowed is not None and not allowed.contains(value):
            raise ConfigError(
                f"{group}.{key}={value!r} is out of range: it must be {allowed.text()}"
            )


def check_ranges(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first value out of its declared range.

    Keys without a declared range are not checked (the tests require one for every numeric key);
    declared keys absent from ``cfg`` are ignored.
    """
    for key, value in _leaves(cfg):
        allowed = range_for(key)
        if allowed is not None and not allowed.contains(value):
            raise ConfigError(f"{key}={value!r} is out of range: it must be {allowed.text()}")
