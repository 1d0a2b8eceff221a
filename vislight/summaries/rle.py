"""Run-length encoding of binary masks (COCO's uncompressed RLE: column-major, zeros first)."""

from __future__ import annotations

import numpy as np


def rle_encode(mask: np.ndarray) -> dict:
    """(H, W) bool -> ``{"size": [H, W], "counts": [...]}``."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def rle_decode(rle: dict) -> np.ndarray:
    """Inverse of :func:`rle_encode`."""
    h, w = rle["size"]
    values = np.zeros(len(rle["counts"]), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, rle["counts"])
    return flat.reshape((w, h)).T
