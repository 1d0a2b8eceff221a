"""Which device a job runs on: ``device=auto|cpu|cuda[:N]`` and one GPU per multirun job."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from vislight.distributed import local_rank
from vislight.errors import ConfigError


def assign_job_device(cfg: DictConfig, job_num: int) -> None:
    """Multirun jobs on a machine with several GPUs: job k takes GPU k mod count (for the stages
    and the Lightning trainer). Leaves explicit devices and multi-device strategies alone."""
    count = torch.cuda.device_count()
    if count < 2 or cfg.device != "auto" or cfg.trainer.get("strategy") not in (None, "auto"):
        return
    index = job_num % count
    cfg.device = f"cuda:{index}"
    cfg.trainer.accelerator = "gpu"
    cfg.trainer.devices = [index]


def resolve_device(name: str) -> torch.device:
    """``auto`` = this process's GPU (``cuda:LOCAL_RANK``) when one is visible, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{local_rank() % torch.cuda.device_count()}")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={name!r} but no CUDA device is visible: use device=cpu or device=auto"
        )
    return dev
