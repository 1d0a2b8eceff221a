"""Images read from files at most once per run.

After ``evaluate``, the later stages (masks, regions of ours and of every baseline, the report)
read the same explained images again and again; for datasets that decode files (image folders,
CUB) :class:`DecodedOnce` keeps each item after its first read. Images decoded from 8-bit files
are kept as uint8 (exactly: ``k / 255`` round-trips), others as they are.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class DecodedOnce(Dataset):
    """``dataset`` whose items are read at most once: each index's item is kept after its first
    read and served as a copy. Every other attribute (``classes``, ``targets``, ``part_truth``,
    ...) is the wrapped dataset's."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self._items: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        kept = self._items.get(index)
        if kept is None:
            item = self.dataset[index]
            image = item["image"]
            levels = (image * 255).round()
            if torch.equal(levels / 255, image):  # decoded from 8 bits: keep a quarter the bytes
                image = levels.to(torch.uint8)
            kept = self._items[index] = {**item, "image": image}
        image = kept["image"]
        return {**kept, "image": image / 255 if image.dtype == torch.uint8 else image.clone()}

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("dataset", "_items"):  # (unpickling: not set yet)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def decoded_once(dataset: Dataset) -> Dataset:
    """``dataset`` wrapped in :class:`DecodedOnce` when it reads files (``reads_files``), else as is
    (the synthetic world renders into memory already)."""
    if isinstance(dataset, DecodedOnce) or not getattr(dataset, "reads_files", False):
        return dataset
    return DecodedOnce(dataset)
