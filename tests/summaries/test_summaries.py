"""Visual summaries: run-length encoding, region extraction and description, the similarity graph
(faiss vs dense, flow consistency), sparse affinity propagation against scikit-learn, pruning into
summaries, tagging against ground-truth parts, and a tiny end-to-end run of the pipeline."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from helpers import TINY_PIPELINE, compose_config, compose_job_config, small_cnn_cfg
from omegaconf import open_dict
from scipy import ndimage
from sklearn.cluster import AffinityPropagation
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from torch import nn

from vislight.clustering.affinity import affinity_propagation, shifted_similarities
from vislight.clustering.summaries import build_summaries
from vislight.data.parts import pixel_tag
from vislight.data.synth import (
    PART_ID,
    PART_NAMES,
    PARTS,
    WorldConfig,
    class_designs,
    render,
    sample_spec,
)
from vislight.data.synth_dataset import SynthPartDataset
from vislight.evaluation.tagging import (
    BACKGROUND_TAG,
    class_tagging,
    part_reliance,
    summary_tag,
)
from vislight.models import build_classifier
from vislight.models.probe import FeatureHook
from vislight.pipeline import run
from vislight.regions.describe import describe_regions, region_geometry
from vislight.regions.extract import (
    Region,
    connected_regions,
    deduplicate,
    extract_regions,
    proposal_regions,
    selective_search_boxes,
)
from vislight.similarity.graph import (
    best_matches,
    flow_consistency,
    knn_candidates,
    similarity_graph,
)
from vislight.summaries.rle import rle_decode, rle_encode
from vislight.summaries.stage import run_summaries

CPU = torch.device("cpu")


def _region(mask: np.ndarray, kind: str = "component") -> Region:
    ys, xs = np.nonzero(mask)
    return Region(mask, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), kind)


def _rect(shape, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# --------------------------------------------------------------------------------------------
# 1. Run-length encoding
# --------------------------------------------------------------------------------------------


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    shapes = ((7, 5), (32, 32), (1, 9), (13, 1))
    masks = [rng.random(shape) < p for shape in shapes for p in (0.1, 0.5, 0.9)]
    masks += [np.ones((6, 4), bool), np.zeros((6, 4), bool)]
    first = np.zeros((5, 8), bool)
    first[0, 0] = True
    masks.append(first)
    for m in masks:
        rle = rle_encode(m)
        assert rle["size"] == list(m.shape)
        assert sum(rle["counts"]) == m.size
        assert all(isinstance(c, int) for c in rle["counts"])
        json.dumps(rle)  # JSON-ready
        back = rle_decode(rle)
        assert back.dtype == bool and back.shape == m.shape
        np.testing.assert_array_equal(back, m)
    # COCO's convention: column-major, the first count is a (possibly empty) run of zeros.
    assert rle_encode(np.ones((2, 3), bool))["counts"] == [0, 6]
    assert rle_encode(np.zeros((2, 3), bool))["counts"] == [6]
    assert rle_encode(first)["counts"] == [0, 1, 39]
    col = np.zeros((3, 2), bool)
    col[:, 1] = True  # the second column: three zeros (column 0), then three ones
    assert rle_encode(col)["counts"] == [3, 3]


# --------------------------------------------------------------------------------------------
# 2. Regions of a mask
# --------------------------------------------------------------------------------------------


def test_connected_regions_use_eight_connectivity_drop_small_ones_and_sort_by_area():
    s = np.zeros((40, 40), bool)
    s[2:12, 2:12] = True  # A: 100 px
    s[20:26, 30:38] = True  # B: 48 px
    s[30:35, 5:10] = True  # C1: 25 px ...
    s[35:39, 10:14] = True  # ... C2 touches C1 at one corner only: merged into 41 px
    s[0, 39] = True  # D: 1 px < min_area 0.01 x 1600 = 16 px
    regions = connected_regions(s, min_area=0.01)
    assert [r.area for r in regions] == [100, 48, 41]
    assert all(r.kind == "component" for r in regions)
    assert regions[0].box == (2, 2, 12, 12)
    assert regions[1].box == (30, 20, 38, 26)
    assert regions[2].box == (5, 30, 14, 39)
    union = np.logical_or.reduce([r.mask for r in regions])
    np.testing.assert_array_equal(union, s & ~_rect(s.shape, 0, 1, 39, 40))
    # With 4-connectivity the corner pair would be two regions: make sure the mask is one.
    assert ndimage.label(regions[2].mask)[1] == 2
    # The threshold is inclusive, and an empty mask gives no region.
    assert [r.area for r in connected_regions(s, min_area=41 / 1600)] == [100, 48, 41]
    assert [r.area for r in connected_regions(s, min_area=42 / 1600)] == [100, 48]
    assert connected_regions(np.zeros((8, 8), bool)) == []


def test_deduplicate_drops_covered_regions_of_similar_area_only():
    shape = (40, 40)
    big = _region(_rect(shape, 0, 20, 0, 20))  # 400 px
    near = _region(_rect(shape, 0, 20, 5, 20), "proposal")  # 300 px, inside big: ratio 1.33
    part = _region(_rect(shape, 0, 10, 0, 20), "proposal")  # 200 px, inside big: ratio exactly 2
    half = _region(_rect(shape, 10, 30, 10, 27), "proposal")  # 340 px, 100 shared: < 50 %
    kept = deduplicate([big, near, part, half], overlap=0.5, area_ratio=2.0)
    assert [r.area for r in kept] == [400, 200, 340]
    assert kept[0] is big  # the first kept wins
    # Order matters: the first of two redundant regions is the one kept.
    assert deduplicate([near, big]) == [near]
    # A region covering >= 50 % of the smaller one, areas within 2x: dropped.
    over = _region(_rect(shape, 0, 20, 10, 30), "proposal")  # 400 px, 200 shared = 50 %
    assert deduplicate([big, over]) == [big]
    under = _region(_rect(shape, 0, 20, 11, 31), "proposal")  # 180 shared = 45 %
    assert deduplicate([big, under]) == [big, under]


def test_proposal_regions_keep_mostly_salient_boxes_cut_to_salient_pixels():
    s = np.zeros((20, 20), bool)
    s[0:10, 0:10] = True
    s[4, 4] = False  # 99 % salient in the first box
    boxes = np.array(
        [
            [0, 0, 10, 10],  # 99 % salient: kept, the hole stays out
            [0, 0, 10, 12],  # 99 / 120 = 82.5 %: kept, cut to the salient pixels
            [0, 0, 10, 13],  # 99 / 130 = 76.2 %: kept
            [0, 0, 10, 14],  # 99 / 140 = 70.7 %: dropped
            [0, 0, 12, 10],  # 99 / 120: kept
            [8, 8, 12, 12],  # 4 / 16 = 25 %: dropped
            [12, 12, 20, 20],  # nothing salient
            [5, 5, 5, 9],  # empty box
        ]
    )
    props = proposal_regions(s, boxes, min_salient=0.75, min_area=0.01)
    assert len(props) == 4
    for p in props:
        assert p.kind == "proposal"
        np.testing.assert_array_equal(p.mask, s)  # every kept box holds all of the salient set
        assert p.box == (0, 0, 10, 10)  # and its box is cut to it
    # Exactly 75 % is not "more than 75 %".
    s2 = np.zeros((8, 8), bool)
    s2[0:3, 0:4] = True  # 12 px of the 16-px box [0, 0, 4, 4]
    assert proposal_regions(s2, np.array([[0, 0, 4, 4]]), 0.75, 0.0) == []
    assert len(proposal_regions(s2, np.array([[0, 0, 4, 4]]), 0.74, 0.0)) == 1
    # min_area applies to the salient pixels of the box.
    assert proposal_regions(s2, np.array([[0, 0, 4, 4]]), 0.5, 13 / 64) == []
    cut = proposal_regions(s2, np.array([[0, 0, 4, 4]]), 0.5, 12 / 64)
    assert len(cut) == 1 and cut[0].area == 12 and cut[0].box == (0, 0, 4, 3)


@pytest.fixture(scope="module")
def synth_image():
    """A 64-px image of the synthetic world, its part labels and a salient set around the object
    (the parts dilated by 4 px: one component, with parts inside it for the proposals)."""
    image, labels = render(sample_spec(WorldConfig(), "test", 0), 64)
    salient = ndimage.binary_dilation(labels > 0, iterations=4)
    return image, labels, salient


def test_extract_regions_with_proposals_on_a_real_image(synth_image):
    image, _, salient = synth_image
    sharp = np.where(salient, 0.05, 0.95)
    regions = extract_regions(sharp, image, proposal_mode="fast")
    kinds = [r.kind for r in regions]
    assert kinds[0] == "component" and "proposal" in kinds, kinds
    # Components first, then proposals by decreasing area.
    n_comp = kinds.count("component")
    assert kinds == ["component"] * n_comp + ["proposal"] * (len(kinds) - n_comp)
    comps = connected_regions(salient, 0.01)
    assert [r.area for r in regions[:n_comp]] == [r.area for r in comps]
    areas = [r.area for r in regions[n_comp:]]
    assert areas == sorted(areas, reverse=True)
    for r in regions:
        assert r.mask.shape == salient.shape and r.mask.dtype == bool
        assert r.area >= 0.01 * salient.size
        assert not (r.mask & ~salient).any()  # inside the salient set
        x0, y0, x1, y1 = r.box
        np.testing.assert_array_equal(r.mask, salient & _rect(salient.shape, y0, y1, x0, x1))
    # No two kept regions are redundant.
    for i, a in enumerate(regions):
        for b in regions[i + 1 :]:
            small, large = sorted((a.area, b.area))
            assert not ((a.mask & b.mask).sum() >= 0.5 * small and large < 2 * small)
    # The proposals come from selective search boxes that are > 75 % salient.
    boxes = selective_search_boxes(image, "fast")
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 0
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 64).all()
    # Switches and limits.
    only = extract_regions(sharp, image, proposals=False)
    assert [r.kind for r in only] == ["component"] * n_comp
    assert [r.area for r in extract_regions(sharp, None)] == [r.area for r in only]
    assert len(extract_regions(sharp, image, max_regions=1)) == 1
    assert extract_regions(np.ones((64, 64)), image) == []
    with pytest.raises(ValueError, match="regions.proposals.mode"):
        extract_regions(sharp, image, proposal_mode="nope")


# --------------------------------------------------------------------------------------------
# 3. Region measurements
# --------------------------------------------------------------------------------------------


def test_region_geometry_of_known_squares():
    masks = np.zeros((3, 32, 32), bool)
    masks[0, 8:16, 4:12] = True  # 8 x 8 square, centre (8, 12) px
    masks[1] = True
    masks[2, 0, 31] = True
    g = region_geometry(masks)
    assert g.shape == (3, 3) and g.dtype == np.float32
    np.testing.assert_allclose(g[0], [8 / 32, 12 / 32, 0.25], atol=1e-6)
    np.testing.assert_allclose(g[1], [0.5, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(g[2], [31.5 / 32, 0.5 / 32, 1 / 32], atol=1e-6)


def _tiny_resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = small_cnn_cfg("resnet_small", num_classes=3, input_size=32, width=8)
    return build_classifier(cfg).eval().requires_grad_(False)


class _Square(nn.Module):
    def forward(self, x):
        return x * x


class _Contrast(nn.Module):
    """Class 0's logit grows with horizontal pixel contrast: confident on a checkerboard, not on
    its blur."""

    def __init__(self, gain: float = 2.0, threshold: float = 4.5):
        super().__init__()
        diff = nn.Conv2d(3, 2, (1, 2), bias=False)
        with torch.no_grad():
            diff.weight.zero_()
            diff.weight[:, :, 0, 0] = -1.0
            diff.weight[:, :, 0, 1] = 1.0
        self.features = nn.Sequential(diff, _Square())
        self.gain, self.threshold = gain, threshold

    def forward(self, x):
        s = self.features(x).mean((1, 2, 3))
        return torch.stack([self.gain * (s - self.threshold), torch.zeros_like(s)], 1)


def _checkerboard(size: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((yy + xx) % 2).float().expand(3, -1, -1).clone()


def test_describe_regions_drops_and_descriptors():
    model = _Contrast().eval().requires_grad_(False)
    image = _checkerboard()
    masks = np.zeros((4, 32, 32), bool)
    masks[1, :, :16] = True  # half the image
    masks[2] = True  # all of it
    masks[3, 4:10, 4:10] = True
    out = describe_regions(model, model.features, image, masks, 0, 41, 30.0, 224)
    drop = out["drop"]
    assert drop.shape == (4,) and drop.dtype == np.float32
    assert abs(drop[0]) < 1e-5  # an empty region perturbs nothing
    p_x = float(torch.softmax(model(image[None]), 1)[0, 0])
    assert p_x > 0.99  # the model is confident on the sharp checkerboard
    assert drop[2] > 0.9  # blurred everywhere: the contrast is gone
    assert 0 < drop[3] < drop[1] < drop[2]  # more blurred area, larger drop
    assert 0.2 < drop[1] < 0.8
    desc = out["descriptor"]
    assert desc.shape == (4, 2) and desc.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(desc[1:], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out["geometry"], region_geometry(masks))


def test_describe_regions_pools_the_features_inside_the_region():
    model = _tiny_resnet()
    layer = model.feature_module("layer2")
    torch.manual_seed(1)
    image = torch.rand(3, 32, 32)
    with FeatureHook(layer) as hook:
        model(image[None])
        feats = hook.output[0]  # (C, 8, 8) for resnet_small's layer2 at 32 px
    assert feats.shape[-2:] == (8, 8)
    masks = np.zeros((3, 32, 32), bool)
    masks[0] = True
    masks[1, :16, :16] = True  # exactly the top-left 4 x 4 feature cells
    masks[2, 20:30, 3:9] = True
    out = describe_regions(model, layer, image, masks, 1, 41, 30.0, 224)
    desc = out["descriptor"]
    assert desc.shape == (3, feats.shape[0])
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)
    whole = F.normalize(feats.mean((1, 2)), dim=0).numpy()
    corner = F.normalize(feats[:, :4, :4].mean((1, 2)), dim=0).numpy()
    np.testing.assert_allclose(desc[0], whole, atol=1e-5)
    np.testing.assert_allclose(desc[1], corner, atol=1e-5)
    assert np.isfinite(out["drop"]).all()
    empty = describe_regions(model, layer, image, np.zeros((1, 32, 32), bool), 1, 41, 30.0, 224)
    assert abs(float(empty["drop"][0])) < 1e-5


# --------------------------------------------------------------------------------------------
# 4. Similarity graph
# --------------------------------------------------------------------------------------------


def _regions_of_images(seed: int = 0, n_images: int = 9, dim: int = 16):
    """Random L2-normalised descriptors around 3 prototypes, 1-4 regions per image, random
    geometry."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 5, n_images)
    image_id = np.repeat(np.arange(n_images), counts)
    n = len(image_id)
    protos = rng.standard_normal((3, dim))
    desc = protos[rng.integers(0, 3, n)] + 0.6 * rng.standard_normal((n, dim))
    desc = (desc / np.linalg.norm(desc, axis=1, keepdims=True)).astype(np.float32)
    geometry = np.stack(
        [rng.uniform(0.1, 0.9, n), rng.uniform(0.1, 0.9, n), rng.uniform(0.1, 0.5, n)], 1
    ).astype(np.float32)
    return desc, image_id, geometry


