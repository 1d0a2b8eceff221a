"""Images read from files once per run after evaluation (vislight/data/decoded.py)."""

from __future__ import annotations

import pickle

import torch

from vislight.data.decoded import DecodedOnce, decoded_once


class Counting(torch.utils.data.Dataset):
    """Four images (two 8-bit, two not), counting the reads of each."""

    reads_files = True
    classes = ["a", "b"]

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.images = [torch.randint(0, 256, (3, 8, 8), generator=g) / 255 for _ in range(2)]
        self.images += [torch.rand(3, 8, 8, generator=g) for _ in range(2)]
        self.reads = [0] * 4

    def __len__(self):
        return 4

    def __getitem__(self, i):
        self.reads[i] += 1
        return {"image": self.images[i].clone(), "label": i % 2, "index": i, "key": f"k{i}"}

    def targets(self):
        return [0, 1, 0, 1]


def test_each_item_is_read_once_and_served_unchanged():
    base = Counting()
    ds = decoded_once(base)
    assert isinstance(ds, DecodedOnce) and decoded_once(ds) is ds
    for _ in range(3):
        for i in range(4):
            item = ds[i]
            assert torch.equal(item["image"], base.images[i]) and item["key"] == f"k{i}"
    assert base.reads == [1, 1, 1, 1]
    assert ds._items[0]["image"].dtype == torch.uint8  # 8-bit images kept as bytes, exactly
    assert ds._items[2]["image"].dtype == torch.float32
    ds[0]["image"].zero_()  # a caller writing into its copy does not change what is kept
    assert torch.equal(ds[0]["image"], base.images[0])
    assert ds.classes == ["a", "b"] and ds.targets() == [0, 1, 0, 1] and len(ds) == 4
    again = pickle.loads(pickle.dumps(ds))  # DataLoader workers get a copy
    assert torch.equal(again[3]["image"], base.images[3])


def test_in_memory_datasets_are_not_wrapped():
    class Rendered(Counting):
        reads_files = False

    ds = Rendered()
    assert decoded_once(ds) is ds
