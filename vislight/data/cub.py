"""CUB-200-2011 birds with their 15 part locations and bounding boxes (standard CUB layout).

Items are the usual batch dicts (``image`` resized + centre-cropped like the classifier expects,
``label``, ``index``, ``key``). :meth:`CubPartsDataset.keypoints` and :meth:`bbox` give the part
locations and the bird's box in the *preprocessed* image's pixel coordinates, and
:meth:`tag_region` tags a region with the part group (head, wing, leg, tail, body) that has the most
visible keypoints inside it, grown by a margin (keypoints are points and regions are small).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage
from torch.utils.data import Dataset

from vislight.data.folder import content_key, load_rgb, preprocess, require_folder
from vislight.data.parts import BACKGROUND_TAG, PartTruth, TaggingSettings

PART_GROUPS: dict[str, tuple[str, ...]] = {
    "head": ("beak", "crown", "forehead", "left eye", "right eye", "nape", "throat"),
    "wing": ("left wing", "right wing"),
    "leg": ("left leg", "right leg"),
    "tail": ("tail",),
    "body": ("back", "belly", "breast"),
}


def _table(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: data.root must be a CUB-200-2011 folder (images.txt, parts/, ...)"
        )
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def crop_transform(
    width: int, height: int, input_size: int, resize_size: int | None
) -> tuple[float, float, float]:
    """(scale, x offset, y offset) mapping original pixel coordinates into the resized + centre-cropped
    image, matching torchvision's ``resize(shorter side)`` then ``center_crop``."""
    size = resize_size or input_size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    scale = new_w / width
    left = int(round((new_w - input_size) / 2.0))
    top = int(round((new_h - input_size) / 2.0))
    return scale, float(left), float(top)


# The halves of the official train split, as the halves taken at each cut: the first cut uses
# ``half_seed``, the second (train_b's halves) ``[half_seed, 1]``.
HALVES = {"train_a": "a", "train_b": "b", "train_b1": "ba", "train_b2": "bb"}
SPLITS = ("train", "test", "all", *HALVES)


def half_of(
    ids: Sequence[int], labels: Mapping[int, int], half: str, seed: int | Sequence[int]
) -> list[int]:
    """Half ``a`` or ``b`` of the image ids, stratified: each class's ids shuffled with ``seed``,
    the first ceil(n / 2) to ``a``, the rest to ``b``; sorted like ``ids``. One generator serves
    the classes in order, so the cut depends on the set of classes loaded: a run and the runs
    that reuse its halves must load the same ``data.classes``."""
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for c in sorted({labels[i] for i in ids}):
        own = [i for i in ids if labels[i] == c]
        order = rng.permutation(len(own))
        cut = (len(own) + 1) // 2
        picked = order[:cut] if half == "a" else order[cut:]
        chosen.update(own[k] for k in picked)
    return [i for i in ids if i in chosen]


