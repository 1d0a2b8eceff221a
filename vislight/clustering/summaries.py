"""From affinity-propagation clusters to visual summaries: pruning as in the design notes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


@dataclass
class Summary:
    """A cluster of regions that survived pruning.

    ``members`` are region indices (the exemplar first), ``similarity`` their similarity to the
    exemplar (1 for the exemplar), ``support`` the number of distinct images, ``coherence`` the mean
    similarity of the non-exemplar members to the exemplar.
    """

    exemplar: int
    members: list[int]
    similarity: list[float]
    support: int
    coherence: float
    extra: dict = field(default_factory=dict)


def build_summaries(
    labels: np.ndarray,
    graph: sp.csr_matrix,
    image_id: np.ndarray,
    min_support: int = 3,
    min_support_fraction: float = 0.1,
    coherence_ratio: float = 0.9,
    outlier_ratio: float = 0.5,
    n_images: int | None = None,
) -> tuple[list[Summary], dict]:
    """Prune AP clusters into summaries.

    1. keep at most one member per image (the most similar to the exemplar);
    2. drop outlier members (similarity < ``outlier_ratio`` × the cluster's median);
    3. require support from ``max(2, min_support, ceil(min_support_fraction × n_images))`` images
       (``n_images``: the images explained, default those with regions; a summary recurs, so it
       needs two images at least);
    4. drop incoherent clusters (coherence < ``coherence_ratio`` × the median coherence of the
       class's clusters that passed 3).

    Returns the summaries (sorted by support, then coherence) and counts of what was dropped.
    """
    g = graph.tocsr()
    if n_images is None:
        n_images = len(np.unique(image_id))
    need = max(2, int(min_support), math.ceil(min_support_fraction * n_images))
    clusters = []
    for ex in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == ex)
        sims = np.array([1.0 if m == ex else float(g[m, ex]) for m in members])
        best: dict[int, tuple[float, int]] = {}
        for m, s in zip(members, sims):
            img = int(image_id[m])
            if img not in best or s > best[img][0] or m == ex:
                if img in best and best[img][1] == ex:
                    continue
                best[img] = (s, int(m))
        kept = sorted(best.values(), key=lambda t: (t[1] != ex, -t[0]))
        others = np.array([s for s, m in kept if m != ex])
        if len(others):
            cut = outlier_ratio * float(np.median(others))
            kept = [(s, m) for s, m in kept if m == ex or s >= cut]
        clusters.append((int(ex), kept))
    stats = {"clusters": len(clusters), "low_support": 0, "incoherent": 0}
    supported = []
    for ex, kept in clusters:
        if len(kept) < need:
            stats["low_support"] += 1
            continue
        coherence = float(np.mean([s for s, m in kept if m != ex]))
        supported.append(
            Summary(ex, [m for _, m in kept], [s for s, _ in kept], len(kept), coherence)
        )
    if supported:
        median = float(np.median([s.coherence for s in supported]))
        out = [s for s in supported if s.coherence >= coherence_ratio * median]
        stats["incoherent"] = len(supported) - len(out)
    else:
        out = []
    out.sort(key=lambda s: (-s.support, -s.coherence))
    stats["summaries"] = len(out)
    stats["min_support"] = need
    return out, stats