@pytest.mark.parametrize("mode", ["dense", "faiss"])
def test_similarity_graph_is_symmetric_without_same_image_edges(mode):
    desc, image_id, geometry = _regions_of_images()
    n = len(image_id)
    g, median = similarity_graph(desc, image_id, geometry, mode=mode, k=4, w_xy=3.2)
    assert isinstance(g, sp.csr_matrix) and g.shape == (n, n)
    dense = g.toarray()
    np.testing.assert_array_equal(dense, dense.T)
    assert (np.diag(dense) == 0).all()
    assert g.nnz > 0
    assert (g.data > 0).all() and (g.data <= 1).all()
    rows, cols = g.nonzero()
    assert (image_id[rows] != image_id[cols]).all()
    assert 0 <= median <= 1
    with pytest.raises(ValueError, match="similarity.mode"):
        similarity_graph(desc, image_id, geometry, mode="nope")


def test_similarity_graph_dense_scores_are_cosine_times_consistency_both_ways():
    desc, image_id, geometry = _regions_of_images(seed=3)
    g, _ = similarity_graph(desc, image_id, geometry, mode="dense", w_xy=3.2, w_scale=0.3)
    rows, cols = np.nonzero(image_id[:, None] != image_id[None, :])
    c = flow_consistency(rows, cols, desc, image_id, geometry, 3.2, 0.3)
    s = np.zeros((len(image_id),) * 2)
    s[rows, cols] = np.clip(desc[rows] @ desc.T, 0, 1)[np.arange(len(rows)), cols] * c
    np.testing.assert_allclose(g.toarray(), np.maximum(s, s.T), atol=1e-6)


