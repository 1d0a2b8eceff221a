"""Masks: energy and perturbation units, the optimiser (score drop, batch independence, early
stopping), the Lightning predict module, the mask cache, image selection, config validation, and a
killed then resumed CLI run."""

from __future__ import annotations

import hashlib
import json
import math
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import asdict, fields, replace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from helpers import SUBPROCESS_ENV, compose_config, kill_when, popen_vislight, small_cnn_cfg
from scipy.ndimage import distance_transform_edt
from torch import nn
from torch.utils.data import DataLoader

import vislight
from vislight.data.synth import WorldConfig
from vislight.data.synth_dataset import SynthPartDataset
from vislight.masks.cache import (
    MaskCache,
    config_fingerprint,
    image_fingerprint,
    model_fingerprint,
    safe_name,
)
from vislight.masks.energy import mask_energy
from vislight.masks.module import MaskModule
from vislight.masks.optimize import (
    SCORING_PASSES,
    MaskConfig,
    MaskResult,
    StageConfig,
    _BatchAdam,
    _reg_grad,
    _SalientSetStop,
    optimize_masks,
    upsample_blur_matrix,
)
from vislight.masks.perturbation import (
    disc_init,
    gaussian_blur,
    gaussian_kernel1d,
    perturb,
    scaled_blur,
)
from vislight.masks.stage import MaskJobDataset, pending_batches, select_images
from vislight.models import build_classifier
from vislight.pipeline import ConfigError, validate

SIZE = 32
# Default stage weights (conf/masks/default.yaml), few iterations, every image runs them all.
SMOOTH = StageConfig(20, 0.1, 0.5, 0.01, 3.0, 0.0)
SHARP = StageConfig(10, 0.1, 0.01, 1.0, 3.0, 2.0)
FAST = MaskConfig(smooth=SMOOTH, sharp=SHARP, early_stopping=False)
# Early stopping checked often enough to act within FAST's budget.
STOPPING = dict(early_stopping=True, stop_every=3, stop_min_iterations=6)


def _resnet(num_classes: int = 3, seed: int = 0) -> nn.Module:
    """A random-init resnet_small at 32 px, frozen in eval mode."""
    torch.manual_seed(seed)
    cfg = small_cnn_cfg("resnet_small", num_classes=num_classes, input_size=SIZE, width=8)
    return build_classifier(cfg).eval().requires_grad_(False)


def _synth(n: int = 4, num_classes: int = 3) -> SynthPartDataset:
    return SynthPartDataset(
        WorldConfig(num_classes=num_classes, seed=0), "test", n, image_size=SIZE, progress=False
    )


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    ds = _synth(4)
    return torch.stack([ds[i]["image"] for i in range(4)])


# --------------------------------------------------------------------------------------------
# 1. Energy and perturbation units
# --------------------------------------------------------------------------------------------


def test_perturb_keeps_with_mask_one_and_blurs_with_mask_zero():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    blurred = gaussian_blur(x, 5, 2.0)
    ones, zeros = torch.ones(2, 1, 16, 16), torch.zeros(2, 1, 16, 16)
    torch.testing.assert_close(perturb(x, ones, blurred), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(perturb(x, zeros, blurred), blurred, atol=0, rtol=0)
    half = perturb(x, torch.full((2, 1, 16, 16), 0.5), blurred)
    torch.testing.assert_close(half, (x + blurred) / 2, atol=1e-6, rtol=0)


def test_gaussian_blur_preserves_constants_and_the_mean():
    const = torch.full((2, 3, 20, 24), 0.37)
    for k, sigma in ((3, 0.5), (7, 2.0), (41, 30.0)):  # 41 > side: replicate padding
        torch.testing.assert_close(gaussian_blur(const, k, sigma), const, atol=1e-6, rtol=0)
    # A blob on a constant background with a margin wider than the kernel: mass is conserved.
    blob = torch.full((1, 3, 32, 32), 0.1)
    blob[:, :, 12:20, 10:22] = 0.9
    out = gaussian_blur(blob, 7, 2.0)
    assert abs(float(out.mean() - blob.mean())) < 1e-6
    assert float(out[:, :, 12:20, 10:22].mean()) < 0.9 - 0.05  # it did blur
    # Any image: the mean moves little (reflect padding at the border) and the range is kept.
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    y = gaussian_blur(x, 15, 5.0)
    assert abs(float(y.mean() - x.mean())) < 2e-3
    assert float(y.min()) >= float(x.min()) - 1e-6 and float(y.max()) <= float(x.max()) + 1e-6
    torch.testing.assert_close(gaussian_kernel1d(7, 2.0).sum(), torch.tensor(1.0))


def test_disc_init_is_zero_in_the_inscribed_disc_and_one_at_the_corners():
    for h, w in ((28, 28), (6, 10), (4, 4)):
        m = disc_init(3, h, w)
        assert m.shape == (3, 1, h, w)
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        for y, x in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)):
            assert m[:, 0, y, x].eq(1).all(), (h, w, y, x)
        assert m[:, 0, h // 2, w // 2].eq(0).all()
        yy = torch.arange(h).view(-1, 1) + 0.5 - h / 2
        xx = torch.arange(w).view(1, -1) + 0.5 - w / 2
        dist = (yy**2 + xx**2).sqrt()
        r = min(h, w) / 2
        assert m[0, 0][dist < r - 1e-6].eq(0).all()
        assert m[0, 0][dist > r + 1e-6].eq(1).all()
    # A fresh tensor per call, not a view of a shared one.
    a = disc_init(2, 8, 8)
    a[0].fill_(0.5)
    assert a[1].max() == 1 and disc_init(2, 8, 8).max() == 1


def test_scaled_blur_gives_an_odd_kernel_and_scales_sigma():
    for size in (16, 32, 64, 100, 224, 448):
        for kernel, sigma in ((11, 10.0), (41, 30.0), (1, 0.5), (4, 2.0)):
            k, s = scaled_blur(size, kernel, sigma)
            assert isinstance(k, int) and k >= 3 and k % 2 == 1, (size, kernel, k)
            assert abs(k - kernel * size / 224) <= 1.5 or k == 3, (size, kernel, k)
            assert s == pytest.approx(max(sigma * size / 224, 1e-3))
    assert scaled_blur(224, 11, 10.0) == (11, pytest.approx(10.0))
    assert scaled_blur(32, 11, 10.0) == (3, pytest.approx(10 * 32 / 224))
    assert scaled_blur(32, 15, 5.0, reference_size=32) == (15, pytest.approx(5.0))


@pytest.mark.parametrize(
    "st",
    [
        SMOOTH,
        SHARP,
        replace(SHARP, tv=0.0),
        replace(SHARP, binarize=0.0),
        replace(SMOOTH, tv=0.0, l1=0.0),
        replace(SHARP, tv_beta=2.0, l1=0.3),
    ],
    ids=["smooth", "sharp", "tv0", "binarize0", "l1_0_tv0", "beta2"],
)
def test_reg_grad_equals_autograd_of_the_energy_minus_the_score(st):
    torch.manual_seed(0)
    mask = (0.02 + 0.96 * torch.rand(3, 1, 7, 9, dtype=torch.float64)).requires_grad_(True)
    score = torch.rand(3, dtype=torch.float64)
    energy = mask_energy(score, mask, st.l1, st.tv, st.tv_beta, st.binarize)
    (expected,) = torch.autograd.grad(energy.sum(), mask)
    got = _reg_grad(mask.detach(), st)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-9)


