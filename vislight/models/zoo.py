"""The zoo's entries, one per family of networks. Each ``conf/model/*.yaml`` names one as its
``_target_``; :func:`~vislight.models.registry.build_classifier` (Hydra's ``instantiate``) calls it
with the rest of the node and gets a :class:`~vislight.models.classifier.Classifier`. How each
family builds its network and finds its weights is in :mod:`vislight.models.registry`.
"""

from __future__ import annotations

from vislight.models.classifier import Classifier
from vislight.models.registry import FAMILIES, wrap_classifier


def _entry(family: str):
    def build(**cfg) -> Classifier:
        return wrap_classifier(FAMILIES[family](cfg), cfg)

    build.__name__ = build.__qualname__ = family
    build.__doc__ = f"A ``{family}`` network as a Classifier, from its ``conf/model`` node."
    return build


small_cnn = _entry("small_cnn")
cifar_resnet = _entry("cifar_resnet")
efficientnet_lite = _entry("efficientnet_lite")
torchvision = _entry("torchvision")
timm = _entry("timm")
custom = _entry("custom")
