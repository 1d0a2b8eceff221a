"""LightningModule that trains a zoo classifier (any :class:`~vislight.models.Classifier`)."""

from __future__ import annotations

import random

import numpy as np
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
        trainable: str = "all",
    ):
        super().__init__()
        if trainable not in ("all", "head"):
            raise ValueError(f"train.trainable={trainable!r} is invalid: use all or head")
        self.classifier = classifier
        self.save_hyperparameters(ignore=["classifier"])
        if trainable == "head":  # a linear probe: the pretrained backbone stays frozen
            classifier.requires_grad_(False)
            classifier.head().requires_grad_(True)

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

    # Resumable randomness: the augmentation draws from the global generators, whose state at the
    # end of an epoch goes into the checkpoint and is put back when the next epoch of a resumed
    # training starts (after Lightning's sanity check, which also draws from them), so that a
    # training killed and resumed learns the same weights as one never interrupted.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vislight_rng"] = _rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("vislight_rng")

    def on_train_epoch_start(self) -> None:
        if self.hparams.trainable == "head":  # frozen BatchNorm statistics too
            self.classifier.eval()
        state = getattr(self, "_rng_to_restore", None)
        if state is not None:
            _set_rng_state(state)
            self._rng_to_restore = None

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            [p for p in self.parameters() if p.requires_grad],
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
        )
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=self.hparams.lr,
            total_steps=int(self.trainer.estimated_stepping_batches),
            pct_start=0.2,
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _rng_state() -> dict:
    """The torch, CUDA, numpy and Python generator states."""
    return {
        "torch": torch.get_rng_state(),
        # this process's device only: under DDP every rank restores rank 0's checkpoint, and all
        # ranks draw the same numbers (same seed, same draws) on their own device
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        # As tensors and plain tuples, so the checkpoint still loads with weights_only=True.
        "numpy": _numpy_state_to_torch(np.random.get_state()),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def _numpy_state_to_torch(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (
        str(name),
        torch.from_numpy(keys.astype(np.int64)),
        int(pos),
        int(has_gauss),
        float(cached),
    )
