"""The classifier wrapper every zoo entry returns: a network plus its input conventions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vislight.models.probe import find_feature_layer


def last_linear(net: nn.Module) -> nn.Linear | None:
    """The last ``nn.Linear`` of ``net`` in module order (a classifier's head), or None."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


class Classifier(nn.Module):
    """A network that takes images in [0, 1] and returns logits.

    Normalisation is part of the module, so every stage (masks perturb pixels in [0, 1]) uses the
    same input convention whatever the architecture.

    Attributes:
        net: the bare network (expects normalised input).
        name: zoo name, e.g. ``resnet_small``.
        input_size: side of the square input in pixels.
        resize_size: shorter side to resize to before the centre crop (folder datasets), or None.
        feature_layer: dotted name of the default layer for region descriptors (a module of ``net``);
            None: the last layer with a spatial output, found on first use
            (:func:`~vislight.models.probe.find_feature_layer`).
    """

    def __init__(
        self,
        net: nn.Module,
        name: str,
        num_classes: int,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        resize_size: int | None = None,
        feature_layer: str | None = None,
    ):
        super().__init__()
        self.net = net
        self.name = name
        self.num_classes = int(num_classes)
        self.input_size = int(input_size)
        self.resize_size = resize_size
        self.feature_layer = feature_layer
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, num_classes) logits."""
        return self.net((x - self.mean) / self.std)

    def head(self) -> nn.Linear:
        """The last ``nn.Linear`` of ``net`` (its input: the pooled penultimate features)."""
        head = last_linear(self.net)
        if head is None:
            raise ValueError(f"{self.name} has no nn.Linear head")
        return head

    def feature_layer_name(self, layer: str | None = None) -> str:
        """``layer``, else :attr:`feature_layer`, found automatically (and kept) when it is None."""
        if not layer and not self.feature_layer:
            self.feature_layer = find_feature_layer(self.net, self.input_size)
        return layer or self.feature_layer

    def feature_module(self, layer: str | None = None) -> nn.Module:
        """The submodule of ``net`` named ``layer`` (default: :meth:`feature_layer_name`). Its
        output is read as a feature grid (:func:`~vislight.models.probe.feature_grid`)."""
        layer = self.feature_layer_name(layer)
        try:
            return self.net.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in self.net.named_modules() if n][:40]
            raise ValueError(
                f"model.feature_layer={layer!r} is not a layer of {self.name}; layers: {names}"
            ) from None