def test_faiss_mode_with_every_candidate_equals_dense_mode():
    desc, image_id, geometry = _regions_of_images(seed=1)
    n = len(image_id)
    dense, m_dense = similarity_graph(desc, image_id, geometry, mode="dense")
    knn, m_knn = similarity_graph(desc, image_id, geometry, mode="faiss", k=n - 1)
    np.testing.assert_array_equal(knn.toarray() > 0, dense.toarray() > 0)
    np.testing.assert_allclose(knn.toarray(), dense.toarray(), atol=1e-5)
    assert m_knn == pytest.approx(m_dense, abs=1e-6)
    # A smaller k gives a subgraph; an edge found in one direction only gets that direction's
    # score, at most the dense one (the larger of both directions).
    small, m_small = similarity_graph(desc, image_id, geometry, mode="faiss", k=2)
    a, d = small.toarray(), dense.toarray()
    assert 0 < small.nnz < dense.nnz
    assert (d[a > 0] > 0).all() and (a <= d + 1e-5).all()
    assert m_small == pytest.approx(m_dense, abs=1e-6)  # the median does not depend on k


def test_knn_candidates_are_the_top_k_of_other_images():
    desc, image_id, _ = _regions_of_images(seed=2, n_images=12)
    n = len(image_id)
    for k in (1, 3, 5):
        rows, cols, cos = knn_candidates(desc, image_id, k, use_gpu=False)
        assert (image_id[rows] != image_id[cols]).all()
        assert (np.bincount(rows, minlength=n) <= k).all()
        np.testing.assert_allclose(cos, np.einsum("ij,ij->i", desc[rows], desc[cols]), atol=1e-5)
        full = desc @ desc.T
        for i in range(n):
            other = np.flatnonzero(image_id != image_id[i])
            want = set(other[np.argsort(-full[i, other])][:k].tolist())
            assert set(cols[rows == i].tolist()) == want, (k, i)
    empty = knn_candidates(desc[:1], image_id[:1], 3)
    assert all(len(x) == 0 for x in empty)


