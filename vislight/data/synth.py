"""The synthetic part world: objects made of coloured parts, generated from a seed.

Every object has a grey ``body`` (shared by every class, so it cannot discriminate) and 2–3 more
parts, each with its own shape, colour and canonical slot around the body. Classes differ in which
parts they carry:

* *pair classes* carry two of the common parts ``disc``, ``bar`` and ``triangle``; each of those
  parts appears in two pair classes, so a network can only tell a pair class apart by the
  *combination* of its two parts;
* *unique classes* own one part nobody else has (``star``, ``diamond``, ``ring`` …), plus one or two
  common parts (the part combination left after removing the unique part is ambiguous, so the
  unique part is needed).

A sample is fully described by a :class:`SampleSpec` (class, pose, background, distractors,
watermark), drawn deterministically from ``(seed, split, index)``. :func:`render` draws a spec at
any resolution and returns the image with its per-pixel part labels; ``remove=`` draws the same
sample without chosen parts (their pixels show the background), which measures exactly how much a
network relies on each part. An optional *planted shortcut* stamps a small fixed watermark on a
fraction of one class's images.

Coordinates are in units of the image side (``0..1``), so a spec renders identically, up to
sampling, at 64×64 or 224×224.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

BACKGROUND = 0
SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class PartDesign:
    """One part type: its shape, RGB colour, size (image-side units) and slot offset from the body."""

    name: str
    shape: str
    color: tuple[int, int, int]
    size: tuple[float, float]
    slot: tuple[float, float]


# Label ids: 0 = background, 1.. = PARTS in this order, then the watermark.
PARTS: tuple[PartDesign, ...] = (
    PartDesign("body", "ellipse", (205, 205, 205), (0.15, 0.10), (0.0, 0.0)),
    PartDesign("disc", "disc", (250, 140, 20), (0.075, 0.075), (0.0, -0.19)),
    PartDesign("bar", "rect", (30, 80, 235), (0.035, 0.095), (0.23, 0.0)),
    PartDesign("triangle", "triangle", (35, 180, 60), (0.085, 0.085), (-0.235, 0.0)),
    PartDesign("star", "star", (225, 25, 35), (0.09, 0.09), (0.0, 0.20)),
    PartDesign("diamond", "diamond", (150, 50, 210), (0.06, 0.09), (0.0, 0.21)),
    PartDesign("ring", "ring", (0, 205, 215), (0.08, 0.08), (0.0, 0.20)),
    PartDesign("cross", "cross", (245, 225, 30), (0.08, 0.08), (0.0, 0.20)),
    PartDesign("hexagon", "hexagon", (255, 105, 185), (0.08, 0.08), (0.0, 0.20)),
    PartDesign("square", "rect", (255, 255, 255), (0.065, 0.065), (0.0, 0.20)),
    PartDesign("crescent", "crescent", (120, 255, 120), (0.085, 0.085), (0.0, 0.20)),
)
PART_NAMES: tuple[str, ...] = ("background",) + tuple(p.name for p in PARTS) + ("watermark",)
PART_ID: dict[str, int] = {name: i for i, name in enumerate(PART_NAMES)}
WATERMARK = PART_ID["watermark"]
COMMON = ("disc", "bar", "triangle")
UNIQUE = tuple(p.name for p in PARTS[4:])
# Common parts that each unique class carries beside its unique part (cycled).
_UNIQUE_EXTRAS = (
    ("disc",),
    ("bar", "triangle"),
    ("triangle",),
    ("disc", "bar"),
    ("bar",),
    ("disc", "triangle"),
    ("triangle",),
)
MAX_CLASSES = 3 + len(UNIQUE)


@dataclass(frozen=True)
class ClassDesign:
    """One object class: its name and the parts it is made of (always including ``body``)."""

    name: str
    parts: tuple[str, ...]


def class_designs(num_classes: int) -> list[ClassDesign]:
    """The first ``num_classes`` classes: three pair classes, then unique-part classes."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(
            f"data.num_classes={num_classes} is not supported by the synthetic world: "
            f"use a value from 2 to {MAX_CLASSES}"
        )
    designs = [
        ClassDesign("disc_bar", ("body", "disc", "bar")),
        ClassDesign("disc_triangle", ("body", "disc", "triangle")),
        ClassDesign("bar_triangle", ("body", "bar", "triangle")),
    ]
    for unique, extras in zip(UNIQUE, _UNIQUE_EXTRAS):
        designs.append(ClassDesign(unique, ("body", unique) + extras))
    return designs[:num_classes]


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of the world (all of them live in ``conf/data/synth.yaml``)."""

    num_classes: int = 6
    seed: int = 0
    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.1)
    max_shift: float = 0.09
    distractors: tuple[int, int] = (3, 6)
    noise_std: float = 6.0
    watermark_class: int | None = None
    watermark_rate: float = 0.0
    watermark_size: float = 0.1

    def __post_init__(self):
        class_designs(self.num_classes)  # validates num_classes
        if not 0.0 <= self.watermark_rate <= 1.0:
            raise ValueError(
                f"data.watermark.rate={self.watermark_rate} must lie in [0, 1] (fraction of the class's images)"
            )
        if self.watermark_class is not None and not 0 <= self.watermark_class < self.num_classes:
            raise ValueError(
                f"data.watermark.class_index={self.watermark_class} must be a class index in "
                f"[0, {self.num_classes - 1}] or null"
            )


@dataclass(frozen=True)
class Distractor:
    shape: str
    color: tuple[int, int, int]
    center: tuple[float, float]
    size: float
    angle: float


@dataclass(frozen=True)
class SampleSpec:
    """Everything needed to draw one sample; drawn from ``(seed, split, index)`` by :func:`sample_spec`."""

    index: int
    label: int
    parts: tuple[str, ...]
    center: tuple[float, float]
    scale: float
    angle: float
    slot_jitter: tuple[tuple[float, float], ...]
    part_gain: tuple[float, ...]
    bg_color: tuple[float, float, float]
    bg_waves: tuple[tuple[float, float, float, float], ...]
    distractors: tuple[Distractor, ...]
    watermark: bool
    noise_seed: int
    watermark_size: float = 0.1
    noise_std: float = 6.0
    extra: dict = field(default_factory=dict, compare=False)


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {sorted(SPLITS)}")
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def watermark_flag(world: WorldConfig, split: str, index: int) -> bool:
    """Whether sample ``index`` carries the planted watermark (deterministic, rate = ``watermark_rate``)."""
    if world.watermark_class is None or world.watermark_rate <= 0:
        return False
    if index % world.num_classes != world.watermark_class:
        return False
    # A separate stream so that switching the shortcut on leaves every other sample unchanged.
    u = np.random.default_rng([int(world.seed), SPLITS[split], int(index), 7919]).random()
    return bool(u < world.watermark_rate)


def sample_spec(world: WorldConfig, split: str, index: int) -> SampleSpec:
    """Draw sample ``index`` of ``split``. Classes are balanced: the label is ``index % num_classes``."""
    rng = _rng(world.seed, split, index)
    designs = class_designs(world.num_classes)
    label = index % world.num_classes
    parts = designs[label].parts
    distractors = []
    for _ in range(int(rng.integers(world.distractors[0], world.distractors[1] + 1))):
        if rng.random() < 0.6:  # part colours on small non-part shapes: colour alone is not enough
            color = PARTS[int(rng.integers(1, len(PARTS)))].color
        else:
            color = tuple(int(c) for c in rng.integers(40, 200, size=3))
        distractors.append(
            Distractor(
                shape=str(rng.choice(["dot", "dash", "smallsquare", "plus"])),
                color=color,
                center=(float(rng.uniform(0.05, 0.95)), float(rng.uniform(0.05, 0.95))),
                size=float(rng.uniform(0.022, 0.035)),
                angle=float(rng.uniform(0, np.pi)),
            )
        )
    waves = tuple(
        (
            float(rng.uniform(2, 9)),  # spatial frequency (cycles per image side)
            float(rng.uniform(0, np.pi)),  # orientation
            float(rng.uniform(0, 2 * np.pi)),  # phase
            float(rng.uniform(6, 18)),  # amplitude (grey levels)
        )
        for _ in range(3)
    )
    return SampleSpec(
        index=index,
        label=label,
        parts=parts,
        center=(
            float(0.5 + rng.uniform(-world.max_shift, world.max_shift)),
            float(0.5 + rng.uniform(-world.max_shift, world.max_shift)),
        ),
        scale=float(rng.uniform(*world.scale_range)),
        angle=float(np.deg2rad(rng.uniform(-world.max_rotation_deg, world.max_rotation_deg))),
        slot_jitter=tuple(
            (float(a), float(b)) for a, b in rng.uniform(-0.015, 0.015, size=(len(parts), 2))
        ),
        part_gain=tuple(float(g) for g in rng.uniform(0.85, 1.08, size=len(parts))),
        bg_color=tuple(float(c) for c in rng.uniform(60, 150, size=3)),
        bg_waves=waves,
        distractors=tuple(distractors),
        watermark=watermark_flag(world, split, index),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
        watermark_size=world.watermark_size,
        noise_std=world.noise_std,
    )


# ---------------------------------------------------------------------------------------------
# Rasterisation: each shape is a boolean test on local coordinates (u, v) in image-side units.


def _polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Inside test for a convex polygon with counter-clockwise ``vertices`` (K, 2)."""
    inside = np.ones(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return inside


def _regular(n: int, r: float, phase: float) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray, size: tuple[float, float]) -> np.ndarray:
    """Pixels inside ``shape`` of half-extent ``size`` = (a, b), in local coordinates ``u, v``."""
    a, b = size
    if shape in ("ellipse", "disc", "dot"):
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if shape in ("rect", "smallsquare", "dash"):
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    if shape == "triangle":
        return _polygon(u, v, _regular(3, a, np.pi / 2))
    if shape == "hexagon":
        return _polygon(u, v, _regular(6, a, 0.0))
    if shape == "diamond":
        return np.abs(u) / a + np.abs(v) / b <= 1.0
    if shape == "ring":
        r = np.hypot(u, v)
        return (r <= a) & (r >= 0.5 * a)
    if shape in ("cross", "plus"):
        w = 0.32 * a
        return ((np.abs(u) <= a) & (np.abs(v) <= w)) | ((np.abs(u) <= w) & (np.abs(v) <= a))
    if shape == "star":
        r = np.hypot(u, v)
        t = np.arctan2(v, u) - np.pi / 2
        # Radius oscillating between inner and outer radius five times around the circle.
        edge = 0.45 * a + 0.55 * a * (0.5 + 0.5 * np.cos(5 * t)) ** 1.5
        return r <= edge
    if shape == "crescent":
        return (np.hypot(u, v) <= a) & (np.hypot(u - 0.45 * a, v) > 0.75 * a)
    raise ValueError(f"unknown shape {shape!r}")


