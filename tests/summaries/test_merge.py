"""Merging the summaries of one part (vislight/clustering/merge.py)."""

from __future__ import annotations

import numpy as np

from vislight.clustering.merge import merge_summaries
from vislight.clustering.summaries import Summary


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _world(rng, directions, images_of, noise=0.05, side=16):
    """One region per (summary, image): descriptor near ``directions[k]``, a small square mask at
    a place per summary. Returns the summaries, descriptors, image ids and masks."""
    descs, image_id, masks, summaries = [], [], [], []
    for k, (d, images) in enumerate(zip(directions, images_of)):
        members = []
        for img in images:
            members.append(len(descs))
            descs.append(_unit(d + noise * rng.normal(size=d.shape)))
            image_id.append(img)
            m = np.zeros((side, side), bool)
            m[2 * k : 2 * k + 3, 2 * k : 2 * k + 3] = True  # a different place per summary
            masks.append(m)
        sims = [1.0] + [0.8] * (len(members) - 1)
        summaries.append(Summary(members[0], members, sims, len(members), 0.8))
    return summaries, np.array(descs, np.float32), np.array(image_id), np.array(masks)


def test_two_summaries_of_one_part_in_disjoint_images_merge_and_others_stay():
    rng = np.random.default_rng(0)
    part, other = _unit(rng.normal(size=32)), _unit(rng.normal(size=32))
    summaries, descs, image_id, masks = _world(
        rng, [part, part, other], [range(0, 6), range(6, 12), range(0, 12)]
    )
    merged, n = merge_summaries(summaries, descs, image_id, min_ratio=0.95)
    assert n == 1 and len(merged) == 2
    big = merged[0]
    assert big.support == 12 and sorted(image_id[big.members]) == list(range(12))
    assert set(big.members) == set(summaries[0].members) | set(summaries[1].members)
    assert big.members[0] == big.exemplar and big.similarity[0] == 1.0
    # the absorbed summary's exemplar is not a second 1.0: it takes its summary's coherence
    assert big.similarity[1:] == sorted(big.similarity[1:], reverse=True)
    assert summaries[1].exemplar in big.members
    assert big.similarity[big.members.index(summaries[1].exemplar)] == summaries[1].coherence
    assert merged[1].members == summaries[2].members  # the other part is untouched


def test_merge_ratio_above_one_never_merges():
    rng = np.random.default_rng(1)
    part = _unit(rng.normal(size=32))
    summaries, descs, image_id, _ = _world(rng, [part, part], [range(0, 5), range(5, 10)])
    merged, n = merge_summaries(summaries, descs, image_id, min_ratio=1.5)
    assert n == 0 and merged == summaries


def test_merged_summary_keeps_one_member_per_image():
    rng = np.random.default_rng(2)
    part = _unit(rng.normal(size=32))
    summaries, descs, image_id, _ = _world(rng, [part, part], [range(0, 6), range(3, 9)])
    merged, n = merge_summaries(summaries, descs, image_id, min_ratio=0.9)
    assert n == 1 and len(merged) == 1
    images = image_id[merged[0].members]
    assert len(images) == len(set(images)) == 9


def test_side_by_side_guard_keeps_two_places_apart():
    # Same descriptor direction, but the two summaries sit at different places of the same
    # images: two parts side by side, not two views of one.
    rng = np.random.default_rng(3)
    part = _unit(rng.normal(size=32))
    summaries, descs, image_id, masks = _world(rng, [part, part], [range(0, 8), range(0, 8)])
    merged, n = merge_summaries(
        summaries, descs, image_id, min_ratio=0.9, masks=masks, max_side_by_side=1
    )
    assert n == 0 and len(merged) == 2
    merged, n = merge_summaries(summaries, descs, image_id, min_ratio=0.9)
    assert n == 1
