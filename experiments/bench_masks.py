"""Benchmark the mask optimiser against bare forward+backward and one-image-at-a-time loops.

Prints one JSON line: model, device, batch, iters, images_per_s (ours, batched),
bare_images_per_s (same model, batch and number of forward+backward passes, no mask machinery),
overhead_ratio (our time / bare time), loop_images_per_s (one image at a time, as the paper's code),
batched_speedup (ours / loop).

    python experiments/bench_masks.py [--model resnet_small] [--batch 32] [--iters 450] [--device auto]
        [--precision 32|bf16] [--channels-last] [--input-size N]

Speed does not depend on the weights: the model is built with random weights (nothing to load).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from zoo_model import pick_device, random_zoo_model, run_header

from vislight.masks.optimize import MaskConfig, StageConfig, network_scores, optimize_masks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description="mask optimiser benchmark")
    ap.add_argument("--model", default="resnet_small", help="zoo name (conf/model/*.yaml)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--iters", type=int, default=450, help="total iterations (2/3 smooth, 1/3 sharp)"
    )
    ap.add_argument("--loop-images", type=int, default=4, help="images for the one-at-a-time loop")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--early-stopping", action="store_true")
    ap.add_argument("--precision", default="32", choices=["32", "bf16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--input-size", type=int, default=None, help="default: the model's")
    ap.add_argument(
        "--rounds", type=int, default=3, help="alternating ours/bare rounds; medians are reported"
    )
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    device = pick_device(args.device)
    model = random_zoo_model(args.model, device, args.channels_last)
    s = args.input_size or model.input_size
    smooth_iters = round(args.iters * 2 / 3)
    mcfg = MaskConfig(
        smooth=StageConfig(smooth_iters, 0.1, 0.5, 0.01, 3.0, 0.0),
        sharp=StageConfig(args.iters - smooth_iters, 0.1, 0.01, 1.0, 3.0, 2.0),
        early_stopping=args.early_stopping,
        precision=args.precision,
        channels_last=args.channels_last,
    )
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, s, s, generator=g).to(device)
    with torch.no_grad():
        target = model(x).argmax(1)

    def bare(xb, tb, n):
        """The network work alone: n forward+backward passes plus the 3 forwards that score the
        original, blurred and masked images at the end."""
        for _ in range(n):
            xi = xb.detach().requires_grad_(True)
            (g_,) = torch.autograd.grad(network_scores(model, xi, tb, mcfg).sum(), xi)
        with torch.no_grad():
            for _ in range(3):
                network_scores(model, xb, tb, mcfg)

    warm = MaskConfig(
        smooth=StageConfig(3),
        sharp=StageConfig(2),
        precision=args.precision,
        channels_last=args.channels_last,
    )
    optimize_masks(model, x, target, warm)
    bare(x, target, 3)
    # Alternate rounds so that machine noise hits both sides alike; report medians.
    ours_t, bare_t = [], []
    for _ in range(args.rounds):
        ours_t.append(timed(lambda: optimize_masks(model, x, target, mcfg), device))
        bare_t.append(timed(lambda: bare(x, target, args.iters), device))
    t_ours, t_bare = statistics.median(ours_t), statistics.median(bare_t)
    n_loop = min(args.loop_images, args.batch)
    t_loop = timed(
        lambda: [
            optimize_masks(model, x[i : i + 1], target[i : i + 1], mcfg) for i in range(n_loop)
        ],
        device,
    )
    ours = args.batch / t_ours
    loop = n_loop / t_loop
    print(
        json.dumps(
            {
                **run_header(args, device),
                "input_size": s,
                "torch": torch.__version__,
                "images_per_s": round(ours, 3),
                "images_per_s_at_450": round(ours * args.iters / 450, 4),
                "bare_images_per_s": round(args.batch / t_bare, 3),
                "overhead_ratio": round(t_ours / t_bare, 3),
                "loop_images_per_s": round(loop, 3),
                "batched_speedup": round(ours / loop, 3),
                "rounds": args.rounds,
                "seconds": {
                    "ours": [round(t, 2) for t in ours_t],
                    "bare": [round(t, 2) for t in bare_t],
                    "loop": round(t_loop, 2),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
