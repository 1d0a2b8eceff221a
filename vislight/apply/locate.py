"""Find a class's summaries in a new image: prototype match over the feature map, calibrated.

A summary's *prototype* is the mean of its members' region descriptors, centred by the class's
mean region descriptor (as the clustering compares them, ``summaries/cluster.py``). In a new
image the prototype is matched against every window of the feature map whose size is the
members' median box (the descriptor of a window is the feature map average-pooled over it, as a
region's is over its mask): the best window is where the summary is, its cosine the match score.

The score is calibrated on the run's own images of the class, the ones its summaries were made
from, by three conformal p-values of the match among their best matches:

* ``p_value``, among every explained image of the class, ``(1 + #images matching no better) /
  (1 + #images)``: small when the match is worse than in nearly every image of the class (the
  part is likely not there);
* ``member_p_value``, the same among the images holding one of the summary's members: small when
  the match is worse than nearly everywhere the run found the summary;
* ``outside_p_value``, ``(1 + #images matching at least as well) / (1 + #images)`` among the
  class's images holding *no* member: small when the match beats nearly every image where the run
  did not find the summary.

A summary found in only part of the class (a watermark on half of its images) passes the first
test wherever the class is; the other two tell whether this image is like the images that hold it
(:func:`vislight.apply.core.is_found` combines them).
:func:`vislight.apply.core.calibrate_on_images` measures the reference with the same best-window
search a new image gets; before it, the members' and the class's other regions' descriptors stand
in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from vislight.summaries.cluster import centered_descriptors
from vislight.summaries.regionset import RegionSet


@dataclass(frozen=True)
class SummaryPrototype:
    """What locating one summary needs.

    ``vector`` (C,) centred, L2-normalised prototype; ``box_size`` (w, h) the members' median box
    in pixels of the run's images (side ``side``); ``member_scores`` (M,) and ``other_scores``
    (K,) the cosines of the summary's members and of the class's other regions with the
    prototype (the calibration), sorted."""

    number: int
    tag: str | None
    relied_on: bool
    vector: np.ndarray
    box_size: tuple[float, float]
    side: int
    member_scores: np.ndarray
    other_scores: np.ndarray
    member_images: frozenset = frozenset()  # dataset indices of the images holding a member


@dataclass(frozen=True)
class ClassPrototypes:
    """A class's summaries as prototypes, with the class's mean region descriptor ``mean`` (C,)
    (raw descriptors are centred by it before matching) and ``image_indices`` the dataset indices
    of the run's explained images of the class."""

    class_name: str
    target: int
    mean: np.ndarray
    summaries: list[SummaryPrototype]
    image_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, int))


def _member_rows(regions: RegionSet, members: Sequence[dict]) -> list[int]:
    """Rows of ``regions`` holding the summary's members (same image key and box)."""
    rows = {(k, tuple(int(v) for v in b)): i for i, (k, b) in enumerate(zip(regions.keys, regions.boxes))}  # fmt: skip
    found = [rows.get((m["key"], tuple(int(v) for v in m["bbox"]))) for m in members]
    return [r for r in found if r is not None]


def class_prototypes(
    regions: RegionSet, ordered: Sequence[tuple[int, dict, bool]]
) -> ClassPrototypes:
    """Prototypes of a class's summaries from its cached RegionSet.

    Args:
        regions: the class's regions (the RegionSet the summaries were clustered from).
        ordered: ``(number, summary record, relied on)`` per summary (summaries.json records).
    """
    raw = regions.descriptors.astype(np.float32)
    mean = raw.mean(0)
    centred = centered_descriptors(raw)
    rows = [_member_rows(regions, s["members"]) for _, s, _ in ordered]
    out = []
    for (number, summary, relied), own in zip(ordered, rows):
        if not own:
            continue
        vector = centred[own].mean(0)
        vector /= max(float(np.linalg.norm(vector)), 1e-8)
        others = np.setdiff1d(np.arange(len(raw)), own)
        boxes = np.asarray([m["bbox"] for m in summary["members"]], dtype=np.float32)
        size = (
            float(np.median(boxes[:, 2] - boxes[:, 0])),
            float(np.median(boxes[:, 3] - boxes[:, 1])),
        )
        out.append(
            SummaryPrototype(
                number=number,
                tag=summary.get("tag"),
                relied_on=relied,
                vector=vector.astype(np.float32),
                box_size=size,
                side=regions.side,
                member_scores=np.sort(centred[own] @ vector),
                other_scores=np.sort(centred[others] @ vector),
                member_images=frozenset(int(m["index"]) for m in summary["members"]),
            )
        )
    return ClassPrototypes(regions.class_name, regions.target, mean, out, regions.image_indices)


