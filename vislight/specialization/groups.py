"""Groups of classes the base classifier confuses: ``soft_confusion`` and ``confused_groups``."""

from __future__ import annotations

import numpy as np


def soft_confusion(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean predicted probability of class j over the images of class i.

    Args:
        probs: (N, num_classes) softmax outputs.
        labels: (N,) true labels.
    Returns:
        (num_classes, num_classes) matrix; row i is zero when class i has no image. Unlike the
        argmax confusion matrix it still ranks classes when the model is right on every image.
    """
    conf = np.zeros((num_classes, num_classes))
    for c in np.unique(labels):
        conf[c] = probs[labels == c].mean(0)
    return conf


def confused_groups(confusion: np.ndarray, num_groups: int, group_size: int) -> list[list[int]]:
    """Disjoint groups of the most confused classes.

    Greedy: the pair with the largest symmetric off-diagonal confusion ``C + Cᵀ`` among unused
    classes starts a group, which then grows by the class most confused with its members, until it
    holds ``group_size`` classes; repeated ``num_groups`` times.

    Args:
        confusion: (K, K) (soft) confusion matrix, rows = true class; classes whose row is zero
            (no image) join no group.
    Returns:
        Up to ``num_groups`` sorted lists of class indices.
    """
    if group_size < 2:
        raise ValueError(f"specialize.group_size={group_size} is invalid: it must be >= 2")
    sym = confusion + confusion.T
    np.fill_diagonal(sym, -np.inf)
    free = {i for i in range(len(confusion)) if confusion[i].sum() > 0}
    groups: list[list[int]] = []
    while len(groups) < num_groups and len(free) >= group_size:
        idx = sorted(free)
        sub = sym[np.ix_(idx, idx)]
        i, j = np.unravel_index(np.argmax(sub), sub.shape)
        group = [idx[i], idx[j]]
        while len(group) < group_size:
            rest = [c for c in idx if c not in group]
            group.append(max(rest, key=lambda c: sym[c, group].sum()))
        groups.append(sorted(group))
        free -= set(group)
    return groups
