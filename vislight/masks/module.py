"""LightningModule that optimises masks over a DataLoader (Lightning's predict loop, with gradients).

Use with ``Trainer(inference_mode=False)``; each batch's masks are written to the
:class:`~vislight.masks.cache.MaskCache` as soon as they are done, so a killed run loses at most the
batch in flight, and under a multi-device strategy each rank writes the images it was given (files
are keyed by image, not by rank or order).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from vislight.interrupt import check
from vislight.masks.cache import MaskCache
from vislight.masks.optimize import MaskConfig, optimize_masks


class MaskModule(pl.LightningModule):
    """Batches: dicts with ``image`` (B, 3, H, W) in [0, 1], ``target`` (B,), ``label``, ``index``,
    ``key`` and ``class_name``. The explained model is frozen and in eval mode while masks are
    optimised, and its ``training`` flags and ``requires_grad`` flags are restored afterwards."""

    def __init__(self, classifier: torch.nn.Module, mask_cfg: MaskConfig, cache: MaskCache):
        super().__init__()
        self.classifier = classifier
        self.mask_cfg = mask_cfg
        self.cache = cache
        self.written: list[str] = []
        self._saved_state: tuple[bool, dict[str, bool]] | None = None

    def on_predict_start(self) -> None:
        self._saved_state = (
            self.classifier.training,
            {n: p.requires_grad for n, p in self.classifier.named_parameters()},
        )
        self.classifier.eval()
        self.classifier.requires_grad_(False)
        if self.mask_cfg.channels_last:
            self.classifier.to(memory_format=torch.channels_last)

    def on_predict_end(self) -> None:
        if self._saved_state is not None:
            training, flags = self._saved_state
            self.classifier.train(training)
            for n, p in self.classifier.named_parameters():
                p.requires_grad_(flags[n])

    def predict_step(self, batch: dict, batch_idx: int):
        with torch.enable_grad():
            # A stop signal ends the batch at its next iteration; its masks are never written.
            result = optimize_masks(
                self.classifier, batch["image"], batch["target"], self.mask_cfg, on_step=check
            )
        for i in range(len(batch["index"])):
            meta = {
                "index": int(batch["index"][i]),
                "label": int(batch["label"][i]),
                "target": int(batch["target"][i]),
                "key": str(batch["key"][i]),
                "class_name": str(batch["class_name"][i]),
                "rank": int(self.global_rank),  # which process of a multi-device run made it
            }
            path = self.cache.path(meta["class_name"], batch["image"][i], meta["key"])
            if path.is_file():  # finished before an interruption: its batch is re-run whole
                continue
            self.cache.write(path, result, i, meta)
            self.written.append(str(path))
        return batch["index"]