def test_best_matches_equal_brute_force_argmax():
    desc, image_id, _ = _regions_of_images(seed=4, n_images=10)
    n, n_img = len(image_id), int(image_id.max()) + 1
    regions = np.repeat(np.arange(n), n_img)
    images = np.tile(np.arange(n_img), n)
    want = []
    for r, j in zip(regions, images):
        cand = np.flatnonzero(image_id == j)
        want.append(cand[np.argmax(desc[cand] @ desc[r])])
    np.testing.assert_array_equal(best_matches(desc, image_id, regions, images), want)
    np.testing.assert_array_equal(best_matches(desc, image_id, regions, images, chunk=7), want)


def _flow_setup(dx: float = 0.0, dscale: float = 1.0):
    """Image 0: regions 0 (A) and 1 (B); image 1: A' (2) and B' (3), both moved by (0.1, 0.05)
    except A', moved ``dx`` further; image 2: one region (4)."""
    a, b = np.eye(4, dtype=np.float32)[:2]
    desc = np.stack([a, b, a, b, a]).astype(np.float32)
    image_id = np.array([0, 0, 1, 1, 2])
    geometry = np.array(
        [
            [0.2, 0.2, 0.2],
            [0.6, 0.6, 0.2],
            [0.3 + dx, 0.25, 0.2 * dscale],
            [0.7, 0.65, 0.2],
            [0.9, 0.1, 0.4],
        ],
        np.float32,
    )
    return desc, image_id, geometry


