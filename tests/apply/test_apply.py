"""Summaries located in new images (vislight.apply): the matching on feature maps, the
calibration, the deletion check, the run-level outputs, the Python API and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import SUBPROCESS_ENV

from vislight.apply.core import ApplySettings, apply_images, calibrate_on_images, is_found
from vislight.apply.locate import (
    SummaryPrototype,
    box_mask,
    calibrate,
    locate,
    random_boxes,
    window_match,
)
from vislight.apply.run import apply_run
from vislight.errors import ConfigError
from vislight.finished_run import FinishedRun


def _proto(vector, box=(8.0, 8.0), side=32, members=(0.5, 0.7, 0.9), others=(0.1, 0.2)):
    return SummaryPrototype(
        number=1, tag="disc", relied_on=True, vector=np.asarray(vector, np.float32),
        box_size=box, side=side, member_scores=np.sort(np.asarray(members)),
        other_scores=np.sort(np.asarray(others)),
    )  # fmt: skip


def test_window_match_finds_the_planted_pattern_and_its_box():
    torch.manual_seed(0)
    c, h, w = 8, 8, 8
    feats = torch.rand(2, c, h, w) * 0.1
    pattern = torch.zeros(c)
    pattern[3] = 1.0
    feats[0, :, 5:7, 1:3] += pattern.view(-1, 1, 1)  # a 2x2-cell part at rows 5-6, cols 1-2
    feats[1, :, 0:2, 6:8] += pattern.view(-1, 1, 1)
    mean = torch.zeros(c)
    score, cell = window_match(feats, pattern, mean, (2, 2))
    assert torch.allclose(cell[0], torch.tensor([6.0, 2.0]))  # window centre (y, x) in cells
    assert torch.allclose(cell[1], torch.tensor([1.0, 7.0]))
    assert (score > 0.9).all()
    # image side 32 -> 4 px per cell; the box is the members' median size centred there
    scores, boxes = locate(feats, _proto(pattern.numpy()), mean, (32, 32))
    assert boxes[0].tolist() == [4, 20, 12, 28] and boxes[1].tolist() == [24, 0, 32, 8]
    np.testing.assert_allclose(scores, score.numpy(), rtol=1e-6)


def test_calibration_ranks_the_match_among_the_class_its_holders_and_the_rest():
    proto = _proto([1.0], members=(0.5, 0.7, 0.9), others=(0.1, 0.6, 0.8))
    # (p among all 6 images, p among the 3 holding a member, p of beating the 3 others)
    expected = {0.05: (1 / 7, 1 / 4, 1.0), 0.4: (2 / 7, 1 / 4, 3 / 4),
                0.8: (6 / 7, 3 / 4, 2 / 4), 0.95: (1.0, 1.0, 1 / 4)}  # fmt: skip
    for score, (p, member_p, outside_p) in expected.items():
        assert calibrate(score, proto) == pytest.approx(
            {"p_value": p, "member_p_value": member_p, "outside_p_value": outside_p}
        )


def _located(p_value, member_p_value, outside_p_value, margin=1.0) -> dict:
    return {"p_value": p_value, "member_p_value": member_p_value,
            "outside_p_value": outside_p_value, "log_odds_drop": margin,
            "random_log_odds_drop": 0.0}  # fmt: skip


def test_a_summary_held_by_part_of_the_class_is_found_only_where_the_match_is_like_its_holders():
    # typical of the class and of its holders: found (when blurring the box hurts enough)
    assert is_found(_located(0.5, 0.5, 0.5), 0.1, 0.25)
    assert not is_found(_located(0.5, 0.5, 0.5, margin=0.2), 0.1, 0.25)
    # typical of the class only because half of the class lacks the summary (a watermark): the
    # match is below every holder and no better than the images without it -> not found
    assert not is_found(_located(0.4, 0.05, 0.5), 0.1, 0.25)
    # below every holder but above every image without it -> found
    assert is_found(_located(0.6, 0.05, 0.05), 0.1, 0.25)
    # worse than nearly every image of the class -> not found, however it ranks otherwise
    assert not is_found(_located(0.05, 0.5, 0.05), 0.1, 0.25)


def test_random_boxes_keep_the_size_inside_the_image():
    rng = np.random.default_rng(0)
    boxes = random_boxes([3, 4, 13, 10], (20, 30), 50, rng)
    assert all(b[2] - b[0] == 10 and b[3] - b[1] == 6 for b in boxes)
    assert all(b[0] >= 0 and b[2] <= 30 and b[1] >= 0 and b[3] <= 20 for b in boxes)
    mask = box_mask([3, 4, 13, 10], (20, 30))
    assert mask.sum() == 60 and mask[4, 3] and not mask[10, 3]


@pytest.fixture(scope="module")
def tiny_run(tiny_reference, tmp_path_factory):
    """A copy of the tiny reference run (applying writes into the run folder)."""
    run = tmp_path_factory.mktemp("apply") / "run"
    shutil.copytree(tiny_reference, run)
    return run


class ColourNet(torch.nn.Module):
    """A 'classifier' whose features are the red, green and blue content of each 4x4 cell (and a
    constant) and
    whose class 0 is 'has red', class 1 'has blue': what it relies on is known exactly."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Identity())
        self.head = torch.nn.Linear(4, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[8.0, -4.0, -4.0, 0.0], [-4.0, -4.0, 8.0, 0.0]]))
            self.head.bias.copy_(torch.tensor([-2.0, -2.0]))

    def forward(self, x):
        grey = x.mean(1, keepdim=True)
        # (B, 4, 8, 8): colour beyond grey, and a constant (a part half in a cell looks different)
        f = self.features(torch.cat([(x - grey).clamp_min(0), 0.2 * torch.ones_like(grey)], 1))
        return self.head(f.amax((2, 3)))