def _upsample_then_blur(p: torch.Tensor, n_out: int, sigma: float) -> torch.Tensor:
    up = F.interpolate(p, size=(n_out, n_out), mode="bilinear", align_corners=False)
    if sigma > 0.3:
        up = gaussian_blur(up, 2 * math.ceil(2 * sigma) + 1, sigma)
    return up


@pytest.mark.parametrize(
    ("n_in", "n_out", "sigma"),
    [
        (4, 32, 0.2),  # no blur: bilinear only
        (4, 32, 5 * 32 / 224),  # the 32-px default
        (8, 64, 5 * 64 / 224),  # the 64-px default
        (28, 224, 5.0),
        (4, 32, 2.0),
    ],
)
def test_upsample_blur_matrix_equals_interpolate_then_blur(n_in, n_out, sigma):
    a = upsample_blur_matrix(n_in, n_out, sigma)
    assert a.shape == (n_out, n_in)
    torch.testing.assert_close(a.sum(1), torch.ones(n_out), atol=1e-5, rtol=0)
    torch.manual_seed(0)
    p = torch.rand(2, 1, n_in, n_in, dtype=torch.float64)
    got = a.double() @ p @ a.double().T
    torch.testing.assert_close(got, _upsample_then_blur(p, n_out, sigma), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# 2. The mask finds what the model uses and destroys the score
# --------------------------------------------------------------------------------------------

PATCH = (8, 14, 18, 24)  # rows r0:r1, cols c0:c1 of a 6x6 patch


class PatchClassifier(nn.Module):
    """Class 0's logit is ``scale`` x (mean red of a fixed 6x6 patch - 0.5); class 1's is 0."""

    def __init__(self, box=PATCH, scale: float = 20.0):
        super().__init__()
        self.box, self.scale = box, scale

    def forward(self, x):
        r0, r1, c0, c1 = self.box
        logit = self.scale * (x[:, 0, r0:r1, c0:c1].mean((1, 2)) - 0.5)
        return torch.stack([logit, torch.zeros_like(logit)], 1)


def _patch_image(b: int = 1) -> torch.Tensor:
    r0, r1, c0, c1 = PATCH
    x = torch.full((b, 3, SIZE, SIZE), 0.1)
    x[:, 0, r0:r1, c0:c1] = 1.0
    x[:, 1:, r0:r1, c0:c1] = 0.0
    return x


def test_mask_destroys_the_score_by_blurring_the_patch_the_model_reads():
    # Blur 15 px / sigma 5 at 32 px (given at the 224 reference) erases the 6x6 patch; a 16x16
    # smooth stage (downsample 2) is fine enough to localise it. Default weights, 60/30 iterations.
    cfg = MaskConfig(
        smooth=replace(SMOOTH, iterations=60),
        sharp=replace(SHARP, iterations=30),
        blur_kernel=105,
        blur_sigma=35.0,
        downsample=2,
        early_stopping=False,
    )
    model, x = PatchClassifier(), _patch_image()
    k, sigma = scaled_blur(SIZE, cfg.blur_kernel, cfg.blur_sigma, cfg.reference_size)
    assert model(gaussian_blur(x, k, sigma)).softmax(1)[0, 0] < 0.1  # the blur erases the patch
    r = optimize_masks(model, x, torch.tensor([0]), cfg)
    assert r.sharp.shape == r.smooth.shape == (1, 1, SIZE, SIZE)
    for m in (r.smooth, r.sharp):
        assert float(m.min()) >= 0 and float(m.max()) <= 1
    assert float(r.p_x[0]) > 0.99
    assert float(r.drop[0]) > 0.5, r.diagnostics(0)
    assert float(r.normalized_score[0]) < 0.5
    salient = (r.sharp[0, 0] < 0.5).numpy()
    patch = np.zeros((SIZE, SIZE), bool)
    r0, r1, c0, c1 = PATCH
    patch[r0:r1, c0:c1] = True
    assert salient[patch].mean() > 0.5, "the salient area misses the patch"
    near = distance_transform_edt(~patch)[salient] <= 2
    assert near.mean() > 0.8, f"only {near.mean():.2f} of the salient pixels lie near the patch"
    assert 0 < float(r.area[0]) < 0.3
    assert float(r.area[0]) == pytest.approx(salient.mean())
    assert float(r.binarization[0]) > 0.8
    assert float(r.iterations[0]) == 90
    d = r.diagnostics(0)
    assert d["drop"] == pytest.approx((d["p_x"] - d["p_masked"]) / d["p_x"], rel=1e-5)


# --------------------------------------------------------------------------------------------
# 3. Batch independence and 4. early stopping
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "early",
    [False, True],
    ids=["default", "early_stopping"],
)
def test_batch_gives_the_same_masks_as_one_image_at_a_time(images, early):
    model = _resnet()
    with torch.no_grad():  # sharper logits than the random init gives: non-trivial masks
        model.net.fc.weight.mul_(30)
        model.net.fc.bias.mul_(30)
        target = model(images).argmax(1)
    cfg = replace(FAST, **STOPPING) if early else FAST
    batch = optimize_masks(model, images, target, cfg)
    full = SMOOTH.iterations + SHARP.iterations
    assert (batch.iterations <= full).all()
    if not early:
        assert (batch.iterations == full).all()
    assert float(batch.sharp.min()) >= 0 and float(batch.sharp.max()) <= 1
    assert (batch.area > 0).any(), "trivial masks: the test would prove nothing"
    for i in range(len(images)):
        one = optimize_masks(model, images[i : i + 1], target[i : i + 1], cfg)
        assert int(one.iterations[0]) == int(batch.iterations[i]), i
        torch.testing.assert_close(one.sharp[0], batch.sharp[i], atol=1e-4, rtol=0)
        torch.testing.assert_close(one.smooth[0], batch.smooth[i], atol=1e-4, rtol=0)
        assert float(one.p_masked[0]) == pytest.approx(float(batch.p_masked[i]), abs=1e-4)


