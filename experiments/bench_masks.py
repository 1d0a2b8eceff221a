"""Mask optimiser benchmark, side by side in one run on one model and one set of images.

Rows: ours at the default schedule (conf/masks/default.yaml), ours at the paper's (masks=paper),
bare forward+backward (the default's network passes with no mask machinery), ours one image at a
time (as the paper's code runs), and TorchRay's extremal perturbation at its defaults (one image at
a time; the row is skipped with the reason when torchray is not installed:
``pip install torchray --no-deps``, a benchmark-only extra). Each row: network passes per image,
images/s, mean drop (ours: the score drop when the salient set is blurred; extremal perturbation:
the drop when its selected area is blurred, by the same blur) and mean area.

    python experiments/bench_masks.py [--world synth|cifar|cub|random] [--images 16] [--batch 16]
        [--model NAME (random world)] [--loop-images 4] [--torchray-images 2] [--rounds 2]
        [--device auto] [--precision 32|bf16] [--channels-last] [--out FILE.jsonl]

``synth``: the default classifier on the synthetic test split; ``cifar``: ResNet-20 on CIFAR-10
test photos; ``cub``: EfficientNet-Lite0 on CUB test photos; ``random``: a zoo model with random
weights on random images (speed only; drops are meaningless). Prints one JSON line with
passes_per_image, images_per_s, paper_images_per_s, torchray_images_per_s, speedup_vs_paper,
speedup_vs_torchray, overhead_ratio (ours / bare), batched_speedup (ours / one at a time),
channels_last_speedup (ours in the channels-last layout / ours; its row also gives the median
salient-set IoU of its masks with ours: they differ by float rounding only), the rows and its
provenance (command, commit, machine, date, wall seconds); with --out, appends it to that file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from dataclasses import replace

import numpy as np
import torch
from jobs import commit, machine
from mask_convergence import run_schedule
from zoo_model import (
    device_label,
    load_world,
    mask_config,
    pick_device,
    random_zoo_model,
    salient_iou,
)

from vislight.masks.optimize import SCORING_PASSES, network_scores
from vislight.masks.perturbation import gaussian_blur, perturb, scaled_blur

# The explained model and the images of each world, by the experiment that explains it (its masks
# config, blur included, is the one its runs use).
WORLDS = {
    "synth": ["experiment=synth_summaries"],
    "cifar": ["experiment=compare_cifar", "model=cifar_resnet20"],
    "cub": ["experiment=cub_summaries"],
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def ours(model, x, t, cfg, batch):
    """Our optimiser over ``x`` in batches (``run_schedule`` of the convergence study, which also
    puts the weights in ``cfg``'s layout); (drop, area, passes) per image and the sharp masks."""
    r = run_schedule(model, x, t, cfg, batch)
    return r["drop"], r["area"], r["iterations"].float() + SCORING_PASSES, r["sharp"]


def bare(model, x, t, cfg, batch, passes):
    """The network work alone: ``passes - SCORING_PASSES`` forward+backward passes and the
    scoring forwards, per batch."""
    for s in range(0, len(x), batch):
        xb, tb = x[s : s + batch], t[s : s + batch]
        for _ in range(passes - SCORING_PASSES):
            xi = xb.detach().requires_grad_(True)
            torch.autograd.grad(network_scores(model, xi, tb, cfg).sum(), xi)
        with torch.no_grad():
            for _ in range(SCORING_PASSES):
                network_scores(model, xb, tb, cfg)


def torchray_row(model, x, t, cfg, n):
    """TorchRay's extremal perturbation at its defaults on ``n`` images, one at a time: the drop
    when its selected area (mask > 0.5) is blurred by our blur, its area, and its passes."""
    try:
        from torchray.attribution.extremal_perturbation import extremal_perturbation
    except ImportError as e:
        return None, f"torchray is not installed ({e}); pip install torchray --no-deps"
    drops, areas = [], []
    k, sigma = scaled_blur(min(x.shape[-2:]), cfg.blur_kernel, cfg.blur_sigma, cfg.reference_size)

    def run():
        for i in range(n):
            xi, ti = x[i : i + 1], int(t[i])
            m, _ = extremal_perturbation(model, xi, ti)  # areas=[0.1], 800 iterations, blur
            sel = (m > 0.5).float()
            with torch.no_grad():
                blurred = gaussian_blur(xi, k, sigma)
                p_x = network_scores(model, xi, t[i : i + 1], cfg)
                p_del = network_scores(model, perturb(xi, 1 - sel, blurred), t[i : i + 1], cfg)
            drops.append(float((p_x - p_del) / p_x.clamp_min(1e-12)))
            areas.append(float(sel.mean()))

    seconds, _ = timed(run, x.device)
    row = {
        "passes_per_image": 800 + 1,  # its default max_iter, plus our scoring of the result
        "images_per_s": round(n / seconds, 4),
        "images": n,
        "mean_drop": round(statistics.mean(drops), 4),
        "mean_area": round(statistics.mean(areas), 4),
        "seconds": round(seconds, 2),
    }
    if not any(areas):
        row["note"] = (
            f"its masks select nothing on {x.shape[-1]}-px images at its defaults (mask step 7 px, "
            "blur sigma 21 px: sized for 224-px images)"
        )
    return row, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="synth", choices=[*WORLDS, "random"])
    ap.add_argument("--model", default="resnet_small", help="zoo name, for --world random")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--loop-images", type=int, default=4, help="images for the one-at-a-time row")
    ap.add_argument("--torchray-images", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; medians reported")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="32", choices=["32", "bf16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--out", default=None, help="append the JSON line to this file")
    args = ap.parse_args()
    start = time.time()
    torch.set_flush_denormal(True)
    device = pick_device(args.device)
    if args.world == "random":
        model = random_zoo_model(args.model, device, args.channels_last)
        s = model.input_size
        g = torch.Generator().manual_seed(0)
        x = torch.rand(args.images, 3, s, s, generator=g).to(device)
        with torch.no_grad():
            t = model(x).argmax(1)
        model_name = args.model
    else:
        per_class = max(1, -(-args.images // 2))
        model, x, t = load_world(WORLDS[args.world], per_class)
        model = model.to(device)
        x, t = x[: args.images].to(device), t[: args.images].to(device)
        model_name = model.name
    n = len(x)
    extra = {"precision": args.precision, "channels_last": args.channels_last}
    world = WORLDS.get(args.world, [])
    new = replace(mask_config(*world), **extra)
    paper = replace(mask_config(*world, "masks=paper"), **extra)
    warm = replace(
        new, smooth=replace(new.smooth, iterations=2), sharp=replace(new.sharp, iterations=1)
    )
    # Without --channels-last, ours is also timed in the channels-last layout (same schedule):
    # its speed, and how far float rounding moves its masks (salient-set IoU with the others).
    cl = None if args.channels_last else replace(new, channels_last=True)
    if cl is not None:
        ours(model, x[:2], t[:2], replace(warm, channels_last=True), args.batch)
    ours(model, x[:2], t[:2], warm, args.batch)
    times = {"ours": [], "paper": [], "bare": []} | ({"channels_last": []} if cl else {})
    for _ in range(args.rounds):  # alternate so that machine noise hits every row alike
        sec, (drop, area, passes, masks) = timed(lambda: ours(model, x, t, new, args.batch), device)
        times["ours"].append(sec)
        if cl is not None:
            sec, (c_drop, c_area, c_passes, c_masks) = timed(
                lambda: ours(model, x, t, cl, args.batch), device
            )
            times["channels_last"].append(sec)
        sec, (p_drop, p_area, p_passes, _) = timed(
            lambda: ours(model, x, t, paper, args.batch), device
        )
        times["paper"].append(sec)
        # bare (and, after the rounds, the one-at-a-time and TorchRay rows) run in the layout the
        # paper row left: args.channels_last, as `new`
        n_passes = round(float(passes.mean()))
        sec, _ = timed(
            lambda n_passes=n_passes: bare(model, x, t, new, args.batch, n_passes), device
        )
        times["bare"].append(sec)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_loop = min(args.loop_images, n)
    t_loop, _ = timed(lambda: ours(model, x[:n_loop], t[:n_loop], new, 1), device)
    rows = {
        "ours (default)": {
            "passes_per_image": round(float(passes.mean()), 1),
            "images_per_s": round(n / med["ours"], 4),
            "mean_drop": round(float(drop.mean()), 4),
            "mean_area": round(float(area.mean()), 4),
        },
        "ours (paper schedule)": {
            "passes_per_image": round(float(p_passes.mean()), 1),
            "images_per_s": round(n / med["paper"], 4),
            "mean_drop": round(float(p_drop.mean()), 4),
            "mean_area": round(float(p_area.mean()), 4),
        },
        "bare forward+backward": {
            "passes_per_image": round(float(passes.mean()), 1),
            "images_per_s": round(n / med["bare"], 4),
        },
        **(
            {
                "ours (default), channels-last": {
                    "passes_per_image": round(float(c_passes.mean()), 1),
                    "images_per_s": round(n / med["channels_last"], 4),
                    "mean_drop": round(float(c_drop.mean()), 4),
                    "mean_area": round(float(c_area.mean()), 4),
                    "salient_iou_with_default_median": round(
                        float(np.median(salient_iou(c_masks, masks))), 4
                    ),
                }
            }
            if cl is not None
            else {}
        ),
        "ours, one image at a time": {
            "passes_per_image": round(float(passes.mean()), 1),
            "images_per_s": round(n_loop / t_loop, 4),
            "images": n_loop,
        },
    }
    tr, reason = torchray_row(model, x, t, new, min(args.torchray_images, n))
    if tr is not None:
        rows["torchray extremal perturbation (defaults)"] = tr
    ours_ips = n / med["ours"]
    line = {
        "command": shlex.join(["python", "experiments/bench_masks.py", *sys.argv[1:]]),
        "world": args.world,
        "model": model_name,
        "device": device_label(device),
        "machine": machine(),
        "commit": commit(),
        "images": n,
        "batch": args.batch,
        "input_size": list(x.shape[-2:]),
        **extra,
        "schedule": new.describe(),
        "passes_per_image": rows["ours (default)"]["passes_per_image"],
        "images_per_s": round(ours_ips, 4),
        "paper_images_per_s": round(n / med["paper"], 4),
        "torchray_images_per_s": tr["images_per_s"] if tr else None,
        "speedup_vs_paper": round(med["paper"] / med["ours"], 3),
        "speedup_vs_torchray": round(ours_ips / tr["images_per_s"], 2) if tr else None,
        "overhead_ratio": round(med["ours"] / med["bare"], 3),
        "batched_speedup": round(ours_ips / (n_loop / t_loop), 3),
        "channels_last_speedup": round(med["ours"] / med["channels_last"], 3) if cl else None,
        "rows": rows,
        "torchray_skipped": reason,
        "rounds": args.rounds,
        "seconds": {k: [round(s, 2) for s in v] for k, v in times.items()}
        | {"loop": round(t_loop, 2)},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_s": round(time.time() - start, 1),
    }
    text = json.dumps(line)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