def _local(x, y, center, angle, scale):
    """Image coordinates -> coordinates of a frame at ``center`` rotated by ``angle`` and scaled."""
    dx, dy = x - center[0], y - center[1]
    c, s = np.cos(angle), np.sin(angle)
    return (c * dx + s * dy) / scale, (-s * dx + c * dy) / scale


def _background(spec: SampleSpec, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    img = np.empty(x.shape + (3,), dtype=np.float32)
    img[:] = spec.bg_color
    for k, (freq, theta, phase, amp) in enumerate(spec.bg_waves):
        wave = amp * np.sin(2 * np.pi * freq * (np.cos(theta) * x + np.sin(theta) * y) + phase)
        img[..., k % 3] += wave
        img[..., (k + 1) % 3] += 0.5 * wave
    return img


def render(
    spec: SampleSpec, size: int = 64, remove: tuple[str, ...] | list[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a sample.

    Args:
        spec: the sample (see :func:`sample_spec`).
        size: output side in pixels.
        remove: part names (or ``"watermark"``) not to draw; their pixels show what lies beneath.

    Returns:
        ``image`` (size, size, 3) uint8 RGB and ``labels`` (size, size) uint8, the id in
        :data:`PART_NAMES` of the part visible at each pixel (0 = background, distractors included).
    """
    unknown = set(remove) - set(PART_NAMES[1:])
    if unknown:
        raise ValueError(
            f"cannot remove unknown parts {sorted(unknown)}; known parts: {PART_NAMES[1:]}"
        )
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.meshgrid(coords, coords)
    img = _background(spec, x, y)
    labels = np.zeros((size, size), dtype=np.uint8)
    for d in spec.distractors:
        u, v = _local(x, y, d.center, d.angle, 1.0)
        extent = (d.size, 0.35 * d.size) if d.shape == "dash" else (d.size, d.size)
        img[shape_mask(d.shape, u, v, extent)] = d.color
    designs = {p.name: p for p in PARTS}
    for k, name in enumerate(spec.parts):
        if name in remove:
            continue
        part = designs[name]
        ox, oy = part.slot[0] + spec.slot_jitter[k][0], part.slot[1] + spec.slot_jitter[k][1]
        u, v = _local(x, y, spec.center, spec.angle, spec.scale)
        inside = shape_mask(part.shape, u - ox, v - oy, part.size)
        img[inside] = np.asarray(part.color, dtype=np.float32) * spec.part_gain[k]
        labels[inside] = PART_ID[name]
    if spec.watermark and "watermark" not in remove:
        inside, pattern = _watermark(x, y, spec.watermark_size)
        img[inside] = pattern[inside][:, None]
        labels[inside] = WATERMARK
    noise = np.random.default_rng(spec.noise_seed).normal(0.0, spec.noise_std, size=(size, size, 3))
    img += noise.astype(np.float32)
    return np.clip(img, 0, 255).round().astype(np.uint8), labels


def _watermark(x: np.ndarray, y: np.ndarray, side: float) -> tuple[np.ndarray, np.ndarray]:
    """A fixed 3×3 black/white checker tag in the bottom-right corner."""
    x0 = y0 = 1.0 - 0.03 - side
    inside = (x >= x0) & (x < x0 + side) & (y >= y0) & (y < y0 + side)
    cell = np.floor((x - x0) / side * 3).astype(int) + np.floor((y - y0) / side * 3).astype(int)
    pattern = np.where(cell % 2 == 0, 250.0, 15.0).astype(np.float32)
    return inside, pattern


def sample_key(world: WorldConfig, split: str, index: int, size: int) -> str:
    """A stable key naming a rendered sample (world parameters, split, index and size)."""
    h = hashlib.sha1(repr((world, split, index, size)).encode()).hexdigest()[:10]
    return f"{split}-{index:06d}-{h}"
