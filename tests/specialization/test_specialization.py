"""Summary-driven specialisation: groups, prototypes, evidence, the Lightning module, the stages."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_PIPELINE, compose_config, compose_job_config, run_vislight

from vislight.__main__ import run_or_exit
from vislight.models.registry import build_classifier
from vislight.pipeline import ConfigError, validate
from vislight.specialization.groups import confused_groups, soft_confusion
from vislight.specialization.module import SpecializationModule
from vislight.specialization.prototypes import (
    kmeans_prototypes,
    prototype_evidence,
    region_descriptor,
)
from vislight.specialization.stage import (
    _evidence,
    _fit,
    layer_names,
    specialize_group,
    summarize_groups,
)
from vislight.summaries.rle import rle_encode


def test_soft_confusion_ranks_classes_even_when_every_argmax_is_right():
    probs = np.array([[0.7, 0.3, 0.0], [0.6, 0.4, 0.0], [0.1, 0.0, 0.9]])
    conf = soft_confusion(probs, np.array([0, 1, 2]), 3)
    assert conf[0, 1] == pytest.approx(0.3) and conf[1, 0] == pytest.approx(0.6)
    assert confused_groups(conf, 1, 2) == [[0, 1]]


def test_confused_groups_are_disjoint_and_grow_by_the_most_confused_class():
    conf = np.eye(5)
    conf[0, 3] = conf[3, 0] = 0.4  # the most confused pair
    conf[4, 0] = 0.2  # then 4 with 0
    conf[1, 2] = 0.1
    assert confused_groups(conf, 2, 3) == [[0, 3, 4]]  # only 2 classes left for a 2nd group
    assert confused_groups(conf, 2, 2) == [[0, 3], [1, 2]]
    with pytest.raises(ValueError, match="group_size"):
        confused_groups(conf, 1, 1)


def test_evidence_is_the_best_match_over_positions():
    torch.manual_seed(0)
    c, h, w = 8, 5, 5
    proto = F.normalize(torch.randn(c), dim=0)
    maps = torch.rand(4, c, h, w) * 0.1
    maps[1, :, 3, 2] = proto * 5  # present at one position only
    e = prototype_evidence(maps, proto[None], torch.zeros(c))
    assert e.shape == (4, 1)
    assert e[1, 0] == pytest.approx(1.0, abs=1e-5)
    assert (e[[0, 2, 3], 0] < 0.9).all()


def test_region_descriptor_pools_the_cells_the_region_covers():
    fmap = torch.zeros(3, 4, 4)
    fmap[0, :2, :2] = 1.0  # top-left quarter points along channel 0
    fmap[1, 2:, 2:] = 1.0
    region = np.zeros((32, 32), bool)
    region[:16, :16] = True
    d = region_descriptor(fmap, region, torch.zeros(3))
    assert torch.allclose(d, torch.tensor([1.0, 0.0, 0.0]))


def test_kmeans_prototypes_find_the_planted_directions():
    torch.manual_seed(0)
    dirs = torch.eye(6)[:3] * 3
    maps = torch.stack([dirs[i % 3][:, None, None].expand(6, 2, 2) for i in range(12)])
    protos = kmeans_prototypes(maps + 0.01 * torch.randn_like(maps), torch.zeros(6), 3, seed=0)
    sims = protos @ F.normalize(dirs, dim=1).T
    assert (sims.max(1).values > 0.99).all()


def test_module_starts_from_the_base_model():
    w, b = torch.randn(3, 5), torch.randn(3)
    pooled = torch.randn(7, 5)
    for k in (0, 4):
        m = SpecializationModule(k, 3, w, b, train_head=False, init_std=0.0)
        batch = {"pooled": pooled, "evidence": torch.randn(7, 4)}
        assert torch.allclose(m(batch), pooled @ w.T + b, atol=1e-6)
    m = SpecializationModule(4, 3, w, b, train_head=False)
    assert not any(p.requires_grad for p in m.head.parameters())


def test_prototype_evidence_fixes_what_average_pooling_hides():
    """Class 1 images hold a small part (one position of 8x8) that the pooled features barely show:
    the head fine-tuned on pooled features stays near chance, the prototype head learns it."""
    g = torch.Generator().manual_seed(0)
    n, c = 240, 16
    part = F.normalize(torch.randn(c, generator=g), dim=0)
    maps = torch.rand(n, c, 8, 8, generator=g)
    labels = torch.arange(n) % 2
    for i in torch.nonzero(labels).flatten():
        y, x = torch.randint(0, 8, (2,), generator=g)
        maps[i, :, y, x] = part * 4 + 0.5
    mean = maps[: n // 2].mean((0, 2, 3))
    pooled = maps.mean((2, 3))
    head = (torch.zeros(2, c), torch.zeros(2))
    cfg = {"lr": 0.05, "weight_decay": 0.0, "init_std": 0.01, "batch_size": 32, "epochs": 30}
    tr, te = slice(0, n // 2), slice(n // 2, n)
    e_tr, ref = _evidence(maps[tr], part[None], mean)
    e_te, _ = _evidence(maps[te], part[None], mean, ref)
    spec = _fit(
        {"pooled": pooled[tr], "evidence": e_tr, "label": labels[tr]}, 1, 2, head, True, cfg, 0
    )
    plain = _fit({"pooled": pooled[tr], "label": labels[tr]}, 0, 2, head, True, cfg, 0)
    with torch.no_grad():
        acc_spec = (spec({"pooled": pooled[te], "evidence": e_te}).argmax(1) == labels[te]).float()
        acc_plain = (plain({"pooled": pooled[te]}).argmax(1) == labels[te]).float()
    assert acc_spec.mean() > 0.95, acc_spec.mean()
    assert acc_plain.mean() < 0.8, acc_plain.mean()


def test_summary_over_groups_weights_by_images_and_checks_the_margin():
    def group(n, base, spec, km, head):
        return {
            "heldout_images": n,
            "base": base,
            "specialized": {"runs": spec},
            "kmeans_control": {"runs": km},
            "head_control": {"runs": head},
        }

    out = summarize_groups(
        [group(100, 0.5, [0.9, 0.9], [0.6, 0.6], [0.7, 0.7]), group(300, 0.5, [0.5, 0.7], [0.5, 0.5], [0.5, 0.5])],
        [0, 1],
    )  # fmt: skip
    assert out["base"] == pytest.approx(0.5)
    assert out["specialized"]["runs"] == pytest.approx([0.6, 0.75])
    assert out["specialized"]["std"] == pytest.approx(0.075)
    assert out["beats_all"] is True
    # a group without summaries is reported but not averaged
    assert summarize_groups([{"heldout_images": 5, "base": 0.5}], [0]) == {
        "groups": 1,
        "specialized_groups": 0,
    }
    # +0.05 over the base but a seed std of 0.1: not a win
    out = summarize_groups([group(10, 0.85, [0.8, 1.0], [0.8, 0.8], [0.8, 0.8])], [0, 1])
    assert out["beats_all"] is False


TINY_SPECIALIZE = [
    *TINY_PIPELINE,
    "experiment=specialize_synth",
    "model=resnet_small",  # small_cnn learns too little of the tiny world to have summaries
    "logger=none",
    "specialize.group_size=2",
    "specialize.seeds=[0,1]",
    "specialize.epochs=3",
]


@pytest.mark.slow  # end-to-end study (make test-all)
def test_specialize_synth_runs_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = run_vislight(
        *TINY_SPECIALIZE, f"paths.output_dir={out}", f"train.cache_dir={tmp_path / 'c'}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    spec = metrics["specialization"]
    (chosen,) = spec["chosen_groups"]
    assert len(chosen) == 2 and spec["groups_from"] == "soft confusion on val"
    # only the group's classes were explained
    assert {p.name for p in (out / "masks").iterdir()} == set(chosen)
    (group,) = spec["groups"]
    assert group["heldout_images"] == 20  # test split: 10 per class
    assert group["train_images"] == 160
    for m in ("specialized", "kmeans_control", "head_control"):
        assert len(group[m]["runs"]) == 2 and 0 <= group[m]["mean"] <= 1
    assert spec["overall"]["heldout_images"] == 20
    html = (out / "report" / "index.html").read_text()
    assert "Specialisation (held-out test" in html and "k-means control" in html


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.split=test", "specialize.heldout_split='test' is the split the summaries"),
        ("specialize.heldout_split=train", "specialize.heldout_split='train' is invalid"),
        ("specialize.heldout_split=val", "specialize.heldout_split='val' is invalid"),
        ("specialize.groups=[disc_bar,bar_triangle]", "specialize.groups=['disc_bar'"),
        (
            "stages=[classifier,evaluate,groups,masks,specialize]",
            "'specialize' needs ['summaries']",
        ),
        (
            "stages=[classifier,evaluate,masks,summaries,groups,specialize]",
            "needs 'groups', 'masks' and",
        ),
        ("specialize.seeds=[]", "specialize.seeds=[] is invalid"),
        ("specialize.layer=[]", "specialize.layer=[] is invalid"),
        ("specialize.layer=[layer1,'']", "specialize.layer=['layer1', ''] is invalid"),
        ("specialize.group_size=1", "specialize.group_size=1 is out of range"),
    ],
)
def test_bad_specialisation_settings_are_named_before_any_work(tmp_path, override, message):
    cfg = compose_config([*TINY_SPECIALIZE, override], tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(cfg)


def test_specialisation_on_data_without_a_held_out_split_stops_before_any_work(tmp_path, capsys):
    """The CLI's side of the validation: exit 2 and one line."""
    cfg = compose_job_config(
        ["experiment=specialize_synth", "data=folder", f"data.root={tmp_path}"], tmp_path
    )
    with pytest.raises(SystemExit) as stop:
        run_or_exit(cfg)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.splitlines()) == 1, err
    assert "data.kind='folder' has no named held-out split" in err


