"""Reading a network's features: one hook, one grid convention, one automatic layer choice.

Every consumer of intermediate features (region descriptors, Grad-CAM, specialised heads) sees a
feature *grid* ``(B, C, h, w)``, whatever the architecture:

* convolutional outputs ``(B, C, h, w)`` are used as they are;
* transformer token outputs ``(B, T, C)`` drop their prefix tokens (class and register tokens:
  the ``T - s*s`` first ones, where ``s*s`` is the largest square <= T) and become ``(B, C, s, s)``;
* a tuple or list output uses its first element.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

MAX_PREFIX_TOKENS = 8


def grid_side(tokens: int) -> int | None:
    """Side ``s`` of the patch grid in a sequence of ``tokens`` (``s*s`` patches after at most
    :data:`MAX_PREFIX_TOKENS` prefix tokens), or None when the sequence is not a patch grid."""
    side = math.isqrt(tokens)
    return side if side >= 2 and tokens - side * side <= MAX_PREFIX_TOKENS else None


def feature_grid(output) -> torch.Tensor:
    """A module's output as a feature grid: (B, C, h, w).

    Raises:
        ValueError: when the output is neither a (B, C, h, w) map nor a (B, T, C) token sequence
            whose last T' = s*s tokens form a square patch grid.
    """
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not torch.is_tensor(output):
        raise ValueError(f"the feature layer returns {type(output).__name__}, not a tensor")
    if output.dim() == 4:
        return output
    if output.dim() == 3:
        b, t, c = output.shape
        side = grid_side(t)
        if side is not None:
            return output[:, t - side * side :].transpose(1, 2).reshape(b, c, side, side)
    raise ValueError(
        f"the feature layer's output has shape {tuple(output.shape)}: it needs a spatial map "
        "(B, C, h, w) or patch tokens (B, T, C). Choose another layer with model.feature_layer "
        "(null picks the last spatial one automatically)"
    )


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode without gradients inside the block; its mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` runs: its parameters' device (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def zero_forward(model: nn.Module, input_size: int):
    """``model``'s output on one black (1, 3, input_size, input_size) image, the model frozen
    (probes its output shape and, with hooks, its layers)."""
    with frozen(model):
        return model(torch.zeros(1, 3, input_size, input_size, device=model_device(model)))


def class_probabilities(
    model: nn.Module,
    images: torch.Tensor | list[torch.Tensor],
    target: int,
    device: torch.device | str | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Softmax probability of class ``target`` for each image, in batches, the model frozen.

    Args:
        images: (N, 3, H, W) tensor or a list of (3, H, W) tensors, in [0, 1].
        device: where the model runs (default: its parameters' device).

    Returns:
        (N,) float on the CPU.
    """
    device = device or model_device(model)
    out = []
    with frozen(model):
        for k in range(0, len(images), batch_size):
            chunk = images[k : k + batch_size]
            x = (torch.stack(chunk) if isinstance(chunk, list) else chunk).to(device)
            out.append(model(x).float().softmax(1)[:, target].cpu())
    return torch.cat(out) if out else torch.zeros(0)


def dataset_probabilities(
    model: nn.Module, dataset, device: torch.device | str, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax outputs and labels of every item of ``dataset`` (dicts with ``image``, ``label``):
    ``(N, K)`` float and ``(N,)`` long, on the CPU, the model frozen; a stop signal ends it
    between batches."""
    from torch.utils.data import DataLoader

    from vislight.interrupt import check

    probs, labels = [], []
    with frozen(model):
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            check()
            probs.append(model(batch["image"].to(device)).float().softmax(1).cpu())
            labels.append(torch.as_tensor(batch["label"]))
    return torch.cat(probs), torch.cat(labels)


class FeatureHook:
    """Captures the feature grid of ``module`` on every forward (a context manager).

    ``output`` is the (B, C, h, w) grid of the last forward (see :func:`feature_grid`); it keeps
    its autograd graph, so Grad-CAM can differentiate through it. With ``inputs=True`` it captures
    the module's first input instead, as it is (e.g. the pooled features a linear head reads).
    """

    def __init__(self, module: nn.Module, inputs: bool = False):
        self.module, self.inputs, self.output, self._h = module, inputs, None, None
        self.raw = None  # the module's own output (what gradients flow through)

    def __enter__(self) -> FeatureHook:
        if self.inputs:
            self._h = self.module.register_forward_pre_hook(
                lambda m, i: setattr(self, "output", i[0])
            )
        else:
            self._h = self.module.register_forward_hook(lambda m, i, o: self._keep(o))
        return self

    def _keep(self, output) -> None:
        self.raw = output[0] if isinstance(output, (tuple, list)) else output
        self.output = feature_grid(output)

    def __exit__(self, *exc) -> None:
        self._h.remove()


def _is_grid(output) -> bool:
    if isinstance(output, (tuple, list)):
        output = output[0] if output else None
    if not torch.is_tensor(output):
        return False
    if output.dim() == 4:
        return output.shape[-1] * output.shape[-2] > 1
    return output.dim() == 3 and grid_side(output.shape[1]) is not None


def find_feature_layer(net: nn.Module, input_size: int) -> str:
    """The name of the last module of ``net`` whose output is a spatial feature grid (the last
    feature map before global pooling; for a vision transformer, the last token sequence).

    One forward pass of a (1, 3, input_size, input_size) zero image, with a hook on every named
    module; a container finishes after its children, so the outermost module wins a tie.

    Raises:
        ValueError: when no module of ``net`` outputs a feature grid.
    """
    order: list[str] = []
    calls: dict[str, int] = {}

    def seen(name: str, output) -> None:
        calls[name] = calls.get(name, 0) + 1
        if _is_grid(output):
            order.append(name)

    hooks = [
        m.register_forward_hook(lambda mod, i, o, name=name: seen(name, o))
        for name, m in net.named_modules()
        if name
    ]
    try:
        zero_forward(net, input_size)
    finally:
        for h in hooks:
            h.remove()
    # a module applied several times (a shared activation) has no single output to read
    order = [name for name in order if calls[name] == 1]
    if not order:
        raise ValueError(
            "found no layer with a spatial output (B, C, h, w) or patch tokens (B, T, C): set "
            "model.feature_layer to the name of the layer whose features describe regions"
        )
    return order[-1]
