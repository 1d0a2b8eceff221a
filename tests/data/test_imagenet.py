"""The paper's experiment path: ``experiment=vgg16_summaries`` on an ImageNet synset folder.

A fake ImageNet folder (two of the paper's classes, a few JPEGs each) and a randomly initialised
torchvision VGG16 saved as a local weights file stand in for ImageNet and its weights. The images
are sorted into the synset folder of the class the saved network predicts, so every image is
correctly classified and the whole pipeline (masks, summaries, report) runs on them. The same
masks must come out of one process and of two DDP processes over gloo.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_PIPELINE, run_vislight
from PIL import Image

from vislight.data.folder import load_rgb, preprocess
from vislight.data.imagenet import check_synset_folder, imagenet_classes, resolve_classes
from vislight.masks.cache import MaskCache
from vislight.models import build_classifier

SIZE = 64  # VGG16 takes any input >= 32 px (adaptive pooling); small keeps CI fast
ROBIN, EAGLE = 15, 22
PER_CLASS = 4


def test_table_matches_torchvision_names_and_sorted_synsets():
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    table = imagenet_classes()
    assert [c.name for c in table] == list(_IMAGENET_CATEGORIES)
    synsets = [c.synset for c in table]
    assert synsets == sorted(synsets) and len(set(synsets)) == 1000
    assert (table[146].synset, table[146].name) == ("n02058221", "albatross")
    assert [c.index for c in resolve_classes([15, "n01614925", "Albatross"])] == [15, 22, 146]
    with pytest.raises(ValueError, match=r"\['robn', 1000\]"):
        resolve_classes(["robn", 1000])


def test_folder_checks_name_what_to_provide(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="point data.root at one of them"):
        check_synset_folder(tmp_path, resolve_classes([15]))
    (tmp_path / "n01558993").mkdir()
    with pytest.raises(FileNotFoundError, match=r"22 bald eagle \(n01614925/\)"):
        check_synset_folder(tmp_path, resolve_classes([15, 22]))
    check_synset_folder(tmp_path, resolve_classes([15]))


def _vislight(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return run_vislight(*args, timeout=timeout)


def _vgg16_cfg(weights: Path, size: int = SIZE) -> dict:
    return {
        "name": "vgg16",
        "_target_": "vislight.models.zoo.torchvision",
        "arch": "vgg16",
        "num_classes": 1000,
        "input_size": size,
        "resize_size": size,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "weights_path": str(weights),
        "pretrained": True,
        "feature_layer": "features.28",
    }


def build_fake_imagenet(
    tmp: Path, size: int = SIZE, per_class: int = PER_CLASS
) -> tuple[Path, Path]:
    """(folder, weights file): robin and bald-eagle synset folders of JPEGs under ``tmp/val`` that
    the randomly initialised VGG16 saved at ``tmp/vgg16-random.pth`` classifies correctly."""
    from torchvision.models import vgg16

    from vislight.data.synth import WorldConfig
    from vislight.data.synth_dataset import SynthPartDataset

    weights = tmp / "vgg16-random.pth"
    torch.manual_seed(0)
    torch.save(vgg16(weights=None).state_dict(), weights)
    stage = tmp / "staging"
    stage.mkdir()
    n = 4 * per_class
    world = SynthPartDataset(WorldConfig(num_classes=6, seed=0), "test", n, size, cache=False)
    paths = []
    for i in range(len(world)):
        img = (world[i]["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        paths.append(stage / f"ILSVRC2012_val_{i:08d}.JPEG")
        Image.fromarray(img).save(paths[-1], quality=95)
    model = build_classifier(_vgg16_cfg(weights, size)).eval()
    x = torch.stack([preprocess(load_rgb(p), size, size) for p in paths])
    with torch.no_grad():
        logits = model(x)
    # Make robin and bald eagle the only contenders and split the images between them evenly.
    d = logits[:, ROBIN] - logits[:, EAGLE]
    bias = model.net.classifier[6].bias.data
    offset = float(d.median())
    bias -= 20.0
    bias[ROBIN] += 20.0
    bias[EAGLE] += 20.0 + offset
    torch.save(model.net.state_dict(), weights)
    root = tmp / "val"
    chosen = {ROBIN: [], EAGLE: []}
    for p, di in zip(paths, d.tolist()):
        label = ROBIN if di > offset else EAGLE
        if len(chosen[label]) < per_class:
            chosen[label].append(p)
    for label, files in chosen.items():
        folder = root / imagenet_classes()[label].synset
        folder.mkdir(parents=True)
        for p in files:
            p.rename(folder / p.name)
    (root / imagenet_classes()[ROBIN].synset / "notes.txt").write_text("not an image")
    return root, weights


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory):
    return build_fake_imagenet(tmp_path_factory.mktemp("fake_imagenet"))


def _job(fake, out: Path, *extra: str) -> subprocess.CompletedProcess:
    root, weights = fake
    return _vislight(
        "experiment=vgg16_summaries",
        f"data.root={root}",
        f"data.classes=[{ROBIN},{EAGLE}]",
        "data.num_workers=0",
        f"model.weights_path={weights}",
        f"model.input_size={SIZE}",
        f"model.resize_size={SIZE}",
        f"masks.images_per_class={PER_CLASS}",
        "masks.batch_size=3",  # batches straddle the two classes and, under DDP, the two ranks
        "masks.smooth.iterations=6",
        "masks.sharp.iterations=4",
        "cluster.min_support=2",
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"paths.output_dir={out}",
        *extra,
    )


@pytest.fixture(scope="module")
def single_run(fake_imagenet, tmp_path_factory):
    out = tmp_path_factory.mktemp("vgg16_run") / "run"
    return out, _job(fake_imagenet, out, "trainer=cpu")


@pytest.mark.slow  # end-to-end study on a VGG16 (make test-all)
def test_vgg16_summaries_end_to_end_on_a_fake_imagenet_folder(single_run):
    out, proc = single_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "vgg16" and metrics["dataset"] == "imagenet_paper18"
    assert metrics["accuracy"] == 1.0 and metrics["test_images"] == 2 * PER_CLASS
    assert metrics["mask"]["masked"] == 2 * PER_CLASS
    assert metrics["classes"]["robin"]["masked"] == PER_CLASS
    assert metrics["classes"]["bald eagle"]["masked"] == PER_CLASS
    assert any("notes.txt" in s["file"] for s in metrics["skipped"])
    summaries = json.loads((out / "summaries.json").read_text())
    assert set(summaries["classes"]) == {"robin", "bald eagle"}
    assert "bald eagle" in (out / "report" / "index.html").read_text()


def test_missing_classes_and_weights_stop_before_any_work(fake_imagenet, tmp_path):
    root, weights = fake_imagenet
    out = tmp_path / "run"
    proc = _vislight(
        "experiment=vgg16_summaries", f"data.root={root}", "logger=none", f"paths.output_dir={out}"
    )
    assert proc.returncode == 2
    assert "lacks 16 of the 18 requested classes" in proc.stderr
    assert "golden retriever (n02099601/)" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _vislight(
        "experiment=vgg16_summaries",
        f"data.root={root}",
        f"data.classes=[{ROBIN}]",
        f"model.weights_path={tmp_path / 'nope.pth'}",
        "logger=none",
        f"paths.output_dir={out}",
    )
    assert proc.returncode == 2 and "model.weights_path" in proc.stderr
    # the run folder holds its config and logs, but no result: no weights, masks or metrics
    assert out.is_dir() and {p.name for p in out.iterdir()} <= {
        ".hydra",
        "__main__.log",
        "config.yaml",
    }


def _masks(run: Path) -> dict[str, np.ndarray]:
    files = sorted((run / "masks").rglob("*.npz"))
    return {str(f.relative_to(run / "masks")): np.load(f)["sharp"] for f in files}


@pytest.mark.slow  # end-to-end study: 2 gloo processes (make test-all)
def test_two_ddp_processes_give_the_masks_of_one(fake_imagenet, single_run, tmp_path):
    out, proc = single_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp_out = tmp_path / "ddp"
    ddp = _job(
        fake_imagenet,
        ddp_out,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "stages=[classifier,evaluate,masks,summaries]",
    )
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    log = ddp.stderr + ddp.stdout
    assert "distributed_backend=gloo" in log and "Starting with 2 processes" in log
    one, two = _masks(out), _masks(ddp_out)
    assert len(one) == 2 * PER_CLASS and one.keys() == two.keys()
    for name in one:  # masks are stored as float16: allow two steps of rounding near 1
        np.testing.assert_allclose(two[name], one[name], atol=1e-3, err_msg=name)
    ranks = {MaskCache.read_diagnostics(f)["rank"] for f in (ddp_out / "masks").rglob("*.npz")}
    assert ranks == {0, 1}  # both processes did a share of the images
    # Rank 0 alone went on: one summaries file, metrics written once with every mask.
    metrics = json.loads((ddp_out / "metrics.json").read_text())
    assert metrics["mask"]["masked"] == 2 * PER_CLASS
    assert (ddp_out / "summaries.json").is_file()


@pytest.mark.slow  # end-to-end study: 2 gloo processes (make test-all)
def test_ddp_training_caches_one_classifier(tmp_path):
    """Training under trainer=ddp (2 CPU processes): one cached classifier, metrics from rank 0."""
    proc = _vislight(
        "stages=[classifier,evaluate]",
        *(o for o in TINY_PIPELINE if o != "trainer=cpu"),
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "train.epochs=2",
        "logger=none",
        f"paths.output_dir={tmp_path / 'run'}",
        f"train.cache_dir={tmp_path / 'cache'}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Starting with 2 processes" in proc.stderr + proc.stdout
    cached = list((tmp_path / "cache").rglob("classifier.pt"))
    assert len(cached) == 1 and not list((tmp_path / "cache").rglob("last.ckpt"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["classifier"]["trained"] and 0 <= metrics["accuracy"] <= 1
    assert (tmp_path / "run" / "classifier.ckpt").is_file()
