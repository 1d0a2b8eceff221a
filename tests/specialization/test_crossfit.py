"""Cross-fitting for specialisation: the halves of CUB's train split, the split roles of the
groups and heads, the classifier cache keys, and the paired tests across groups and seeds."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import compose_job_config, require_shared
from scipy import stats

from vislight.data.cub import CubPartsDataset, half_of
from vislight.pipeline import ConfigError, validate
from vislight.specialization.config import validate_specialize_order
from vislight.specialization.stage import paired_tests
from vislight.training.fit import classifier_cache_key


def test_halves_are_disjoint_stratified_and_seeded():
    labels = {i: i % 3 for i in range(31)}  # classes of 11, 10 and 10 images
    ids = list(range(31))
    a, b = half_of(ids, labels, "a", 0), half_of(ids, labels, "b", 0)
    assert sorted(a + b) == ids and not set(a) & set(b)
    for c, n in ((0, 11), (1, 10), (2, 10)):
        assert sum(labels[i] == c for i in a) == (n + 1) // 2
    assert a == half_of(ids, labels, "a", 0) and a != half_of(ids, labels, "a", 1)


def test_cub_train_halves_cover_the_train_split(shared_dir):
    root = require_shared("data", "cub200_parts_001_040") / "data" / "cub200_parts_001_040"
    kw = {"root": root, "classes": [1, 2, 3], "input_size": 64}
    train = CubPartsDataset(split="train", **kw)
    a, b = CubPartsDataset(split="train_a", **kw), CubPartsDataset(split="train_b", **kw)
    assert sorted(a.ids + b.ids) == sorted(train.ids) and not set(a.ids) & set(b.ids)
    assert abs(len(a) - len(b)) <= 3  # at most one image more per class in half a
    test = CubPartsDataset(split="test", **kw)
    assert not set(test.ids) & set(train.ids)
    # half b's own halves, for choosing inside the held-in half
    b1, b2 = CubPartsDataset(split="train_b1", **kw), CubPartsDataset(split="train_b2", **kw)
    assert sorted(b1.ids + b2.ids) == sorted(b.ids) and not set(b1.ids) & set(b2.ids)
    assert b1.ids != b.ids[: len(b1.ids)]  # a shuffled cut, not the first images
    for c in range(3):
        own = [lab == c for lab in b1.labels]
        assert sum(own) == (sum(lab == c for lab in b.labels) + 1) // 2


def test_the_default_train_split_keeps_the_cached_trainings():
    model, train = {"name": "m", "arch": "efficientnet-lite0"}, {"epochs": 1}
    data = {"kind": "cub", "classes": [1, 2]}
    before = classifier_cache_key(model, data, train, 0)
    same = classifier_cache_key(model, {**data, "train_split": "train", "half_seed": 3}, train, 0)
    half = classifier_cache_key(model, {**data, "train_split": "train_a", "half_seed": 0}, train, 0)
    other = classifier_cache_key(
        model, {**data, "train_split": "train_a", "half_seed": 1}, train, 0
    )
    assert before == same and len({before, half, other}) == 3


def test_paired_tests_over_groups_and_seeds():
    groups = [
        {"base": 0.5, "specialized": {"runs": [0.6, 0.7]}, "kmeans_control": {"runs": [0.55, 0.6]},
         "head_control": {"runs": [0.6, 0.7]}},
        {"base": 0.7, "specialized": {"runs": [0.8, 0.75]}, "kmeans_control": {"runs": [0.7, 0.7]},
         "head_control": {"runs": [0.8, 0.7]}},
    ]  # fmt: skip
    out = paired_tests(groups, 2)
    diff = np.array([0.1, 0.2, 0.1, 0.05])
    assert out["base"]["pairs"] == 4 and out["base"]["wins"] == 4
    assert out["base"]["mean_difference"] == pytest.approx(diff.mean())
    expected = stats.ttest_1samp(diff, 0.0, alternative="greater").pvalue
    assert out["base"]["t_test_p"] == pytest.approx(expected)
    assert out["head_control"]["wins"] == 1 and out["head_control"]["losses"] == 0
    assert out["head_control"]["wilcoxon_p"] == pytest.approx(
        stats.wilcoxon([0.05], alternative="greater").pvalue
    )


def test_split_roles_are_checked(tmp_path):
    cfg = compose_job_config(
        ["experiment=specialize_synth", "specialize.heads_split=val"], tmp_path
    )
    with pytest.raises(ConfigError, match="specialize.heads_split='val'"):
        validate(cfg)
    # summaries from val (cross-fitting) leave only test unseen
    cfg = compose_job_config(
        ["experiment=specialize_synth_crossfit", "specialize.heldout_split=val",
         "specialize.groups=[[disc_bar,bar_triangle]]"], tmp_path,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="heldout_split='val'"):
        validate(cfg)
    validate(compose_job_config(["experiment=specialize_synth_crossfit"], tmp_path))


def test_choosing_inside_the_held_in_half_needs_the_base_model_on_the_other(tmp_path):
    # (the split roles alone: validate() would also open the CUB folder)
    validate_specialize_order(compose_job_config(["experiment=specialize_cub_select"], tmp_path))
    swapped = ["data.split=train_b2", "specialize.heldout_split=train_b1"]
    validate_specialize_order(
        compose_job_config(["experiment=specialize_cub_select", *swapped], tmp_path)
    )
    cfg = compose_job_config(
        ["experiment=specialize_cub_select", "data.train_split=train"], tmp_path
    )
    with pytest.raises(ConfigError, match="data.train_split=train_a"):
        validate_specialize_order(cfg)
    # a half of train_b is held out only when the summaries come from the other half
    cfg = compose_job_config(
        ["experiment=specialize_cub_crossfit", "specialize.heldout_split=train_b2"], tmp_path
    )
    with pytest.raises(ConfigError, match="heldout_split='train_b2'"):
        validate_specialize_order(cfg)
