"""Apply a run's summaries to images: locate, calibrate, confirm by deletion, flag atypical ones.

:func:`apply_images` is the algorithm on tensors (the CLI, the Python API and the ground-truth
studies all call it); :func:`load_prototypes` reads what it needs from a finished run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from vislight.apply.locate import (
    ClassPrototypes,
    box_mask,
    calibrate,
    class_prototypes,
    locate,
    random_boxes,
)
from vislight.config_ranges import check_group
from vislight.errors import ConfigError
from vislight.masks.cache import safe_name
from vislight.models.probe import FeatureHook, frozen
from vislight.regions.describe import blurred_probabilities, log_odds
from vislight.report.html import ordered_summaries
from vislight.summaries.regionset import RegionSet

TARGETS = ("predicted", "label")


@dataclass(frozen=True)
class ApplySettings:
    """The ``apply`` config group (``conf/apply/default.yaml`` documents each value)."""

    name: str = "new_images"
    images: str | None = None
    target: str = "predicted"
    min_p_value: float = 0.1
    min_log_odds_drop: float = 0.25
    random_boxes: int = 4
    seed: int = 0
    relied_on_only: bool = True
    max_images_per_class: int | None = None
    batch_size: int = 32
    max_shown_per_class: int | None = 48

    @classmethod
    def from_cfg(cls, cfg: Mapping) -> ApplySettings:
        """The checked group; :class:`ConfigError` names the first bad key."""
        unknown = [k for k in cfg if k not in cls.__dataclass_fields__]
        if unknown:
            raise ConfigError(
                f"apply.{unknown[0]} is not a setting of apply; its settings: "
                f"{list(cls.__dataclass_fields__)}"
            )
        check_group("apply", cfg)  # the ranges vislight/config_ranges.py declares
        s = cls(**cfg)
        if s.target not in TARGETS:
            raise ConfigError(f"apply.target={s.target!r}: use one of {list(TARGETS)}")
        if not s.name or safe_name(s.name) != s.name:
            raise ConfigError(
                f"apply.name={s.name!r} must be a plain folder name (letters, digits, - _ .)"
            )
        return s


def load_prototypes(run, classes: Sequence[str]) -> dict[int, ClassPrototypes]:
    """Each summarised class's prototypes (by class index) from a finished run's regions cache,
    calibrated on the members' region descriptors (:func:`calibrate_on_images` recalibrates them
    on the run's images, as new images are scored).

    Args:
        run: a :class:`~vislight.finished_run.FinishedRun`.
        classes: the classifier's class names, output by output.
    """
    out = {}
    for name, summaries in run.summaries["classes"].items():
        if not summaries:
            continue
        path = run.run.regions / "ours" / f"{safe_name(name)}.npz"
        regions = RegionSet.load(path, key=None)
        if regions is None:
            raise ConfigError(
                f"{path} is missing or unreadable: the run's measured regions are needed to "
                "locate its summaries; rerun the run's command (its masks are reused) to make them"
            )
        if name not in classes:
            raise ConfigError(f"summarised class {name!r} is not among the run's classes")
        protos = class_prototypes(regions, ordered_summaries(summaries))
        out[classes.index(name)] = replace(protos, target=classes.index(name))
    return out


@torch.no_grad()
def calibrate_on_images(
    classifier: torch.nn.Module,
    layer: torch.nn.Module,
    prototypes: Mapping[int, ClassPrototypes],
    image_of,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
) -> dict[int, ClassPrototypes]:
    """The prototypes with their calibration measured as new images are scored: each summary's
    best window match in each of the run's explained images of its class; ``member_scores`` from
    the images holding one of its members, ``other_scores`` from the class's other images.

    Args:
        image_of: ``image_of(index) -> (3, H, W)`` image of the run's evaluated data at a
            dataset index (what ``ClassPrototypes.image_indices`` and the members' ``index`` hold).
    """
    out = {}
    for target, cls in prototypes.items():
        indices = [int(i) for i in cls.image_indices]
        if not indices:
            out[target] = cls
            continue
        scores = {k: [] for k in range(len(cls.summaries))}
        for start in range(0, len(indices), batch_size):
            x = torch.stack([image_of(i) for i in indices[start : start + batch_size]]).to(device)
            _, feats = logits_and_features(classifier, layer, x)
            mean = torch.from_numpy(cls.mean).to(feats)
            for k, proto in enumerate(cls.summaries):
                scores[k].append(locate(feats, proto, mean, tuple(x.shape[-2:]))[0])
        calibrated = []
        for k, proto in enumerate(cls.summaries):
            found = np.concatenate(scores[k])
            holds = np.isin(indices, list(proto.member_images))
            calibrated.append(
                replace(
                    proto, member_scores=np.sort(found[holds]), other_scores=np.sort(found[~holds])
                )
            )
        out[target] = replace(cls, summaries=calibrated)
    return out


def is_found(located: Mapping, min_p_value: float, min_log_odds_drop: float) -> bool:
    """Whether a located summary (an ``apply_images`` record) counts as found:

    * its match is typical of the class (``p_value >= min_p_value``),
    * and of the images holding the summary (``member_p_value >= min_p_value``), or it beats
      the images without it (``outside_p_value <= min_p_value``), so that a summary the run
      found in only part of the class is not found wherever the class is;
    * and blurring its box costs the class at least ``min_log_odds_drop`` more log-odds than
      blurring random boxes of its size."""
    margin = located["log_odds_drop"] - located["random_log_odds_drop"]
    like_holders = (
        located["member_p_value"] >= min_p_value or located["outside_p_value"] <= min_p_value
    )
    return located["p_value"] >= min_p_value and like_holders and margin >= min_log_odds_drop


@torch.no_grad()
def logits_and_features(
    classifier: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) -> logits (B, K) and ``layer``'s feature grid (B, C, h, w) float32, the
    classifier frozen."""
    with frozen(classifier), FeatureHook(layer) as hook:
        logits = classifier(images)
        return logits, hook.output.float()


@torch.no_grad()
def apply_images(
    classifier: torch.nn.Module,
    layer: torch.nn.Module,
    prototypes: Mapping[int, ClassPrototypes],
    images: torch.Tensor,
    targets: Sequence[int | None] | None,
    settings: ApplySettings,
    blur: tuple[float, float, int],
    ids: Sequence[int] | None = None,
) -> list[dict]:
    """Locate each image's class summaries.

    Args:
        classifier: (B, 3, H, W) images in [0, 1] -> logits; ``layer`` the module whose output
            the run's descriptors read.
        prototypes: per class index, its summaries (:func:`load_prototypes`).
        images: (N, 3, H, W) in [0, 1], on the classifier's device.
        targets: the class to look for per image; None (or a None entry): the predicted class.
        blur: the run's ``(blur_kernel, blur_sigma, reference_size)`` (the deletion check blurs
            the located box as the masks stage blurs).
        ids: (N,) a number per image (its dataset index) that, with ``settings.seed``, seeds its
            random boxes, so the result does not depend on the batch; default: the position.

    Returns:
        Per image: ``predicted``, ``probability`` (of the predicted class), ``target``,
        ``target_probability``, ``summaries`` (per summary: ``number``, ``tag``, ``relied_on``,
        ``box``, ``score``, ``p_value``, ``member_p_value``, ``outside_p_value``, ``drop`` and
        ``random_drop`` (relative probability drops when the box, or boxes of its size at random
        places, are blurred), ``log_odds_drop`` and ``random_log_odds_drop`` (the same in
        log-odds), ``found``), ``strategy`` (the numbers of the relied-on summaries found),
        ``atypical`` (the class has summaries and none was found; None when the class has none).
    """
    n, _, height, width = images.shape
    logits, feats = logits_and_features(classifier, layer, images)
    probs = torch.softmax(logits, 1)
    predicted = probs.argmax(1).tolist()
    out = []
    for i in range(n):
        target = targets[i] if targets is not None and targets[i] is not None else predicted[i]
        entry = {
            "predicted": predicted[i],
            "probability": float(probs[i, predicted[i]]),
            "target": int(target),
            "target_probability": float(probs[i, target]),
            "summaries": [],
            "strategy": [],
            "atypical": None,
        }
        out.append(entry)
        cls = prototypes.get(int(target))
        if cls is None or not cls.summaries:
            continue
        mean = torch.from_numpy(cls.mean).to(feats)
        located = [locate(feats[i : i + 1], p, mean, (height, width)) for p in cls.summaries]
        boxes = [box[0] for _, box in located]
        rng = np.random.default_rng([settings.seed, int(ids[i]) if ids is not None else i])
        shapes = []  # each located box, then its random placements
        for box in boxes:
            shapes += [box, *random_boxes(box, (height, width), settings.random_boxes, rng)]
        p_x, p_blur = blurred_probabilities(
            classifier,
            images[i],
            np.stack([box_mask(b, (height, width)) for b in shapes]),
            int(target),
            *blur,
        )
        p_x, p_blur = float(p_x[0]), p_blur.numpy().astype(np.float64).reshape(len(boxes), -1)
        drops = (p_x - p_blur) / max(p_x, 1e-12)  # relative probability drops
        evidence = log_odds(p_x) - log_odds(p_blur)  # log-odds drops: no saturation near p = 1
        counted = [p for p in cls.summaries if p.relied_on or not settings.relied_on_only]
        for k, (proto, (score, _), box) in enumerate(zip(cls.summaries, located, boxes)):
            record = {
                "number": proto.number,
                "tag": proto.tag,
                "relied_on": proto.relied_on,
                "box": [int(v) for v in box],
                "score": float(score[0]),
                **calibrate(float(score[0]), proto),
                "drop": float(drops[k, 0]),
                "random_drop": float(drops[k, 1:].mean()),
                "log_odds_drop": float(evidence[k, 0]),
                "random_log_odds_drop": float(evidence[k, 1:].mean()),
            }
            record["found"] = is_found(record, settings.min_p_value, settings.min_log_odds_drop)
            entry["summaries"].append(record)
            if record["found"] and proto in counted:
                entry["strategy"].append(proto.number)
        # atypical: none of the class's relied-on summaries found (None: the class has none)
        entry["atypical"] = (not entry["strategy"]) if counted else None
    return out
