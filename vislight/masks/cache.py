"""Mask cache: one ``masks/<class>/<key>.npz`` per finished image, written atomically.

The key covers the image content, the model weights and the mask config, so a rerun reuses exactly
the masks that are still valid and recomputes the rest.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from vislight.io import atomic_write
from vislight.masks.optimize import MaskConfig, MaskResult


def model_fingerprint(model: torch.nn.Module) -> str:
    """Hash of a model's weights and buffers (name, shape, dtype, values)."""
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def config_fingerprint(cfg: MaskConfig) -> str:
    """Hash of the settings that change a mask. bf16 and the channels-last layout change masks
    through float rounding, which the optimisation amplifies on photos, so their masks are cached
    apart. The defaults (float32, channels_last false) keep the fingerprint masks had before these
    options existed, so their caches stay valid."""
    d = asdict(cfg)
    if not d["channels_last"]:
        d.pop("channels_last")
    if d["precision"] == "32":
        d.pop("precision")
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def image_fingerprint(image: torch.Tensor) -> str:
    """Hash of an image (3, H, W) in [0, 1], quantised to 8 bits."""
    q = (
        (image.detach().float().cpu().clamp(0, 1) * 255)
        .round()
        .to(torch.uint8)
        .contiguous()
        .numpy()
    )
    return hashlib.sha1(q.tobytes() + str(q.shape).encode()).hexdigest()


def safe_name(name: str) -> str:
    """A file-system-safe folder name for a class name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"


class MaskCache:
    """Reads and writes the mask files of one (model, mask config) pair under ``root``."""

    def __init__(self, root: Path, model_hash: str, config_hash: str):
        self.root = Path(root)
        self.salt = f"{model_hash}:{config_hash}"

    def path(self, class_name: str, image: torch.Tensor, dataset_key: str) -> Path:
        digest = hashlib.sha1(f"{self.salt}:{image_fingerprint(image)}".encode()).hexdigest()[:12]
        stem = safe_name(str(dataset_key))[:80]
        return self.root / safe_name(class_name) / f"{stem}-{digest}.npz"

    def write(self, path: Path, result: MaskResult, i: int, meta: dict) -> None:
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            smooth=result.smooth[i, 0].detach().cpu().numpy().astype(np.float16),
            sharp=result.sharp[i, 0].detach().cpu().numpy().astype(np.float16),
            diagnostics=json.dumps({**result.diagnostics(i), **meta}),
        )
        data = buf.getvalue()
        atomic_write(path, lambda f: f.write(data))

    @staticmethod
    def read(path: Path) -> dict:
        """``{"smooth": (H, W) float32, "sharp": (H, W) float32, **diagnostics}``."""
        with np.load(path) as z:
            out = json.loads(str(z["diagnostics"]))
            out["smooth"] = z["smooth"].astype(np.float32)
            out["sharp"] = z["sharp"].astype(np.float32)
        return out

    @staticmethod
    def read_diagnostics(path: Path) -> dict:
        with np.load(path) as z:
            return json.loads(str(z["diagnostics"]))
