"""Part-level measures of a class's summaries, as the part-prototype literature reports them.

Every function takes plain arrays: member regions as (H, W) bool masks, their centre points, the
ground-truth part points of their images (``(part, x, y)`` in the same pixel coordinates, CUB's 15
part names or the synthetic world's part centroids). Sizes are given at 224 px and scaled to the
image side, as in the papers.

* :func:`summaries_per_part` — summaries / distinct non-background tags (1.0: one summary per part).
* :func:`distinctiveness` — 1 − mean IoU between the regions of *different* summaries in the same
  image (1.0: summaries never point at the same pixels).
* :func:`pipnet_purity` — PIP-Net (Nauta et al., CVPR 2023, ``M-Nauta/PIPNet`` ``util/eval_cub_csv.py``):
  a 32-px patch centred on each member, left/right parts merged; per part, the share of the members
  showing the part whose patch contains its point; a summary's purity is the largest share.
* :func:`huang_consistency` — Huang et al. (ICCV 2023, ``hqhQAQ/EvalProtoPNet``
  ``util/eval_consistency.py``): a 72-px box centred on each member; a summary is consistent when
  one part (15, unmerged) is inside the box for at least 80% of the members whose image shows it.
* :func:`keypoint_nmi_ari` — PDiscoNet's (``robertdvdk/part_detection`` ``eval_nmi_ari``): every
  visible part point of the class's images gets the summary whose member region holds it (or "no
  summary"); NMI and ARI between the points' part names and those labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

PIPNET_PATCH = 32
HUANG_BOX = 72
HUANG_THRESHOLD = 0.8
REFERENCE_SIDE = 224

Points = Sequence[tuple[str, float, float]]


def merge_sides(part: str) -> str:
    """``"left eye"`` -> ``"eye"``: PIP-Net and Huang et al. merge left and right parts."""
    for side in ("left ", "right "):
        if part.startswith(side):
            return part[len(side) :]
    return part


def summaries_per_part(tags: Sequence[str], background: str = "background") -> float | None:
    """Summaries per distinct non-background tag of one class, background summaries counted (the
    issue's definition: summaries / distinct part tags; 1.0 = one summary per part and none on the
    background). None when no summary has a part."""
    parts = {t for t in tags if t != background}
    return len(tags) / len(parts) if parts else None


def distinctiveness(image_ids: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> float | None:
    """1 − mean IoU over pairs of member regions of different summaries in the same image.

    Args:
        image_ids: (M,) image of each member; labels: (M,) its summary; masks: (M, H, W) bool.
    Returns None when no image holds members of two summaries.
    """
    ious = []
    for img in np.unique(image_ids):
        idx = np.flatnonzero(image_ids == img)
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                i, j = idx[a], idx[b]
                if labels[i] == labels[j]:
                    continue
                inter = np.logical_and(masks[i], masks[j]).sum()
                union = np.logical_or(masks[i], masks[j]).sum()
                ious.append(inter / union if union else 0.0)
    return 1.0 - float(np.mean(ious)) if ious else None


def _inside_box(points: Points, center: tuple[float, float], half: float) -> set[str]:
    cx, cy = center
    return {p for p, x, y in points if abs(x - cx) <= half and abs(y - cy) <= half}


def _hit_rates(
    centers: Sequence[tuple[float, float]], points: Sequence[Points], half: float
) -> dict[str, float]:
    """Per part: the share of the members whose image shows it whose box (``half`` the side
    around the member's centre) contains its point."""
    hits: Counter = Counter()
    visible: Counter = Counter()
    for c, pts in zip(centers, points):
        visible.update({p for p, _, _ in pts})
        hits.update(_inside_box(pts, c, half))
    return {p: hits[p] / visible[p] for p in visible}


def pipnet_purity(
    centers: Sequence[tuple[float, float]], points: Sequence[Points], side: int
) -> float | None:
    """PIP-Net purity of one summary from its members' patch centres ``(x, y)`` and the part points
    of each member's image (unmerged names; left and right are merged here, a merged part is hit
    when either side is). Patch side 32 px at 224 (scaled to ``side``), edges included. For each
    part: the share of the members whose image shows it whose patch contains it; purity = the
    largest share (PIP-Net centres the patch on the prototype's peak in the latent map, we on the
    member region's innermost pixel)."""
    if not centers:
        return None
    merged = [[(merge_sides(p), x, y) for p, x, y in pts] for pts in points]
    rates = _hit_rates(centers, merged, PIPNET_PATCH * side / REFERENCE_SIDE / 2)
    return max(rates.values()) if rates else None  # None: no member's image shows a part


def huang_consistency(
    centers: Sequence[tuple[float, float]], points: Sequence[Points], side: int
) -> bool | None:
    """Huang et al.'s consistency of one summary: a 72-px box (at 224) centred on each member;
    the summary is consistent when, for some part (all 15, unmerged), the box contains it for >= 80%
    of the members whose image shows that part."""
    if not centers:
        return None
    rates = _hit_rates(centers, points, HUANG_BOX * side / REFERENCE_SIDE / 2)
    if not rates:
        return None  # no member's image shows a part
    return any(rate >= HUANG_THRESHOLD for rate in rates.values())


def keypoint_nmi_ari(
    image_points: Sequence[Points],
    image_ids: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray,
) -> tuple[float | None, float | None]:
    """NMI and ARI between the part names of all visible part points of a class's images and the
    summary each point falls in (PDiscoNet's protocol: every point counts; one outside every
    member region gets the label "no summary", as PDiscoNet's background channel).

    Args:
        image_points: the part points of each explained image (unmerged names);
        image_ids: (M,) image of each member; labels: (M,) its summary; masks: (M, H, W) bool.
            A point inside several members' regions goes to the smallest region.
    """
    truth, pred = [], []
    areas = masks.reshape(len(masks), -1).sum(1) if len(masks) else np.zeros(0)
    for img, pts in enumerate(image_points):
        mine = np.flatnonzero(image_ids == img)
        mine = mine[np.argsort(areas[mine], kind="stable")]
        for p, x, y in pts:
            label = -1
            for m in mine:
                h, w = masks[m].shape
                xi, yi = min(int(x), w - 1), min(int(y), h - 1)
                if masks[m][yi, xi]:
                    label = int(labels[m])
                    break
            truth.append(p)
            pred.append(label)
    if len(truth) < 2:
        return None, None
    return (
        float(normalized_mutual_info_score(truth, pred)),
        float(adjusted_rand_score(truth, pred)),
    )
