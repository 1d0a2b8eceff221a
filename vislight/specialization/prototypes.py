"""Prototypes (unit vectors in a layer's feature space) and the evidence they give an image.

Features are centred on ``mean`` (the mean feature vector of the group's training images: ReLU
features are all positive, so raw cosines are all high) and L2-normalised before any comparison.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from vislight.summaries.rle import rle_decode


def unit_cells(maps: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) feature maps -> (N, h*w, C) centred unit vectors, one per position."""
    cells = maps.flatten(2).transpose(1, 2) - mean
    return F.normalize(cells, dim=-1)


def region_descriptor(fmap: torch.Tensor, region: np.ndarray, mean: torch.Tensor) -> torch.Tensor:
    """Centred unit descriptor of one region: the feature map (C, h, w) averaged with weights =
    the share of each cell the (H, W) boolean ``region`` covers."""
    w = torch.from_numpy(region.astype(np.float32))[None, None]
    w = F.adaptive_avg_pool2d(w, fmap.shape[-2:])[0, 0]
    pooled = (fmap * w).sum((1, 2)) / w.sum().clamp(min=1e-8)
    return F.normalize(pooled - mean, dim=0)


def summary_prototypes(
    summaries: Sequence[Mapping],
    maps_of: Mapping[int, torch.Tensor],
    mean: torch.Tensor,
) -> torch.Tensor:
    """One prototype per summary: the normalised mean of its members' region descriptors.

    Args:
        summaries: entries of ``summaries.json`` (members with ``index`` and ``mask_rle``).
        maps_of: dataset index -> feature map (C, h, w) of that image.
    Returns:
        (S, C) unit prototypes (members whose image is missing from ``maps_of`` are left out).
    """
    protos = []
    for s in summaries:
        descs = [
            region_descriptor(maps_of[m["index"]], rle_decode(m["mask_rle"]), mean)
            for m in s["members"]
            if m["index"] in maps_of
        ]
        if descs:
            protos.append(F.normalize(torch.stack(descs).mean(0), dim=0))
    if not protos:
        return torch.zeros(0, mean.numel())
    return torch.stack(protos)


def kmeans_prototypes(maps: torch.Tensor, mean: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Control prototypes not taken from summaries: ``k`` spherical k-means centroids of every
    feature-map position of ``maps`` (N, C, h, w). Returns (k, C) unit vectors."""
    cells = unit_cells(maps, mean).reshape(-1, maps.shape[1]).numpy()
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(cells)
    return F.normalize(torch.from_numpy(km.cluster_centers_).float(), dim=1)


def prototype_evidence(
    maps: torch.Tensor, prototypes: torch.Tensor, mean: torch.Tensor, chunk: int = 64
) -> torch.Tensor:
    """How strongly each prototype appears in each image: the maximum cosine similarity over the
    positions of the feature map.

    Args:
        maps: (N, C, h, w); prototypes: (K, C) unit vectors.
    Returns:
        (N, K) in [-1, 1].
    """
    out = []
    for start in range(0, len(maps), chunk):
        cells = unit_cells(maps[start : start + chunk], mean)
        out.append((cells @ prototypes.T).amax(1))
    return torch.cat(out) if out else torch.zeros(0, len(prototypes))
