"""Similarity graph of the regions of one class.

``s(i, j) = max(0, cos(d_i, d_j)) · c(i, j)`` for regions of different images, where ``d`` are the
region descriptors and ``c`` the geometric consistency of the match (the local-offset idea of
Proposal Flow): the displacement (and log-scale change) from region i to region j should agree with
the displacements from i's neighbouring regions (other regions of i's image) to their own best
matches in j's image: ``c = exp(−w_xy·|Δxy − mean Δxy| − w_scale·|Δscale − mean Δscale|)``
(``c = 1`` when i has no neighbour matched in j's image).

Candidates come from faiss (the k most similar descriptors of every region, from other images), so
the graph has O(N·k) edges; ``mode="dense"`` scores every pair of regions (small N, tests).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import scipy.sparse as sp


def _faiss_index(dim: int, n: int, approx_above: int, nprobe: int, use_gpu: bool):
    # faiss logs every SIMD build it cannot load at INFO level; that is not news to the user.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    if n > approx_above:
        nlist = max(1, int(4 * math.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = nprobe
    else:
        index = faiss.IndexFlatIP(dim)
    if use_gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


def knn_candidates(
    desc: np.ndarray,
    image_id: np.ndarray,
    k: int,
    approx_above: int = 50_000,
    nprobe: int = 16,
    use_gpu: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` most similar regions of other images for every region (cosine, faiss).

    Args:
        desc: (N, D) L2-normalised descriptors. image_id: (N,) image of each region.

    Returns:
        ``rows, cols, cosine`` (E,) with ``rows != cols`` and different images.
    """
    n = desc.shape[0]
    x = np.ascontiguousarray(desc, dtype=np.float32)
    per_image = np.bincount(image_id).max() if n else 0
    kk = int(min(n, k + per_image))  # the same-image hits (the region itself first) are dropped
    if n < 2 or k < 1:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, np.float32)
    index = _faiss_index(x.shape[1], n, approx_above, nprobe, use_gpu)
    if not index.is_trained:
        index.train(x)
    index.add(x)
    sims, nbrs = index.search(x, kk)
    rows = np.repeat(np.arange(n), kk)
    cols, cos = nbrs.ravel(), sims.ravel()
    keep = (cols >= 0) & (image_id[np.clip(cols, 0, None)] != image_id[rows])
    rows, cols, cos = rows[keep], cols[keep], cos[keep]
    # at most k per row: results come sorted by similarity within each row
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
    keep = rank < k
    return rows[keep], cols[keep], cos[keep].astype(np.float32)


