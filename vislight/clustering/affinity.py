"""Affinity propagation on a sparse similarity graph (Frey & Dueck 2007, messages on edges only).

Memory and time grow with the number of edges, never N²: missing edges mean "cannot be chosen as
exemplar by that point". With a dense graph it gives the same result as the dense algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class APResult:
    """``labels`` (N,): index of each point's exemplar (-1 when it has no edge to any exemplar);
    ``exemplars``: sorted exemplar indices; ``iterations`` run; ``converged``."""

    labels: np.ndarray
    exemplars: np.ndarray
    iterations: int
    converged: bool


def shifted_similarities(graph: sp.csr_matrix) -> sp.csr_matrix:
    """Similarities in (0, 1] shifted to <= 0 (``s − 1``), keeping the sparsity pattern."""
    g = graph.tocsr().copy()
    g.data = g.data - 1.0
    return g


def affinity_propagation(
    graph: sp.csr_matrix,
    preference: float | np.ndarray,
    damping: float = 0.9,
    max_iter: int = 1000,
    convergence_iter: int = 100,
) -> APResult:
    """Cluster the points of ``graph`` (N, N) sparse similarities (larger = more similar, any sign).

    Args:
        preference: self-similarity of every point (scalar or (N,)); lower -> fewer clusters.
        damping: message damping in [0.5, 1).
        max_iter / convergence_iter: stop when the exemplar set is unchanged for
            ``convergence_iter`` iterations, or after ``max_iter``.
    """
    if not 0.5 <= damping < 1:
        raise ValueError(f"cluster.damping={damping} must lie in [0.5, 1)")
    n = graph.shape[0]
    g = graph.tocoo()
    off = g.row != g.col
    rows = np.concatenate([g.row[off], np.arange(n)])
    cols = np.concatenate([g.col[off], np.arange(n)])
    pref = np.broadcast_to(np.asarray(preference, dtype=np.float64), (n,))
    s = np.concatenate([g.data[off].astype(np.float64), pref])
    order = np.lexsort((cols, rows))
    rows, cols, s = rows[order], cols[order], s[order]
    # Tiny deterministic noise breaks ties (as in the reference implementation).
    s = s + 1e-6 * np.abs(s).max(initial=1.0) * np.random.default_rng(0).standard_normal(len(s))
    is_self = rows == cols
    floor = np.float32(s.min(initial=0.0) - 1.0)
    starts = np.searchsorted(rows, np.arange(n))
    s = s.astype(np.float32)
    m = len(s)
    r = np.zeros(m, np.float32)
    a = np.zeros(m, np.float32)
    buf = np.empty(m, np.float32)
    last = None
    stable = 0
    it = 0
    converged = False
    for step in range(1, max_iter + 1):
        it = step
        # responsibilities: r(i,k) = s(i,k) - max_{k' != k} (a(i,k') + s(i,k'))
        np.add(a, s, out=buf)
        max1 = np.maximum.reduceat(buf, starts)
        is_max = buf == max1[rows]
        n_max = np.add.reduceat(is_max.astype(np.int32), starts)
        buf[is_max] = -np.inf
        max2 = np.maximum(np.maximum.reduceat(buf, starts), floor)
        max2 = np.where(n_max > 1, max1, max2)  # a tie for the maximum: the second best equals it
        other = np.where(is_max, max2[rows], max1[rows])
        np.subtract(s, other, out=buf)
        r *= damping
        r += (1 - damping) * buf
        # availabilities: a(i,k) = min(0, r(k,k) + sum_{i' not in {i,k}} max(0, r(i',k))), a(k,k) = sum_{i' != k} ...
        rp = np.maximum(r, 0)
        rp[is_self] = r[is_self]
        colsum = np.bincount(cols, weights=rp, minlength=n).astype(np.float32)
        np.subtract(colsum[cols], rp, out=buf)
        diag = buf[is_self].copy()
        np.minimum(buf, 0, out=buf)
        buf[is_self] = diag
        a *= damping
        a += (1 - damping) * buf
        ex = np.flatnonzero(a[is_self] + r[is_self] > 0)
        if last is not None and len(ex) == len(last) and np.array_equal(ex, last):
            stable += 1
        else:
            stable = 0
        last = ex
        if stable >= convergence_iter and len(ex) > 0:
            converged = True
            break
    exemplars = last if last is not None else np.zeros(0, int)
    labels = np.full(n, -1, dtype=int)
    if len(exemplars):
        is_ex = np.zeros(n, bool)
        is_ex[exemplars] = True
        cand = is_ex[cols] & ~is_self
        best = np.full(n, -np.inf)
        np.maximum.at(best, rows[cand], s[cand])
        hit = cand & (s == best[rows])
        labels[rows[hit]] = cols[hit]
        labels[exemplars] = exemplars
    return APResult(
        labels=labels, exemplars=np.asarray(exemplars), iterations=it, converged=converged
    )
