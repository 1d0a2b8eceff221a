"""What the mask benchmarks share: a zoo model with random weights on a device, a trained model
with its correctly classified images (through the pipeline's own stages), device names, the
model's memory layout and the salient-set IoU of two sets of masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from vislight import CONF_DIR
from vislight.devices import resolve_device
from vislight.masks.optimize import MaskConfig
from vislight.masks.stage import select_images
from vislight.models import Classifier, build_classifier
from vislight.run_folder import RunFolder
from vislight.stages import RunContext, stage_classifier, stage_evaluate


def pick_device(name: str) -> torch.device:
    """``auto`` = the GPU when one is visible, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def memory_format(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """``model`` with its weights in channels-last (or the default contiguous) layout, in place."""
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def salient_iou(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """(N,) IoU of the salient sets (mask < 0.5) of two (N, 1, H, W) masks; 1 when both empty."""
    sa, sb = (a < 0.5).flatten(1), (b < 0.5).flatten(1)
    inter, union = (sa & sb).sum(1).float(), (sa | sb).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).cpu().numpy()


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def random_zoo_model(name: str, device: torch.device, channels_last: bool = False) -> Classifier:
    """``conf/model/<name>.yaml`` with random weights (speed does not depend on them), frozen."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg["num_classes"] = model_cfg["num_classes"] or 10
    model_cfg["pretrained"] = False
    model = build_classifier(model_cfg).to(device).eval().requires_grad_(False)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def run_header(args, device: torch.device) -> dict:
    """The settings every benchmark line starts with."""
    return {
        "model": args.model,
        "device": device_label(device),
        "batch": args.batch,
        "iters": args.iters,
        "precision": args.precision,
        "channels_last": args.channels_last,
    }


def load_world(overrides: list[str], per_class: int):
    """(classifier, images (N, 3, H, W), targets (N,)) of up to ``per_class`` correctly classified
    images per class, through the pipeline's own classifier and evaluate stages."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", *overrides], return_hydra_config=True)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.trainer.enable_progress_bar = False
        cfg.paths.output_dir = str(CONF_DIR.parent / "outputs" / "bench")
    ctx = RunContext(
        cfg=cfg, run=RunFolder(Path(cfg.paths.output_dir)), device=resolve_device("auto")
    )
    stage_classifier(ctx)
    stage_evaluate(ctx)
    ds = ctx.datamodule.test_set
    chosen, _ = select_images(ctx.labels, ctx.predictions, ctx.datamodule.classes, None, per_class)
    idx = [i for ids in chosen.values() for i in ids]
    x = torch.stack([ds[i]["image"] for i in idx]).to(ctx.device)
    t = torch.tensor([ctx.predictions[i] for i in idx], device=ctx.device)
    return ctx.classifier.requires_grad_(False), x, t


def mask_config(*overrides: str) -> MaskConfig:
    """The mask settings the composed config gives (e.g. ``mask_config("masks=paper")``)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return MaskConfig.from_cfg(cfg.masks)
