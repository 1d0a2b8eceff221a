"""The static HTML report: a crop per summary member linked to its whole image, members most
typical first, unfaithful summaries apart, escaping, and rendering in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html import unescape

import numpy as np
import pytest
import torch
from markupsafe import escape
from PIL import Image

from vislight.compare import write_comparison
from vislight.report.html import NOT_RELIED_ON, TILE_PX, region_crop, region_tile, write_report
from vislight.run_folder import RunFolder
from vislight.summaries.rle import rle_encode

EVIL = "<script>alert(1)</script>"


class TinyDataset:
    """Three 16x16 images, as the evaluated datasets return them."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.images = [torch.rand(3, 16, 16, generator=g) for _ in range(3)]

    def __getitem__(self, i):
        return {"image": self.images[i], "label": 0, "index": i, "key": f"k{i}"}


def _member(index: int, key: str, similarity: float = 0.8) -> dict:
    mask = np.zeros((16, 16), bool)
    mask[4:10, 3 + index : 9 + index] = True
    return {
        "key": key,
        "index": index,
        "bbox": [3 + index, 4, 9 + index, 10],
        "similarity": similarity,
        "drop": 0.5,
        "tag": "disc",
        "mask_rle": rle_encode(mask),
    }


QUOTE = "a\"quote's.jpg"


def _summaries() -> dict:
    """Per class: ``EVIL`` has an unfaithful support-2 summary listed before a faithful support-3
    one; ``plain`` has the faithful one alone. The faithful one's members are stored out of order
    (typical first: QUOTE, the exemplar, then k2, then k1)."""
    s1 = {
        "exemplar": QUOTE,
        "support": 3,
        "coherence": 0.9,
        "mean_region_drop": 0.5,
        "faithfulness": {"drop": 0.5, "random_drop": 0.1, "ratio": 5.0, "faithful": True},
        "tag": "disc",
        "purity": 1.0,
        "members": [_member(1, "k1", 0.6), _member(0, QUOTE, 1.0), _member(2, "k2", 0.8)],
    }
    s2 = dict(
        s1,
        exemplar="k0",
        support=2,
        faithfulness={"drop": 0.1, "random_drop": 0.2, "ratio": 0.5, "faithful": False},
        members=[_member(0, "k0", 1.0), _member(1, "k1")],
    )
    return {"classes": {EVIL: [s2, s1], "plain": [s1]}}


MEMBER = re.compile(
    r"<a class='member' href='([^']+)'[^>]*><img class='tile' src='([^']+)' alt='([^']*)'>"
)


def _write(tmp_path, max_members=12):
    metrics = {
        "model": "m",
        "dataset": EVIL,
        "accuracy": 0.9,
        "classes": {EVIL: {"needed_parts": ["disc"]}, "plain": {"found_parts": ["head", "wing"]}},
    }
    return write_report(
        RunFolder(tmp_path),
        TinyDataset(),
        _summaries(),
        metrics,
        f"name: {EVIL}\n",
        max_members=max_members,
    )


def _yellow(arr: np.ndarray) -> float:
    """Share of the pixels of an (H, W, 3) tile that are the region's outline."""
    return float((arr == (255, 230, 0)).all(-1).mean())


def test_report_shows_one_crop_per_member_linked_to_its_whole_image(tmp_path):
    out = _write(tmp_path)
    html = out["index"].read_text()
    members = MEMBER.findall(html)
    assert len(members) == 2 + 3 + 3
    for full, crop, _ in members:
        full_arr = np.asarray(Image.open(tmp_path / "report" / full))
        crop_arr = np.asarray(Image.open(tmp_path / "report" / crop))
        assert full_arr.shape == (16, 16, 3)  # the whole (preprocessed) image
        assert crop_arr.shape == (TILE_PX, TILE_PX, 3)
        # the crop is around the region: its outline fills far more of the tile
        assert _yellow(crop_arr) > 2 * _yellow(full_arr) > 0
        # the whole image is shown on hover, too
        assert f"<img class='whole' src='{full}'" in html
    assert len({crop for _, crop, _ in members}) == len(members)
    assert len(out["mosaics"]) == 3
    for _, _, mosaic in out["mosaics"]:
        assert np.asarray(Image.open(mosaic)).shape[0] == TILE_PX
    # summaries are listed by support: the support-3 summary of the first class comes first
    first = html.index("support 3")
    assert first < html.index("support 2")
    assert (tmp_path / "report" / "masks.html").is_file()
    # the part groups each class's summaries found are listed (also without needed parts)
    assert "parts found: head, wing" in html