class Saturated(nn.Module):
    """A model whose softmax is saturated (score gradient ~0): only the regularisers act."""

    def forward(self, x):
        logit = 100.0 + 0.0 * x.mean((1, 2, 3))
        return torch.stack([logit, torch.zeros_like(logit)], 1)


def test_salient_set_stop_stops_a_stable_image_at_the_first_check_it_may():
    cfg = replace(FAST, early_stopping=True, stop_every=5, stop_min_iou=0.9, stop_min_iterations=10)
    stop = _SalientSetStop(cfg, 3)
    active = torch.ones(3, dtype=torch.bool)
    rows = torch.arange(3)
    still = torch.ones(1, 1, 8, 8)
    still[..., :4, :4] = 0  # a 16-pixel salient square
    masks = {step: still.repeat(3, 1, 1, 1) for step in (5, 10, 15)}
    # image 1 moves its square by one column at every check (IoU 12/20 = 0.6 < 0.9); image 2
    # moves it by two columns at step 10 (IoU 8/24), then only loses one pixel (IoU 15/16 > 0.9)
    for step, m in masks.items():
        m[1] = 1
        k = step // 5
        m[1, :, :4, k : k + 4] = 0
    for step in (10, 15):
        masks[step][2] = 1
        masks[step][2, :, :4, 2:6] = 0
    masks[15][2, :, 0, 2] = 1
    assert stop.is_check(5) and not stop.is_check(7)
    stop.update(5, masks[5], rows, active)
    assert active.tolist() == [True] * 3  # the first check only remembers the salient sets
    stop.update(10, masks[10], rows, active)
    assert active.tolist() == [False, True, True]  # image 0 did not move: stopped
    stop.update(15, masks[15][1:], rows[1:], active)  # only the active rows are passed
    assert active.tolist() == [False, True, False]
    # before min_iterations nothing stops, however stable
    early = _SalientSetStop(replace(cfg, stop_min_iterations=20), 3)
    act = torch.ones(3, dtype=torch.bool)
    for step in (5, 10, 15):
        early.update(step, masks[5], rows, act)
    assert act.all()
    # an empty salient set twice in a row is stable (IoU of two empty sets = 1)
    blank = _SalientSetStop(cfg, 1)
    act = torch.ones(1, dtype=torch.bool)
    for step in (5, 10):
        blank.update(step, torch.ones(1, 1, 8, 8), torch.arange(1), act)
    assert not act.any()


