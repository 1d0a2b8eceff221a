"""Baselines for the summaries: Grad-CAM, area-matched thresholds, random placement, k-means."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vislight.summaries.baselines import area_matched_mask, gradcam, kmeans_labels, sharp_source


class _RedSpot(nn.Module):
    """Class 1's logit is the red intensity of the top-left quarter (through a conv feature map)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, 0] = 1.0

    def forward(self, x):
        f = self.features(x)
        h, w = f.shape[-2:]
        spot = f[:, 0, : h // 2, : w // 2].mean((1, 2))
        return torch.stack([torch.zeros_like(spot), 10 * spot], dim=1)


def test_gradcam_highlights_the_evidence():
    model = _RedSpot().eval()
    image = torch.zeros(3, 16, 16)
    image[0, :8, :8] = 1.0
    cam = gradcam(model, model.features, image, target=1)
    assert cam.shape == (16, 16) and cam.min() >= 0 and cam.max() == 1.0
    assert cam[:8, :8].mean() > 5 * cam[8:, 8:].mean()


def test_area_matched_mask_has_the_requested_salient_area():
    rng = np.random.default_rng(0)
    saliency = rng.random((32, 32))
    for area in (0.05, 0.2, 0.5):
        mask = area_matched_mask(saliency, area)
        assert abs((mask < 0.5).mean() - area) < 1 / 1024 + 1e-9
        # the salient pixels are the most salient ones
        assert saliency[mask < 0.5].min() >= saliency[mask >= 0.5].max()
    assert (area_matched_mask(saliency, 0.0) == 1).all()


def test_random_source_keeps_shape_and_area_but_moves_it():
    sharp = np.ones((20, 20), np.float32)
    sharp[2:6, 3:9] = 0
    fn = sharp_source("random", None, None, seed=3)
    moved = [fn(sharp, None, 0) for _ in range(5)]
    for m in moved:
        assert (m < 0.5).sum() == (sharp < 0.5).sum()
    assert any(not np.array_equal(m, sharp) for m in moved)


def test_kmeans_labels_are_medoids_of_fixed_k_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], float)
    desc = np.concatenate([c + 0.1 * rng.normal(size=(8, 2)) for c in centres])
    labels = kmeans_labels(desc, 3)
    assert len(set(labels)) == 3
    for ex in set(labels):
        members = np.flatnonzero(labels == ex)
        assert labels[ex] == ex and len(members) == 8
        # the exemplar is the member nearest its cluster mean
        mean = desc[members].mean(0)
        assert ex == members[np.argmin(((desc[members] - mean) ** 2).sum(1))]
