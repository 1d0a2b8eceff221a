"""The static HTML report: tiles per summary, escaping, and rendering in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from vislight.report.html import region_tile, write_report
from vislight.summaries.rle import rle_encode

EVIL = "<script>alert(1)</script>"


class TinyDataset:
    """Three 16x16 images, as the evaluated datasets return them."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.images = [torch.rand(3, 16, 16, generator=g) for _ in range(3)]

    def __getitem__(self, i):
        return {"image": self.images[i], "label": 0, "index": i, "key": f"k{i}"}


def _member(index: int, key: str) -> dict:
    mask = np.zeros((16, 16), bool)
    mask[4:10, 3 + index : 9 + index] = True
    return {
        "key": key,
        "index": index,
        "bbox": [3, 4, 9, 10],
        "similarity": 0.8,
        "drop": 0.5,
        "tag": "disc",
        "mask_rle": rle_encode(mask),
    }


def _summaries() -> dict:
    s1 = {
        "exemplar": "k0",
        "support": 3,
        "coherence": 0.9,
        "mean_region_drop": 0.5,
        "faithfulness": {"drop": 0.5, "random_drop": 0.1, "ratio": 5.0},
        "tag": "disc",
        "purity": 1.0,
        "members": [_member(0, "a\"quote's.jpg"), _member(1, "k1"), _member(2, "k2")],
    }
    s2 = dict(s1, support=2, members=[_member(0, "k0"), _member(1, "k1")])
    return {"classes": {EVIL: [s2, s1], "plain": [s1]}}


def _write(tmp_path, max_members=12):
    metrics = {
        "model": "m",
        "dataset": EVIL,
        "accuracy": 0.9,
        "classes": {EVIL: {"needed_parts": ["disc"]}, "plain": {"found_parts": ["head", "wing"]}},
    }
    return write_report(
        tmp_path, TinyDataset(), _summaries(), metrics, f"name: {EVIL}\n", max_members=max_members
    )


def test_report_has_one_tile_per_member_and_mosaics(tmp_path):
    out = _write(tmp_path)
    html = out["index"].read_text()
    tiles = re.findall(r"<img class='tile' src='([^']+)'", html)
    assert len(tiles) == 2 + 3 + 3
    assert all((tmp_path / "report" / t).is_file() for t in tiles)
    assert len(out["mosaics"]) == 3
    # summaries are listed by support: the support-3 summary of the first class comes first
    first = html.index("support 3")
    assert first < html.index("support 2")
    assert (tmp_path / "report" / "masks.html").is_file()
    # the part groups each class's summaries found are listed (also without needed parts)
    assert "parts found: head, wing" in html


def test_report_caps_members_per_summary(tmp_path):
    html = _write(tmp_path, max_members=1)["index"].read_text()
    assert len(re.findall(r"<img class='tile'", html)) == 3


def test_user_strings_are_escaped(tmp_path):
    html = _write(tmp_path)["index"].read_text()
    assert EVIL not in html.replace("<script>window.addEventListener", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "a&quot;quote&#x27;s.jpg" in html
    # the only script is the report's own tile counter
    assert html.count("<script>") == 1


def test_region_tile_dims_outside_and_outlines_the_region():
    image = np.full((10, 10, 3), 200, np.uint8)
    region = np.zeros((10, 10), bool)
    region[3:7, 3:7] = True
    tile = region_tile(image, region)
    assert (tile[0, 0] == 70).all()  # dimmed to 35%
    assert tuple(tile[3, 3]) == (255, 230, 0)  # outline
    assert (tile[4, 4] == 200).all()  # inside untouched


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
    shown = re.search(r'id="tiles-loaded">(\d+)<', dom)
    assert shown, dom[-2000:]
    assert int(shown.group(1)) == 8