def test_flow_consistency():
    w_xy, w_scale = 3.2, 0.3
    rows, cols = np.array([0, 4, 2]), np.array([2, 0, 0])
    desc, image_id, geometry = _flow_setup()
    c = flow_consistency(rows, cols, desc, image_id, geometry, w_xy, w_scale)
    assert c.dtype == np.float32
    assert c[0] == pytest.approx(1.0, abs=1e-6)  # A -> A' moves like B -> B'
    assert c[1] == 1.0  # region 4 has no neighbour in its image
    assert c[2] == pytest.approx(1.0, abs=1e-6)  # and back
    previous = 1.0
    for dx in (0.02, 0.05, 0.1, 0.2):
        desc, image_id, geometry = _flow_setup(dx)
        c = flow_consistency(rows, cols, desc, image_id, geometry, w_xy, w_scale)
        assert c[0] == pytest.approx(math.exp(-w_xy * dx), rel=1e-4)
        assert c[0] < previous
        previous = c[0]
        assert c[1] == 1.0
    # A scale change off the neighbours' one costs w_scale per unit of log2 scale.
    desc, image_id, geometry = _flow_setup(0.0, dscale=2.0)
    c = flow_consistency(rows, cols, desc, image_id, geometry, w_xy, w_scale)
    assert c[0] == pytest.approx(math.exp(-w_scale * 1.0), rel=1e-4)
    assert flow_consistency(rows[:0], cols[:0], desc, image_id, geometry).shape == (0,)


# --------------------------------------------------------------------------------------------
# 5. Affinity propagation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "n", "centers"), [(0, 40, 3), (1, 60, 4), (2, 80, 5)])
def test_affinity_propagation_equals_scikit_learn(seed, n, centers):
    x, _ = make_blobs(n_samples=n, centers=centers, cluster_std=0.6, random_state=seed)
    s = -((x[:, None] - x[None]) ** 2).sum(-1)
    pref = float(np.median(s))
    ref = AffinityPropagation(
        affinity="precomputed",
        preference=pref,
        damping=0.9,
        max_iter=1000,
        convergence_iter=100,
        random_state=0,
    ).fit(s)
    ours = affinity_propagation(
        sp.csr_matrix(s), pref, damping=0.9, max_iter=1000, convergence_iter=100
    )
    assert ours.converged
    assert len(ours.exemplars) == len(ref.cluster_centers_indices_) == centers
    assert adjusted_rand_score(ref.labels_, ours.labels) == 1.0
    np.testing.assert_array_equal(ours.labels[ours.exemplars], ours.exemplars)
    assert (ours.labels >= 0).all()
    np.testing.assert_array_equal(ours.exemplars, np.sort(ours.exemplars))


def test_affinity_propagation_on_a_sparse_graph_of_two_cliques_and_an_isolated_point():
    n = 11  # 0-4 and 5-9 are cliques, 10 has no edge
    dense = np.zeros((n, n))
    dense[:5, :5] = 0.9
    dense[5:10, 5:10] = 0.8
    dense[1, 2] = dense[2, 1] = 0.95
    np.fill_diagonal(dense, 0)
    graph = shifted_similarities(sp.csr_matrix(dense))
    assert graph.nnz == 40 and (graph.data <= 0).all()
    ap = affinity_propagation(graph, preference=-0.5)
    labels = ap.labels
    assert len(set(labels[:5])) == 1 and labels[0] in range(5)
    assert len(set(labels[5:10])) == 1 and labels[5] in range(5, 10)
    assert labels[10] in (10, -1)
    clusters = {int(e) for e in ap.exemplars} - {10}
    assert len(clusters) == 2
    # A point whose only edge is its self-similarity on its own.
    alone = affinity_propagation(sp.csr_matrix((1, 1)), preference=-1.0)
    assert alone.labels.tolist() in ([0], [-1])


@pytest.mark.parametrize("damping", [0.4, 1.0, 1.5, -0.1])
def test_affinity_propagation_rejects_bad_damping(damping):
    with pytest.raises(ValueError, match=r"cluster\.damping"):
        affinity_propagation(sp.csr_matrix(np.ones((3, 3))), -1.0, damping=damping)


# --------------------------------------------------------------------------------------------
# 6. Pruning into summaries
# --------------------------------------------------------------------------------------------


def _clusters():
    """Four AP clusters over 5 images (region -> image, exemplar, similarity to it).

    A (exemplar 0): 5 shares the exemplar's image, 2 loses image 1 to 1, 4 is an outlier.
    B (exemplar 6): 5 images, coherent. C (exemplar 11): 2 images. D (exemplar 13): incoherent.
    """
    members = {
        # region: (image, exemplar, similarity)
        0: (0, 0, 1.0),
        1: (1, 0, 0.9),
        2: (1, 0, 0.5),
        3: (2, 0, 0.8),
        4: (3, 0, 0.1),
        5: (0, 0, 0.95),
        6: (0, 6, 1.0),
        7: (1, 6, 0.8),
        8: (2, 6, 0.8),
        9: (3, 6, 0.8),
        10: (4, 6, 0.8),
        11: (0, 11, 1.0),
        12: (1, 11, 0.9),
        13: (0, 13, 1.0),
        14: (1, 13, 0.2),
        15: (2, 13, 0.2),
        16: (3, 13, 0.2),
        17: (4, -1, 0.0),  # not clustered
    }
    n = len(members)
    image_id = np.array([members[i][0] for i in range(n)])
    labels = np.array([members[i][1] for i in range(n)])
    g = np.zeros((n, n))
    for i, (_, ex, s) in members.items():
        if ex >= 0 and i != ex:
            g[i, ex] = g[ex, i] = s
    g[1, 7] = g[7, 1] = 0.99  # edges outside a cluster do not matter
    return labels, sp.csr_matrix(g), image_id


