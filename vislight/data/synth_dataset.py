"""Torch dataset over the synthetic part world (see :mod:`vislight.data.synth`)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vislight.data.parts import PartTruth, TaggingSettings, pixel_tag
from vislight.data.synth import (
    PART_ID,
    PART_NAMES,
    WorldConfig,
    class_designs,
    render,
    sample_key,
    sample_spec,
)


class SynthPartDataset(Dataset):
    """``length`` samples of one split of the world, rendered at ``image_size``.

    Items are dicts: ``image`` (3, H, W) float in [0, 1], ``label`` (int), ``index`` (int), ``key`` (str).
    :meth:`parts` gives the ground-truth part labels of an item and :meth:`render_without` the same
    item with chosen parts removed. With ``cache=True`` every image is rendered once, into memory.
    """

    def __init__(
        self,
        world: WorldConfig,
        split: str,
        length: int,
        image_size: int = 64,
        cache: bool = True,
        progress: bool = True,
    ):
        if not 16 <= image_size <= 224:
            raise ValueError(
                f"data.image_size={image_size} must lie in [16, 224] for the synthetic world"
            )
        if length < 1:
            raise ValueError(f"the {split} split needs at least one image, got length={length}")
        self.world, self.split, self.length, self.image_size = (
            world,
            split,
            int(length),
            int(image_size),
        )
        self.classes = [d.name for d in class_designs(world.num_classes)]
        self.part_names = PART_NAMES
        self._images: torch.Tensor | None = None
        if cache:
            images = torch.empty((self.length, image_size, image_size, 3), dtype=torch.uint8)
            it = range(self.length)
            if progress:
                it = tqdm(it, desc=f"render synth/{split}", leave=False, mininterval=1.0)
            for i in it:
                images[i] = torch.from_numpy(self._render(i)[0])
            self._images = images

    def __len__(self) -> int:
        return self.length

    def spec(self, index: int):
        return sample_spec(self.world, self.split, index)

    def _render(self, index: int, remove=()):
        return render(self.spec(index), self.image_size, remove)

    def targets(self) -> list[int]:
        return [i % self.world.num_classes for i in range(self.length)]

    def key(self, index: int) -> str:
        return sample_key(self.world, self.split, index, self.image_size)

    def __getitem__(self, index: int) -> dict:
        if index < 0 or index >= self.length:
            raise IndexError(index)
        img = self._images[index].numpy() if self._images is not None else self._render(index)[0]
        return {
            "image": to_tensor(img),
            "label": index % self.world.num_classes,
            "index": index,
            "key": self.key(index),
        }

    def class_parts(self, label: int) -> tuple[str, ...]:
        """Names of the parts class ``label`` is made of."""
        return class_designs(self.world.num_classes)[label].parts

    def parts(self, index: int) -> np.ndarray:
        """Ground-truth part ids (H, W) uint8 of item ``index``; names in :data:`PART_NAMES`."""
        return self._render(index)[1]

    def render_without(self, index: int, remove) -> torch.Tensor:
        """Item ``index`` drawn without the parts named in ``remove``: (3, H, W) float in [0, 1]."""
        return to_tensor(self._render(index, tuple(remove))[0])

    def part_truth(self) -> SynthPartTruth:
        """The ground-truth parts (per-pixel labels, re-rendering without a part)."""
        return SynthPartTruth(self)


class SynthPartTruth(PartTruth):
    """The synthetic world's ground truth: per-pixel part ids (names in :data:`PART_NAMES`), and
    any item re-rendered without chosen parts."""

    def __init__(self, dataset: SynthPartDataset):
        self.dataset = dataset

    def points(self, index: int) -> list[tuple[str, float, float]]:
        """The centroid of each part drawn in item ``index``."""
        labels = self.dataset.parts(index)
        out = []
        for pid in np.unique(labels[labels > 0]):
            ys, xs = np.nonzero(labels == pid)
            out.append((PART_NAMES[int(pid)], float(xs.mean()) + 0.5, float(ys.mean()) + 0.5))
        return out

    def tag(self, index: int, region: np.ndarray, settings: TaggingSettings) -> str:
        return pixel_tag(region, self.dataset.parts(index), PART_NAMES, settings.tag_min_share)

    def near_part_share(self, index: int, salient: np.ndarray, radius: float = 3.0) -> float:
        """Share of salient pixels within ``radius`` px of an object part (watermark excluded);
        NaN when nothing is salient."""
        if not salient.any():
            return float("nan")
        labels = self.dataset.parts(index)
        parts = (labels > 0) & (labels != PART_ID["watermark"])
        if not parts.any():
            return 0.0
        return float((distance_transform_edt(~parts)[salient] <= radius).mean())

    def class_parts(self, label: int) -> tuple[str, ...]:
        return self.dataset.class_parts(label)

    def has_part(self, index: int, part: str) -> bool:
        return bool((self.dataset.parts(index) == PART_ID[part]).any())

    def render_without(self, index: int, parts) -> torch.Tensor:
        return self.dataset.render_without(index, parts)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
