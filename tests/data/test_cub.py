"""CUB birds with part locations: coordinates follow the preprocessing, keypoint tagging, on-object."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import require_shared

from vislight.data.cub import PART_GROUPS, CubPartsDataset, crop_transform

ALBATROSS = {1: 146, 2: 146, 3: 146}


@pytest.fixture(scope="module")
def cub():
    root = require_shared("data", "cub200_parts_001_040") / "data" / "cub200_parts_001_040"
    return CubPartsDataset(root, [1, 2, 3], 224, 256, ALBATROSS, {146: "albatross"}, "test")


def test_crop_transform_matches_resize_then_center_crop():
    # 400x268 -> shorter side 256: 382x256, then a centred 224 crop
    scale, left, top = crop_transform(400, 268, 224, 256)
    assert scale == pytest.approx(382 / 400)
    assert (left, top) == (79.0, 16.0)
    scale, left, top = crop_transform(300, 300, 224, None)
    assert scale == pytest.approx(224 / 300) and (left, top) == (0.0, 0.0)


def test_split_labels_and_names(cub):
    root = cub.root
    assert len(cub) > 0 and set(cub.labels) == {146}
    assert cub.classes[146] == "albatross"
    train = CubPartsDataset(root, [1, 2, 3], 224, 256, ALBATROSS, None, "train")
    assert not set(train.ids) & set(cub.ids)
    assert len(CubPartsDataset(root, [1, 2, 3], 224, 256, ALBATROSS, None, "all")) == len(
        train
    ) + len(cub)
    with pytest.raises(ValueError, match="data.split"):
        CubPartsDataset(root, [1], 224, 256, None, None, "val")
    with pytest.raises(ValueError, match="CUB classes"):
        CubPartsDataset(root, [999], 224, 256, None, None, "test")


def test_keypoints_and_box_lie_in_the_preprocessed_image(cub):
    for i in range(0, len(cub), max(1, len(cub) // 10)):
        kps = cub.keypoints(i)
        assert kps, i
        for group, x, y in kps:
            assert group in PART_GROUPS and 0 <= x < 224 and 0 <= y < 224
        x0, y0, x1, y1 = cub.bbox(i)
        assert x1 > x0 and y1 > y0
        # visible keypoints are on the bird: inside its box (small tolerance for annotation noise)
        inside = [x0 - 4 <= x <= x1 + 4 and y0 - 4 <= y <= y1 + 4 for _, x, y in kps]
        assert np.mean(inside) >= 0.9


def test_tag_region_counts_keypoints_with_a_margin(cub):
    group, x, y = cub.keypoints(0)[0]
    region = np.zeros((224, 224), bool)
    region[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3] = True
    assert cub.tag_region(0, region) == group
    # a pixel 6 px away from the keypoint tags it through the 4% (9 px) margin
    near = np.zeros((224, 224), bool)
    yy, xx = int(y), min(223, int(x) + 6)
    near[yy, xx] = True
    assert cub.tag_region(0, near, margin=0.04) == group
    empty_corner = np.zeros((224, 224), bool)
    assert cub.tag_region(0, empty_corner) == "background"


def test_on_object_is_about_the_bird_box(cub):
    x0, y0, x1, y1 = cub.bbox(0)
    region = np.zeros((224, 224), bool)
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    region[cy - 3 : cy + 3, cx - 3 : cx + 3] = True
    assert cub.on_object(0, region)
    outside = np.zeros((224, 224), bool)
    corners = [(0, 0), (0, 223), (223, 0), (223, 223)]
    for r, c in corners:
        if not (x0 <= c <= x1 and y0 <= r <= y1):
            outside[r, c] = True
            break
    if outside.any():
        assert not cub.on_object(0, outside)
    assert not cub.on_object(0, np.zeros((224, 224), bool))