def test_build_summaries_prunes_as_designed():
    labels, graph, image_id = _clusters()
    out, stats = build_summaries(labels, graph, image_id, 3, 0.1, 0.9, 0.5)
    assert stats == {
        "clusters": 4,
        "low_support": 1,
        "incoherent": 1,
        "summaries": 2,
        "min_support": 3,
    }
    b, a = out  # sorted by support
    assert (b.exemplar, b.members, b.support) == (6, [6, 7, 8, 9, 10], 5)
    assert b.similarity == pytest.approx([1.0, 0.8, 0.8, 0.8, 0.8])
    assert b.coherence == pytest.approx(0.8)
    # One member per image (the exemplar keeps its own image, 1 beats 2), the outlier 4 dropped.
    assert (a.exemplar, a.members, a.support) == (0, [0, 1, 3], 3)
    assert a.similarity == pytest.approx([1.0, 0.9, 0.8])
    assert a.coherence == pytest.approx(0.85)
    for s in out:
        assert s.members[0] == s.exemplar
        assert len({int(image_id[m]) for m in s.members}) == s.support == len(s.members)


def test_build_summaries_support_threshold_uses_the_fraction_of_images():
    labels, graph, image_id = _clusters()  # 5 images
    # ceil(0.7 x 5) = 4 > 3: A (3 images) and C are too small; D is then the median itself.
    out, stats = build_summaries(labels, graph, image_id, 3, 0.7, 0.9, 0.5)
    assert stats["min_support"] == 4 and stats["low_support"] == 2
    assert [s.exemplar for s in out] == [6]
    assert stats["incoherent"] == 1 and stats["summaries"] == 1
    # min_support = 2: C (0.9) joins; the median coherence (0.825) still drops D.
    out, stats = build_summaries(labels, graph, image_id, 2, 0.0, 0.9, 0.5)
    assert stats["min_support"] == 2 and stats["low_support"] == 0
    assert [s.exemplar for s in out] == [6, 0, 11]  # support 5, 3, 2
    assert stats["incoherent"] == 1
    # Without the coherence test D survives.
    out, _ = build_summaries(labels, graph, image_id, 2, 0.0, 0.0, 0.5)
    assert [s.exemplar for s in out] == [6, 13, 0, 11]  # support 5, 4, 3, 2
    # Without outlier pruning A keeps its weakest member.
    out, _ = build_summaries(labels, graph, image_id, 3, 0.1, 0.0, 0.0)
    a = next(s for s in out if s.exemplar == 0)
    assert a.members == [0, 1, 3, 4] and a.support == 4


def test_build_summaries_with_min_support_one_keeps_coherent_clusters():
    g = np.zeros((5, 5))
    g[1, 0] = g[0, 1] = 0.9
    g[2, 0] = g[0, 2] = 0.8
    labels = np.array([0, 0, 0, 3, 4])  # one 3-image cluster, two singletons
    out, stats = build_summaries(labels, sp.csr_matrix(g), np.arange(5), 1, 0.0, 0.9, 0.5)
    assert 0 in [s.exemplar for s in out], stats
    assert all(math.isfinite(s.coherence) for s in out)


def test_build_summaries_without_clusters():
    out, stats = build_summaries(np.full(4, -1), sp.csr_matrix((4, 4)), np.arange(4))
    assert out == [] and stats["clusters"] == 0 and stats["summaries"] == 0


# --------------------------------------------------------------------------------------------
# 7. Tagging
# --------------------------------------------------------------------------------------------


def test_pixel_tag_uses_the_share_of_each_parts_own_pixels():
    labels = np.zeros((20, 20), np.uint8)
    labels[0:4, 0:4] = PART_ID["disc"]  # 16 px
    labels[10:14, 0:10] = PART_ID["bar"]  # 40 px
    region = np.zeros_like(labels, bool)
    region[0:2, 0:4] = True  # half the disc (8 px)
    region[10:13, 0:4] = True  # 12 px of the bar: more pixels, but only 30 % of it
    assert pixel_tag(region, labels, PART_NAMES) == "disc"
    bar = np.zeros_like(region)
    bar[10:14, 0:3] = True  # exactly 30 % of the bar
    bar[15:20, :] = True  # and much background
    assert pixel_tag(bar, labels, PART_NAMES) == "bar"
    assert pixel_tag(bar, labels, PART_NAMES, min_share=0.31) == BACKGROUND_TAG
    small = np.zeros_like(region)
    small[0:1, 0:4] = True  # 25 % of the disc
    small[5:9, 5:9] = True
    assert pixel_tag(small, labels, PART_NAMES) == BACKGROUND_TAG
    assert pixel_tag(np.ones_like(region), np.zeros_like(labels), PART_NAMES) == BACKGROUND_TAG
    assert pixel_tag(np.zeros_like(region), labels, PART_NAMES) == BACKGROUND_TAG
    wm = labels.copy()
    wm[16:20, 16:20] = PART_ID["watermark"]
    corner = np.zeros_like(region)
    corner[15:20, 15:20] = True
    assert pixel_tag(corner, wm, PART_NAMES) == "watermark"
    assert PART_NAMES[0] == BACKGROUND_TAG