def test_early_stopping_saves_iterations_and_keeps_the_masks_of_the_full_budget():
    full = SMOOTH.iterations + SHARP.iterations
    # Only the regularisers act on a saturated model: the masks go to 1 and stop moving.
    x = torch.cat([_patch_image(2), torch.rand(2, 3, SIZE, SIZE)])
    target = torch.zeros(4, dtype=torch.long)
    off = optimize_masks(Saturated(), x, target, FAST)
    assert off.iterations.tolist() == [full] * 4
    es = replace(FAST, **STOPPING)
    on = optimize_masks(Saturated(), x, target, es)
    assert on.iterations.dtype == torch.long
    assert (on.iterations < full).all(), on.iterations
    # every stage runs at least min_iterations, and a stop comes only at a check
    assert (on.iterations >= 2 * es.stop_min_iterations).all(), on.iterations
    # A model that converges stops early with (nearly) the masks and drop of the full budget.
    cfg = replace(
        FAST,
        smooth=replace(SMOOTH, iterations=60),
        sharp=replace(SHARP, iterations=30),
        blur_kernel=105,
        blur_sigma=35.0,
        downsample=2,
    )
    model, xp = PatchClassifier(), _patch_image(2)
    ref = optimize_masks(model, xp, target[:2], cfg)
    assert float(ref.drop.min()) > 0.5, ref.diagnostics(0)  # the masks do something
    conv = optimize_masks(model, xp, target[:2], replace(cfg, early_stopping=True))
    assert (conv.iterations < 90).all(), conv.iterations
    assert (conv.drop - ref.drop).abs().max() < 0.02, (conv.drop, ref.drop)
    sal_ref, sal_conv = ref.sharp < 0.5, conv.sharp < 0.5
    iou = (sal_ref & sal_conv).sum() / (sal_ref | sal_conv).sum()
    assert float(iou) > 0.9, float(iou)


