"""Two-stage (smooth → sharp) optimisation of preservation masks for a batch of images.

Images of a batch are optimised together but independently: per-image energies are summed, the
model is frozen in eval mode and the optimiser (Adam) keeps per-image state, so an image's mask does
not depend on the batch it was in. See ``../shared/DESIGN.md`` §2 and ``conf/masks/default.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import partial

import torch
import torch.nn.functional as F

from vislight.masks.energy import class_score, mask_energy
from vislight.masks.perturbation import disc_init, gaussian_blur, perturb, scaled_blur

PRECISIONS = {"32": None, "bf16": torch.bfloat16}
# Network forwards an image costs after the optimisation: it scores the original, the fully
# blurred and the masked image (``p_x``, ``p_blurred``, ``p_masked``). An image's network passes
# are its iterations (one forward+backward each) plus these.
SCORING_PASSES = 3
# Called at every iteration with the stage ("smooth" / "sharp"), the iteration (1-based), the
# mask being scored (B', 1, H, W) and its network scores (B',), B' the images still optimised.
Observer = Callable[[str, int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class StageConfig:
    """One optimisation stage: ``iterations`` (the most an image gets), the energy weights and
    Adam's step ``lr`` and second-moment decay: 0.999 (Adam's default, the paper's) for the first
    ``beta2_after`` iterations, ``beta2`` from then on."""

    iterations: int
    lr: float = 0.1
    l1: float = 0.5
    tv: float = 0.01
    tv_beta: float = 3.0
    binarize: float = 0.0
    beta2: float = 0.999
    beta2_after: int = 0


@dataclass(frozen=True)
class MaskConfig:
    """All mask hyperparameters (``conf/masks/default.yaml`` documents each)."""

    # The default schedule (conf/masks/default.yaml; the paper's, 300 + 150 at lr 0.1 with Adam's
    # default beta2 and no early stop, is conf/masks/paper.yaml), chosen by
    # experiments/mask_convergence.py.
    smooth: StageConfig = field(
        default_factory=lambda: StageConfig(90, 0.1, 0.5, 0.01, 3.0, 0.0, 0.9, 10)
    )
    sharp: StageConfig = field(
        default_factory=lambda: StageConfig(30, 0.1, 0.01, 1.0, 3.0, 2.0, 0.999, 0)
    )
    blur_kernel: float = 11
    blur_sigma: float = 10.0
    reference_size: int = 224
    downsample: int = 8
    upsample_sigma: float = 5.0
    # Per image and stage: stop once the salient set (mask < 0.5) has stopped moving, i.e. its IoU
    # with the salient set `stop_every` iterations earlier is >= `stop_min_iou`, checked every
    # `stop_every` iterations from iteration `stop_min_iterations` on.
    early_stopping: bool = True
    stop_every: int = 10
    stop_min_iou: float = 0.98
    stop_min_iterations: int = 20
    # Network forward/backward in this precision ("32" or "bf16" autocast); masks, Adam state and
    # energies stay float32.
    precision: str = "32"
    # Feed the network channels-last tensors (faster convolutions on some models and devices; the
    # same masks up to float rounding).
    channels_last: bool = False

    @classmethod
    def from_cfg(cls, cfg: Mapping) -> MaskConfig:
        """From a ``masks`` config node; raises ValueError naming a bad key."""
        kw = {}
        for f in fields(cls):
            if f.name in ("smooth", "sharp"):
                st = dict(cfg[f.name])
                kw[f.name] = StageConfig(
                    **{k.name: st[k.name] for k in fields(StageConfig) if k.name in st}
                )
            elif f.name in cfg:
                kw[f.name] = str(cfg[f.name]) if f.name == "precision" else cfg[f.name]
        es = cfg.get("early_stopping")
        if isinstance(es, Mapping):
            kw["early_stopping"] = bool(es.get("enabled", True))
            for key in ("every", "min_iou", "min_iterations"):
                if key in es:
                    kw[f"stop_{key}"] = es[key]
        mc = cls(**kw)
        mc.validate()
        return mc

    def describe(self) -> str:
        """The schedule in words: iterations, step sizes, beta2 and early stopping."""

        def stage(st: StageConfig) -> str:
            beta = (
                f"beta2 0.999 then {st.beta2} after {st.beta2_after}"
                if st.beta2_after and st.beta2 != 0.999
                else f"beta2 {st.beta2}"
            )
            return f"{st.iterations} at lr {st.lr}, {beta}"

        stop = (
            f"; an image stops when its salient set's IoU over {self.stop_every} iterations is "
            f">= {self.stop_min_iou} (from iteration {self.stop_min_iterations})"
            if self.early_stopping
            else ""
        )
        return f"smooth {stage(self.smooth)}; sharp {stage(self.sharp)}{stop}"

    def validate(self) -> None:
        for name in ("smooth", "sharp"):
            st: StageConfig = getattr(self, name)
            if not isinstance(st.iterations, int) or st.iterations < 0:
                raise ValueError(
                    f"masks.{name}.iterations={st.iterations!r} is invalid: it must be an integer >= 0"
                )
            if st.lr <= 0:
                raise ValueError(f"masks.{name}.lr={st.lr!r} is invalid: it must be > 0")
            for k in ("l1", "tv", "binarize"):
                if getattr(st, k) < 0:
                    raise ValueError(
                        f"masks.{name}.{k}={getattr(st, k)!r} is invalid: it must be >= 0"
                    )
            if not 0 <= st.beta2 < 1:
                raise ValueError(
                    f"masks.{name}.beta2={st.beta2!r} is invalid: it must be in [0, 1)"
                )
            if not isinstance(st.beta2_after, int) or st.beta2_after < 0:
                raise ValueError(
                    f"masks.{name}.beta2_after={st.beta2_after!r} is invalid: it must be an "
                    "integer >= 0"
                )
        if self.stop_every < 1 or not 0 < self.stop_min_iou <= 1 or self.stop_min_iterations < 0:
            raise ValueError(
                "masks.early_stopping: every must be >= 1, min_iou in (0, 1] and "
                "min_iterations >= 0"
            )
        if self.downsample < 1:
            raise ValueError(
                f"masks.downsample={self.downsample!r} is invalid: it must be an integer >= 1"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"masks.precision={self.precision!r} is invalid: use one of {sorted(PRECISIONS)}"
            )
        if self.blur_sigma <= 0 or self.blur_kernel < 1:
            raise ValueError("masks.blur_sigma and masks.blur_kernel must be > 0")


@dataclass
class MaskResult:
    """Masks and diagnostics of a batch; masks (B, 1, H, W) in [0, 1], diagnostics (B,)."""

    smooth: torch.Tensor
    sharp: torch.Tensor
    p_x: torch.Tensor
    p_masked: torch.Tensor
    p_blurred: torch.Tensor
    drop: torch.Tensor
    normalized_score: torch.Tensor
    area: torch.Tensor
    binarization: torch.Tensor
    iterations: torch.Tensor
    energy: torch.Tensor

    def diagnostics(self, i: int) -> dict[str, float]:
        names = (
            "p_x",
            "p_masked",
            "p_blurred",
            "drop",
            "normalized_score",
            "area",
            "binarization",
            "iterations",
            "energy",
        )
        return {n: float(getattr(self, n)[i]) for n in names}


class _BatchAdam:
    """Adam with per-image step counts, updating only the rows in ``idx`` (all rows when None).

    The second moment decays by 0.999 (Adam's default) for each image's first ``beta2_after`` steps
    and by ``beta2`` after them: at that step the estimate is bias-corrected once and then followed
    as a plain moving average. A short memory (``beta2`` = 0.9) lets the step size recover once the
    large gradients of the first iterations have passed; with 0.999 they keep it small for
    hundreds of iterations.
    """

    def __init__(
        self,
        param: torch.Tensor,
        lr: float,
        beta2: float = 0.999,
        beta2_after: int = 0,
        beta1: float = 0.9,
        eps: float = 1e-8,
    ):
        self.p, self.lr, self.b1, self.eps = param, lr, beta1, eps
        self.b2_late, self.after = beta2, beta2_after if beta2 != 0.999 else 0
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = torch.zeros(param.shape[0], device=param.device, dtype=param.dtype)

    def step(self, grad: torch.Tensor, idx: torch.Tensor | None = None) -> None:
        if idx is None:
            p, m, v = self.p, self.m, self.v
            self.t += 1
            t = self.t
        else:
            p, m, v = self.p[idx], self.m[idx], self.v[idx]
            self.t[idx] += 1
            t = self.t[idx]
        shape = (-1,) + (1,) * (p.dim() - 1)
        m.mul_(self.b1).add_(grad, alpha=1 - self.b1)
        c1 = (1 - self.b1**t).view(shape)
        if self.after:
            early = (t <= self.after).view(shape)
            b2 = torch.where(early, 0.999, self.b2_late).to(v.dtype)
            v.mul_(b2).addcmul_(grad, grad * (1 - b2))
            # bias correction while 0.999 decays; at the switch it is applied to v once for good
            c2 = torch.where(early, 1 - 0.999 ** t.view(shape), 1.0).to(v.dtype)
            v.div_(torch.where(t.view(shape) == self.after, c2, 1.0))
            c2 = torch.where(t.view(shape) >= self.after, 1.0, c2)
        else:
            v.mul_(self.b2_late).addcmul_(grad, grad, value=1 - self.b2_late)
            c2 = (1 - self.b2_late**t).view(shape)
        p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lr).clamp_(0.0, 1.0)
        if idx is not None:
            self.p[idx], self.m[idx], self.v[idx] = p, m, v


class _SalientSetStop:
    """Per-image early stopping: an image stops once its salient set (mask < 0.5) has stopped
    moving, i.e. at a check (every ``cfg.stop_every`` iterations, from ``cfg.stop_min_iterations``
    on) its IoU with the salient set of the previous check is at least ``cfg.stop_min_iou``."""

    def __init__(self, cfg: MaskConfig, b: int):
        self.cfg, self.b = cfg, b
        self.last: torch.Tensor | None = None

    def is_check(self, step: int) -> bool:
        return step % self.cfg.stop_every == 0

    def update(self, step: int, mask: torch.Tensor, rows: torch.Tensor, active: torch.Tensor):
        """``mask`` (R, 1, H, W): the masks of the ``rows`` (R,) still active; clears their
        ``active`` flag when they are stable."""
        salient = (mask < 0.5).flatten(1)
        if self.last is None:
            self.last = torch.zeros(self.b, salient.shape[1], dtype=torch.bool, device=mask.device)
        elif step >= self.cfg.stop_min_iterations:
            prev = self.last[rows]
            union = (salient | prev).sum(1)
            iou = torch.where(
                union > 0, (salient & prev).sum(1) / union.clamp(min=1), torch.ones_like(union)
            )
            active[rows] &= iou < self.cfg.stop_min_iou
        self.last[rows] = salient


def network_scores(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, cfg: MaskConfig
) -> torch.Tensor:
    """Class scores (B,) of ``model`` on images x (B, 3, H, W), in ``cfg.precision`` and layout."""
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = PRECISIONS[cfg.precision]
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = model(x)
    return class_score(logits.float(), target)


def _reg_grad(mask: torch.Tensor, st: StageConfig) -> torch.Tensor:
    """Analytic gradient of the regularisers (area, TV, binarisation) w.r.t. a mask in [0, 1].

    Same value as autograd through :func:`~vislight.masks.energy.mask_energy` minus the score,
    without building a graph (the regularisers are most of the non-network work per step).
    """
    _, _, h, w = mask.shape
    grad = torch.full_like(mask, -st.l1 / (h * w))  # d/dm mean(1 - m), m in [0, 1]
    if st.binarize:
        grad.add_(1 - 2 * mask, alpha=st.binarize / (h * w))  # d/dm mean(m (1 - m))
    if st.tv:
        for dim, n in ((2, (h - 1) * w), (3, h * (w - 1))):
            if mask.shape[dim] < 2:
                continue
            d = mask.diff(dim=dim)
            g = d.abs().pow_(st.tv_beta - 1).mul_(d.sign()).mul_(st.tv * st.tv_beta / n)
            grad.narrow(dim, 1, mask.shape[dim] - 1).add_(g)
            grad.narrow(dim, 0, mask.shape[dim] - 1).sub_(g)
    return grad


def _run_stage(
    model: torch.nn.Module,
    blurred: torch.Tensor,
    diff: torch.Tensor,
    target: torch.Tensor,
    param: torch.Tensor,
    lift: tuple[torch.Tensor, torch.Tensor] | None,
    st: StageConfig,
    cfg: MaskConfig,
    on_step: Callable[[], None] | None = None,
    observe: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Minimise the energy over ``param`` in place; returns iterations used per image (B,).

    The mask is ``param`` itself, or ``Ay @ param @ Ax.T`` when ``lift = (Ay, Ax)`` (the smooth
    stage's upsampling + blur as two small matrices). Only the network goes through autograd.
    """
    b = param.shape[0]
    adam = _BatchAdam(param, st.lr, st.beta2, st.beta2_after)
    used = torch.zeros(b, dtype=torch.long, device=param.device)
    active = torch.ones(b, dtype=torch.bool, device=param.device)
    stop = _SalientSetStop(cfg, b) if cfg.early_stopping else None
    # The rows still optimised; None = all. It changes only at a stop check, so the host learns
    # of it (a device sync) once every `stop_every` iterations, never without early stopping.
    idx = None
    for step in range(1, st.iterations + 1):
        p = param if idx is None else param[idx]
        bs, ds, ts = (
            (blurred, diff, target) if idx is None else (blurred[idx], diff[idx], target[idx])
        )
        # clone: the sharp stage's mask must not alias `param`, which Adam updates in place
        mask = (
            (lift[0] @ p @ lift[1].T if lift is not None else p)
            .detach()
            .clone()
            .requires_grad_(True)
        )
        score = network_scores(model, bs + mask * ds, ts, cfg)
        (grad,) = torch.autograd.grad(score.sum(), mask)
        mask = mask.detach()
        if observe is not None:
            observe(step, mask, score.detach())
        grad += _reg_grad(mask, st)
        if lift is not None:
            grad = lift[0].T @ grad @ lift[1]
        adam.step(grad, idx)
        used += active
        if stop is not None and stop.is_check(step):
            rows = torch.arange(b, device=param.device) if idx is None else idx
            stop.update(step, mask, rows, active)
            if not bool(active.all()):
                idx = active.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
        if on_step is not None:
            on_step()
    return used


def upsample_blur_matrix(n_in: int, n_out: int, sigma: float, device=None) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D bilinear upsampling followed by a Gaussian blur (reflect padding).

    Both are separable and linear, so the smooth mask ``blur(upsample(p))`` of a (h, w) parameter is
    ``Ay @ p @ Ax.T`` with ``Ay = upsample_blur_matrix(h, H, ...)`` and ``Ax = ...(w, W, ...)``.
    """
    eye = torch.eye(n_in, device=device).view(n_in, 1, n_in, 1)
    up = F.interpolate(
        eye, size=(n_out, 1), mode="bilinear", align_corners=False
    )  # (n_in, 1, n_out, 1)
    if sigma > 0.3:
        k = 2 * math.ceil(2 * sigma) + 1
        up = gaussian_blur(up.transpose(2, 3).expand(n_in, 1, k, n_out).contiguous(), k, sigma)[
            :, :, :1, :
        ].transpose(2, 3)
    return up.view(n_in, n_out).T.contiguous()


def optimize_masks(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    cfg: MaskConfig | None = None,
    on_step: Callable[[], None] | None = None,
    observe: Observer | None = None,
) -> MaskResult:
    """Optimise a crisp preservation mask per image.

    Args:
        model: frozen classifier, images in [0, 1] -> logits (B, K); must be in eval mode.
        x: (B, 3, H, W) images in [0, 1].
        target: (B,) class whose score the mask must destroy (vislight uses the predicted class).
        cfg: hyperparameters (defaults: conf/masks/default.yaml's schedule).
        on_step: called after every optimisation step (progress reporting).
        observe: called at every step with the stage, the step, the scored mask (B, 1, H, W) and
            its scores (B,) (convergence studies: ``experiments/mask_convergence.py``).

    Returns:
        :class:`MaskResult` with the smooth and sharp masks (B, 1, H, W) (1 = keep, 0 = salient)
        and per-image diagnostics: ``p_x``, ``p_masked`` (sharp mask), ``p_blurred`` (whole image
        blurred), ``drop`` = (p_x − p_masked) / p_x, ``normalized_score`` = (p_masked − p_blurred) /
        (p_x − p_blurred) (1 = no effect, 0 = as destructive as blurring everything), ``area`` =
        mean(m < 0.5), ``binarization`` = share of mask values outside (0.1, 0.9), ``iterations``.
    """
    cfg = cfg or MaskConfig()
    torch.set_flush_denormal(True)  # denormal floats in saturated softmax gradients stall CPUs 10x
    b, _, h, w = x.shape
    x = x.detach()
    k, sigma = scaled_blur(min(h, w), cfg.blur_kernel, cfg.blur_sigma, cfg.reference_size)
    blurred = gaussian_blur(x, k, sigma)
    diff = x - blurred
    up_sigma = cfg.upsample_sigma * min(h, w) / cfg.reference_size
    lh, lw = max(1, math.ceil(h / cfg.downsample)), max(1, math.ceil(w / cfg.downsample))
    lift = (
        upsample_blur_matrix(lh, h, up_sigma, x.device).to(x.dtype),
        upsample_blur_matrix(lw, w, up_sigma, x.device).to(x.dtype),
    )
    low = disc_init(b, lh, lw, device=x.device).to(x.dtype)
    used = _run_stage(
        model, blurred, diff, target, low, lift, cfg.smooth, cfg, on_step,
        partial(observe, "smooth") if observe else None,
    )  # fmt: skip
    smooth = (lift[0] @ low @ lift[1].T).clamp_(0, 1)
    sharp = smooth.clone()
    used = used + _run_stage(
        model, blurred, diff, target, sharp, None, cfg.sharp, cfg, on_step,
        partial(observe, "sharp") if observe else None,
    )  # fmt: skip
    with torch.no_grad():
        p_x = network_scores(model, x, target, cfg)
        p_blurred = network_scores(model, blurred, target, cfg)
        p_masked = network_scores(model, perturb(x, sharp, blurred), target, cfg)
        st = cfg.sharp
        energy = mask_energy(p_masked, sharp, st.l1, st.tv, st.tv_beta, st.binarize)
        denom = p_x - p_blurred
        normalized = torch.where(
            denom.abs() > 1e-6, (p_masked - p_blurred) / denom, torch.ones_like(denom)
        )
    return MaskResult(
        smooth=smooth,
        sharp=sharp,
        p_x=p_x,
        p_masked=p_masked,
        p_blurred=p_blurred,
        drop=(p_x - p_masked) / p_x.clamp_min(1e-12),
        normalized_score=normalized,
        area=(sharp < 0.5).flatten(1).float().mean(1),
        binarization=((sharp <= 0.1) | (sharp >= 0.9)).flatten(1).float().mean(1),
        iterations=used,
        energy=energy,
    )
