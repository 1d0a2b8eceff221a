"""Test accuracy of a classifier over a loader of batch dicts, overall and per class."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vislight.interrupt import check
from vislight.models.probe import frozen


@torch.no_grad()
def evaluate_accuracy(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    class_names: list[str] | None = None,
) -> dict:
    """Top-1 accuracy of ``model`` (images in [0, 1] -> logits) on ``loader``.

    Returns ``{"accuracy", "images", "correct", "classes": {name: {"accuracy", "images"}},
    "predictions", "labels"}`` (the last two: lists ordered by the batches' ``index``).
    The model is put in eval mode and its previous mode restored afterwards.
    """
    correct = total = 0
    per_class: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    by_index: dict[int, tuple[int, int]] = {}
    with frozen(model):
        for batch in tqdm(loader, desc="evaluate", leave=False, mininterval=1.0):
            check()  # a stop signal ends the evaluation between batches
            x, y = batch["image"].to(device), batch["label"].to(device)
            pred = model(x).argmax(1)
            hit = pred == y
            for i, p, t in zip(batch["index"].tolist(), pred.tolist(), y.tolist()):
                by_index[i] = (p, t)
            correct += int(hit.sum())
            total += len(y)
            for label, h in zip(y.tolist(), hit.tolist()):
                per_class[label][0] += int(h)
                per_class[label][1] += 1
    names = class_names or []
    return {
        "accuracy": correct / total if total else float("nan"),
        "images": total,
        "correct": correct,
        "classes": {
            (names[k] if k < len(names) else str(k)): {"accuracy": c / n, "images": n}
            for k, (c, n) in sorted(per_class.items())
        },
        "predictions": [by_index[i][0] for i in sorted(by_index)],
        "labels": [by_index[i][1] for i in sorted(by_index)],
    }