@pytest.mark.parametrize("after", [0, 3])
def test_batch_adam_follows_adam_then_forgets_with_its_short_beta2(after):
    """The first `after` steps are torch's Adam (beta2 0.999); from then on the second moment is
    a moving average with decay 0.9 of the bias-corrected estimate (after = 0: Adam with 0.9)."""
    torch.manual_seed(0)
    start = torch.rand(2, 1, 4, 4) * 0.5 + 0.25
    grads = [torch.randn(2, 1, 4, 4) * 0.01 * (10 if k < 3 else 1) for k in range(8)]
    ours = start.clone()
    adam = _BatchAdam(ours, 0.01, beta2=0.9, beta2_after=after)
    # reference, by hand
    p, m, v = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
    for t, g in enumerate(grads, 1):
        adam.step(g)
        m = 0.9 * m + 0.1 * g
        if t <= after:
            v = 0.999 * v + 0.001 * g * g
            v_hat = v / (1 - 0.999**t)
            if t == after:
                v = v_hat
        elif after:
            v = 0.9 * v + 0.1 * g * g
            v_hat = v
        else:
            v = 0.9 * v + 0.1 * g * g
            v_hat = v / (1 - 0.9**t)
        p = (p - 0.01 * (m / (1 - 0.9**t)) / (v_hat.sqrt() + 1e-8)).clamp(0, 1)
        torch.testing.assert_close(ours, p, atol=1e-7, rtol=1e-6)
    if after:  # the first steps are torch's own Adam, clamped
        q = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([q], lr=0.01)
        mine = start.clone()
        mine_adam = _BatchAdam(mine, 0.01, beta2=0.9, beta2_after=after)
        for g in grads[:after]:
            q.grad = g.clone()
            opt.step()
            with torch.no_grad():
                q.clamp_(0, 1)
            mine_adam.step(g)
        torch.testing.assert_close(mine, q.detach(), atol=1e-7, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# 4b. Speed options: channels-last inputs and bf16 autocast
# --------------------------------------------------------------------------------------------

# The blur of test_mask_destroys_the_score (erases detail at 32 px): masks with drops up to ~0.3.
WIDE = replace(FAST, blur_kernel=105, blur_sigma=35.0, downsample=2)


def _sharp_resnet() -> nn.Module:
    model = _resnet()
    with torch.no_grad():  # sharper logits than the random init gives: non-trivial masks
        model.net.fc.weight.mul_(30)
        model.net.fc.bias.mul_(30)
    return model


@contextmanager
def _watch(model: nn.Module):
    """Records, per forward, whether the input is channels-last and the stem conv's output dtype
    and layout."""
    cl = torch.channels_last
    seen: dict[str, list] = {"input_cl": [], "stem_dtype": [], "stem_cl": []}

    def stem(m, args, out):
        seen["stem_dtype"].append(out.dtype)
        seen["stem_cl"].append(out.is_contiguous(memory_format=cl))

    hooks = [
        model.register_forward_pre_hook(
            lambda m, args: seen["input_cl"].append(args[0].is_contiguous(memory_format=cl))
        ),
        model.net.stem[0].register_forward_hook(stem),
    ]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def _assert_same_masks(a: MaskResult, b: MaskResult) -> None:
    """The same masks up to float rounding. Another memory layout selects other kernels, whose
    last-digit differences the optimisation amplifies where a pixel sits at the threshold (on AVX2
    machines a boundary pixel of a 10-pixel mask can flip), so the masks are compared by what a
    user reads from them: the same network scores, salient sets, areas and drops."""
    torch.testing.assert_close(a.p_x, b.p_x, atol=1e-5, rtol=0)  # the network computes the same
    torch.testing.assert_close(a.smooth, b.smooth, atol=0.05, rtol=0)
    torch.testing.assert_close(a.drop, b.drop, atol=2e-3, rtol=0)
    torch.testing.assert_close(a.area, b.area, atol=5e-3, rtol=0)
    sa, sb = (a.sharp < 0.5).flatten(1), (b.sharp < 0.5).flatten(1)
    iou = (sa & sb).sum(1) / (sa | sb).sum(1).clamp(min=1)
    assert (iou >= 0.8).all() and iou.mean() >= 0.9, iou


def test_channels_last_gives_the_same_masks(images):
    model = _sharp_resnet()
    target = model(images).argmax(1)
    with _watch(model) as seen:
        ref = optimize_masks(model, images, target, WIDE)
    assert seen["input_cl"] and not any(seen["input_cl"]) and not any(seen["stem_cl"])
    assert (ref.area > 0).all(), "trivial masks: the test would prove nothing"

    cfg = replace(WIDE, channels_last=True)
    with _watch(model) as seen:
        cl = optimize_masks(model, images, target, cfg)
    assert len(seen["input_cl"]) == len(seen["stem_cl"]) > 30
    assert all(seen["input_cl"]), "the network never saw a channels-last tensor"
    assert all(seen["stem_cl"]), "the convolutions did not run channels-last"
    _assert_same_masks(cl, ref)

    # The Lightning module converts the classifier's weights as well: still the same masks.
    module = MaskModule(model, cfg, cache=None)
    module.on_predict_start()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    with _watch(model) as seen:
        both = optimize_masks(model, images, target, cfg)
    module.on_predict_end()
    assert all(seen["input_cl"]) and all(seen["stem_cl"])
    _assert_same_masks(both, ref)


def test_bf16_masks_stay_float32_and_still_drop_the_score(images):
    model = _sharp_resnet()
    target = model(images).argmax(1)
    with _watch(model) as seen:
        ref = optimize_masks(model, images, target, WIDE)
    assert set(seen["stem_dtype"]) == {torch.float32}
    with _watch(model) as seen:
        bf = optimize_masks(model, images, target, replace(WIDE, precision="bf16"))
    assert len(seen["stem_dtype"]) > 30 and set(seen["stem_dtype"]) == {torch.bfloat16}
    for f in fields(MaskResult):  # masks, scores and energies stay float32
        t = getattr(bf, f.name)
        assert t.dtype == (torch.long if f.name == "iterations" else torch.float32), f.name
    for m in (bf.smooth, bf.sharp):
        assert float(m.min()) >= 0 and float(m.max()) <= 1
    assert not torch.equal(bf.sharp, ref.sharp), "bf16 changed nothing: was it applied?"
    # Close to the float32 masks: measured drops 0.04-0.28 within 0.01 of float32, IoU >= 0.9.
    assert float(ref.drop.mean()) > 0.1 and float(bf.drop.mean()) > 0.1, (ref.drop, bf.drop)
    assert (bf.p_masked < bf.p_x).all(), bf.drop
    assert (bf.drop - ref.drop).abs().max() < 0.05, (bf.drop, ref.drop)
    assert (bf.p_x - ref.p_x).abs().max() < 0.02, (bf.p_x, ref.p_x)
    a, b = (ref.sharp < 0.5).flatten(1), (bf.sharp < 0.5).flatten(1)
    iou = (a & b).sum(1) / (a | b).sum(1).clamp_min(1)
    assert (iou > 0.75).all(), iou


def test_cache_fingerprint_tracks_precision_and_channels_last():
    ch = config_fingerprint(FAST)
    bf = config_fingerprint(replace(FAST, precision="bf16"))
    cl = config_fingerprint(replace(FAST, channels_last=True))
    assert (
        len({ch, bf, cl, config_fingerprint(replace(FAST, precision="bf16", channels_last=True))})
        == 4
    )
    # float32 keeps the fingerprint of the config without either option (older caches stay valid).
    old = {k: v for k, v in asdict(FAST).items() if k not in ("precision", "channels_last")}
    assert ch == hashlib.sha1(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    # From the config files: Hydra reads masks.precision=32 as an int.
    masks = compose_config(
        ["logger=none", "masks.precision=bf16", "masks.channels_last=true"]
    ).masks
    mc = MaskConfig.from_cfg(masks)
    assert mc.precision == "bf16" and mc.channels_last is True
    assert config_fingerprint(mc) != config_fingerprint(replace(mc, precision="32"))
    masks = compose_config(["logger=none", "masks.precision=32"]).masks
    assert MaskConfig.from_cfg(masks).precision == "32"
    with pytest.raises(ValueError, match=r"masks\.precision"):
        replace(FAST, precision="fp16").validate()


# --------------------------------------------------------------------------------------------
# 5. The Lightning module leaves the classifier as it found it
# --------------------------------------------------------------------------------------------


def _initial_smooth_mask(cfg: MaskConfig) -> torch.Tensor:
    lh = math.ceil(SIZE / cfg.downsample)
    a = upsample_blur_matrix(lh, SIZE, cfg.upsample_sigma * SIZE / cfg.reference_size)
    return (a @ disc_init(1, lh, lh) @ a.T)[0, 0]


@pytest.mark.parametrize("mode", ["train_grad", "eval_partly_frozen"])
def test_mask_module_predict_leaves_the_classifier_unchanged(tmp_path, mode):
    clf = _resnet()
    if mode == "train_grad":
        clf.train().requires_grad_(True)
    else:
        clf.eval().requires_grad_(True)
        clf.net.fc.requires_grad_(False)
        clf.net.layer1.train()  # mixed per-module training flags
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    flags = {n: m.training for n, m in clf.named_modules()}
    grads = {n: p.requires_grad for n, p in clf.named_parameters()}

    ds = _synth(4)
    targets = [0, 1, 2, 1]
    names = [ds.classes[t] for t in targets]
    job = MaskJobDataset(ds, [0, 1, 2, 3], targets, names)
    cache = MaskCache(tmp_path / "masks", model_fingerprint(clf), config_fingerprint(FAST))
    expected = [cache.path(names[j], ds[j]["image"], ds[j]["key"]) for j in range(4)]
    module = MaskModule(clf, FAST, cache)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        inference_mode=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.predict(module, dataloaders=DataLoader(job, batch_size=2), return_predictions=False)

    after = clf.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed (BatchNorm statistics updated?)"
    assert {n: m.training for n, m in clf.named_modules()} == flags
    assert {n: p.requires_grad for n, p in clf.named_parameters()} == grads
    assert all(p.grad is None for p in clf.parameters())

    assert sorted(module.written) == sorted(str(p) for p in expected)
    init = _initial_smooth_mask(FAST).numpy()
    for j, path in enumerate(expected):
        out = MaskCache.read(path)
        assert out["index"] == j and out["target"] == targets[j] and out["class_name"] == names[j]
        assert out["key"] == ds[j]["key"] and out["iterations"] == 30
        assert out["sharp"].shape == (SIZE, SIZE)
        assert np.abs(out["sharp"] - init).mean() > 0.05, "the mask never left the initial disc"
        assert np.abs(out["smooth"] - init).max() > 0.05
        assert out["sharp"].min() >= 0 and out["sharp"].max() <= 1
    # Same masks as the pure optimiser on the frozen model (the module adds nothing else).
    frozen = _resnet().eval()
    images = torch.stack([ds[j]["image"] for j in range(4)])
    ref = optimize_masks(frozen, images, torch.tensor(targets), FAST)
    for j, path in enumerate(expected):
        np.testing.assert_allclose(MaskCache.read(path)["sharp"], ref.sharp[j, 0], atol=2e-3)


# --------------------------------------------------------------------------------------------
# 6. Mask cache
# --------------------------------------------------------------------------------------------


def _result(b: int = 2) -> MaskResult:
    torch.manual_seed(0)
    diag = {n: torch.rand(b) for n in ("p_x", "p_masked", "p_blurred", "drop")}
    return MaskResult(
        smooth=torch.rand(b, 1, 8, 8),
        sharp=torch.rand(b, 1, 8, 8),
        normalized_score=torch.rand(b),
        area=torch.rand(b),
        binarization=torch.rand(b),
        iterations=torch.tensor([30] * b),
        energy=torch.rand(b),
        **diag,
    )


def test_cache_path_depends_on_image_model_and_config(tmp_path):
    model = _resnet()
    img = torch.rand(3, SIZE, SIZE)
    mh, ch = model_fingerprint(model), config_fingerprint(FAST)
    cache = MaskCache(tmp_path, mh, ch)
    path = cache.path("disc_bar", img, "test-000001")
    assert path.parent == tmp_path / "disc_bar" and path.suffix == ".npz"
    assert path.name.startswith("test-000001-")
    assert MaskCache(tmp_path, mh, ch).path("disc_bar", img.clone(), "test-000001") == path

    changed = img.clone()
    changed[0, 3, 4] = 1.0 - changed[0, 3, 4].round()
    assert image_fingerprint(changed) != image_fingerprint(img)
    assert cache.path("disc_bar", changed, "test-000001") != path

    other = _resnet()
    with torch.no_grad():
        other.net.fc.bias[0] += 1e-3
    assert model_fingerprint(other) != mh
    assert model_fingerprint(_resnet()) == mh  # same weights, same hash
    assert (
        MaskCache(tmp_path, model_fingerprint(other), ch).path("disc_bar", img, "test-000001")
        != path
    )
    bn = _resnet()
    next(t for n, t in bn.named_buffers() if n.endswith("running_mean")).add_(0.5)
    assert model_fingerprint(bn) != mh  # buffers count too

    for cfg in (
        replace(FAST, sharp=replace(SHARP, iterations=11)),
        replace(FAST, blur_sigma=3.0),
        replace(FAST, early_stopping=True),
        replace(FAST, smooth=replace(SMOOTH, beta2=0.9, beta2_after=10)),
    ):
        assert config_fingerprint(cfg) != ch
        assert (
            MaskCache(tmp_path, mh, config_fingerprint(cfg)).path("disc_bar", img, "test-000001")
            != path
        )
    assert config_fingerprint(replace(FAST)) == ch


def test_cache_write_read_round_trip_is_atomic(tmp_path):
    res = _result(2)
    cache = MaskCache(tmp_path / "masks", "m" * 16, "c" * 16)
    path = cache.path("bar triangle", res.sharp[1, 0].expand(3, 8, 8), "test-000003")
    meta = {"index": 3, "label": 2, "target": 2, "key": "test-000003", "class_name": "bar triangle"}
    cache.write(path, res, 1, meta)
    assert path.parent.name == "bar_triangle"
    out = MaskCache.read(path)
    assert out.pop("smooth").dtype == np.float32 and out["sharp"].dtype == np.float32
    np.testing.assert_allclose(out.pop("sharp"), res.sharp[1, 0].numpy(), atol=1e-3)
    np.testing.assert_allclose(MaskCache.read(path)["smooth"], res.smooth[1, 0].numpy(), atol=1e-3)
    assert out == {**res.diagnostics(1), **meta}
    assert MaskCache.read_diagnostics(path) == out
    cache.write(path, res, 0, meta)  # overwrite in place
    np.testing.assert_allclose(MaskCache.read(path)["sharp"], res.sharp[0, 0].numpy(), atol=1e-3)
    files = [p for p in (tmp_path / "masks").rglob("*") if p.is_file()]
    assert files == [path], files  # no temp files left behind


def test_safe_name_sanitises_class_names():
    name = safe_name("<script>/../x")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name), name
    assert "/" not in name and not name.startswith(".") and name not in (".", "..")
    assert "script" in name and name.endswith("x")
    assert safe_name("..") == safe_name("/") == safe_name("") == "class"
    assert safe_name("golden retriever") == "golden_retriever"
    assert safe_name("n01440764") == "n01440764"


# --------------------------------------------------------------------------------------------
# 7. Image selection and 8. config validation
# --------------------------------------------------------------------------------------------


def test_select_images_keeps_correct_ones_in_dataset_order():
    names = ["a", "b", "c"]
    labels = [0, 1, 0, 1, 0, 2, 0, 1, 2]
    preds = [0, 0, 0, 1, 2, 2, 0, 2, 2]
    chosen, skipped = select_images(labels, preds, names, None, 2)
    assert chosen == {"a": [0, 2], "b": [3], "c": [5, 8]}
    assert list(chosen) == ["a", "b", "c"]
    # i=1 (b, predicted a) and i=7 (b, predicted c) are recorded; i=4 comes after a is full.
    assert [s["index"] for s in skipped] == [1, 7]
    assert skipped[0]["class"] == "b" and "misclassified" in skipped[0]["reason"]
    assert "a" in skipped[0]["reason"].split("predicted")[1]
    assert "c" in skipped[1]["reason"].split("predicted")[1]

    chosen, skipped = select_images(labels, preds, names, ["c", "b"], 1)
    assert chosen == {"c": [5], "b": [3]}
    assert [s["index"] for s in skipped] == [1]

    chosen, _ = select_images(labels, preds, names, None, 10)
    assert chosen == {"a": [0, 2, 6], "b": [3], "c": [5, 8]}

    with pytest.raises(ValueError, match=r"masks\.classes"):
        select_images(labels, preds, names, ["a", "zebra"], 2)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("masks.smooth.iterations=-1", "masks.smooth.iterations"),
        ("masks.images_per_class=0", "masks.images_per_class"),
        ("masks.sharp.lr=0", "masks.sharp.lr"),
    ],
)
def test_validate_rejects_bad_mask_settings(override, key):
    cfg = compose_config(["logger=none", override])
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate(cfg)


