"""A :class:`RegionSet` -> summaries: similarity graph, affinity propagation (or k-means), pruning.

Works on the measured regions only (no network, no images), so changing a clustering or similarity
setting re-runs in seconds on a cached RegionSet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import silhouette_score

from vislight.clustering.affinity import affinity_propagation, shifted_similarities
from vislight.clustering.merge import merge_summaries
from vislight.clustering.summaries import Summary, build_summaries
from vislight.config_ranges import POSITIVE
from vislight.errors import ConfigError
from vislight.similarity.graph import similarity_graph
from vislight.summaries.baselines import kmeans_labels
from vislight.summaries.regionset import RegionSet


@dataclass
class Clustering:
    """``labels`` (N,) exemplar region per region (-1: none); ``graph`` (N, N) similarities;
    ``summaries`` after pruning; ``stats`` what was dropped and why."""

    labels: np.ndarray
    graph: sp.csr_matrix
    summaries: list[Summary]
    stats: dict


def centered_descriptors(descriptors: np.ndarray, center: bool = True) -> np.ndarray:
    """(N, C) -> (N, C): minus the class's mean region descriptor, re-normalised. ReLU features are
    all positive, so raw cosines are all high; centring lets the cosine separate parts."""
    if not center or len(descriptors) == 0:
        return descriptors
    d = descriptors - descriptors.mean(0, keepdims=True)
    return d / np.linalg.norm(d, axis=1, keepdims=True).clip(min=1e-8)


def region_graph(regions: RegionSet, similarity_cfg: Mapping, mode: str | None = None):
    """(graph (N, N) csr, median similarity of region pairs from different images)."""
    return similarity_graph(
        centered_descriptors(regions.descriptors, bool(similarity_cfg.get("center", True))),
        regions.image_id,
        regions.geometry,
        mode=str(mode or similarity_cfg["mode"]),
        k=int(similarity_cfg["k"]),
        w_xy=float(similarity_cfg["w_xy"]) * regions.side,
        w_scale=float(similarity_cfg["w_scale"]),
        approx_above=int(similarity_cfg["approx_above"]),
        nprobe=int(similarity_cfg["nprobe"]),
    )


def preference_factors(cluster_cfg: Mapping) -> list[float]:
    """``cluster.preference_factor`` as an ascending list: one factor, or the factors to scan
    (each > 0)."""
    value = cluster_cfg["preference_factor"]
    scan = isinstance(value, Sequence) and not isinstance(value, str)
    factors = list(value) if scan else [value]
    if not factors or not all(POSITIVE.contains(f) for f in factors):
        raise ConfigError(
            f"cluster.preference_factor={value!r} must be a number > 0 or a non-empty list of them "
            "(the factors to scan), e.g. 1.3 or [1.0, 2.0, 3.0]"
        )
    return sorted(float(f) for f in factors)


def ap_labels(graph: sp.csr_matrix, median_similarity: float, factor: float, cluster_cfg: Mapping):
    """Affinity propagation on the shifted graph with preference ``factor`` x (median - 1):
    (labels (N,), result or None when no edges)."""
    shifted = shifted_similarities(graph)
    if shifted.nnz == 0:
        return np.full(graph.shape[0], -1), None
    # Shifted similarities are s - 1 <= 0; the preference is a multiple of their median over
    # region pairs from different images (estimated from a sample).
    ap = affinity_propagation(
        shifted,
        float(factor) * (median_similarity - 1.0),
        damping=float(cluster_cfg["damping"]),
        max_iter=int(cluster_cfg["max_iter"]),
        convergence_iter=int(cluster_cfg["convergence_iter"]),
    )
    return ap.labels, ap


def summaries_silhouette(summaries: list[Summary], descriptors: np.ndarray) -> float:
    """Mean silhouette (cosine) of the summaries' members, each labelled by its summary; -1 when
    there are fewer than two summaries (a single summary has no silhouette).

    Args:
        summaries: a class's summaries (members are region indices, each in one summary).
        descriptors: (N, C) region descriptors (centred, as the region graph sees them).
    """
    labels = member_labels(summaries, len(descriptors))
    members = labels >= 0
    if len(summaries) < 2 or members.sum() <= len(summaries):
        return -1.0
    return float(silhouette_score(descriptors[members], labels[members], metric="cosine"))


def cluster_regions(
    regions: RegionSet,
    similarity_cfg: Mapping,
    cluster_cfg: Mapping,
    kmeans_k: int | None = None,
) -> Clustering:
    """Summaries of one class's regions: affinity propagation, pruning, then (``cluster.merge``)
    merging the summaries of one part (vislight/clustering/merge.py). With several
    ``cluster.preference_factor`` values, each is clustered on the same graph and the summaries
    whose members are best separated (highest :func:`summaries_silhouette`; the smaller factor on a
    tie) are kept, as adaptive affinity propagation selects its preference. ``kmeans_k``: k-means
    with a fixed K instead, not merged (the k-means baseline)."""
    graph, median = region_graph(regions, similarity_cfg)
    descs = centered_descriptors(regions.descriptors, bool(similarity_cfg.get("center", True)))
    if kmeans_k:
        labels = kmeans_labels(descs, kmeans_k)
        summaries, pruning = _pruned(labels, graph, regions, cluster_cfg)
        return Clustering(labels, graph, summaries, {"edges": int(graph.nnz), "pruning": pruning})
    factors = preference_factors(cluster_cfg)
    best: tuple[float, Clustering] | None = None
    silhouettes = []
    for factor in factors:
        labels, ap = ap_labels(graph, median, factor, cluster_cfg)
        summaries, pruning = _pruned(labels, graph, regions, cluster_cfg)
        stats: dict = {
            "edges": int(graph.nnz),
            "ap_clusters": int(len(ap.exemplars)) if ap is not None else 0,
            "ap_converged": bool(ap.converged) if ap is not None else False,
            "preference_factor": factor,
            "pruning": pruning,
        }
        if cluster_cfg.get("merge", False):
            summaries, stats["merged"] = merge_summaries(
                summaries,
                regions.descriptors,
                regions.image_id,
                float(cluster_cfg["merge_ratio"]),
                masks=regions.masks,
                max_side_by_side=cluster_cfg.get("merge_max_side_by_side"),
            )
        score = summaries_silhouette(summaries, descs) if len(factors) > 1 else 0.0
        score = score if np.isfinite(score) else -1.0  # e.g. identical descriptors
        silhouettes.append(round(score, 4))
        if best is None or score > best[0]:
            best = (score, Clustering(labels, graph, summaries, stats))
    chosen = best[1]
    if len(factors) > 1:
        chosen.stats["silhouettes"] = silhouettes
    return chosen


def _pruned(labels: np.ndarray, graph: sp.csr_matrix, regions: RegionSet, cluster_cfg: Mapping):
    """(summaries, pruning stats) of one labelling (vislight/clustering/summaries.py)."""
    return build_summaries(
        labels,
        graph,
        regions.image_id,
        min_support=int(cluster_cfg["min_support"]),
        min_support_fraction=float(cluster_cfg["min_support_fraction"]),
        coherence_ratio=float(cluster_cfg["coherence_ratio"]),
        outlier_ratio=float(cluster_cfg["outlier_ratio"]),
        n_images=regions.n_images,
    )


def member_labels(summaries: list[Summary], n: int) -> np.ndarray:
    """(N,) summary number of each region that is a member of a summary, -1 otherwise."""
    out = np.full(n, -1)
    for k, s in enumerate(summaries):
        out[s.members] = k
    return out