def test_members_are_listed_most_typical_first(tmp_path):
    html = _write(tmp_path)["index"].read_text()
    plain = html[html.index("<h2>plain</h2>") :]
    keys = [unescape(alt).split(" · ")[0] for _, _, alt in MEMBER.findall(plain)]
    assert keys == [QUOTE, "k2", "k1"]


def test_unfaithful_summaries_are_listed_apart_collapsed(tmp_path):
    html = _write(tmp_path)["index"].read_text()
    evil = html[
        html.index("&lt;script&gt;alert(1)&lt;/script&gt;</h2>") : html.index("<h2>plain</h2>")
    ]
    main, _, apart = evil.partition("<details class='unfaithful'>")
    assert apart, "the unfaithful summary has no collapsed section"
    assert f"<summary>{NOT_RELIED_ON}: 1 summary</summary>" in apart
    assert "1 not relied on" in main
    # the faithful support-3 summary is in the main list, the unfaithful support-2 one apart
    assert len(MEMBER.findall(main)) == 3 and "support 3" in main and "support 2" not in main
    assert len(MEMBER.findall(apart)) == 2 and "support 2" in apart
    assert "<details" not in html[html.index("<h2>plain</h2>") :]


def test_report_caps_members_per_summary(tmp_path):
    html = _write(tmp_path, max_members=1)["index"].read_text()
    assert len(MEMBER.findall(html)) == 3
    assert len(re.findall(r"<img class='tile'", html)) == 3