class CubPartsDataset(Dataset):
    """CUB images of the chosen classes and split, with keypoints and boxes.

    Args:
        root: the CUB folder (``images.txt``, ``image_class_labels.txt``, ``parts/part_locs.txt``...).
        classes: CUB class ids (1-based) to include.
        label_map: CUB class id -> label of the explained model (default: position in ``classes``).
        label_names: label -> name (default: the CUB class folder name).
        split: ``train``, ``test`` or ``all`` (the official split), or ``train_a`` / ``train_b``:
            the two halves of the official train split, each class's train images shuffled with
            ``half_seed`` and cut in two (``train_a`` gets the odd one), for cross-fitting; or
            ``train_b1`` / ``train_b2``: ``train_b`` cut in two the same way (seed
            ``[half_seed, 1]``), to choose settings inside the held-in half.
        half_seed: the seed of that cut.
    """

    reads_files = True  # every item is decoded from its file (see vislight.data.decoded)

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[int],
        input_size: int,
        resize_size: int | None = None,
        label_map: Mapping[int, int] | None = None,
        label_names: Mapping[int, str] | None = None,
        split: str = "test",
        half_seed: int = 0,
    ):
        if split not in SPLITS:
            raise ValueError(f"data.split={split!r} is invalid: use one of {list(SPLITS)}")
        self.root = Path(root).expanduser()
        require_folder(self.root, "data.root", "/path/to/CUB_200_2011 (images.txt, parts/, ...)")
        self.input_size, self.resize_size = int(input_size), resize_size
        class_names = {int(i): name for i, name in _table(self.root / "classes.txt")}
        unknown = [c for c in classes if int(c) not in class_names]
        if unknown:
            raise ValueError(
                f"data.classes lists CUB classes {unknown} that {self.root} does not have"
            )
        label_map = {
            int(k): int(v)
            for k, v in (label_map or {int(c): k for k, c in enumerate(classes)}).items()
        }
        names = {int(k): str(v) for k, v in (label_names or {}).items()}
        for c in classes:
            names.setdefault(label_map[int(c)], class_names[int(c)])
        self.classes = [names.get(i, str(i)) for i in range(max(names) + 1)]
        paths = {int(i): p for i, p in _table(self.root / "images.txt")}
        labels = {int(i): int(c) for i, c in _table(self.root / "image_class_labels.txt")}
        is_train = {int(i): s == "1" for i, s in _table(self.root / "train_test_split.txt")}
        wanted = {int(c) for c in classes}
        official = "train" if split.startswith("train") else split
        self.ids = [
            i
            for i in sorted(paths)
            if labels[i] in wanted and (split == "all" or is_train[i] == (official == "train"))
        ]
        for cut, half in enumerate(HALVES.get(split, "")):  # train_b1: half b, then its half a
            self.ids = half_of(self.ids, labels, half, [half_seed, cut] if cut else half_seed)
        self.labels = [label_map[labels[i]] for i in self.ids]
        self.paths = [self.root / "images" / paths[i] for i in self.ids]
        boxes = {
            int(r[0]): tuple(float(v) for v in r[1:5])
            for r in _table(self.root / "bounding_boxes.txt")
        }
        self.part_names = {
            int(i): " ".join(rest) for i, *rest in _table(self.root / "parts" / "parts.txt")
        }
        locs: dict[int, list[tuple[int, float, float, bool]]] = {}
        for r in _table(self.root / "parts" / "part_locs.txt"):
            locs.setdefault(int(r[0]), []).append(
                (int(r[1]), float(r[2]), float(r[3]), r[4] == "1")
            )
        sizes = {int(r[0]): (int(r[3]), int(r[4])) for r in _table(self.root / "sizes.txt")}
        self._sizes = [sizes[i] for i in self.ids]
        self._boxes = [boxes[i] for i in self.ids]
        self._locs = [locs.get(i, []) for i in self.ids]
        self.skipped: list[dict] = []

    def __len__(self) -> int:
        return len(self.ids)

    def targets(self) -> list[int]:
        return list(self.labels)

    def _transform(self, index: int) -> tuple[float, float, float]:
        width, height = self._sizes[index]  # stored image size (sizes.txt: id W H w h)
        return crop_transform(width, height, self.input_size, self.resize_size)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        return {
            "image": preprocess(load_rgb(path), self.input_size, self.resize_size),
            "label": self.labels[index],
            "index": index,
            "key": content_key(path),
        }

    def part_locations(self, index: int) -> list[tuple[str, float, float]]:
        """Visible part locations ``(part, x, y)`` (CUB's 15 part names) in preprocessed pixel
        coordinates, those inside the crop only."""
        scale, left, top = self._transform(index)
        out = []
        for part_id, x, y, visible in self._locs[index]:
            if not visible:
                continue
            px, py = x * scale - left, y * scale - top
            if 0 <= px < self.input_size and 0 <= py < self.input_size:
                out.append((self.part_names[part_id], px, py))
        return out

    def keypoints(self, index: int) -> list[tuple[str, float, float]]:
        """Visible part locations ``(group, x, y)`` in preprocessed pixel coordinates (inside the crop)."""
        group_of = {p: g for g, parts in PART_GROUPS.items() for p in parts}
        return [(group_of[p], x, y) for p, x, y in self.part_locations(index)]

    def bbox(self, index: int) -> tuple[float, float, float, float]:
        """The bird's box ``(x0, y0, x1, y1)`` in preprocessed pixel coordinates."""
        scale, left, top = self._transform(index)
        x, y, w, h = self._boxes[index]
        return (x * scale - left, y * scale - top, (x + w) * scale - left, (y + h) * scale - top)

    def tag_region(self, index: int, region: np.ndarray, margin: float = 0.04) -> str:
        """The part group with the most visible keypoints inside ``region`` (H, W) grown by
        ``margin`` × the image side; ``background`` when none (ties: the first group listed)."""
        grow = max(1, math.ceil(margin * region.shape[0]))
        grown = ndimage.distance_transform_edt(~region) <= grow
        counts = dict.fromkeys(PART_GROUPS, 0)
        for group, x, y in self.keypoints(index):
            if grown[int(y), int(x)]:
                counts[group] += 1
        best = max(counts, key=lambda g: counts[g])
        return best if counts[best] > 0 else BACKGROUND_TAG

    def on_object(self, index: int, region: np.ndarray) -> bool:
        """Whether most of ``region``'s pixels lie inside the bird's box."""
        x0, y0, x1, y1 = self.bbox(index)
        ys, xs = np.nonzero(region)
        if len(xs) == 0:
            return False
        inside = (xs + 0.5 >= x0) & (xs + 0.5 <= x1) & (ys + 0.5 >= y0) & (ys + 0.5 <= y1)
        return bool(inside.mean() > 0.5)

    def part_truth(self) -> CubPartTruth:
        """The ground-truth parts (the 15 keypoints and the bird's box)."""
        return CubPartTruth(self)


class CubPartTruth(PartTruth):
    """CUB's ground truth: visible part keypoints (the 15 part names) and the bird's box. Tags are
    the five part groups; images cannot be re-rendered without a part."""

    def __init__(self, dataset: CubPartsDataset):
        self.dataset = dataset

    def points(self, index: int) -> list[tuple[str, float, float]]:
        return self.dataset.part_locations(index)

    def tag(self, index: int, region: np.ndarray, settings: TaggingSettings) -> str:
        return self.dataset.tag_region(index, region, settings.keypoint_margin)

    def on_object(self, index: int, region: np.ndarray) -> bool:
        return self.dataset.on_object(index, region)
