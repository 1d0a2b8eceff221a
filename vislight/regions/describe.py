"""Per-region measurements with the explained network: drop score and descriptor.

``region_drop``: blur only the region and measure the relative drop of the class probability,
``(p(x) − p(Φ(x; 1 − region))) / p(x)``. ``region_descriptors``: the network's feature map at a layer,
average-pooled inside the region (weights = the region's coverage of each feature cell), L2-normalised,
plus the region's geometry (centroid and scale in image-side units).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vislight.masks.perturbation import gaussian_blur, perturb, scaled_blur
from vislight.models.probe import FeatureHook, class_probabilities


def region_geometry(masks: np.ndarray) -> np.ndarray:
    """(R, H, W) bool -> (R, 3): centroid x, centroid y (image-side units) and scale sqrt(area share)."""
    r, h, w = masks.shape
    ys = (np.arange(h) + 0.5) / h
    xs = (np.arange(w) + 0.5) / w
    area = masks.reshape(r, -1).sum(1).clip(min=1)
    cx = (masks.sum(1) * xs).sum(1) / area
    cy = (masks.sum(2) * ys).sum(1) / area
    return np.stack([cx, cy, np.sqrt(area / (h * w))], axis=1).astype(np.float32)


@torch.no_grad()
def describe_regions(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    image: torch.Tensor,
    masks: np.ndarray,
    target: int,
    blur_kernel: float,
    blur_sigma: float,
    reference_size: int = 224,
) -> dict[str, np.ndarray]:
    """Drops and descriptors of the regions of one image.

    Args:
        model: classifier on [0, 1] images (eval mode); ``layer`` one of its modules.
        image: (3, H, W) in [0, 1] on the model's device.
        masks: (R, H, W) bool region masks.
        target: the class whose probability is measured.

    Returns:
        ``{"drop": (R,), "descriptor": (R, C) float32 L2-normalised, "geometry": (R, 3)}``.
    """
    x = image.unsqueeze(0)
    region = (
        torch.from_numpy(masks).to(device=image.device, dtype=x.dtype).unsqueeze(1)
    )  # (R, 1, H, W)
    with FeatureHook(layer) as hook:
        model(x)
        feats = hook.output  # (1, C, h, w)
    weights = F.adaptive_avg_pool2d(region, feats.shape[-2:])  # coverage of each feature cell
    pooled = (weights * feats).sum((2, 3)) / weights.sum((2, 3)).clamp_min(1e-8)
    desc = F.normalize(pooled, dim=1).cpu().numpy().astype(np.float32)
    drop = blur_drops(model, image, masks, target, blur_kernel, blur_sigma, reference_size)
    return {"drop": drop, "descriptor": desc, "geometry": region_geometry(masks)}


@torch.no_grad()
def blurred_probabilities(
    model: torch.nn.Module,
    image: torch.Tensor,
    masks: np.ndarray,
    target: int,
    blur_kernel: float,
    blur_sigma: float,
    reference_size: int = 224,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``target``'s probability in ``image`` (3, H, W), (1,), and with each (H, W) region of
    ``masks`` (R, H, W) blurred, (R,): ``(p(x), p(Φ(x; 1 − region)))`` on the CPU."""
    device = image.device
    r = masks.shape[0]
    _, h, w = image.shape
    x = image.unsqueeze(0)
    k, sigma = scaled_blur(min(h, w), blur_kernel, blur_sigma, reference_size)
    blurred = gaussian_blur(x, k, sigma)
    region = torch.from_numpy(masks).to(device=device, dtype=x.dtype).unsqueeze(1)
    p_x = class_probabilities(model, x, target, device)
    p = class_probabilities(
        model,
        perturb(x.expand(r, -1, -1, -1), 1 - region, blurred.expand(r, -1, -1, -1)),
        target,
        device,
        batch_size=max(r, 1),
    )
    return p_x, p


def blur_drops(
    model: torch.nn.Module,
    image: torch.Tensor,
    masks: np.ndarray,
    target: int,
    blur_kernel: float,
    blur_sigma: float,
    reference_size: int = 224,
) -> np.ndarray:
    """Relative drop of ``target``'s probability when each (H, W) region of ``masks`` (R, H, W) is
    blurred in ``image`` (3, H, W): (R,) = (p(x) − p(Φ(x; 1 − region))) / p(x)."""
    p_x, p = blurred_probabilities(
        model, image, masks, target, blur_kernel, blur_sigma, reference_size
    )
    return ((p_x - p) / p_x.clamp_min(1e-12)).numpy().astype(np.float32)


def log_odds(p: np.ndarray | float, eps: float = 1e-6) -> np.ndarray:
    """log(p / (1 − p)), p clipped to [eps, 1 − eps]: a probability's evidence, which keeps
    moving where the probability itself is saturated near 1."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def random_placements(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same region shapes moved to random places (cyclic shifts: area is kept exactly)."""
    out = np.empty_like(masks)
    h, w = masks.shape[1:]
    for i, m in enumerate(masks):
        out[i] = np.roll(m, (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1))
    return out
