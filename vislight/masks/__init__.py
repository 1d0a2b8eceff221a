"""Crisp saliency masks: perturbation, energy, batched optimiser, Lightning module, cache, stage."""

from vislight.masks.optimize import MaskConfig, MaskResult, StageConfig, optimize_masks

__all__ = ["MaskConfig", "MaskResult", "StageConfig", "optimize_masks"]