def test_user_strings_are_escaped(tmp_path):
    html = _write(tmp_path)["index"].read_text()
    assert EVIL not in html.replace("<script>window.addEventListener", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert QUOTE not in html and str(escape(QUOTE)) in html
    # the only script is the report's own tile counter
    assert html.count("<script>") == 1


def test_user_strings_are_escaped_in_every_page(tmp_path):
    """Class names, image keys, the model, the config, skipped inputs: escaped in the report, the
    masks page, the comparison page and the comparison link (attributes are single-quoted)."""
    run = RunFolder(tmp_path / "0")
    masks = []
    for i, key in enumerate([QUOTE, EVIL]):  # mask files as MaskCache.read reads them
        path = tmp_path / f"mask{i}.npz"
        sharp = np.ones((16, 16), np.float16)
        sharp[2:8, 2:8] = 0
        diagnostics = json.dumps({"key": key, "drop": 0.5, "area": 0.1})
        np.savez_compressed(path, smooth=sharp, sharp=sharp, diagnostics=diagnostics)
        masks.append((i, path))
    metrics = {
        "model": EVIL + QUOTE,
        "dataset": EVIL,
        "accuracy": 0.9,
        "mean_summaries": 1.5,
        "classes": {EVIL: {"needed_parts": [EVIL], "found_parts": [QUOTE]}},
        "baselines": {EVIL: {"mean_summaries": 2.0}},
        "skipped": [{"file": QUOTE, "reason": EVIL}],
        "mask": {"skipped": [{"class": EVIL, "index": 3, "reason": QUOTE}]},
        "specialization": {
            "heldout_split": EVIL,
            "seeds": [0],
            "groups": [{"classes": [EVIL], "heldout_images": 2, "base": 0.5}],
            "overall": {
                "heldout_images": 2,
                **{
                    m: {"mean": 0.5, "std": 0.0} for m in ("base", "kmeans_control", "head_control")
                },
                "specialized": {"mean": 0.75, "std": 0.01},
                "paired": {
                    "kmeans_control": {
                        "pairs": 3,
                        "mean_difference": 0.25,
                        "wins": 3,
                        "losses": 0,
                        "t_test_p": 0.0123,
                        "wilcoxon_p": 0.125,
                        "groups": 1,
                        "group_t_test_p": None,
                        "group_wilcoxon_p": None,
                    }
                },
            },
        },
    }
    summaries = {"classes": {EVIL: _summaries()["classes"][EVIL]}}
    write_report(run, TinyDataset(), summaries, metrics, f"name: {EVIL} {QUOTE}\n", {EVIL: masks})
    run.metrics.write_text(json.dumps(metrics))
    write_comparison(tmp_path)
    pages = {
        "index": run.report_index.read_text(),
        "masks": run.report_masks.read_text(),
        "comparison": (tmp_path / "comparison.html").read_text(),
    }
    for name, page in pages.items():
        assert "<script>alert" not in page, name
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, name
        assert QUOTE not in page and str(escape(QUOTE)) in page, name
        # no value closes a single-quoted attribute early
        for value in re.findall(r"='([^']*)'", page):
            assert "<" not in value and '"' not in value, (name, value)
    assert pages["index"].count("<script>") == 1  # the tile counter, nothing else
    assert "<script>" not in pages["masks"] + pages["comparison"]
    for where in (
        "Specialisation (held-out &lt;script&gt;",
        "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>",
        # the paired tests beside the accuracies
        "<tr><td>k-means control</td><td>3</td><td>+0.2500</td><td>3 / 0</td><td>0.012</td>"
        "<td>0.125</td><td>1</td><td>–</td><td>–</td></tr>",
    ):
        assert where in pages["index"]
    assert f"<pre>{escape(f'name: {EVIL} {QUOTE}')}" in pages["index"]
    assert "href='../../comparison.html'>comparison</a>" in pages["index"]


def test_region_tile_dims_outside_and_outlines_the_region():
    image = np.full((10, 10, 3), 200, np.uint8)
    region = np.zeros((10, 10), bool)
    region[3:7, 3:7] = True
    tile = region_tile(image, region)
    assert (tile[0, 0] == 70).all()  # dimmed to 35%
    assert tuple(tile[3, 3]) == (255, 230, 0)  # outline
    assert (tile[4, 4] == 200).all()  # inside untouched


def _crop_of(box, size=100):
    """The crop of a constant image around a rectangular region ``box``, and the region's area."""
    image = np.full((size, size, 3), 200, np.uint8)
    region = np.zeros((size, size), bool)
    x0, y0, x1, y1 = box
    region[y0:y1, x0:x1] = True
    return region_crop(image, region, box), int(region.sum())


def _inside(crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the crop's undimmed (region) pixels."""
    return np.nonzero((crop != 70).any(-1))


def test_region_crop_contains_the_region_and_is_centred_on_its_box():
    crop, area = _crop_of((40, 30, 60, 46))  # 20 x 16 box
    # a square: the longer side plus 25% of it on each side (7.1 px, 16 px at 224, here)
    assert crop.dtype == np.uint8 and crop.shape == (35, 35, 3)
    ys, xs = _inside(crop)
    assert len(ys) == area  # every region pixel, and only those, is undimmed
    assert abs(xs.min() - (crop.shape[1] - 1 - xs.max())) <= 1  # left margin == right margin
    assert abs(ys.min() - (crop.shape[0] - 1 - ys.max())) <= 1  # top margin == bottom margin
    assert tuple(crop[ys.min(), xs.min()]) == (255, 230, 0)  # outlined
    # the margin is at least 16 px at 224 px around a small box
    small, _ = _crop_of((100, 100, 104, 104), size=224)
    assert small.shape == (36, 36, 3)


def test_region_crop_at_the_image_edge_stays_square_and_inside():
    crop, area = _crop_of((0, 90, 10, 100))  # the bottom-left corner
    assert crop.shape == (25, 25, 3)  # 10 px and twice 7.1
    ys, xs = _inside(crop)
    assert len(ys) == area
    assert xs.min() == 0 and ys.max() == 24  # moved inside the image, region at the corner
    # a square larger than the image is cut to it
    whole, area = _crop_of((0, 0, 100, 100))
    assert whole.shape == (100, 100, 3) and len(_inside(whole)[0]) == area


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip(
            "headless Chromium is not installed (Debian package `chromium`): report rendering not checked"
        )
    index = _write(tmp_path)["index"]
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--allow-file-access-from-files",
        "--virtual-time-budget=5000",
        "--dump-dom",
        index.as_uri(),
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    counts = {
        name: re.search(rf'id="{name}">(\d+)<', dom)
        for name in ("tiles-loaded", "tiles-shown", "whole-loaded")
    }
    assert all(counts.values()), dom[-2000:]
    counts = {name: int(m.group(1)) for name, m in counts.items()}
    # every crop and whole image decoded (naturalWidth > 0); the unfaithful summary's two crops
    # are in its collapsed section, so not laid out
    assert counts == {"tiles-loaded": 8, "tiles-shown": 6, "whole-loaded": 8}
    details = re.findall(r"<details class=\"unfaithful\"[^>]*>\s*<summary>([^<]*)</summary>", dom)
    assert details == [f"{NOT_RELIED_ON}: 1 summary"]