def test_validate_accepts_the_default_masks_config():
    validate(compose_config(["logger=none"]))
    cfg = MaskConfig.from_cfg(compose_config(["logger=none"]).masks)
    # the config's schedule is the dataclass's: the Python API and the CLI optimise alike
    assert cfg.smooth == MaskConfig().smooth and cfg.sharp == MaskConfig().sharp
    assert cfg.blur_kernel == 41 and cfg.blur_sigma == 30.0  # synth_summaries experiment
    assert cfg == replace(MaskConfig(), blur_kernel=41, blur_sigma=30.0)
    assert cfg.early_stopping is True
    paper = MaskConfig.from_cfg(compose_config(["logger=none", "masks=paper"]).masks)
    assert paper.smooth == StageConfig(300, 0.1, 0.5, 0.01, 3.0, 0.0)
    assert paper.sharp == StageConfig(150, 0.1, 0.01, 1.0, 3.0, 2.0)
    assert paper.early_stopping is False
    # only the schedule differs
    assert replace(paper, smooth=cfg.smooth, sharp=cfg.sharp, early_stopping=True) == cfg
    passes = [c.smooth.iterations + c.sharp.iterations + SCORING_PASSES for c in (cfg, paper)]
    assert passes[0] <= passes[1] / 3.5  # at most 123 passes against 453