def test_unknown_classes_in_named_groups_stop_before_training(tmp_path, capsys):
    cfg = compose_job_config([*TINY_SPECIALIZE, "specialize.groups=[[disc_bar,nope]]"], tmp_path)
    with pytest.raises(SystemExit) as stop:
        run_or_exit(cfg)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "lists ['nope'], which are not classes of synth" in err, err
    assert not (tmp_path / "cache").exists()  # nothing trained
    assert not (tmp_path / "run" / "metrics.json").exists()  # the first stage did not finish


class _Blobs(torch.utils.data.Dataset):
    """3 classes of 32-px images: a bright square at a class-specific place, noise elsewhere."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.labels = [i % 3 for i in range(n)]
        self.images = torch.rand(n, 3, 32, 32, generator=g) * 0.3
        for i, y in enumerate(self.labels):
            self.images[i, y, 4 + 8 * y : 12 + 8 * y, 4:12] = 1.0

    def targets(self) -> list[int]:
        return self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i]}


def test_prototypes_from_several_layers_concatenate_their_evidence():
    torch.manual_seed(0)
    clf = build_classifier(
        {"_target_": "vislight.models.zoo.small_cnn", "name": "resnet_small",
         "arch": "resnet_small", "width": 8, "num_classes": 3, "input_size": 32,
         "mean": [0.5] * 3, "std": [0.25] * 3, "feature_layer": "layer2"}
    ).eval()  # fmt: skip
    train, held = _Blobs(24, 0), _Blobs(12, 1)
    square = np.zeros((32, 32), bool)

    def summary(index: int) -> dict:
        y = train.labels[index]
        region = square.copy()
        region[4 + 8 * y : 12 + 8 * y, 4:12] = True
        return {"members": [{"index": index, "mask_rle": rle_encode(region)}]}

    summaries = {"a": [summary(0), summary(3)], "b": [summary(1)]}
    cfg = {"seeds": [0], "feature_batch_size": 8, "train_head": True, "epochs": 2,
           "batch_size": 8, "lr": 0.01, "weight_decay": 0.0, "init_std": 0.01}  # fmt: skip

    def run(layer):
        return specialize_group(clf, [0, 1], ["a", "b", "c"], summaries, train, train, held,
                                {**cfg, "layer": layer}, torch.device("cpu"))  # fmt: skip

    one, two = run(None), run(["layer1", "layer2"])
    # 3 summaries -> 3 prototypes per layer; the same images and base model either way
    assert one["prototypes"] == 3 and two["prototypes"] == 6
    assert one["train_images"] == two["train_images"] == 16  # classes a and b of 24 images
    assert one["base"] == two["base"]
    for result in (one, two):
        for m in ("specialized", "kmeans_control", "head_control"):
            assert len(result[m]["runs"]) == 1 and 0.0 <= result[m]["mean"] <= 1.0
    assert layer_names(None) == [None] and layer_names("layer2") == ["layer2"]
    with pytest.raises(ValueError, match="'nope' is not a layer"):
        run(["layer2", "nope"])
    with pytest.raises(ValueError, match="names no layer"):
        layer_names([])
