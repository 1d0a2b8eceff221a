"""What the specialised heads read from the base classifier, in one pass over the images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from vislight.interrupt import check
from vislight.models.probe import FeatureHook, frozen


@torch.no_grad()
def collect_features(
    classifier: nn.Module,
    dataset,
    indices: Sequence[int],
    layer: nn.Module,
    device: torch.device,
    batch_size: int = 32,
    desc: str = "features",
) -> dict[str, torch.Tensor]:
    """Feature maps at ``layer``, pooled head inputs and logits of ``dataset[indices]``.

    Returns (on the CPU, float32): ``maps`` (N, C, h, w), ``pooled`` (N, D) (the input of the head,
    :meth:`~vislight.models.classifier.Classifier.head`), ``logits`` (N, K), ``labels`` (N,), ``indices`` (N,).
    """
    out: dict[str, list[torch.Tensor]] = {"maps": [], "pooled": [], "logits": [], "labels": []}
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False)
    head = FeatureHook(classifier.head(), inputs=True)
    with frozen(classifier), FeatureHook(layer) as maps, head:
        for batch in tqdm(loader, desc=desc, leave=False, mininterval=1.0):
            check()
            logits = classifier(batch["image"].to(device))
            out["maps"].append(maps.output.float().cpu())
            out["pooled"].append(head.output.flatten(1).float().cpu())
            out["logits"].append(logits.float().cpu())
            out["labels"].append(torch.as_tensor(batch["label"]))
    result = {k: torch.cat(v) for k, v in out.items()}
    result["indices"] = torch.as_tensor(list(indices))
    return result