# --------------------------------------------------------------------------------------------
# 9. End to end through the CLI: a killed masks stage resumes from its cache
# --------------------------------------------------------------------------------------------


def _cli_args(run_dir, cache_dir) -> list[str]:
    return [
        "logger=none",
        f"paths.output_dir={run_dir}",
        f"train.cache_dir={cache_dir}",
        "data.num_classes=3",
        "data.image_size=32",
        "data.train_per_class=60",
        "data.val_per_class=5",
        "data.test_per_class=8",
        "train.epochs=3",
        "masks.images_per_class=6",
        "masks.batch_size=2",
        "masks.smooth.iterations=100",  # ~0.5 s a batch: a wide window to kill the run in
        "masks.sharp.iterations=50",
        "trainer.enable_progress_bar=false",
    ]


def _run_cli(run_dir, cache_dir, log) -> subprocess.CompletedProcess:
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "vislight", *_cli_args(run_dir, cache_dir)],
            cwd=vislight.PROJECT_ROOT,
            env=SUBPROCESS_ENV,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=180,
        )
    return proc


def _masks(run_dir) -> dict[str, np.ndarray]:
    return {
        str(p.relative_to(run_dir / "masks")): MaskCache.read(p)["sharp"]
        for p in sorted((run_dir / "masks").rglob("*.npz"))
    }


