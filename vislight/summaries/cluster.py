"""A :class:`RegionSet` -> summaries: similarity graph, affinity propagation (or k-means), pruning.

Works on the measured regions only (no network, no images), so changing a clustering or similarity
setting re-runs in seconds on a cached RegionSet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from vislight.clustering.affinity import affinity_propagation, shifted_similarities
from vislight.clustering.merge import merge_summaries
from vislight.clustering.summaries import Summary, build_summaries
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


def ap_labels(graph: sp.csr_matrix, median_similarity: float, cluster_cfg: Mapping):
    """Affinity propagation on the shifted graph: (labels (N,), result or None when no edges)."""
    shifted = shifted_similarities(graph)
    if shifted.nnz == 0:
        return np.full(graph.shape[0], -1), None
    # Shifted similarities are s - 1 <= 0; the preference is a multiple of their median over
    # region pairs from different images (estimated from a sample).
    preference = float(cluster_cfg["preference_factor"]) * (median_similarity - 1.0)
    ap = affinity_propagation(
        shifted,
        preference,
        damping=float(cluster_cfg["damping"]),
        max_iter=int(cluster_cfg["max_iter"]),
        convergence_iter=int(cluster_cfg["convergence_iter"]),
    )
    return ap.labels, ap


def cluster_regions(
    regions: RegionSet,
    similarity_cfg: Mapping,
    cluster_cfg: Mapping,
    kmeans_k: int | None = None,
) -> Clustering:
    """Summaries of one class's regions: affinity propagation, pruning, then (``cluster.merge``)
    merging the summaries of one part (vislight/clustering/merge.py). ``kmeans_k``: k-means with a
    fixed K instead, not merged (the k-means baseline)."""
    graph, median = region_graph(regions, similarity_cfg)
    stats: dict = {"edges": int(graph.nnz)}
    descs = centered_descriptors(regions.descriptors, bool(similarity_cfg.get("center", True)))
    if kmeans_k:
        labels = kmeans_labels(descs, kmeans_k)
    else:
        labels, ap = ap_labels(graph, median, cluster_cfg)
        stats["ap_clusters"] = int(len(ap.exemplars)) if ap is not None else 0
        stats["ap_converged"] = bool(ap.converged) if ap is not None else False
    summaries, pruning = build_summaries(
        labels,
        graph,
        regions.image_id,
        min_support=int(cluster_cfg["min_support"]),
        min_support_fraction=float(cluster_cfg["min_support_fraction"]),
        coherence_ratio=float(cluster_cfg["coherence_ratio"]),
        outlier_ratio=float(cluster_cfg["outlier_ratio"]),
        n_images=regions.n_images,
    )
    stats["pruning"] = pruning
    if not kmeans_k and cluster_cfg.get("merge", False):
        summaries, stats["merged"] = merge_summaries(
            summaries,
            regions.descriptors,
            regions.image_id,
            float(cluster_cfg["merge_ratio"]),
            masks=regions.masks,
            max_side_by_side=cluster_cfg.get("merge_max_side_by_side"),
        )
    return Clustering(labels, graph, summaries, stats)


def member_labels(summaries: list[Summary], n: int) -> np.ndarray:
    """(N,) summary number of each region that is a member of a summary, -1 otherwise."""
    out = np.full(n, -1)
    for k, s in enumerate(summaries):
        out[s.members] = k
    return out
