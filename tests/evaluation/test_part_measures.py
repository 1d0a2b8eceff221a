"""Part-level measures (vislight/evaluation/part_measures.py) on hand-made cases, the RegionSet cache
and subsets (vislight/summaries/regionset.py), and clustering / bootstrap stability of a synthetic
RegionSet whose parts are known (vislight/summaries/cluster.py, vislight/summaries/stage.py)."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.metrics import silhouette_score

import vislight
from vislight.clustering.summaries import Summary
from vislight.errors import ConfigError
from vislight.evaluation.part_measures import (
    distinctiveness,
    huang_consistency,
    keypoint_nmi_ari,
    merge_sides,
    pipnet_purity,
    summaries_per_part,
)
from vislight.summaries.cluster import (
    centered_descriptors,
    cluster_regions,
    member_labels,
    preference_factors,
    summaries_silhouette,
)
from vislight.summaries.regionset import RegionSet, innermost_point
from vislight.summaries.stage import stability


def _rect(shape, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# --------------------------------------------------------------------------------------------
# 1. Part measures
# --------------------------------------------------------------------------------------------


def test_merge_sides_and_summaries_per_part():
    assert merge_sides("left eye") == "eye"
    assert merge_sides("right wing") == "wing"
    assert merge_sides("beak") == "beak"
    assert merge_sides("lefty") == "lefty"  # only the "left " / "right " prefixes
    assert merge_sides("eye left") == "eye left"
    assert summaries_per_part(["beak", "beak", "wing", "background"]) == 2.0
    assert summaries_per_part(["beak", "wing"]) == 1.0
    assert summaries_per_part(["background", "background"]) is None
    assert summaries_per_part([]) is None
    assert summaries_per_part(["none", "beak"], background="none") == 2.0


def test_purity_and_consistency_on_and_off_the_part():
    pts = [("beak", 100.0, 100.0), ("tail", 10.0, 200.0)]
    points = [pts, pts, pts]
    on = [(100.0, 100.0)] * 3
    assert pipnet_purity(on, points, 224) == 1.0
    assert huang_consistency(on, points, 224) is True
    far = [(200.0, 10.0)] * 3  # farther than both boxes from every point
    assert pipnet_purity(far, points, 224) == 0.0
    assert huang_consistency(far, points, 224) is False
    # Two of three members on the beak: purity 2/3, Huang 2/3 < 0.8.
    mixed = [(100.0, 100.0), (100.0, 100.0), (200.0, 10.0)]
    assert pipnet_purity(mixed, points, 224) == pytest.approx(2 / 3)
    assert huang_consistency(mixed, points, 224) is False
    # Purity is the largest share over parts: one member on the beak, two on the tail.
    split = [(100.0, 100.0), (10.0, 200.0), (10.0, 200.0)]
    assert pipnet_purity(split, points, 224) == pytest.approx(2 / 3)
    assert pipnet_purity([], [], 224) is None
    assert huang_consistency([], [], 224) is None
    # No member's image shows a part: nothing to measure (not a purity of 0).
    assert pipnet_purity([(5.0, 5.0)], [[]], 224) is None
    assert huang_consistency([(5.0, 5.0)], [[]], 224) is None


def test_left_and_right_are_one_part_for_pipnet_but_not_for_huang():
    # Both eyes visible in every image, 100 px apart (outside both boxes): two members sit on the
    # left eye, two on the right one.
    pts = [("left eye", 50.0, 50.0), ("right eye", 150.0, 50.0)]
    points = [pts] * 4
    centers = [(50.0, 50.0), (50.0, 50.0), (150.0, 50.0), (150.0, 50.0)]
    assert pipnet_purity(centers, points, 224) == 1.0  # "eye": 4 of 4
    assert huang_consistency(centers, points, 224) is False  # each eye 2 of 4
    # Left eye in one image, right eye in another: the same part for PIP-Net.
    one_side = [[("left eye", 50.0, 50.0)], [("right eye", 150.0, 50.0)]]
    assert pipnet_purity([(50.0, 50.0), (150.0, 50.0)], one_side, 224) == 1.0
    # Hitting both sides in one image counts that image once.
    close = [[("left eye", 100.0, 100.0), ("right eye", 104.0, 100.0)]] * 2
    assert pipnet_purity([(102.0, 100.0), (102.0, 100.0)], close, 224) == 1.0


def test_huang_counts_only_members_whose_image_shows_the_part():
    beak = [("beak", 100.0, 100.0), ("tail", 10.0, 200.0)]
    no_beak = [("tail", 10.0, 200.0)]
    centers = [(100.0, 100.0)] * 5
    # Beak visible in 3 images, hit in all 3: 3/3 (3/5 = 0.6 if every member counted).
    assert huang_consistency(centers, [beak, beak, beak, no_beak, no_beak], 224) is True
    # Beak visible in 4, hit in 3 (the 4th image's beak is far away): 0.75 < 0.8.
    moved = [("beak", 200.0, 10.0), ("tail", 10.0, 200.0)]
    assert huang_consistency(centers, [beak, beak, beak, moved, no_beak], 224) is False
    # 4 of 5 = 0.8 exactly: consistent (>=).
    assert huang_consistency(centers, [beak, beak, beak, beak, moved], 224) is True
    # The same for PIP-Net's denominator.
    assert pipnet_purity(centers, [beak, beak, beak, no_beak, no_beak], 224) == 1.0
    assert pipnet_purity(centers, [beak, beak, beak, moved, no_beak], 224) == 0.75


def test_patch_and_box_scale_with_the_image_side():
    pts = [[("beak", 120.0, 100.0)]]  # 20 px right of the centre
    c = [(100.0, 100.0)]
    # PIP-Net: 32 px at 224 (half 16), 64 px at 448 (half 32).
    assert pipnet_purity(c, pts, 224) == 0.0
    assert pipnet_purity(c, pts, 448) == 1.0
    # Edges included: exactly 16 px away at 224; 16.5 px is out.
    assert pipnet_purity(c, [[("beak", 116.0, 84.0)]], 224) == 1.0
    assert pipnet_purity(c, [[("beak", 116.5, 100.0)]], 224) == 0.0
    # Huang: 72 px at 224 (half 36), 144 at 448 (half 72); a point 20 px away is in at both.
    assert huang_consistency(c, pts, 224) is True
    far = [[("beak", 150.0, 100.0)]]  # 50 px away
    assert huang_consistency(c, far, 224) is False
    assert huang_consistency(c, far, 448) is True
    assert huang_consistency(c, [[("beak", 136.0, 64.0)]], 224) is True  # on the corner


def test_distinctiveness():
    shape = (8, 8)
    a = _rect(shape, 0, 8, 0, 4)
    b = _rect(shape, 0, 8, 4, 8)
    half = _rect(shape, 0, 8, 2, 6)  # overlaps a on 2 of 6 columns of their union
    ids = np.array([0, 0])
    labels = np.array([0, 1])
    assert distinctiveness(ids, labels, np.stack([a, b])) == 1.0
    assert distinctiveness(ids, labels, np.stack([a, a])) == 0.0
    assert distinctiveness(ids, labels, np.stack([a, half])) == pytest.approx(2 / 3)
    # Members of one summary are not compared; nor are regions of different images.
    assert distinctiveness(ids, np.array([1, 1]), np.stack([a, a])) is None
    assert distinctiveness(np.array([0, 1]), labels, np.stack([a, a])) is None
    # Mean over the pairs of all images: image 0 disjoint (IoU 0), image 1 identical (IoU 1).
    ids4 = np.array([0, 0, 1, 1])
    labels4 = np.array([0, 1, 0, 1])
    assert distinctiveness(ids4, labels4, np.stack([a, b, a, a])) == pytest.approx(0.5)
    # Three summaries in one image: three pairs (a-b 0, a-half 1/3, b-half 1/3).
    three = distinctiveness(np.zeros(3, int), np.arange(3), np.stack([a, b, half]))
    assert three == pytest.approx(1 - (0 + 1 / 3 + 1 / 3) / 3)


def test_keypoint_nmi_ari():
    shape = (40, 40)
    pts = [("beak", 5.0, 5.0), ("tail", 30.0, 30.0)]
    beak = _rect(shape, 0, 10, 0, 10)
    tail = _rect(shape, 25, 35, 25, 35)
    both = _rect(shape, 0, 40, 0, 40)
    # Each part in its own summary in both images, every point covered: perfect.
    ids = np.array([0, 0, 1, 1])
    labels = np.array([0, 1, 0, 1])
    nmi, ari = keypoint_nmi_ari([pts, pts], ids, labels, np.stack([beak, tail, beak, tail]))
    assert nmi == pytest.approx(1.0) and ari == pytest.approx(1.0)
    # Swapping the summaries' numbers in one image breaks the correspondence.
    nmi, ari = keypoint_nmi_ari([pts, pts], ids, np.array([0, 1, 1, 0]), np.stack([beak, tail] * 2))
    assert nmi < 0.5 and ari < 0.5
    # Both parts in one summary: the labels say nothing about the part.
    nmi, ari = keypoint_nmi_ari(
        [pts, pts], np.array([0, 1]), np.array([0, 0]), np.stack([both] * 2)
    )
    assert nmi == pytest.approx(0.0) and ari == pytest.approx(0.0)
    # A point inside two members' regions goes to the smaller one, whatever their order: the
    # beak to summary 1 (small), the tail to summary 0 (the whole image): perfect again.
    for order in ([0, 1], [1, 0]):
        masks = np.stack([both, beak])[order]
        labs = np.array([0, 1])[order]
        nmi, ari = keypoint_nmi_ari([pts], np.array([0, 0]), labs, masks)
        assert nmi == pytest.approx(1.0) and ari == pytest.approx(1.0)
    # If the larger region won, both points would share summary 0 (NMI 0): check against that.
    nmi, _ = keypoint_nmi_ari([pts], np.array([0]), np.array([0]), np.stack([both]))
    assert nmi == pytest.approx(0.0)
    # Uncovered points get "no summary": one part covered, the other not, is still a partition.
    nmi, ari = keypoint_nmi_ari(
        [pts, pts], np.array([0, 1]), np.array([0, 0]), np.stack([beak] * 2)
    )
    assert nmi == pytest.approx(1.0) and ari == pytest.approx(1.0)
    # Two parts both uncovered: one label for both, lower than perfect.
    three = [("beak", 5.0, 5.0), ("tail", 30.0, 30.0), ("wing", 30.0, 5.0)]
    nmi, ari = keypoint_nmi_ari(
        [three, three], np.array([0, 1]), np.array([0, 0]), np.stack([beak] * 2)
    )
    assert nmi < 1.0 and ari < 1.0
    # Images without members: every point is "no summary".
    nmi, ari = keypoint_nmi_ari(
        [pts, pts], np.zeros(0, int), np.zeros(0, int), np.zeros((0, 40, 40), bool)
    )
    assert nmi == pytest.approx(0.0) and ari == pytest.approx(0.0)
    # Points on the far edge (x == width) are clamped into the mask.
    edge = [("beak", 40.0, 40.0), ("tail", 0.0, 0.0)]
    corner = _rect(shape, 39, 40, 39, 40)
    nmi, ari = keypoint_nmi_ari([edge], np.array([0]), np.array([0]), corner[None])
    assert nmi == pytest.approx(1.0) and ari == pytest.approx(1.0)
    # Fewer than two points: undefined.
    assert keypoint_nmi_ari([[pts[0]]], np.array([0]), np.array([0]), beak[None]) == (None, None)
    assert keypoint_nmi_ari([], np.zeros(0, int), np.zeros(0, int), np.zeros((0, 4, 4), bool)) == (
        None,
        None,
    )


# --------------------------------------------------------------------------------------------
# 2. RegionSet: cache and subsets
# --------------------------------------------------------------------------------------------


def _random_regionset(
    rng: np.random.Generator,
    n_images: int = 5,
    height: int = 20,
    width: int = 30,
    with_ground_truth: bool = True,
) -> RegionSet:
    """Random regions (0 to 3 per image; image 2 has none) with every field filled."""
    per_image = [int(rng.integers(1, 4)) for _ in range(n_images)]
    per_image[2] = 0
    image_id = np.repeat(np.arange(n_images), per_image)
    n = len(image_id)
    masks = rng.random((n, height, width)) < 0.4
    x0 = rng.integers(0, width // 2, n)
    y0 = rng.integers(0, height // 2, n)
    boxes = np.stack([x0, y0, x0 + 5, y0 + 5], axis=1)
    image_indices = rng.choice(1000, n_images, replace=False)
    tags = [str(rng.choice(["beak", "wing", "background"])) for _ in range(n)]
    tags[0] = None  # a region without a tag
    points = [
        [
            ("beak", float(rng.random() * width), float(rng.random() * height)),
            ("left eye", 1.5, 2.25),
        ]
        for _ in range(n_images)
    ]
    points[1] = []  # an image without visible parts
    return RegionSet(
        class_name="Laysan Albatross",
        target=7,
        n_images=n_images,
        side=width,
        image_id=image_id,
        index=image_indices[image_id],
        keys=[f"img{i}" for i in image_id],
        kinds=[str(rng.choice(["component", "proposal"])) for _ in range(n)],
        masks=masks,
        boxes=boxes,
        drops=rng.random(n).astype(np.float32),
        descriptors=rng.standard_normal((n, 6)).astype(np.float32),
        geometry=rng.random((n, 3)).astype(np.float32),
        centers=(rng.random((n, 2)) * width).astype(np.float32),
        tags=tags if with_ground_truth else None,
        on_object=(rng.random(n) < 0.5) if with_ground_truth else None,
        points=points if with_ground_truth else [],
        image_indices=image_indices,
    )


ARRAYS = (
    "image_id",
    "index",
    "masks",
    "boxes",
    "drops",
    "descriptors",
    "geometry",
    "centers",
    "image_indices",
)


def _assert_same(a: RegionSet, b: RegionSet) -> None:
    for name in ("class_name", "target", "n_images", "side", "keys", "kinds", "tags", "points"):
        assert getattr(a, name) == getattr(b, name), name
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    if a.on_object is None:
        assert b.on_object is None
    else:
        np.testing.assert_array_equal(a.on_object, b.on_object)


@pytest.mark.parametrize("with_ground_truth", [True, False])
def test_regionset_save_load_round_trip(tmp_path, with_ground_truth):
    rs = _random_regionset(np.random.default_rng(0), with_ground_truth=with_ground_truth)
    assert rs.masks.shape[-1] % 8 != 0  # bit-packing pads the last axis
    path = tmp_path / "regions" / "class.npz"
    rs.save(path, "key-a")
    back = RegionSet.load(path, "key-a")
    assert back is not None
    _assert_same(rs, back)
    assert back.masks.dtype == bool and back.masks.shape == (len(rs), 20, 30)
    assert len(back) == len(rs)
    # Another key, a missing file, a corrupt file: no set.
    assert RegionSet.load(path, "key-b") is None
    assert RegionSet.load(tmp_path / "missing.npz", "key-a") is None
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an npz file at all" * 10)
    assert RegionSet.load(garbage, "key-a") is None


def test_regionset_load_of_a_truncated_file_is_none(tmp_path):
    rs = _random_regionset(np.random.default_rng(1))
    path = tmp_path / "class.npz"
    rs.save(path, "k")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])  # a zip archive cut short (an interrupted copy)
    assert RegionSet.load(truncated, "k") is None


def test_regionset_of_no_regions_round_trips(tmp_path):
    rs = _random_regionset(np.random.default_rng(2))
    empty = rs.subset([2])  # image 2 has no region
    assert len(empty) == 0 and empty.n_images == 1
    path = tmp_path / "empty.npz"
    empty.save(path, "k")
    back = RegionSet.load(path, "k")
    assert back is not None and len(back) == 0
    assert back.points == empty.points
    np.testing.assert_array_equal(back.image_indices, empty.image_indices)


def test_regionset_subset_keeps_and_renumbers_the_chosen_images():
    rs = _random_regionset(np.random.default_rng(3), n_images=6)
    images = [1, 2, 4]
    sub = rs.subset(images)
    keep = np.flatnonzero(np.isin(rs.image_id, images))
    assert len(sub) == len(keep) == sum(int((rs.image_id == i).sum()) for i in images)
    assert sub.n_images == 3
    renumber = {1: 0, 2: 1, 4: 2}
    np.testing.assert_array_equal(sub.image_id, [renumber[int(i)] for i in rs.image_id[keep]])
    for name in ("index", "masks", "boxes", "drops", "descriptors", "geometry", "centers"):
        np.testing.assert_array_equal(getattr(sub, name), getattr(rs, name)[keep], err_msg=name)
    np.testing.assert_array_equal(sub.on_object, rs.on_object[keep])
    assert sub.keys == [rs.keys[i] for i in keep]
    assert sub.kinds == [rs.kinds[i] for i in keep]
    assert sub.tags == [rs.tags[i] for i in keep]
    # Per-image lists follow the new numbering: image j of the subset is images[j].
    assert sub.points == [rs.points[i] for i in images]
    np.testing.assert_array_equal(sub.image_indices, rs.image_indices[images])
    for j in range(sub.n_images):
        np.testing.assert_array_equal(sub.index[sub.image_id == j], sub.image_indices[j])
    # Without ground truth, the optional fields stay absent.
    bare = _random_regionset(np.random.default_rng(4), with_ground_truth=False).subset([0, 3])
    assert bare.tags is None and bare.on_object is None and bare.points == []


def test_regionset_select_keeps_the_chosen_regions_of_the_same_images():
    rs = _random_regionset(np.random.default_rng(5), n_images=5)
    flags = np.arange(len(rs)) % 3 != 1
    by_flags, by_positions = rs.select(flags), rs.select(np.flatnonzero(flags))
    keep = np.flatnonzero(flags)
    for sel in (by_flags, by_positions):
        assert len(sel) == len(keep) and sel.n_images == rs.n_images
        for name in ("image_id", "index", "masks", "boxes", "drops", "descriptors", "geometry",
                     "centers", "on_object"):  # fmt: skip
            np.testing.assert_array_equal(getattr(sel, name), getattr(rs, name)[keep], err_msg=name)
        assert sel.keys == [rs.keys[i] for i in keep]
        assert sel.kinds == [rs.kinds[i] for i in keep]
        assert sel.tags == [rs.tags[i] for i in keep]
        assert sel.points == rs.points  # per-image lists are untouched
        np.testing.assert_array_equal(sel.image_indices, rs.image_indices)
    for none in (rs.select(np.zeros(len(rs), bool)), rs.select([])):
        assert (
            len(none) == 0
            and none.n_images == rs.n_images
            and none.masks.shape[1:] == rs.masks.shape[1:]
        )
    with pytest.raises(ValueError, match="flags"):
        rs.select(flags[:-1])


@pytest.mark.parametrize(("y0", "x0", "size"), [(4, 6, 10), (4, 6, 11), (0, 0, 20), (7, 3, 1)])
def test_innermost_point_of_a_square_is_its_centre(y0, x0, size):
    m = _rect((20, 30), y0, y0 + size, x0, x0 + size)
    x, y = innermost_point(m)
    assert abs(x - (x0 + size / 2)) <= 0.5
    assert abs(y - (y0 + size / 2)) <= 0.5
    assert m[int(y), int(x)]  # a pixel centre inside the region


def test_innermost_point_of_a_long_rectangle_is_its_centre():
    # 10 rows x 20 columns: the deepest pixels form a ridge along the long axis; the one nearest
    # the ridge's middle is returned.
    m = _rect((20, 30), 4, 14, 6, 26)
    x, y = innermost_point(m)
    assert abs(y - 9) <= 0.5
    assert abs(x - 16) <= 0.5


def test_innermost_point_avoids_a_thin_arm():
    # A big square with a long thin arm: the innermost pixel is in the square, not at the
    # centroid of all pixels or of the bounding box.
    m = _rect((40, 40), 2, 18, 2, 18) | _rect((40, 40), 9, 11, 18, 40)
    x, y = innermost_point(m)
    assert abs(x - 10) <= 0.5 and abs(y - 10) <= 0.5


# --------------------------------------------------------------------------------------------
# 3. Clustering and bootstrap stability of a synthetic RegionSet
# --------------------------------------------------------------------------------------------


def _cluster_cfg() -> dict:
    sim = OmegaConf.to_container(OmegaConf.load(vislight.CONF_DIR / "similarity" / "default.yaml"))
    clu = OmegaConf.to_container(OmegaConf.load(vislight.CONF_DIR / "cluster" / "default.yaml"))
    sim["mode"] = "dense"  # exact all pairs: no faiss variability
    return {"similarity": sim, "cluster": clu}


def _parts_regionset(
    seed: int,
    n_images: int = 20,
    parts: int = 3,
    dim: int = 16,
    noise: float = 0.05,
    random: bool = False,
) -> RegionSet:
    """Region k of every image: descriptor near a random unit vector e_k, the same geometry and mask
    for every image. ``random``: descriptors unrelated to k (the control)."""
    rng = np.random.default_rng(seed)
    side = 32
    e = rng.standard_normal((parts, dim))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    image_id = np.repeat(np.arange(n_images), parts)
    part = np.tile(np.arange(parts), n_images)
    n = len(image_id)
    if random:
        d = rng.standard_normal((n, dim))
    else:
        d = e[part] + noise * rng.standard_normal((n, dim))
    d = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    masks = np.stack([_rect((side, side), 4, 12, 2 + 10 * k, 10 + 10 * k) for k in part])
    geometry = np.array([[(6 + 10 * k) / side, 8 / side, 8 / side] for k in part], np.float32)
    boxes = np.array([[2 + 10 * k, 4, 10 + 10 * k, 12] for k in part])
    return RegionSet(
        class_name="synthetic",
        target=0,
        n_images=n_images,
        side=side,
        image_id=image_id,
        index=image_id.copy(),
        keys=[str(i) for i in image_id],
        kinds=["component"] * n,
        masks=masks,
        boxes=boxes,
        drops=np.full(n, 0.5, np.float32),
        descriptors=d,
        geometry=geometry,
        centers=np.array([innermost_point(m) for m in masks], np.float32),
        image_indices=np.arange(n_images),
    )


def _one_summary_per_part(regions: RegionSet, summaries, parts: int = 3) -> bool:
    """Exactly ``parts`` summaries, each made of one part k from every image, all parts covered."""
    if len(summaries) != parts:
        return False
    part = np.tile(np.arange(parts), regions.n_images)
    seen = set()
    for s in summaries:
        ks = set(part[s.members].tolist())
        if len(ks) != 1 or s.support != regions.n_images:
            return False
        seen |= ks
    return seen == set(range(parts))


def test_cluster_regions_finds_one_summary_per_part():
    cfg = _cluster_cfg()
    regions = _parts_regionset(0)
    clustering = cluster_regions(regions, cfg["similarity"], cfg["cluster"])
    assert _one_summary_per_part(regions, clustering.summaries)
    labels = member_labels(clustering.summaries, len(regions))
    assert (labels >= 0).all()  # every region is a member
    # The control: descriptors unrelated to the parts do not give three pure summaries.
    control = _parts_regionset(0, random=True)
    clustering = cluster_regions(control, cfg["similarity"], cfg["cluster"])
    assert not _one_summary_per_part(control, clustering.summaries)


def test_stability_of_clean_parts_is_perfect():
    cfg = _cluster_cfg()
    regions = _parts_regionset(1)
    out = stability(regions, cfg, resamples=3, fraction=0.8, seed=0)
    assert out["counts"] == [3, 3, 3]
    assert out["count_std"] == 0.0
    assert out["ari"] == pytest.approx(1.0)
    # The control scores lower on the same resamples.
    control = stability(_parts_regionset(1, random=True), cfg, resamples=3, fraction=0.8, seed=0)
    assert control["ari"] is None or control["ari"] < 0.9 or control["count_std"] > 0


def test_class_regions_reads_its_cache_and_recollects_when_the_key_changes(tmp_path, monkeypatch):
    """A rerun with the same masks and region settings reads the cached RegionSet (no network);
    changed region settings make a new one."""
    from omegaconf import OmegaConf

    from vislight.summaries import stage

    cfg = {
        g: OmegaConf.to_container(OmegaConf.load(f"conf/{g}/default.yaml"))
        for g in ("regions", "similarity", "cluster", "tagging", "masks")
    }
    items = [(3, tmp_path / "a.npz"), (5, tmp_path / "b.npz"), (8, tmp_path / "c.npz")]
    made = _random_regionset(np.random.default_rng(5), n_images=3)
    calls = []

    def collect(*args, **kwargs):
        calls.append(kwargs.get("sharp_of"))
        return made

    monkeypatch.setattr(stage, "collect_regions", collect)
    first = stage.class_regions(None, None, "Laysan Albatross", 7, items, cfg, "cpu", tmp_path)
    assert len(calls) == 1 and (tmp_path / "ours" / "Laysan_Albatross.npz").is_file()
    again = stage.class_regions(None, None, "Laysan Albatross", 7, items, cfg, "cpu", tmp_path)
    assert len(calls) == 1  # read from the cache
    np.testing.assert_array_equal(again.masks, first.masks)
    cfg["regions"]["min_area"] = 0.05
    stage.class_regions(None, None, "Laysan Albatross", 7, items, cfg, "cpu", tmp_path)
    assert len(calls) == 2  # other regions: collected again


def test_stability_of_too_few_images_is_not_measured():
    from vislight.summaries.stage import stability

    rs = _random_regionset(np.random.default_rng(6), n_images=3).subset([0, 1])
    assert stability(rs, {"similarity": {}, "cluster": {}}) == {
        "count_std": None,
        "counts": [],
        "ari": None,
    }


def _two_view_regionset(seed: int, spread: float) -> RegionSet:
    """:func:`_parts_regionset` where each part is seen in two views (images 0-9 and 10-19): its
    descriptors are moved by ``spread`` along a random direction per (part, view)."""
    regions = _parts_regionset(seed, n_images=20)
    rng = np.random.default_rng(100 + seed)
    part = np.tile(np.arange(3), regions.n_images)
    view = (regions.image_id >= 10).astype(int)
    v = rng.standard_normal((3, 2, regions.descriptors.shape[1]))
    v /= np.linalg.norm(v, axis=2, keepdims=True)
    d = regions.descriptors + spread * v[part, view]
    regions.descriptors = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    return regions


def test_preference_scan_keeps_one_summary_per_part_where_one_factor_splits_views():
    """Two nearby views of each part: the single preference splits the views (never one summary
    per part, 8 seeds), the silhouette scan gives one per part on half of them. Where it does
    not, a view the pruning dropped is missing (the silhouette is over the members only), never
    mixed into another part: its summaries stay pure. Two views as far apart as the parts stay
    two summaries (the scan is not "the largest factor")."""
    cfg = _cluster_cfg()
    cfg["cluster"]["merge"] = False  # the scan alone
    factors = [1.0, 1.3, 2.0, 3.0, 5.0]
    one_per_part = 0
    for seed in range(8):
        regions = _two_view_regionset(seed, spread=0.45)
        part = np.tile(np.arange(3), regions.n_images)
        cfg["cluster"]["preference_factor"] = 1.3
        single = cluster_regions(regions, cfg["similarity"], cfg["cluster"]).summaries
        cfg["cluster"]["preference_factor"] = factors
        scan = cluster_regions(regions, cfg["similarity"], cfg["cluster"])
        assert not _one_summary_per_part(regions, single)
        assert len(scan.summaries) <= len(single)
        assert all(len(set(part[s.members].tolist())) == 1 for s in scan.summaries)  # pure
        assert len(scan.stats["silhouettes"]) == len(factors)
        chosen = summaries_silhouette(scan.summaries, centered_descriptors(regions.descriptors))
        assert chosen == pytest.approx(max(scan.stats["silhouettes"]), abs=1e-4)
        one_per_part += _one_summary_per_part(regions, scan.summaries)
    assert one_per_part >= 4
    far = _two_view_regionset(0, spread=0.6)
    assert len(cluster_regions(far, cfg["similarity"], cfg["cluster"]).summaries) == 6


def test_summaries_silhouette_counts_the_members_only():
    """Regions in no summary (pruned) are left out; one summary, or as many members as summaries,
    has no silhouette."""
    regions = _parts_regionset(3)
    cfg = _cluster_cfg()
    summaries = cluster_regions(regions, cfg["similarity"], cfg["cluster"]).summaries
    assert len(summaries) == 3
    # drop a third of each summary's members: they become regions in no summary
    kept = [
        Summary(s.exemplar, s.members[:14], s.similarity[:14], 14, s.coherence) for s in summaries
    ]
    descs = centered_descriptors(regions.descriptors)
    labels = member_labels(kept, len(regions))
    members = labels >= 0
    assert members.sum() == 42 < len(regions)
    want = silhouette_score(descs[members], labels[members], metric="cosine")
    everyone = silhouette_score(descs, member_labels(summaries, len(regions)), metric="cosine")
    assert summaries_silhouette(kept, descs) == pytest.approx(want)
    assert want != pytest.approx(everyone)  # the dropped regions really are left out
    assert summaries_silhouette(kept[:1], descs) == -1.0  # one summary
    two = [Summary(s.exemplar, [s.exemplar], [1.0], 1, 1.0) for s in summaries[:2]]
    assert summaries_silhouette(two, descs) == -1.0  # as many members as summaries


def test_preference_scan_tie_keeps_the_smaller_factor():
    """Clean parts give the same three summaries at every factor: the scan keeps the smallest
    factor, whatever the order of the list."""
    regions = _parts_regionset(0)
    cfg = _cluster_cfg()
    cfg["cluster"]["preference_factor"] = [3.0, 1.0, 2.0]
    scan = cluster_regions(regions, cfg["similarity"], cfg["cluster"])
    assert _one_summary_per_part(regions, scan.summaries)
    assert len(set(scan.stats["silhouettes"])) == 1
    assert scan.stats["preference_factor"] == 1.0


def test_preference_factor_is_a_positive_number_or_a_list_of_them():
    assert preference_factors({"preference_factor": 1.3}) == [1.3]
    assert preference_factors({"preference_factor": OmegaConf.create([1, 2.5])}) == [1.0, 2.5]
    # scanned in ascending order, so that a tie keeps the smaller factor
    assert preference_factors({"preference_factor": [3.0, 1.0, 2.0]}) == [1.0, 2.0, 3.0]
    for bad in ([], 0, -1.0, [1.0, 0.0], "high", True):
        with pytest.raises(ConfigError, match="cluster.preference_factor"):
            preference_factors({"preference_factor": bad})
