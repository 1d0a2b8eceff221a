"""Cut a sharp mask into salient regions.

Regions are (a) the 8-connected components of the salient set (``m < 0.5``) covering at least
``min_area`` of the image, and (b) part proposals inside the mask: selective-search boxes (OpenCV
contrib's implementation) with more than ``proposal_min_salient`` of their pixels salient, reduced to
their salient pixels, then de-duplicated (two regions are redundant when their intersection covers
at least ``dedup_overlap`` of the smaller one and their areas differ by less than
``dedup_area_ratio``; the first kept wins, components first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class Region:
    """One region of one image: boolean ``mask`` (H, W), ``box`` (x0, y0, x1, y1) exclusive, ``kind``."""

    mask: np.ndarray
    box: tuple[int, int, int, int]
    kind: str  # "component" | "proposal"

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def connected_regions(salient: np.ndarray, min_area: float = 0.01) -> list[Region]:
    """8-connected components of ``salient`` (H, W) bool with area >= ``min_area`` of the image."""
    labels, n = ndimage.label(salient, structure=_EIGHT)
    if n == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    need = min_area * salient.size
    out = []
    for k in np.argsort(-areas[1:]) + 1:  # largest first
        if areas[k] < need:
            break
        mask = labels == k
        out.append(Region(mask, _box(mask), "component"))
    return out


def selective_search_boxes(
    image: np.ndarray, mode: str = "fast", max_boxes: int = 200
) -> np.ndarray:
    """Selective-search proposals (OpenCV contrib) of an (H, W, 3) uint8 RGB image: (K, 4) x0, y0, x1, y1."""
    import cv2

    cv2.setNumThreads(1)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(image[:, :, ::-1]))
    if mode == "fast":
        ss.switchToSelectiveSearchFast()
    elif mode == "quality":
        ss.switchToSelectiveSearchQuality()
    elif mode == "single":
        ss.switchToSingleStrategy()
    else:
        raise ValueError(f"regions.proposals.mode={mode!r} is unknown: use fast, quality or single")
    rects = ss.process()[:max_boxes]  # (x, y, w, h)
    if len(rects) == 0:
        return np.zeros((0, 4), dtype=int)
    rects = np.asarray(rects, dtype=int)
    return np.stack(
        [rects[:, 0], rects[:, 1], rects[:, 0] + rects[:, 2], rects[:, 1] + rects[:, 3]], axis=1
    )


def proposal_regions(
    salient: np.ndarray, boxes: np.ndarray, min_salient: float = 0.75, min_area: float = 0.01
) -> list[Region]:
    """Boxes with more than ``min_salient`` of their pixels salient, cut to their salient pixels."""
    out = []
    need = min_area * salient.size
    for x0, y0, x1, y1 in boxes:
        window = salient[y0:y1, x0:x1]
        if window.size == 0 or window.mean() <= min_salient or window.sum() < need:
            continue
        mask = np.zeros_like(salient)
        mask[y0:y1, x0:x1] = window
        out.append(Region(mask, _box(mask), "proposal"))
    return out


def deduplicate(
    regions: list[Region], overlap: float = 0.5, area_ratio: float = 2.0
) -> list[Region]:
    """Drop a region when a kept one covers >= ``overlap`` of the smaller and areas differ < ``area_ratio``x."""
    kept: list[Region] = []
    for r in regions:
        redundant = False
        for k in kept:
            inter = np.logical_and(r.mask, k.mask).sum()
            small, large = sorted((r.area, k.area))
            if inter >= overlap * small and large < area_ratio * small:
                redundant = True
                break
        if not redundant:
            kept.append(r)
    return kept


def extract_regions(
    sharp: np.ndarray,
    image: np.ndarray | None = None,
    min_area: float = 0.01,
    proposals: bool = True,
    proposal_mode: str = "fast",
    proposal_min_salient: float = 0.75,
    dedup_overlap: float = 0.5,
    dedup_area_ratio: float = 2.0,
    max_regions: int = 12,
) -> list[Region]:
    """All regions of one image.

    Args:
        sharp: (H, W) mask in [0, 1] (1 keeps, 0 salient).
        image: (H, W, 3) uint8 RGB, needed for proposals.
        max_regions: keep at most this many (components first, then proposals by area).
    """
    salient = sharp < 0.5
    regions = connected_regions(salient, min_area)
    if proposals and image is not None and salient.any():
        props = proposal_regions(
            salient, selective_search_boxes(image, proposal_mode), proposal_min_salient, min_area
        )
        props.sort(key=lambda r: -r.area)
        regions = regions + props
    return deduplicate(regions, dedup_overlap, dedup_area_ratio)[:max_regions]