def _scene(red_at=None, blue_at=None, side=32):
    """(3, side, side) grey image with an 8x8 red and/or blue square at (x, y)."""
    img = torch.full((3, side, side), 0.5)
    for at, colour in ((red_at, (1.0, 0.0, 0.0)), (blue_at, (0.0, 0.0, 1.0))):
        if at is not None:
            x, y = at
            img[:, y : y + 8, x : x + 8] = torch.tensor(colour).view(3, 1, 1)
    return img


def _square(at, side=32):
    mask = np.zeros((side, side), bool)
    mask[at[1] : at[1] + 8, at[0] : at[0] + 8] = True
    return mask


def test_apply_finds_the_part_the_network_uses_and_flags_images_without_it():
    from vislight.apply.locate import class_prototypes
    from vislight.regions.describe import describe_regions
    from vislight.summaries.regionset import RegionSet

    net = ColourNet().eval()
    layer = net.features[1]
    rng = np.random.default_rng(0)
    keys, boxes, masks, descs, scenes = [], [], [], [], []
    for i in range(12):  # red squares (the summary) and grey background patches (the rest)
        red = tuple(int(v) for v in rng.integers(0, 25, 2))
        scenes.append(_scene(red_at=red))
        grey = tuple(int(v) for v in rng.integers(0, 25, 2))
        image = _scene(red_at=red)
        region = np.stack([_square(red), _square(grey) & ~_square(red)])
        d = describe_regions(net, layer, image, region, 0, 11.0, 5.0, 32)
        for j, at in enumerate((red, grey)):
            keys.append(f"img{i}")
            boxes.append([at[0], at[1], at[0] + 8, at[1] + 8])
            masks.append(region[j])
            descs.append(d["descriptor"][j])
    n = len(keys)
    regions = RegionSet(
        class_name="red", target=0, n_images=12, side=32, image_id=np.repeat(np.arange(12), 2),
        index=np.repeat(np.arange(12), 2), keys=keys, kinds=["component"] * n,
        image_indices=np.arange(12),
        masks=np.stack(masks), boxes=np.asarray(boxes), drops=np.zeros(n, np.float32),
        descriptors=np.stack(descs), geometry=np.zeros((n, 3), np.float32),
        centers=np.zeros((n, 2), np.float32),
    )  # fmt: skip
    red_summary = {"tag": "red", "members": [{"key": k, "bbox": b, "index": int(k[3:])} for k, b in list(zip(keys, boxes))[::2]]}  # fmt: skip
    protos = {0: class_prototypes(regions, [(1, red_summary, True)])}
    # calibrated as new images are scored: the best match in each of the run's 12 images
    protos = calibrate_on_images(net, layer, protos, lambda i: scenes[i])
    assert len(protos[0].summaries[0].member_scores) == 12
    blur = (41.0, 30.0, 32)  # a strong blur: what it covers loses its colour
    images = torch.stack([_scene(red_at=(20, 4)), _scene(red_at=(3, 22), blue_at=(20, 20)),
                          _scene(blue_at=(10, 10)), _scene()])  # fmt: skip
    results = apply_images(net, layer, protos, images, [0, 0, 0, 0], ApplySettings(), blur)
    located = [r["summaries"][0] for r in results]
    # where the red square is, it is found, and its located box covers it
    for s, (x, y) in zip(located[:2], ((20, 4), (3, 22))):
        assert s["found"] and s["p_value"] >= 0.1, str(s)
        assert (
            s["drop"] > s["random_drop"] + 0.2
            and s["log_odds_drop"] > s["random_log_odds_drop"] + 1
        )
        x0, y0, x1, y1 = s["box"]
        assert x0 <= x + 4 < x1 and y0 <= y + 4 < y1
    assert [r["strategy"] for r in results[:2]] == [[1], [1]]
    assert [r["atypical"] for r in results] == [False, False, True, True]
    assert not located[2]["found"] and not located[3]["found"]
    # the predicted class is the default target: image 2 is predicted 'blue', which has no summary
    predicted = apply_images(net, layer, protos, images, None, ApplySettings(), blur)
    assert predicted[2]["target"] == 1 and predicted[2]["summaries"] == []
    assert predicted[2]["atypical"] is None


