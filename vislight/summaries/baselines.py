"""Baselines run through the same region → similarity → clustering → pruning code as our summaries.

* ``gradcam``: Grad-CAM maps of the explained class at the descriptor layer, thresholded so that
  their salient area equals our mask's for the same image;
* ``random``: our mask's salient set moved to a random place of the same image (same shapes, same
  area; cyclic shift);
* ``kmeans``: our regions, clustered by k-means with a fixed K instead of affinity propagation.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from vislight.models.probe import FeatureHook, feature_grid

BASELINES = ("gradcam", "random", "kmeans")


def gradcam(
    model: torch.nn.Module, layer: torch.nn.Module, image: torch.Tensor, target: int
) -> np.ndarray:
    """Grad-CAM (Selvaraju et al.) of ``target`` at ``layer``: (3, H, W) image -> (H, W) map in [0, 1]."""
    x = image.unsqueeze(0).detach()
    with torch.enable_grad(), FeatureHook(layer) as hook:
        logits = model(x)
        acts = hook.output  # (1, C, h, w); for tokens a reshaped view of hook.raw
        (grads,) = torch.autograd.grad(logits[0, target], hook.raw)
        grads = feature_grid(grads)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    return (cam / cam.max().clamp_min(1e-12)).detach().cpu().numpy()


def area_matched_mask(saliency: np.ndarray, area: float) -> np.ndarray:
    """A preservation mask (1 keep, 0 salient) whose salient set is the top ``area`` share of ``saliency``."""
    if area <= 0:
        return np.ones_like(saliency, dtype=np.float32)
    threshold = np.quantile(saliency, 1 - area)
    return (saliency < threshold).astype(np.float32)


def sharp_source(
    name: str, model: torch.nn.Module, layer: torch.nn.Module, seed: int = 0
) -> Callable:
    """``fn(our_sharp, image, target) -> sharp`` giving the baseline's mask for one image."""

    def gradcam_mask(sharp, image, target):
        return area_matched_mask(gradcam(model, layer, image, target), float((sharp < 0.5).mean()))

    def random_mask(sharp, image, target):
        # the shift depends on the seed and the mask only, not on which images came before (a
        # class's regions may come from the cache while another's are collected)
        rng = np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(sharp).tobytes())])
        h, w = sharp.shape
        return np.roll(sharp, (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1))

    if name == "gradcam":
        return gradcam_mask
    if name == "random":
        return random_mask
    raise ValueError(f"no mask source for baseline {name!r}")


def kmeans_labels(desc: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means on descriptors; each region's label is the index of its cluster's medoid (the member
    nearest the centroid), like an affinity-propagation exemplar."""
    k = max(1, min(int(k), len(desc)))
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(desc)
    labels = np.empty(len(desc), dtype=int)
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)
        if len(members) == 0:
            continue
        medoid = members[np.argmin(((desc[members] - km.cluster_centers_[c]) ** 2).sum(1))]
        labels[members] = medoid
    return labels
