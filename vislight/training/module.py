"""LightningModule that trains a zoo classifier (any :class:`~vislight.models.Classifier`)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from vislight.models.classifier import Classifier


class ClassifierModule(pl.LightningModule):
    """Cross-entropy training with AdamW and a one-cycle learning rate.

    Batches are the datamodules' dicts (``image`` in [0, 1], ``label``). Logs ``train/loss``,
    ``train/acc``, ``val/loss``, ``val/acc`` and ``test/acc``.
    """

    def __init__(
        self,
        classifier: Classifier,
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
        label_smoothing: float = 0.0,
        augment: bool = True,
    ):
        super().__init__()
        self.classifier = classifier
        self.save_hyperparameters(ignore=["classifier"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        # Small photometric jitter only: flips/crops would move the watermark and the part layout.
        b = x.shape[0]
        gain = 1 + 0.1 * (torch.rand(b, 1, 1, 1, device=x.device) - 0.5)
        return (x * gain).clamp_(0, 1)

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        x, y = batch["image"], batch["label"]
        if stage == "train" and self.hparams.augment:
            x = self._augment(x)
        logits = self(x)
        loss = F.cross_entropy(
            logits, y, label_smoothing=self.hparams.label_smoothing if stage == "train" else 0.0
        )
        acc = (logits.argmax(1) == y).float().mean()
        self.log(
            f"{stage}/loss",
            loss,
            prog_bar=stage != "test",
            on_epoch=True,
            on_step=False,
            batch_size=len(y),
        )
        self.log(
            f"{stage}/acc", acc, prog_bar=True, on_epoch=True, on_step=False, batch_size=len(y)
        )
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=self.hparams.lr,
            total_steps=int(self.trainer.estimated_stepping_batches),
            pct_start=0.2,
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