def window_match(
    feats: torch.Tensor, vector: torch.Tensor, mean: torch.Tensor, window: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine of a centred prototype with every window of a feature map.

    Args:
        feats: (B, C, h, w) feature maps.
        vector: (C,) centred, L2-normalised prototype; ``mean`` (C,) the class's mean descriptor.
        window: (kh, kw) window size in feature cells (at most h, w).

    Returns:
        ``(score (B,), cell (B, 2))``: the best window's cosine and its centre (y, x) in feature
        cells (fractional: a 2-cell window centred between cells).
    """
    kh, kw = window
    pooled = F.avg_pool2d(feats, (kh, kw), stride=1)  # (B, C, h-kh+1, w-kw+1)
    desc = F.normalize(pooled, dim=1) - mean.view(1, -1, 1, 1)
    desc = F.normalize(desc, dim=1)
    cos = (desc * vector.view(1, -1, 1, 1)).sum(1)  # (B, h', w')
    b, hh, ww = cos.shape
    score, flat = cos.reshape(b, -1).max(1)
    cy = (flat // ww).float() + kh / 2
    cx = (flat % ww).float() + kw / 2
    return score, torch.stack([cy, cx], 1)


def locate(
    feats: torch.Tensor, proto: SummaryPrototype, mean: torch.Tensor, image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Best match of one summary in each image.

    Args:
        feats: (B, C, h, w) feature maps of images of size ``image_size`` (H, W).
        proto: the summary; its box size is scaled from its run's image side to (H, W).

    Returns:
        ``(score (B,), boxes (B, 4))``: the match cosine and the located box x0, y0, x1, y1
        (pixels, exclusive, inside the image).
    """
    height, width = image_size
    h, w = feats.shape[-2:]
    bw = proto.box_size[0] * width / proto.side
    bh = proto.box_size[1] * height / proto.side
    window = (
        int(np.clip(round(bh * h / height), 1, h)),
        int(np.clip(round(bw * w / width), 1, w)),
    )
    vector = torch.from_numpy(proto.vector).to(feats)
    score, cell = window_match(feats, vector, mean, window)
    cy = cell[:, 0].cpu().numpy() * height / h
    cx = cell[:, 1].cpu().numpy() * width / w
    boxes = (
        np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).round().astype(int)
    )
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    boxes[:, 2] = np.maximum(boxes[:, 2], boxes[:, 0] + 1)
    boxes[:, 3] = np.maximum(boxes[:, 3], boxes[:, 1] + 1)
    return score.cpu().numpy(), boxes


def calibrate(score: float, proto: SummaryPrototype) -> dict[str, float]:
    """``p_value``, ``member_p_value`` and ``outside_p_value`` of a match score (the module
    docstring defines them; each is 1.0 when its reference is empty)."""
    members, others = proto.member_scores, proto.other_scores

    def at_most(reference: np.ndarray) -> float:  # share of the reference matching no better
        return (1 + int((reference <= score).sum())) / (1 + len(reference))

    return {
        "p_value": at_most(np.concatenate([members, others])),  # every explained image
        "member_p_value": at_most(members),
        "outside_p_value": (1 + int((others >= score).sum())) / (1 + len(others)),
    }


def random_boxes(
    box: Sequence[int], size: tuple[int, int], count: int, rng: np.random.Generator
) -> list[list[int]]:
    """``count`` boxes of ``box``'s size at uniformly random places inside an image of ``size``
    (H, W): the chance level of the deletion check."""
    height, width = size
    w, h = int(box[2] - box[0]), int(box[3] - box[1])
    xs = rng.integers(0, max(width - w, 0) + 1, count)
    ys = rng.integers(0, max(height - h, 0) + 1, count)
    return [[int(x), int(y), int(x) + w, int(y) + h] for x, y in zip(xs, ys)]


def box_mask(box: Sequence[int], size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: True inside ``box`` (x0, y0, x1, y1, exclusive)."""
    mask = np.zeros(size, dtype=bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    mask[y0:y1, x0:x1] = True
    return mask