def test_apply_run_writes_results_pages_and_links_them(tiny_run):
    result = apply_run(tiny_run, ["apply.name=check", "apply.max_images_per_class=4"])
    out = tiny_run / "apply" / "check"
    saved = json.loads((out / "apply.json").read_text())
    assert saved["images"] == result["images"] and len(result["images"]) == 12
    fr = FinishedRun.open(tiny_run)
    for e in result["images"]:
        assert e["predicted"] in fr.classes and e["target"] == e["predicted"]
        numbers = {s["number"] for s in e["summaries"]}
        assert set(e["strategy"]) <= numbers
        assert e["atypical"] == (not e["strategy"]) if e["summaries"] else e["atypical"] is None
        for s in e["summaries"]:
            x0, y0, x1, y1 = s["box"]
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
            assert s["found"] == is_found(s, 0.1, 0.25)
        assert (out / e["png"]).is_file()
    index = (out / "index.html").read_text()
    for name in result["classes"]:
        assert f"{name}.html" in index and (out / f"{name}.html").is_file()
    assert "../apply/check/index.html" in (tiny_run / "report" / "applications.html").read_text()
    assert "applications.html" in (tiny_run / "report" / "index.html").read_text()


def test_apply_in_memory_images_without_labels(tiny_run):
    fr = FinishedRun.open(tiny_run)
    ds = fr.datamodule().test_set
    from vislight.api import InMemoryImages

    images = InMemoryImages(
        torch.stack([ds[i]["image"] for i in range(5)]), None, 32, unlabelled=True
    )
    result = apply_run(tiny_run, ["apply.name=memory"], images=images)
    assert len(result["images"]) == 5 and all(e["label"] is None for e in result["images"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["apply.target=nearest"], "apply.target='nearest'"),
        (["apply.min_p_value=1.5"], "apply.min_p_value=1.5"),
        (["apply.nmae=x"], "has no key 'apply.nmae'"),
        (["apply.name=../up"], "plain folder name"),
        (["data.root"], "is not key=value"),
    ],
)
def test_bad_settings_are_one_clear_error(tiny_run, overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        apply_run(tiny_run, overrides)


def test_not_a_finished_run_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        FinishedRun.open(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(ConfigError, match="summaries.json is missing"):
        FinishedRun.open(tmp_path / "half")


def test_cli_error_is_one_line_with_exit_code_2(tmp_path, tiny_run):
    broken = tmp_path / "noregions"
    shutil.copytree(tiny_run, broken)
    shutil.rmtree(broken / "summaries" / "regions")
    proc = subprocess.run([sys.executable, "-m", "vislight.apply", str(broken)],
                          capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "measured regions are needed" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_folder_of_own_photos_whatever_the_runs_data(tiny_run, tmp_path):
    """apply.images: image files directly in a folder (unlabelled) or in a folder named after a
    class of the run (labelled); unreadable files are skipped and recorded."""
    from PIL import Image

    fr = FinishedRun.open(tiny_run)
    ds = fr.datamodule().test_set
    photos = tmp_path / "photos"
    (photos / fr.classes[0]).mkdir(parents=True)
    for i in range(3):
        arr = (ds[i]["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(arr).save(photos / f"flat{i}.png")
        Image.fromarray(arr).save(photos / fr.classes[0] / f"labelled{i}.png")
    (photos / "broken.jpg").write_bytes(b"not an image")
    result = apply_run(tiny_run, ["apply.name=own", f"apply.images={photos}"])
    labels = sorted((e["label"] or "") for e in result["images"])
    assert labels == ["", "", "", fr.classes[0], fr.classes[0], fr.classes[0]]
    assert [s["file"].endswith("broken.jpg") for s in result["skipped"]] == [True]
    with pytest.raises(ConfigError, match="has no key 'data.root'.*apply.images"):
        apply_run(tiny_run, [f"data.root={photos}"])  # the synthetic run's data has no root
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no image files"):
        apply_run(tiny_run, [f"apply.images={tmp_path / 'empty'}"])