def test_summary_tag_majority_purity_and_ties():
    assert summary_tag(["disc", "disc", "background"]) == ("disc", pytest.approx(2 / 3))
    assert summary_tag(["background", "background", "bar"]) == ("background", pytest.approx(2 / 3))
    assert summary_tag(["background", "bar"]) == ("bar", 0.5)
    assert summary_tag(["bar", "background", "background", "bar"]) == ("bar", 0.5)
    assert summary_tag(["star"]) == ("star", 1.0)
    # A tie between parts is resolved the same way whatever the order.
    assert summary_tag(["disc", "bar"]) == summary_tag(["bar", "disc"])
    assert summary_tag(["disc", "bar"])[1] == 0.5


def test_class_tagging():
    tags = [("disc", 1.0), (BACKGROUND_TAG, 1.0), ("bar", 0.5), ("disc", 0.8)]
    m = class_tagging(tags, ["disc", "star"])
    assert m["purity"] == pytest.approx((1.0 + 0.5 + 0.8) / 3)  # background ignored
    assert m["background_share"] == pytest.approx(0.25)
    assert m["found_parts"] == ["bar", "disc"]
    assert m["part_recall"] == pytest.approx(0.5)
    assert class_tagging(tags, [])["part_recall"] is None
    only_bg = class_tagging([(BACKGROUND_TAG, 1.0)], ["disc"])
    assert only_bg["purity"] is None and only_bg["background_share"] == 1.0
    assert only_bg["part_recall"] == 0.0 and only_bg["found_parts"] == []
    none = class_tagging([], ["disc"])
    assert none["purity"] is None and none["background_share"] is None
    assert none["part_recall"] == 0.0


class _ColourCounter(nn.Module):
    """Class ``target``'s logit counts the pixels close to one colour (a one-part detector)."""

    def __init__(self, colour, threshold: float, num_classes: int = 3, target: int = 0):
        super().__init__()
        self.register_buffer("c", torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1) / 255)
        self.threshold, self.k, self.target = threshold, num_classes, target

    def forward(self, x):
        count = ((x - self.c).pow(2).sum(1) < 0.15**2).flatten(1).float().sum(1)
        logits = torch.zeros(len(x), self.k)
        logits[:, self.target] = 3.0 * (count - self.threshold)
        return logits


def test_part_reliance_finds_the_one_part_a_model_reads():
    ds = SynthPartDataset(WorldConfig(num_classes=3, seed=0), "test", 24, 32, progress=False)
    assert ds.class_parts(0) == ("body", "disc", "bar")
    disc = next(p for p in PARTS if p.name == "disc")
    model = _ColourCounter(disc.color, threshold=6).eval()
    indices = list(range(0, 24, 3))  # class 0
    drops = part_reliance(model, ds, indices, 0, ["body", "disc", "bar", "watermark"], CPU, 3)
    assert set(drops) == {"body", "disc", "bar"}  # no image carries the watermark
    assert drops["disc"] > 0.9
    assert abs(drops["bar"]) < 0.02 and abs(drops["body"]) < 0.02


class _DiscDetector(nn.Module):
    """A classifier for the stage: classes 0 and 1 (both carry a disc) count disc-coloured
    pixels; ``features`` (a 1x1 conv) gives the region descriptors."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Conv2d(3, 4, 1)
        disc = next(p for p in PARTS if p.name == "disc")
        self.counter = _ColourCounter(disc.color, threshold=6)

    def feature_module(self, layer=None):
        return self.features

    def forward(self, x):
        self.features(x)
        logits = self.counter(x)
        logits[:, 1] = logits[:, 0]
        return logits


def _mask_file(path, sharp: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    s = sharp.astype(np.float16)
    np.savez_compressed(path, smooth=s, sharp=s, diagnostics=json.dumps({}))
    return path


def test_part_recall_counts_the_needed_parts_of_a_class_without_regions(tmp_path):
    ds = SynthPartDataset(WorldConfig(num_classes=3, seed=0), "test", 24, 32, progress=False)
    cfg = compose_config(["logger=none", "cluster.min_support=2"])
    files = {"disc_bar": [], "disc_triangle": []}
    for i in range(12):
        label = i % 3
        if label == 0:  # masks on the parts: regions
            salient = ndimage.binary_dilation(ds.parts(i) > 0, iterations=1)
            sharp = np.where(salient, 0.0, 1.0)
        elif label == 1:  # empty masks: no region at all
            sharp = np.ones((32, 32))
        else:
            continue
        name = ds.classes[label]
        files[name].append((i, _mask_file(tmp_path / name / f"{i}.npz", sharp)))
    _, metrics = run_summaries(
        _DiscDetector().eval(), ds, files, {"disc_bar": 0, "disc_triangle": 1}, cfg, CPU
    )
    empty = metrics["classes"]["disc_triangle"]
    assert empty["regions"] == 0 and empty["summaries"] == 0
    assert empty.get("needed_parts") == ["disc"]  # removing the disc destroys the score
    assert empty.get("part_recall") == 0.0
    assert metrics["part_recall"] is not None and metrics["part_recall"] <= 0.5


# --------------------------------------------------------------------------------------------
# 8. End to end: a tiny synthetic world through every stage
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def e2e(tiny_reference, tiny_cache, tmp_path_factory):
    """The session's tiny reference run (every stage), then a rerun of it in a copy of its folder."""
    out = tmp_path_factory.mktemp("e2e") / "run"
    shutil.copytree(tiny_reference, out)
    cfg = compose_job_config(
        [*TINY_PIPELINE, "logger=none", "stages=[classifier,evaluate,masks,summaries]"]
    )
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.masks.cache_dir = str(out), str(out / "masks")
        cfg.train.cache_dir = str(tiny_cache)
    again = run(cfg, out)
    return {
        "first": (tiny_reference / "summaries.json").read_bytes(),
        "second": (out / "summaries.json").read_bytes(),
        "metrics": json.loads((tiny_reference / "metrics.json").read_text()),
        "again": again,
    }


