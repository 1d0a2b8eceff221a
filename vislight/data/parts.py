"""Ground-truth parts of a dataset's images: one interface for every consumer.

Tags, part measures, needed parts and mask diagnostics read ground truth only through a
:class:`PartTruth`, whatever its form: per-pixel part labels the data can re-render without a
part (the synthetic world, :class:`vislight.data.synth_dataset.SynthPartTruth`) or part keypoints
and an object box (CUB, :class:`vislight.data.cub.CubPartTruth`). A dataset that has parts returns
one from its ``part_truth()`` method; :func:`part_truth` gives None for any other dataset.
What a kind of ground truth cannot say is None (keypoints cannot re-render an image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

BACKGROUND_TAG = "background"


@dataclass(frozen=True)
class TaggingSettings:
    """``conf/tagging``: ``tag_min_share`` (per-pixel parts), ``keypoint_margin`` (keypoints, in
    image sides) and ``needed_drop`` (a part is needed above this deletion drop)."""

    tag_min_share: float = 0.3
    keypoint_margin: float = 0.04
    needed_drop: float = 0.5

    @classmethod
    def from_cfg(cls, cfg) -> TaggingSettings:
        return cls(
            **{k: float(cfg[k]) for k in ("tag_min_share", "keypoint_margin", "needed_drop")}
        )


class PartTruth:
    """What is known about the parts in a dataset's images (the defaults: nothing)."""

    def points(self, index: int) -> list[tuple[str, float, float]]:
        """Part points ``(part, x, y)`` in pixels of item ``index`` (keypoints or part centroids)."""
        return []

    def tag(self, index: int, region: np.ndarray, settings: TaggingSettings) -> str:
        """The part a region (H, W) bool of item ``index`` covers, or :data:`BACKGROUND_TAG`."""
        raise NotImplementedError

    def on_object(self, index: int, region: np.ndarray) -> bool | None:
        """Whether the region lies on the object (None: unknown)."""
        return None

    def near_part_share(self, index: int, salient: np.ndarray) -> float | None:
        """Share of the salient pixels (H, W) bool near a true part (None: unknown)."""
        return None

    def class_parts(self, label: int) -> Sequence[str] | None:
        """The parts class ``label`` is made of, when images can be re-rendered without them
        (needed parts, part recall); None otherwise."""
        return None

    def has_part(self, index: int, part: str) -> bool:
        """Whether item ``index`` shows ``part``."""
        return any(name == part for name, _, _ in self.points(index))

    def render_without(self, index: int, parts: Sequence[str]) -> torch.Tensor:
        """Item ``index`` re-rendered without ``parts``: (3, H, W) in [0, 1]."""
        raise NotImplementedError(f"{type(self).__name__} cannot re-render an image")


def part_truth(dataset) -> PartTruth | None:
    """The dataset's ground-truth parts, or None when it has none."""
    get = getattr(dataset, "part_truth", None)
    return get() if callable(get) else None


def pixel_tag(
    region: np.ndarray, part_labels: np.ndarray, part_names: Sequence[str], min_share: float = 0.3
) -> str:
    """Tag of a region (H, W) bool from per-pixel part ids (H, W) (0 = background, names by id):
    the part with the largest share of its own pixels inside the region if >= ``min_share``."""
    ids, sizes = np.unique(part_labels[part_labels > 0], return_counts=True)
    if len(ids) == 0:
        return BACKGROUND_TAG
    inside = np.bincount(part_labels[region], minlength=len(part_names))[ids]
    share = inside / sizes
    best = int(np.argmax(share))
    return part_names[int(ids[best])] if share[best] >= min_share else BACKGROUND_TAG
