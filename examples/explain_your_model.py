"""Explain your own PyTorch classifier from Python (a notebook works the same way).

    python examples/explain_your_model.py [--out outputs/examples/explain_your_model]

1. a network of your own (``examples/nets.py``), trained here for a few seconds on images of the
   embedded synthetic world (3 classes; each class is an object made of two coloured parts);
2. a folder of class folders to explain (written here from the world's test images);
3. ``vislight.explain(net, folder, ...)``: masks, regions and summaries, as Python objects, in the
   CLI's run-folder layout (``run/summaries.json``, ``run/report/index.html``).

The same run from the command line (the test suite checks both give the same summaries.json):

    python -m vislight model=custom model.target=examples/nets.py:SmallNet \\
        model.weights_path=OUT/net.pth model.input_size=32 model.mean=[0.5,0.5,0.5] \\
        model.std=[0.25,0.25,0.25] data=folder data.root=OUT/images \\
        data.classes=[disc_bar,disc_triangle,bar_triangle] paths.output_dir=OUT/cli \\
        ~experiment MASKS...   (the overrides in OVERRIDES below)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nets import SmallNet  # noqa: E402

import vislight  # noqa: E402
from vislight.data.synth import WorldConfig  # noqa: E402
from vislight.data.synth_dataset import SynthPartDataset  # noqa: E402

WORLD = WorldConfig(num_classes=3)
CLASSES = SynthPartDataset(
    WORLD, "test", 1, 16, progress=False
).classes  # the network's output order
SIDE, MEAN, STD = 32, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
# Short mask optimisation for a 32-px world (the defaults are tuned for 224-px photos).
OVERRIDES = [
    "masks.images_per_class=6",
    "masks.smooth.iterations=60",
    "masks.sharp.iterations=30",
    "masks.blur_kernel=41",
    "masks.blur_sigma=30",
    "cluster.min_support=2",
    "logger=none",
]


def train(net: nn.Module, data: SynthPartDataset, epochs: int = 8) -> None:
    x = torch.stack([data[i]["image"] for i in range(len(data))])
    y = torch.tensor(data.targets())
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(32):
            loss = nn.functional.cross_entropy(net((x[idx] - 0.5) / 0.25), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()


def write_folder(data: SynthPartDataset, root: Path) -> None:
    for i in range(len(data)):
        item = data[i]
        folder = root / data.classes[item["label"]]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")


def main(out: Path) -> vislight.Explanation:
    torch.manual_seed(0)
    net = SmallNet(num_classes=3)
    train(net, SynthPartDataset(WORLD, "train", 240, SIDE, progress=False))
    torch.save(net.state_dict(), out / "net.pth")  # for the CLI equivalent
    write_folder(SynthPartDataset(WORLD, "test", 30, SIDE, progress=False), out / "images")

    result = vislight.explain(
        net, out / "images", classes=CLASSES, input_size=SIDE, mean=MEAN, std=STD,
        output_dir=out / "run", overrides=OVERRIDES,
    )  # fmt: skip
    print(result)
    for name, summaries in result.summaries.items():
        for s in summaries:
            first = s.members[0]
            print(f"{name}: {len(s.members)} regions in {s.support} images, exemplar box "
                  f"{first.box} in image {first.index}")  # fmt: skip
    print("report:", result.report())
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/examples/explain_your_model"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    main(args.out)