def dense_candidates(
    desc: np.ndarray, image_id: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of regions of different images (N² memory: small N only)."""
    cos = desc @ desc.T
    rows, cols = np.nonzero(image_id[:, None] != image_id[None, :])
    return rows, cols, cos[rows, cols].astype(np.float32)


def best_matches(
    desc: np.ndarray,
    image_id: np.ndarray,
    regions: np.ndarray,
    images: np.ndarray,
    chunk: int = 100_000,
) -> np.ndarray:
    """For each (region, image) pair, the region of that image most similar to it (cosine).

    Exact and cheap because an image holds few regions (a padded (P, max regions) score matrix).
    Returns (P,) indices.
    """
    n_img = int(image_id.max()) + 1
    by_image = np.argsort(image_id, kind="stable")
    count = np.bincount(image_id, minlength=n_img)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    width = int(count.max())
    slot = np.arange(width)
    out = np.empty(len(regions), dtype=np.int64)
    for lo in range(0, len(regions), chunk):
        r, j = regions[lo : lo + chunk], images[lo : lo + chunk]
        valid = slot[None, :] < count[j][:, None]
        cand = by_image[np.minimum(start[j][:, None] + slot[None, :], len(by_image) - 1)]
        score = np.einsum("pd,pmd->pm", desc[r], desc[cand], optimize=False)
        score[~valid] = -np.inf
        out[lo : lo + chunk] = cand[np.arange(len(r)), score.argmax(1)]
    return out


def flow_consistency(
    rows: np.ndarray,
    cols: np.ndarray,
    desc: np.ndarray,
    image_id: np.ndarray,
    geometry: np.ndarray,
    w_xy: float = 3.2,
    w_scale: float = 0.3,
) -> np.ndarray:
    """Geometric consistency (E,) of the matches ``rows[e] -> cols[e]`` (see the module docstring).

    ``geometry`` (N, 3) = centroid x, y and scale; displacements are in image sides (``w_xy`` is per
    image side: 0.05 per pixel × the image side in pixels) and scale changes in log2. The best
    match of every neighbour in the other image is exact (all regions of that image are scored), so
    the result does not depend on which candidate pairs were retrieved.
    """
    if len(rows) == 0:
        return np.ones(0, np.float32)
    n_img = int(image_id.max()) + 1
    # Neighbours of region i: the other regions of its image.
    by_image = np.argsort(image_id, kind="stable")
    count = np.bincount(image_id, minlength=n_img)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    e_count = count[image_id[rows]]
    e_idx = np.repeat(np.arange(len(rows)), e_count)
    offs = np.arange(len(e_idx)) - np.repeat(np.cumsum(e_count) - e_count, e_count)
    nb = by_image[start[image_id[rows]][e_idx] + offs]
    valid = nb != rows[e_idx]
    e_idx, nb = e_idx[valid], nb[valid]
    # Best match of each neighbour in the image of the matched region (each (n, J) once).
    key = nb.astype(np.int64) * n_img + image_id[cols[e_idx]]
    uniq, inv = np.unique(key, return_inverse=True)
    match = best_matches(desc, image_id, uniq // n_img, uniq % n_img)[inv]
    xy, logs = geometry[:, :2], np.log2(np.clip(geometry[:, 2], 1e-6, None))
    d_nb = xy[match] - xy[nb]
    s_nb = logs[match] - logs[nb]
    m = len(rows)
    cnt = np.bincount(e_idx, minlength=m)
    mean_dx = np.bincount(e_idx, d_nb[:, 0], minlength=m) / np.maximum(cnt, 1)
    mean_dy = np.bincount(e_idx, d_nb[:, 1], minlength=m) / np.maximum(cnt, 1)
    mean_ds = np.bincount(e_idx, s_nb, minlength=m) / np.maximum(cnt, 1)
    d = xy[cols] - xy[rows]
    ds = logs[cols] - logs[rows]
    dev = np.hypot(d[:, 0] - mean_dx, d[:, 1] - mean_dy)
    c = np.exp(-w_xy * dev - w_scale * np.abs(ds - mean_ds))
    return np.where(cnt > 0, c, 1.0).astype(np.float32)


def pair_sample(image_id: np.ndarray, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n_pairs`` random pairs of regions from different images (all of them when fewer)."""
    n = len(image_id)
    if n * (n - 1) <= n_pairs:
        rows, cols = np.nonzero(image_id[:, None] != image_id[None, :])
        return rows, cols
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n, n_pairs)
    cols = rng.integers(0, n, n_pairs)
    keep = image_id[rows] != image_id[cols]
    return rows[keep], cols[keep]


def similarity_graph(
    desc: np.ndarray,
    image_id: np.ndarray,
    geometry: np.ndarray,
    mode: str = "faiss",
    k: int = 10,
    w_xy: float = 3.2,
    w_scale: float = 0.3,
    approx_above: int = 50_000,
    nprobe: int = 16,
    sample_pairs: int = 200_000,
) -> tuple[sp.csr_matrix, float]:
    """Symmetric sparse (N, N) similarity matrix with values in (0, 1] (no diagonal), and the
    median similarity of ``sample_pairs`` random region pairs from different images.

    ``mode="faiss"``: k-NN candidates; ``"dense"``: all pairs. A pair found in one direction
    only gets that score both ways; found in both, the larger one.
    """
    if mode == "faiss":
        rows, cols, cos = knn_candidates(desc, image_id, k, approx_above, nprobe)
    elif mode == "dense":
        rows, cols, cos = dense_candidates(desc, image_id)
    else:
        raise ValueError(f"similarity.mode={mode!r} is unknown: use faiss or dense")
    c = flow_consistency(rows, cols, desc, image_id, geometry, w_xy, w_scale)
    s = np.clip(cos, 0, 1) * c
    keep = s > 0
    n = len(image_id)
    g = sp.coo_matrix((s[keep], (rows[keep], cols[keep])), shape=(n, n)).tocsr()
    g = g.maximum(g.T).tocsr()
    # Typical similarity of *any* two regions (not only of the candidates), for the AP preference:
    # the same seeded sample of pairs in both modes, scored with the same best matches.
    pr, pc = pair_sample(image_id, sample_pairs)
    ps = np.clip(np.einsum("ij,ij->i", desc[pr], desc[pc]), 0, 1)
    ps = ps * flow_consistency(pr, pc, desc, image_id, geometry, w_xy, w_scale)
    return g, (float(np.median(ps)) if len(ps) else 0.0)
