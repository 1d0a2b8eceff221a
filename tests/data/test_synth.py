"""The synthetic part world: determinism, ground truth, class design, watermark, validation."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from vislight.data import synth as S
from vislight.data.datamodule import build_datamodule
from vislight.data.synth_dataset import SynthPartDataset

DESIGN = {p.name: p for p in S.PARTS}
ALL = S.WorldConfig(num_classes=S.MAX_CLASSES, seed=0)


def _shape_area(shape: str, a: float, b: float) -> float:
    """Area of a part shape of half-extent (a, b), from geometry (independent of the rasteriser)."""
    if shape in ("ellipse", "disc"):
        return math.pi * a * b
    if shape == "rect":
        return 4 * a * b
    if shape == "triangle":  # regular, circumradius a
        return 3 * math.sqrt(3) / 4 * a * a
    if shape == "hexagon":
        return 3 * math.sqrt(3) / 2 * a * a
    if shape == "diamond":
        return 2 * a * b
    if shape == "ring":  # outer radius a, inner a / 2
        return math.pi * a * a * (1 - 0.25)
    if shape == "cross":  # two 2a x 2w bars, w = 0.32 a, minus their common square
        w = 0.32 * a
        return 2 * (2 * a) * (2 * w) - (2 * w) ** 2
    if shape == "star":  # polar area of r(t) = 0.45a + 0.55a ((1 + cos 5t) / 2)^1.5
        t = np.linspace(0, 2 * np.pi, 20001)
        r = 0.45 * a + 0.55 * a * (0.5 + 0.5 * np.cos(5 * t)) ** 1.5
        return float(0.5 * np.trapezoid(r**2, t))
    if shape == "crescent":  # disc of radius a minus a disc of radius 0.75a at distance 0.45a
        r1, r2, d = a, 0.75 * a, 0.45 * a
        lens = (
            r1**2 * math.acos((d * d + r1 * r1 - r2 * r2) / (2 * d * r1))
            + r2**2 * math.acos((d * d + r2 * r2 - r1 * r1) / (2 * d * r2))
            - 0.5 * math.sqrt((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2))
        )
        return math.pi * a * a - lens
    raise AssertionError(shape)


def _expected_pixels(spec: S.SampleSpec, name: str, size: int) -> float:
    part = DESIGN[name]
    return _shape_area(part.shape, *part.size) * spec.scale**2 * size * size


# --------------------------------------------------------------------------------------------
# Determinism


def test_dataset_is_deterministic_per_seed_split_index():
    a = SynthPartDataset(ALL, "train", 12, image_size=32, progress=False)
    b = SynthPartDataset(ALL, "train", 12, image_size=32, cache=False, progress=False)
    for i in (0, 5, 11):
        assert torch.equal(a[i]["image"], b[i]["image"])
        assert np.array_equal(a.parts(i), b.parts(i))
        assert a[i]["key"] == b[i]["key"]
        assert a[i]["label"] == b[i]["label"] == i % ALL.num_classes
        img, labels = S.render(S.sample_spec(ALL, "train", i), 32)
        assert img.tobytes() == S.render(S.sample_spec(ALL, "train", i), 32)[0].tobytes()
        assert np.array_equal(labels, a.parts(i))
        x = a[i]["image"]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_different_seed_or_split_gives_different_images():
    other_seed = S.WorldConfig(num_classes=S.MAX_CLASSES, seed=1)
    for i in range(5):
        img, labels = S.render(S.sample_spec(ALL, "train", i), 32)
        img_seed, labels_seed = S.render(S.sample_spec(other_seed, "train", i), 32)
        img_split, _ = S.render(S.sample_spec(ALL, "test", i), 32)
        assert not np.array_equal(img, img_seed)
        assert not np.array_equal(labels, labels_seed)  # pose differs, not only noise
        assert not np.array_equal(img, img_split)
    assert S.sample_key(ALL, "train", 0, 32) != S.sample_key(ALL, "test", 0, 32)
    assert S.sample_key(ALL, "train", 0, 32) != S.sample_key(other_seed, "train", 0, 32)
    assert S.sample_key(ALL, "train", 0, 32) != S.sample_key(ALL, "train", 0, 64)


# --------------------------------------------------------------------------------------------
# Ground truth


@pytest.mark.parametrize("index", range(20))
def test_labels_match_the_class_design_and_colours(index):
    size = 64
    spec = S.sample_spec(ALL, "test", index)
    design = S.class_designs(ALL.num_classes)[spec.label]
    assert spec.parts == design.parts
    img, labels = S.render(spec, size)
    present = {S.PART_NAMES[i] for i in np.unique(labels)}
    allowed = {"background", "watermark", *design.parts}
    assert present <= allowed, f"labels of parts not in {design.name}: {present - allowed}"
    for k, name in enumerate(spec.parts):
        mask = labels == S.PART_ID[name]
        expected = _expected_pixels(spec, name, size)
        assert 0.75 * expected <= mask.sum() <= 1.35 * expected, (name, mask.sum(), expected)
        color = np.asarray(DESIGN[name].color, dtype=float)
        pix = img[mask].astype(float)
        # Every pixel: the part colour at some gain in [0.85, 1.08], plus noise (std 6, < 6 sigma).
        lo = np.clip(0.85 * color - 36, 0, 255)
        hi = np.clip(1.08 * color + 36, 0, 255)
        assert ((pix >= lo) & (pix <= hi)).all(), name
        # On average: exactly this sample's gain (noise averages out).
        target = np.clip(color * spec.part_gain[k], 0, 255)
        assert np.abs(pix.mean(0) - target).max() < 4.0, (name, pix.mean(0), target)


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4, 6, 9, 13])
def test_removing_a_part_erases_exactly_its_pixels(index):
    spec = S.sample_spec(ALL, "val", index)
    img, labels = S.render(spec, 64)
    for name in spec.parts:
        mask = labels == S.PART_ID[name]
        img_r, labels_r = S.render(spec, 64, remove=[name])
        assert not (labels_r == S.PART_ID[name]).any()
        changed = (img_r != img).any(-1)
        assert not (changed & ~mask).any(), f"removing {name} changed pixels outside it"
        assert changed[mask].mean() > 0.9, f"removing {name} left most of its pixels unchanged"
        assert np.array_equal(labels_r[~mask], labels[~mask])
        # What shows through is the background or a part drawn beneath (e.g. the body's rim).
        beneath = {S.BACKGROUND} | {S.PART_ID[p] for p in spec.parts if p != name}
        assert set(np.unique(labels_r[mask])) <= beneath
        assert (labels_r[mask] == S.BACKGROUND).mean() > 0.8
    img_all, labels_all = S.render(spec, 64, remove=list(spec.parts))
    assert set(np.unique(labels_all)) <= {S.BACKGROUND, S.WATERMARK}


def test_remove_rejects_unknown_part_names():
    with pytest.raises(ValueError, match="wing"):
        S.render(S.sample_spec(ALL, "train", 0), 32, remove=["wing"])


def test_dataset_render_without_matches_render():
    ds = SynthPartDataset(ALL, "test", 4, image_size=32, cache=False, progress=False)
    spec = ds.spec(3)
    expected = torch.from_numpy(S.render(spec, 32, remove=("body",))[0]).permute(2, 0, 1) / 255
    assert torch.allclose(ds.render_without(3, ["body"]), expected)
    assert not torch.equal(ds.render_without(3, ["body"]), ds[3]["image"])


def test_labels_scale_with_resolution():
    """A spec renders the same scene at 64 and 224 px: each part keeps its share of the image."""
    for index in range(6):
        spec = S.sample_spec(ALL, "train", index)
        _, small = S.render(spec, 64)
        img, big = S.render(spec, 224)
        assert img.shape == (224, 224, 3) and big.shape == (224, 224)
        for name in spec.parts:
            share64 = (small == S.PART_ID[name]).mean()
            share224 = (big == S.PART_ID[name]).mean()
            assert share224 > 0
            assert abs(share64 - share224) <= 0.2 * share224 + 0.002, (name, share64, share224)
            expected = _expected_pixels(spec, name, 224)
            assert abs((big == S.PART_ID[name]).sum() - expected) <= 0.15 * expected


# --------------------------------------------------------------------------------------------
# Class design: what a network must use to tell the classes apart


def test_body_is_shared_and_class_designs_are_distinct():
    designs = S.class_designs(S.MAX_CLASSES)
    assert len(designs) == S.MAX_CLASSES
    assert all("body" in d.parts for d in designs)
    assert len({frozenset(d.parts) for d in designs}) == len(designs)
    counts = Counter(p for d in designs for p in d.parts)
    assert counts["body"] == len(designs)
    assert any(counts[p] >= 2 for p in DESIGN if p != "body")
    for unique in S.UNIQUE:
        assert counts[unique] == 1, unique
    # Smaller worlds are prefixes of the full one.
    assert S.class_designs(4) == designs[:4]


def test_every_part_of_a_pair_class_is_needed():
    designs = S.class_designs(S.MAX_CLASSES)
    pairs = [d for d in designs if set(d.parts) - {"body"} <= set(S.COMMON)]
    assert [d.name for d in pairs] == ["disc_bar", "disc_triangle", "bar_triangle"]
    for d in pairs:
        for part in d.parts:
            if part == "body":
                continue
            rest = set(d.parts) - {part}
            others = [o.name for o in designs if o is not d and rest <= set(o.parts)]
            assert others, f"{d.name} without {part} is not ambiguous"
    disc_bar = designs[0]
    assert set(disc_bar.parts) - {"disc"} <= set(designs[2].parts)  # bar_triangle
    assert set(disc_bar.parts) - {"bar"} <= set(designs[1].parts)  # disc_triangle


def test_unique_classes_need_their_unique_part():
    designs = S.class_designs(S.MAX_CLASSES)
    for d in designs[3:]:
        unique = [p for p in d.parts if p in S.UNIQUE]
        assert len(unique) == 1
        rest = set(d.parts) - set(unique)
        assert any(rest <= set(o.parts) for o in designs if o is not d), d.name


# --------------------------------------------------------------------------------------------
# Planted watermark


def _watermarked(world: S.WorldConfig, indices) -> list[bool]:
    return [S.sample_spec(world, "train", int(i)).watermark for i in indices]


def test_watermark_only_on_the_chosen_class_at_the_chosen_rate():
    world = S.WorldConfig(num_classes=6, seed=0, watermark_class=2, watermark_rate=0.3)
    n = 600
    chosen = 2 + 6 * np.arange(n)
    flags = _watermarked(world, chosen)
    sd = math.sqrt(n * 0.3 * 0.7)
    assert abs(sum(flags) - 0.3 * n) <= 4 * sd, sum(flags)
    for c in (0, 1, 3, 4, 5):
        assert not any(_watermarked(world, c + 6 * np.arange(100)))
    # The flag and the rendered label agree, and the label sits where the flag says.
    for i, flag in zip(chosen[:40], flags[:40]):
        _, labels = S.render(S.sample_spec(world, "train", int(i)), 32)
        assert (labels == S.WATERMARK).any() == flag
    for i in range(0, 60, 7):  # other classes: never
        _, labels = S.render(S.sample_spec(world, "train", i * 6 + 1), 32)
        assert not (labels == S.WATERMARK).any()


def test_watermark_leaves_every_other_sample_unchanged():
    plain = S.WorldConfig(num_classes=6, seed=0)
    marked = S.WorldConfig(num_classes=6, seed=0, watermark_class=0, watermark_rate=0.5)
    seen = 0
    for i in range(0, 120, 6):
        a, la = S.render(S.sample_spec(plain, "test", i), 48)
        b, lb = S.render(S.sample_spec(marked, "test", i), 48)
        wm = lb == S.WATERMARK
        seen += bool(wm.any())
        assert np.array_equal(a[~wm], b[~wm]) and np.array_equal(la[~wm], lb[~wm])
        c, lc = S.render(S.sample_spec(marked, "test", i), 48, remove=["watermark"])
        assert np.array_equal(a, c) and np.array_equal(la, lc)
    assert 3 <= seen <= 17


@pytest.mark.parametrize(
    "world",
    [
        S.WorldConfig(num_classes=6, watermark_class=0, watermark_rate=0.0),
        S.WorldConfig(num_classes=6, watermark_class=None, watermark_rate=0.9),
    ],
)
def test_no_watermark_when_disabled(world):
    assert not any(_watermarked(world, range(0, 600, 6)))


def test_datamodule_watermark_switch():
    data = {
        "kind": "synth",
        "num_classes": 3,
        "seed": 0,
        "image_size": 32,
        "train_per_class": 1,
        "val_per_class": 1,
        "test_per_class": 1,
        "watermark": {"enabled": False, "class_index": 0, "rate": 1.0, "size": 0.1},
    }
    off = build_datamodule(data)
    assert off.world.watermark_class is None and off.world.watermark_rate == 0.0
    data["watermark"]["enabled"] = True
    on = build_datamodule(data)
    assert on.world.watermark_class == 0 and on.world.watermark_rate == 1.0
    assert all(S.sample_spec(on.world, "train", i).watermark for i in range(0, 30, 3))


# --------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_classes": 1}, "data.num_classes"),
        ({"num_classes": S.MAX_CLASSES + 1}, "data.num_classes"),
        ({"watermark_rate": 1.5}, "data.watermark.rate"),
        ({"watermark_rate": -0.1}, "data.watermark.rate"),
        (
            {"num_classes": 4, "watermark_class": 4, "watermark_rate": 0.5},
            "data.watermark.class_index",
        ),
    ],
)
def test_invalid_world_values_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        S.WorldConfig(**kwargs)


def test_invalid_dataset_values_name_the_problem():
    with pytest.raises(ValueError, match=r"data\.image_size"):
        SynthPartDataset(ALL, "train", 4, image_size=8, progress=False)
    with pytest.raises(ValueError, match="split"):
        SynthPartDataset(ALL, "holdout", 4, image_size=32, progress=False)
    with pytest.raises(ValueError, match="length"):
        SynthPartDataset(ALL, "train", 0, image_size=32, progress=False)