@pytest.mark.slow  # the default suite kills mid-masks in test_reliability / test_interrupts
def test_cli_masks_resume_after_kill(tmp_path):
    cache = tmp_path / "cache"
    a, b = tmp_path / "A", tmp_path / "B"
    ref = _run_cli(a, cache, tmp_path / "a.log")
    assert ref.returncode == 0, (tmp_path / "a.log").read_text()[-3000:]
    ma = json.loads((a / "metrics.json").read_text())
    mask = ma["mask"]
    for key in (
        "mean_drop",
        "mean_normalized_score",
        "mean_area",
        "binarization",
        "images_per_s",
        "masked",
        "skipped",
    ):
        assert key in mask, key
    ref_masks = _masks(a)
    total = mask["masked"]
    assert total == len(ref_masks) and total >= 4, mask
    assert mask["computed"] == total and mask["reused"] == 0
    assert mask["images_per_s"] > 0 and 0 <= mask["mean_area"] <= 1
    assert 0 <= mask["binarization"] <= 1
    assert sum(c.get("masked", 0) for c in ma["classes"].values()) == total

    # Kill the same job once a batch of masks is on disk.
    proc = popen_vislight(_cli_args(b, cache), tmp_path / "b1.log")
    killed = kill_when(proc, lambda: len(list(b.glob("masks/*/*.npz"))) >= 2, 0.0)
    rc = proc.returncode
    assert killed, ("no mask file within 150 s", rc, (tmp_path / "b1.log").read_text()[-3000:])
    assert rc == -signal.SIGKILL, rc
    present = sorted(b.glob("masks/*/*.npz"))
    assert 2 <= len(present) < total, (len(present), total)
    for p in (b / "masks").rglob("*"):
        if p.is_file() and p.suffix != ".npz":  # a write cut short by the kill
            assert p.name.startswith(".") and p.name.endswith(".tmp"), p
    for p in present:  # every result file is complete
        assert MaskCache.read(p)["sharp"].shape == (32, 32)
        assert str(p.relative_to(b / "masks")) in ref_masks
    assert "mask" not in json.loads((b / "metrics.json").read_text())

    again = _run_cli(b, cache, tmp_path / "b2.log")
    assert again.returncode == 0, (tmp_path / "b2.log").read_text()[-3000:]
    mb = json.loads((b / "metrics.json").read_text())
    assert mb["classifier"]["reused"] is True
    assert mb["mask"]["reused"] == len(present)
    assert mb["mask"]["computed"] + mb["mask"]["reused"] == mb["mask"]["masked"] == total
    assert mb["mask"]["computed"] == total - len(present)
    resumed = _masks(b)
    assert resumed.keys() == ref_masks.keys()
    for name, sharp in ref_masks.items():
        np.testing.assert_allclose(resumed[name], sharp, atol=1e-3, err_msg=name)
    assert mb["mask"]["mean_drop"] == pytest.approx(mask["mean_drop"], abs=1e-3)
    assert mb["mask"]["mean_area"] == pytest.approx(mask["mean_area"], abs=1e-2)


def test_a_resumed_run_reruns_its_unfinished_batches_as_first_formed():
    """A batch's masks depend on the images it holds (in the last digits, which the optimisation
    amplifies), so a resumed run re-forms the uninterrupted run's batches: whole, never shifted."""
    jobs = list(range(7))
    done = [True, True, True, True, True, False, False]  # killed while writing batch [3, 4, 5]
    assert pending_batches(jobs, done, 3) == [[3, 4, 5], [6]]
    assert pending_batches(jobs, [True] * 7, 3) == []
    assert pending_batches(jobs, [False] * 7, 3) == [[0, 1, 2], [3, 4, 5], [6]]


def test_observe_sees_every_iteration_of_both_stages_with_the_scored_masks(images):
    model = _sharp_resnet()
    target = model(images).argmax(1)
    seen = []

    def observe(stage, step, mask, score):
        seen.append((stage, step, tuple(mask.shape), tuple(score.shape)))

    res = optimize_masks(model, images, target, FAST, observe=observe)
    b, _, h, w = images.shape
    assert [s[:2] for s in seen] == [
        *[("smooth", i) for i in range(1, FAST.smooth.iterations + 1)],
        *[("sharp", i) for i in range(1, FAST.sharp.iterations + 1)],
    ]
    assert {s[2:] for s in seen} == {((b, 1, h, w), (b,))}
    # without an observer the masks are the same: observing changes nothing
    torch.testing.assert_close(optimize_masks(model, images, target, FAST).sharp, res.sharp)
