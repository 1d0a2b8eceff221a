"""The second Lightning module: a specialised classifier for one group of classes."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn


class SpecializationModule(pl.LightningModule):
    """Scores the G classes of a group from what the base classifier already computed:

    ``logits = head(pooled) + evidence @ Wᵀ``

    * ``head``: the base head's rows for the group, ``pooled @ W₀ᵀ + b₀`` (D -> G), i.e. the base
      model's logits of the group's classes. With ``train_head=True`` it is fine-tuned from there;
      otherwise it stays frozen.
    * ``evidence`` (B, K): how strongly each of K prototypes appears in the image
      (:func:`~vislight.specialization.prototypes.prototype_evidence`, standardised); ``W`` (G, K)
      starts near 0 so training starts from the base model. ``num_prototypes=0`` drops the term.

    Summary prototypes make it the specialised model; k-means prototypes make the control with the
    same trainable parameters; no prototypes and ``train_head=True`` is plain head fine-tuning.

    Batches are dicts with ``pooled`` (B, D), ``evidence`` (B, K) when K > 0, and ``label`` (B,)
    in ``[0, G)``.
    """

    def __init__(
        self,
        num_prototypes: int,
        num_classes: int,
        base_weight: torch.Tensor,
        base_bias: torch.Tensor,
        train_head: bool = True,
        lr: float = 0.01,
        weight_decay: float = 1e-4,
        init_std: float = 0.01,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["base_weight", "base_bias"])
        self.head = nn.Linear(base_weight.shape[1], num_classes)
        with torch.no_grad():
            self.head.weight.copy_(base_weight)
            self.head.bias.copy_(base_bias)
        self.head.requires_grad_(train_head)
        self.evidence = None
        if num_prototypes:
            self.evidence = nn.Linear(num_prototypes, num_classes, bias=False)
            with torch.no_grad():
                self.evidence.weight.normal_(0, init_std)

    def forward(self, batch: dict) -> torch.Tensor:
        logits = self.head(batch["pooled"])
        if self.evidence is not None:
            logits = logits + self.evidence(batch["evidence"])
        return logits

    def training_step(self, batch, batch_idx):
        logits = self(batch)
        loss = F.cross_entropy(logits, batch["label"])
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        n = len(batch["label"])
        self.log("train/loss", loss, on_epoch=True, on_step=False, batch_size=n)
        self.log("train/acc", acc, on_epoch=True, on_step=False, batch_size=n)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(
            [p for p in self.parameters() if p.requires_grad],
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
        )
