"""Benchmark the mask optimiser against bare forward+backward and one-image-at-a-time loops.

Prints one JSON line: model, device, batch, iters, images_per_s (ours, batched),
bare_images_per_s (same model, batch and number of forward+backward passes, no mask machinery),
overhead_ratio (our time / bare time), loop_images_per_s (one image at a time, as the paper's code),
batched_speedup (ours / loop).

    python experiments/bench_masks.py [--model resnet_small] [--batch 32] [--iters 450] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from hydra import compose, initialize_config_dir

from vislight import CONF_DIR
from vislight.masks.energy import class_score
from vislight.masks.optimize import MaskConfig, StageConfig, optimize_masks
from vislight.models import build_classifier
from vislight.pipeline import _model_cfg, resolve_device


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
    ap.add_argument(
        "--rounds", type=int, default=3, help="alternating ours/bare rounds; medians are reported"
    )
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    device = resolve_device(args.device)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={args.model}"])
    model_cfg = _model_cfg(cfg)
    if model_cfg["num_classes"] is None:
        model_cfg["num_classes"] = 10
    model_cfg["pretrained"] = False  # speed does not depend on the weights; nothing to load
    model = build_classifier(model_cfg).to(device).eval().requires_grad_(False)
    s = model.input_size
    smooth_iters = round(args.iters * 2 / 3)
    mcfg = MaskConfig(
        smooth=StageConfig(smooth_iters, 0.1, 0.5, 0.01, 3.0, 0.0),
        sharp=StageConfig(args.iters - smooth_iters, 0.1, 0.01, 1.0, 3.0, 2.0),
        early_stopping=args.early_stopping,
    )
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, s, s, generator=g).to(device)
    with torch.no_grad():
        target = model(x).argmax(1)

    def bare(xb, tb, n):
        for _ in range(n):
            xi = xb.detach().requires_grad_(True)
            (g_,) = torch.autograd.grad(class_score(model(xi), tb).sum(), xi)

    warm = MaskConfig(smooth=StageConfig(3), sharp=StageConfig(2))
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
                "model": args.model,
                "device": torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else f"cpu ({torch.get_num_threads()} threads)",
                "batch": args.batch,
                "iters": args.iters,
                "input_size": s,
                "images_per_s": round(ours, 3),
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
