"""Energy terms of the mask objective, per image (shape (B,)); the optimiser sums them over the batch.

``E(m) = p_c(Φ(x; m)) + λ1·mean|1−m| + λ2·(mean|∂y m|^β + mean|∂x m|^β) + λ3·mean|m(1−m)|``
"""

from __future__ import annotations

import torch


def class_score(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Softmax probability of ``target``: logits (B, K), target (B,) -> (B,)."""
    return logits.softmax(dim=1).gather(1, target.view(-1, 1)).squeeze(1)


def area_term(mask: torch.Tensor) -> torch.Tensor:
    """mean|1 − m| per image: (B, 1, H, W) -> (B,); the share of the image deleted."""
    return (1 - mask).abs().flatten(1).mean(1)


def tv_term(mask: torch.Tensor, beta: float) -> torch.Tensor:
    """mean|∂y m|^β + mean|∂x m|^β per image: (B, 1, H, W) -> (B,)."""
    dy = (mask[:, :, 1:, :] - mask[:, :, :-1, :]).abs().pow(beta).flatten(1).mean(1)
    dx = (mask[:, :, :, 1:] - mask[:, :, :, :-1]).abs().pow(beta).flatten(1).mean(1)
    return dy + dx


def binarization_term(mask: torch.Tensor) -> torch.Tensor:
    """mean|m(1 − m)| per image: (B, 1, H, W) -> (B,); zero for a binary mask."""
    return (mask * (1 - mask)).abs().flatten(1).mean(1)


def mask_energy(
    score: torch.Tensor, mask: torch.Tensor, l1: float, tv: float, beta: float, binarize: float
) -> torch.Tensor:
    """Total energy per image: score (B,), mask (B, 1, H, W) -> (B,)."""
    energy = score + l1 * area_term(mask)
    if tv:
        energy = energy + tv * tv_term(mask, beta)
    if binarize:
        energy = energy + binarize * binarization_term(mask)
    return energy
