"""The Python API: the example under examples/ runs, gives the CLI's summaries.json, and its
results are Python objects over the explained images."""

from __future__ import annotations

import json
import runpy

import numpy as np
import pytest
import torch
from helpers import run_vislight
from PIL import Image

import vislight
from vislight.api import Explanation

EXAMPLE = vislight.PROJECT_ROOT / "examples" / "explain_your_model.py"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The example run once: (its output folder, its Explanation, its module namespace)."""
    out = tmp_path_factory.mktemp("example")
    namespace = runpy.run_path(str(EXAMPLE), run_name="example")
    return out, namespace["main"](out), namespace


def test_example_gives_the_cli_summaries(example):
    out, result, ns = example
    assert isinstance(result, Explanation) and result.run_dir == out / "run"
    assert result.metrics["accuracy"] >= 0.8  # the example's network really learned the world
    assert sum(len(s) for s in result.summaries.values()) >= 2
    classes = ",".join(ns["CLASSES"])
    proc = run_vislight(
        "~experiment",
        "model=custom",
        f"model.target={vislight.PROJECT_ROOT / 'examples' / 'nets.py'}:SmallNet",
        f"model.weights_path={out / 'net.pth'}",
        "model.input_size=32",
        "model.mean=[0.5,0.5,0.5]",
        "model.std=[0.25,0.25,0.25]",
        "data=folder",
        f"data.root={out / 'images'}",
        f"data.classes=[{classes}]",
        f"paths.output_dir={out / 'cli'}",
        *ns["OVERRIDES"],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "cli" / "summaries.json").read_text() == (
        out / "run" / "summaries.json"
    ).read_text()


def test_summaries_are_python_objects_over_the_images(example):
    out, result, _ = example
    records = json.loads((out / "run" / "summaries.json").read_text())["classes"]
    assert {c: len(s) for c, s in result.summaries.items()} == {
        c: len(s) for c, s in records.items()
    }
    summary = next(s for ss in result.summaries.values() for s in ss)
    member = summary.members[0]
    assert member.similarity == pytest.approx(1.0)  # the exemplar first
    image, mask = member.image, member.mask
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == bool
    x0, y0, x1, y1 = member.box
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
    crop = member.crop()
    assert crop.dtype == np.uint8 and crop.shape[2] == 3
    html = result._repr_html_()
    assert html.count("<img") == sum(
        min(len(s.members), 8) for ss in result.summaries.values() for s in ss
    )
    assert result.report().name == "index.html"


def test_tensors_give_the_regions_of_the_same_images_in_a_folder(example, tmp_path):
    """Images handed over as tensors are explained like the same images read from files."""
    out, folder_result, ns = example
    net = ns["SmallNet"](num_classes=3)
    net.load_state_dict(torch.load(out / "net.pth", weights_only=True))
    test = ns["SynthPartDataset"](ns["WORLD"], "test", 30, 32, progress=False)
    order = sorted(range(len(test)), key=lambda i: test[i]["label"])
    images = torch.stack([test[i]["image"] for i in order])  # the folder's order: by class
    labels = [test[i]["label"] for i in order]
    result = vislight.explain(
        net, images, labels, classes=ns["CLASSES"], mean=ns["MEAN"], std=ns["STD"],
        output_dir=tmp_path / "run", overrides=ns["OVERRIDES"], report=False,
    )  # fmt: skip

    def boxes(r):
        return {
            c: sorted((m.index, m.box) for s in ss for m in s.members)
            for c, ss in r.summaries.items()
        }

    assert boxes(result) == boxes(folder_result)
    with pytest.raises(FileNotFoundError, match="report=True"):
        result.report()


def test_summaries_apply_to_new_images_in_memory(example):
    """Explanation.apply: the run's summaries located in images it never saw (unlabelled)."""
    out, result, ns = example
    val = ns["SynthPartDataset"](ns["WORLD"], "val", 10, 32, progress=False)
    images = torch.stack([val[i]["image"] for i in range(len(val))])
    applied = result.apply(images, name="fresh")
    assert (out / "run" / "apply" / "fresh" / "index.html").is_file()
    assert len(applied["images"]) == len(val)
    assert all(e["label"] is None for e in applied["images"])
    right = [
        e["predicted"] == ns["CLASSES"][val[i]["label"]] for i, e in enumerate(applied["images"])
    ]
    assert np.mean(right) >= 0.8  # the run's own classifier, from memory
    # every summary of the predicted class is located, with its box inside the image
    for e in applied["images"]:
        numbers = len(result.summaries.get(e["predicted"], []))
        assert len(e["summaries"]) == numbers
        assert all(0 <= s["box"][0] < s["box"][2] <= 32 for s in e["summaries"])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda net, x: vislight.explain(net, "/no/such/folder"), "input_size"),
        (lambda net, x: vislight.explain(net, x * 255, [0] * len(x)), r"in \[0, 1\]"),
        (lambda net, x: vislight.explain(net, x, [0]), "one label per image"),
        (lambda net, x: vislight.explain(net, x[:, :1], [0] * len(x)), r"\(3, H, W\)"),
        (lambda net, x: vislight.explain(net, x, [5] * len(x), classes=["a", "b"]), "one name"),
        (lambda net, x: vislight.explain(3, x), "nn.Module or a zoo name"),
        (
            lambda net, x: vislight.explain(net, [(Image.new("RGB", (8, 8)), 0)], input_size=8),
            "to_tensor",
        ),
    ],
)
def test_bad_api_input_is_named(call, message):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))  # fmt: skip
    with pytest.raises((ValueError, TypeError), match=message):
        call(net, torch.rand(4, 3, 16, 16))


def test_explained_images_are_decoded_once_after_the_evaluation(example, tmp_path, monkeypatch):
    from collections import Counter

    import vislight.data.folder as folder

    out, _, ns = example
    reads = Counter()
    load = folder.load_rgb

    def counting(path):
        reads[str(path)] += 1
        return load(path)

    monkeypatch.setattr(folder, "load_rgb", counting)
    net = ns["SmallNet"](num_classes=3)
    net.load_state_dict(torch.load(out / "net.pth", weights_only=True))
    result = vislight.explain(
        net, out / "images", classes=ns["CLASSES"], input_size=32, mean=ns["MEAN"], std=ns["STD"],
        output_dir=tmp_path / "run",
        overrides=[*ns["OVERRIDES"], "data.num_workers=0", f"masks.cache_dir={out / 'run' / 'masks'}"],
    )  # fmt: skip
    masked = result.metrics["mask"]["masked"]
    assert result.metrics["mask"]["reused"] == masked > 0
    # every file: once when the folder is listed (unreadable files are skipped up front), once by
    # the evaluation; an explained image once more for masks, regions, baselines and the report
    # together (without DecodedOnce: 5 to 6 reads)
    assert Counter(reads.values()) == {2: len(reads) - masked, 3: masked}


def test_any_folder_name_is_fine(tmp_path):
    """Folder and class names reach the config as values, not as command-line overrides."""
    root = tmp_path / "my images (v1), bob's"
    for name in ("cat's", "a, b"):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (16, 16), (200, 10, 10)).save(root / name / "x.png")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))  # fmt: skip
    result = vislight.explain(
        net, root, classes=["a, b", "cat's"], input_size=16, output_dir=tmp_path / "run",
        overrides=["logger=none", "stages=[classifier,evaluate]"],
    )  # fmt: skip
    assert result.metrics["test_images"] == 2 and list(result.metrics["classes"]) == [
        "a, b",
        "cat's",
    ]
