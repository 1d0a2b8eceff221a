"""What the specialised heads read from the base classifier, in one pass over the images."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack

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
    layers: Sequence[nn.Module],
    device: torch.device,
    batch_size: int = 32,
    desc: str = "features",
) -> dict:
    """Feature maps at each of ``layers``, pooled head inputs and logits of ``dataset[indices]``,
    in one pass over the images.

    Returns (on the CPU, float32): ``maps`` a list with one (N, C, h, w) tensor per layer,
    ``pooled`` (N, D) (the input of the head, :meth:`~vislight.models.classifier.Classifier.head`),
    ``logits`` (N, K), ``labels`` (N,), ``indices`` (N,).
    """
    out: dict[str, list[torch.Tensor]] = {"pooled": [], "logits": [], "labels": []}
    maps: list[list[torch.Tensor]] = [[] for _ in layers]
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False)
    with ExitStack() as stack:
        stack.enter_context(frozen(classifier))
        hooks = [stack.enter_context(FeatureHook(layer)) for layer in layers]
        head = stack.enter_context(FeatureHook(classifier.head(), inputs=True))
        for batch in tqdm(loader, desc=desc, leave=False, mininterval=1.0):
            check()
            logits = classifier(batch["image"].to(device))
            for kept, hook in zip(maps, hooks):
                kept.append(hook.output.float().cpu())
            out["pooled"].append(head.output.flatten(1).float().cpu())
            out["logits"].append(logits.float().cpu())
            out["labels"].append(torch.as_tensor(batch["label"]))
    result: dict = {k: torch.cat(v) for k, v in out.items()}
    result["maps"] = [torch.cat(m) for m in maps]
    result["indices"] = torch.as_tensor(list(indices))
    return result
