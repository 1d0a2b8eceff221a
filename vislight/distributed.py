"""Which process this is in a multi-device run (Lightning DDP, torchrun or SLURM)."""

from __future__ import annotations

import os

import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only


def local_rank() -> int:
    """This process's device index on its node (set by Lightning's DDP launcher, torchrun or SLURM)."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))


def global_rank() -> int:
    """This process's rank among all processes of a multi-device run (0 when alone)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(rank_zero_only.rank)