def test_end_to_end_summaries_json(e2e):
    data = json.loads(e2e["first"])
    metrics = e2e["metrics"]
    classes = data["classes"]
    masked = {c for c, m in metrics["classes"].items() if m.get("masked", 0) > 0}
    assert set(classes) == masked and masked
    total = 0
    for name, summaries in classes.items():
        assert isinstance(summaries, list)
        assert metrics["classes"][name]["summaries"] == len(summaries)
        supports = [s["support"] for s in summaries]
        assert supports == sorted(supports, reverse=True)
        for s in summaries:
            total += 1
            members = s["members"]
            assert s["exemplar"] == members[0]["key"]
            assert members[0]["similarity"] == 1.0
            assert s["support"] == len({m["key"] for m in members}) == len(members)
            assert s["support"] >= 2
            assert 0 < s["coherence"] <= 1
            assert s["coherence"] == pytest.approx(np.mean([m["similarity"] for m in members[1:]]))
            tags = []
            for m in members:
                assert {"key", "bbox", "mask_rle", "similarity", "drop", "tag"} <= set(m)
                mask = rle_decode(m["mask_rle"])
                assert mask.shape == (32, 32) and mask.any()
                ys, xs = np.nonzero(mask)
                assert m["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                assert m["area"] == pytest.approx(mask.mean())
                assert 0 < m["similarity"] <= 1 and math.isfinite(m["drop"])
                assert m["tag"] in PART_NAMES
                tags.append(m["tag"])
            tag, purity = summary_tag(tags)
            assert (s["tag"], s["purity"]) == (tag, pytest.approx(purity))
    assert total > 0, "the tiny run found no summary: the checks above ran on nothing"


def test_end_to_end_metrics(e2e):
    metrics = e2e["metrics"]
    data = json.loads(e2e["first"])["classes"]
    for key in ("mean_summaries", "mean_purity", "background_share", "part_recall"):
        assert key in metrics, key
    assert metrics["mean_summaries"] == pytest.approx(np.mean([len(v) for v in data.values()]))
    all_tags = [s["tag"] for v in data.values() for s in v]
    assert metrics["background_share"] == pytest.approx(
        sum(t == BACKGROUND_TAG for t in all_tags) / len(all_tags)
    )
    part_purities = [s["purity"] for v in data.values() for s in v if s["tag"] != BACKGROUND_TAG]
    if part_purities:
        assert metrics["mean_purity"] == pytest.approx(np.mean(part_purities))
    else:
        assert metrics["mean_purity"] is None
    designs = {d.name: set(d.parts) for d in class_designs(3)}
    needed_pairs = found = 0
    for name in data:
        m = metrics["classes"][name]
        for key in ("summaries", "needed_parts", "part_drops", "regions", "pruning"):
            assert key in m, (name, key)
        parts = designs[name]
        assert set(m["part_drops"]) == parts  # no watermark in this world
        assert set(m["needed_parts"]) <= parts
        assert m["needed_parts"] == sorted(p for p, d in m["part_drops"].items() if d >= 0.5)
        tagged = {s["tag"] for s in data[name]} - {BACKGROUND_TAG}
        assert m["found_parts"] == sorted(tagged)
        needed_pairs += len(m["needed_parts"])
        found += sum(p in tagged for p in m["needed_parts"])
    if needed_pairs:
        assert metrics["part_recall"] == pytest.approx(found / needed_pairs)
    else:
        assert metrics["part_recall"] is None
    assert "summaries" in metrics["timings"]


def test_end_to_end_rerun_reuses_masks_and_is_deterministic(e2e):
    again = e2e["again"]
    assert again["classifier"]["reused"] is True
    assert again["mask"]["computed"] == 0
    assert again["mask"]["reused"] == again["mask"]["masked"] > 0
    assert e2e["second"] == e2e["first"]
