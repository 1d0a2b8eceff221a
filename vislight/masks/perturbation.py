"""Blur perturbation: ``Φ(x; m) = m·x + (1−m)·blur(x)`` (1 keeps a pixel, 0 replaces it by its blur)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def scaled_blur(
    size: int, kernel_size: float, sigma: float, reference_size: int = 224
) -> tuple[int, float]:
    """Blur kernel size (odd, >= 3) and sigma for an image of side ``size``, scaled from ``reference_size``."""
    scale = size / reference_size
    k = max(3, int(round(kernel_size * scale)))
    return k + (1 - k % 2), max(sigma * scale, 1e-3)


def gaussian_kernel1d(
    kernel_size: int, sigma: float, device=None, dtype=torch.float32
) -> torch.Tensor:
    """(kernel_size,) normalised Gaussian weights."""
    x = torch.arange(kernel_size, device=device, dtype=dtype) - (kernel_size - 1) / 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding: (B, C, H, W) -> (B, C, H, W)."""
    b, c, h, w = x.shape
    k = gaussian_kernel1d(kernel_size, sigma, x.device, x.dtype)
    pad = kernel_size // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    y = F.pad(x.reshape(b * c, 1, h, w), (pad, pad, pad, pad), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.view(b, c, h, w)


def perturb(x: torch.Tensor, mask: torch.Tensor, blurred: torch.Tensor) -> torch.Tensor:
    """``Φ(x; m)``: x (B, 3, H, W), mask (B, 1, H, W) in [0, 1], blurred = blur(x) (B, 3, H, W)."""
    return blurred + mask * (x - blurred)


def disc_init(b: int, h: int, w: int, device=None) -> torch.Tensor:
    """(B, 1, H, W) mask: 0 inside the inscribed disc, 1 outside (the authors' initialisation)."""
    yy = torch.arange(h, device=device, dtype=torch.float32).view(-1, 1) + 0.5
    xx = torch.arange(w, device=device, dtype=torch.float32).view(1, -1) + 0.5
    r = min(h, w) / 2
    inside = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= r**2
    return (~inside).float().expand(b, 1, h, w).clone()
