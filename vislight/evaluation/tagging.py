"""Tagging summaries against ground-truth parts: purity, background share, needed parts, recall.

* A member region's tag is the ground-truth part with the largest share of its *own* pixels inside
  the region, if that share is at least ``min_share`` (0.3); otherwise ``background``.
* A summary's tag is its members' majority tag; its purity the share of members carrying it.
* ``mean_purity`` averages purity over part-tagged summaries only; ``background_share`` is the share
  of summaries tagged background (a cluster of background patches is trivially pure).
* A (class, part) pair is *needed* when removing only that part from the class's correctly
  classified images drops the class probability by at least ``needed_drop`` on average;
  ``part_recall`` is the share of needed pairs that tag at least one summary.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from vislight.data.parts import BACKGROUND_TAG, part_truth
from vislight.models.probe import class_probabilities

__all__ = ["BACKGROUND_TAG", "class_tagging", "part_reliance", "summary_tag"]


def summary_tag(member_tags: Sequence[str]) -> tuple[str, float]:
    """Majority tag of a summary and its purity (share of members with that tag)."""
    counts = Counter(member_tags)
    # ties: prefer a part over background, then the name (reverse alphabetical), so the result is deterministic
    tag, n = max(counts.items(), key=lambda kv: (kv[1], kv[0] != BACKGROUND_TAG, kv[0]))
    return tag, n / len(member_tags)


@torch.no_grad()
def part_reliance(
    model: torch.nn.Module,
    dataset,
    indices: Sequence[int],
    target: int,
    parts: Sequence[str],
    device,
    batch_size: int = 64,
) -> dict[str, float]:
    """Mean relative drop of ``target``'s probability when only one part is removed.

    ``dataset``'s ground truth (:func:`~vislight.data.parts.part_truth`) must re-render items
    without a part (the synthetic world). The watermark counts only over the images that carry it.
    """
    truth = part_truth(dataset)

    def probs(images: list[torch.Tensor]) -> torch.Tensor:
        return class_probabilities(model, images, target, device, batch_size)

    base = probs([dataset[i]["image"] for i in indices])
    result = {}
    for part in parts:
        use = [
            j
            for j, i in enumerate(indices)
            if part != "watermark" or truth.has_part(i, "watermark")
        ]
        if not use:
            continue
        removed = probs([truth.render_without(indices[j], [part]) for j in use])
        b = base[use]
        result[part] = float(((b - removed) / b.clamp_min(1e-12)).mean())
    return result


def class_tagging(summary_tags: list[tuple[str, float]], needed: Sequence[str]) -> dict:
    """Per-class tagging metrics from ``(tag, purity)`` per summary and the class's needed parts."""
    tagged = [p for t, p in summary_tags if t != BACKGROUND_TAG]
    found = sorted({t for t, _ in summary_tags if t != BACKGROUND_TAG})
    return {
        "purity": float(np.mean(tagged)) if tagged else None,
        "background_share": (sum(t == BACKGROUND_TAG for t, _ in summary_tags) / len(summary_tags))
        if summary_tags
        else None,
        "found_parts": found,
        "part_recall": (sum(p in found for p in needed) / len(needed)) if needed else None,
    }
