"""Training and evaluating on an image-folder dataset, and folder-to-label maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import compose_config
from omegaconf import open_dict
from PIL import Image

from vislight.data.folder import scan_class_folders
from vislight.pipeline import run


def _write_split(root: Path, split: str, per_class: int) -> None:
    """Easy 3-class images: a noisy square of the class's colour at a random place."""
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    colors = ((220, 30, 30), (30, 200, 40), (40, 60, 230))
    for label, color in enumerate(colors):
        folder = root / split / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(60, 140, size=(32, 32, 3)).astype(np.uint8)
            y, x = rng.integers(2, 18, size=2)
            img[y : y + 12, x : x + 12] = color
            Image.fromarray(img).save(folder / f"{i:04d}.png")


SPLIT_SEEDS = {"train": 1, "test": 2}


def test_train_and_evaluate_on_an_image_folder(tmp_path):
    root = tmp_path / "images"
    _write_split(root, "train", 40)
    _write_split(root, "test", 10)
    cfg = compose_config(
        [
            "logger=none",
            "data=folder",
            f"data.root={root}",
            "data.num_workers=0",
            "data.batch_size=16",
            "model=small_cnn",
            "model.input_size=32",
            "trainer=cpu",
            "trainer.enable_progress_bar=false",
            "train.epochs=5",
            "stages=[classifier,evaluate]",
        ],
        tmp_path,
    )
    with open_dict(cfg):
        del cfg["hydra"]
    metrics = run(cfg, tmp_path / "run")
    assert metrics["classifier"]["trained"] is True
    assert metrics["test_images"] == 30
    assert set(metrics["classes"]) == {"class_0", "class_1", "class_2"}
    # 3 balanced classes: chance is 1/3; a trained model on this easy data does clearly better.
    assert metrics["accuracy"] > 0.8, metrics["accuracy"]
    assert (tmp_path / "run" / "classifier.ckpt").is_file()


def test_label_map_sends_folders_to_model_labels(tmp_path):
    for name in ("a_first", "b_second", "c_other"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / name / "x.png")
    items, classes, skipped = scan_class_folders(
        tmp_path,
        ["a_first", "b_second"],
        label_map={"a_first": 5, "b_second": 5},
        label_names={5: "five"},
    )
    assert [label for _, label in items] == [5, 5]
    assert len(classes) == 6 and classes[5] == "five"
    assert not skipped
