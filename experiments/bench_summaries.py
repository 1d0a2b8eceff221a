"""Benchmark the similarity graph + affinity propagation on N synthetic regions.

Prints one JSON line: n_regions, k, seconds (faiss graph + sparse AP), graph_seconds,
cluster_seconds, clusters, peak_rss_mb (of this process), dense_seconds (the exact dense mode,
when N <= --dense-max), ari_dense (agreement of the two clusterings).

    python experiments/bench_summaries.py [--n-regions 20000] [--k 50] [--dense-max 4000]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
from sklearn.metrics import adjusted_rand_score

from vislight.clustering.affinity import affinity_propagation, shifted_similarities
from vislight.similarity.graph import similarity_graph


def make_regions(n: int, dim: int, parts: int, seed: int = 0):
    """Regions of n/4 images (4 each): part-specific descriptors and positions, with noise."""
    rng = np.random.default_rng(seed)
    n_img = n // 4 + 1
    image_id = np.repeat(np.arange(n_img), 4)[:n]
    part = rng.integers(0, parts, n)
    centres = rng.normal(size=(parts, dim))
    desc = centres[part] + 0.6 * rng.normal(size=(n, dim))
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    where = rng.random((parts, 2)) * 0.6 + 0.2
    shift = rng.normal(scale=0.05, size=(n_img, 2))[image_id]
    scale = rng.uniform(0.1, 0.3, size=(n, 1))
    geometry = np.concatenate([where[part] + shift, scale], axis=1)
    return desc.astype(np.float32), image_id, geometry.astype(np.float32)


def cluster(graph, median):
    return affinity_propagation(shifted_similarities(graph), 1.3 * (median - 1.0))


def main() -> None:
    ap = argparse.ArgumentParser(description="similarity + clustering benchmark")
    ap.add_argument("--n-regions", type=int, default=20000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--parts", type=int, default=40)
    ap.add_argument("--dense-max", type=int, default=4000)
    args = ap.parse_args()
    desc, image_id, geometry = make_regions(args.n_regions, args.dim, args.parts)
    t0 = time.perf_counter()
    graph, median = similarity_graph(desc, image_id, geometry, mode="faiss", k=args.k)
    t1 = time.perf_counter()
    result = cluster(graph, median)
    t2 = time.perf_counter()
    out = {
        "n_regions": args.n_regions,
        "k": args.k,
        "edges": int(graph.nnz),
        "seconds": round(t2 - t0, 2),
        "graph_seconds": round(t1 - t0, 2),
        "cluster_seconds": round(t2 - t1, 2),
        "clusters": int(len(result.exemplars)),
        "ap_iterations": result.iterations,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "dense_seconds": None,
        "ari_dense": None,
    }
    if args.n_regions <= args.dense_max:
        t3 = time.perf_counter()
        dense = cluster(*similarity_graph(desc, image_id, geometry, mode="dense"))
        out["dense_seconds"] = round(time.perf_counter() - t3, 2)
        out["ari_dense"] = round(float(adjusted_rand_score(dense.labels, result.labels)), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
