"""Where the mask optimiser spends its time: torch.profiler over ``optimize_masks``.

Prints the top operators by self time and the share of time in the network's own operators
(convolutions, matmuls, activations, pooling and their backward) versus everything else.

    python experiments/profile_masks.py [--model vgg16] [--batch 4] [--iters 6] [--device auto]
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.profiler import ProfilerActivity, profile
from zoo_model import pick_device, random_zoo_model, run_header

from vislight.masks.optimize import MaskConfig, StageConfig, optimize_masks

# Operators that belong to the network's forward/backward (the work a mask method cannot avoid).
NETWORK_OPS = (
    "conv",
    "clamp_min",
    "addmm",
    "mm",
    "linear",
    "relu",
    "threshold_backward",
    "max_pool",
    "adaptive_avg_pool",
    "batch_norm",
    "native_batch_norm",
    "cudnn",
    "dropout",
    "_softmax",
    "gemm",
    "sgemm",
    "wgrad",
    "dgrad",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="32", choices=["32", "bf16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    device = pick_device(args.device)
    model = random_zoo_model(args.model, device, args.channels_last)
    s = model.input_size
    x = torch.rand(args.batch, 3, s, s, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        target = model(x).argmax(1)
    n_smooth = max(1, round(args.iters * 2 / 3))
    mcfg = MaskConfig(
        smooth=StageConfig(n_smooth),
        sharp=StageConfig(max(1, args.iters - n_smooth), 0.1, 0.01, 1.0, 3.0, 2.0),
        precision=args.precision,
        channels_last=args.channels_last,
    )
    optimize_masks(model, x, target, mcfg)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        optimize_masks(model, x, target, mcfg)
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events)
    network = sum(getattr(e, key) for e in events if any(op in e.key.lower() for op in NETWORK_OPS))
    print(prof.key_averages().table(sort_by=key, row_limit=args.top))
    print(
        json.dumps(
            {
                **run_header(args, device),
                "timer": key,
                "network_share": round(network / total, 4),
                "other_share": round(1 - network / total, 4),
                "other_ops": sorted(
                    (
                        (e.key, round(getattr(e, key) / total, 4))
                        for e in events
                        if not any(op in e.key.lower() for op in NETWORK_OPS)
                    ),
                    key=lambda kv: -kv[1],
                )[:10],
            }
        )
    )


if __name__ == "__main__":
    main()
