"""The regions of one class's explained images, measured once: :class:`RegionSet`.

``collect_regions`` decodes each image once, cuts its mask into regions, and records per region
its drop, descriptor, geometry, centre point, ground-truth tag (where the dataset has parts or
keypoints) and the image's part points. Clustering (``vislight/summaries/cluster.py``) and every
measure work on this object only, so a clustering setting can be changed and re-run in seconds:
``RegionSet.save``/``load`` cache it per class in the run folder (``summaries/regions/``), keyed by
everything that determines it (mask files, region and descriptor settings, mask source).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from vislight.data.parts import TaggingSettings, part_truth
from vislight.interrupt import check
from vislight.io import atomic_write
from vislight.masks.cache import MaskCache
from vislight.regions.describe import describe_regions
from vislight.regions.extract import extract_regions

CACHE_VERSION = 1


@dataclass
class RegionSet:
    """N regions of one class's explained images (n_images of them, ``items`` order).

    Arrays: ``image_id`` (N,) position of the region's image in ``items``; ``index`` (N,) its
    dataset index; ``masks`` (N, H, W) bool; ``boxes`` (N, 4) x0, y0, x1, y1 (exclusive);
    ``drops`` (N,) relative class-probability drop when the region is blurred; ``descriptors``
    (N, C) L2-normalised (not centred); ``geometry`` (N, 3) centroid x, y and scale (image-side
    units); ``centers`` (N, 2) the region's innermost pixel (x, y). ``keys``/``kinds`` (N,) str;
    ``tags`` (N,) ground-truth tag or None; ``on_object`` (N,) or None. ``points[i]``: the part
    points ``(part, x, y)`` of image i (CUB's 15 names, unmerged), empty without ground truth;
    ``image_indices`` (n_images,) the dataset index of each image, regions or not.
    """

    class_name: str
    target: int
    n_images: int
    side: int
    image_id: np.ndarray
    index: np.ndarray
    keys: list[str]
    kinds: list[str]
    masks: np.ndarray
    boxes: np.ndarray
    drops: np.ndarray
    descriptors: np.ndarray
    geometry: np.ndarray
    centers: np.ndarray
    tags: list[str] | None = None
    on_object: np.ndarray | None = None
    points: list[list[tuple[str, float, float]]] = field(default_factory=list)
    image_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    def __len__(self) -> int:
        return len(self.image_id)

    @property
    def has_points(self) -> bool:
        """Whether some image shows ground-truth part points (the keypoint measures apply)."""
        return any(self.points)

    def select(self, keep: np.ndarray) -> RegionSet:
        """The regions at ``keep`` ((K,) positions, or (N,) bool) of the same images."""
        keep = np.asarray(keep)
        if keep.dtype == bool:
            if keep.shape != (len(self),):
                raise ValueError(f"select: {keep.shape} flags for {len(self)} regions")
            keep = np.flatnonzero(keep)
        keep = keep.astype(int)
        return dataclasses.replace(
            self,
            image_id=self.image_id[keep],
            index=self.index[keep],
            keys=[self.keys[i] for i in keep],
            kinds=[self.kinds[i] for i in keep],
            masks=self.masks[keep],
            boxes=self.boxes[keep],
            drops=self.drops[keep],
            descriptors=self.descriptors[keep],
            geometry=self.geometry[keep],
            centers=self.centers[keep],
            tags=[self.tags[i] for i in keep] if self.tags is not None else None,
            on_object=self.on_object[keep] if self.on_object is not None else None,
        )

    def subset(self, images: Sequence[int]) -> RegionSet:
        """The regions of the images at positions ``images`` (renumbered 0..len-1), e.g. for a
        bootstrap resample."""
        images = list(images)
        order = {img: k for k, img in enumerate(images)}
        kept = self.select(np.isin(self.image_id, images))
        return dataclasses.replace(
            kept,
            n_images=len(images),
            image_id=np.array([order[int(i)] for i in kept.image_id], dtype=int),
            points=[self.points[i] for i in images] if self.points else [],
            image_indices=self.image_indices[images],
        )

    def save(self, path: Path, key: str) -> None:
        """Compressed ``.npz`` (masks bit-packed), written atomically."""
        arrays = {
            "image_id": self.image_id,
            "image_indices": self.image_indices,
            "index": self.index,
            "masks": np.packbits(self.masks, axis=-1),
            "boxes": self.boxes,
            "drops": self.drops,
            "descriptors": self.descriptors,
            "geometry": self.geometry,
            "centers": self.centers,
            "on_object": self.on_object if self.on_object is not None else np.zeros(0, bool),
        }
        meta = {
            "key": key,
            "version": CACHE_VERSION,
            "class_name": self.class_name,
            "target": self.target,
            "n_images": self.n_images,
            "side": self.side,
            "width": int(self.masks.shape[-1]) if len(self) else self.side,
            "keys": self.keys,
            "kinds": self.kinds,
            "tags": self.tags,
            "has_on_object": self.on_object is not None,
            "points": self.points,
        }

        def write(f) -> None:
            np.savez_compressed(f, meta=np.array(json.dumps(meta)), **arrays)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: Path, key: str | None) -> RegionSet | None:
        """The cached set, or None when absent, unreadable or made under another key (``key=None``
        accepts any key: for studies that re-cluster a finished run's regions)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if (key is not None and meta.get("key") != key) or meta.get(
                    "version"
                ) != CACHE_VERSION:
                    return None
                arrays = {k: z[k] for k in z.files if k != "meta"}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None
        width = int(meta["width"])
        return cls(
            class_name=meta["class_name"],
            target=int(meta["target"]),
            n_images=int(meta["n_images"]),
            side=int(meta["side"]),
            image_id=arrays["image_id"],
            index=arrays["index"],
            keys=list(meta["keys"]),
            kinds=list(meta["kinds"]),
            masks=np.unpackbits(arrays["masks"], axis=-1, count=width).astype(bool),
            boxes=arrays["boxes"],
            drops=arrays["drops"],
            descriptors=arrays["descriptors"],
            geometry=arrays["geometry"],
            centers=arrays["centers"],
            tags=meta["tags"],
            on_object=arrays["on_object"] if meta["has_on_object"] else None,
            points=[[(str(p), float(x), float(y)) for p, x, y in pts] for pts in meta["points"]],
            image_indices=arrays["image_indices"],
        )


def innermost_point(region: np.ndarray) -> tuple[float, float]:
    """(x, y) of the pixel of ``region`` (H, W) bool farthest from its border (pixel centre); among
    equally deep pixels (a ridge), the one nearest their mean."""
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(depth >= depth.max() - 1e-6)
    k = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
    return float(xs[k]) + 0.5, float(ys[k]) + 0.5


def region_key(
    items: Sequence[tuple[int, Path]],
    regions_cfg: Mapping,
    layer: str | None,
    mask_cfg: Mapping,
    source: str,
    keypoint_margin: float,
    tag_min_share: float,
) -> str:
    """Hash of everything a class's RegionSet depends on."""
    payload = {
        "masks": [Path(p).name for _, p in items],
        "indices": [int(i) for i, _ in items],
        "regions": dict(regions_cfg),
        "layer": layer,
        "blur": [mask_cfg[k] for k in ("blur_kernel", "blur_sigma", "reference_size")],
        "source": source,
        "tagging": [keypoint_margin, tag_min_share],
        "version": CACHE_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def collect_regions(
    classifier: torch.nn.Module,
    dataset,
    class_name: str,
    target: int,
    items: Sequence[tuple[int, Path]],
    regions_cfg: Mapping,
    layer: str | None,
    mask_cfg: Mapping,
    device: torch.device,
    sharp_of: Callable | None = None,
    tagging: TaggingSettings | None = None,
) -> RegionSet:
    """Regions of the cached masks ``items`` (dataset index, mask file) of one class.

    ``sharp_of(our_sharp (H, W), image (3, H, W), target) -> (H, W)`` replaces each mask before
    regions are cut (the Grad-CAM and random baselines).
    """
    module = classifier.feature_module(layer)
    truth, tagging = part_truth(dataset), tagging or TaggingSettings()
    cols: dict[str, list] = {k: [] for k in ("image_id", "index", "keys", "kinds", "masks",
                                             "boxes", "drops", "descriptors", "geometry",
                                             "centers", "tags", "on_object")}  # fmt: skip
    points, side = [], 0
    for img_no, (index, path) in enumerate(
        tqdm(items, desc=f"regions {class_name}", leave=False, mininterval=1.0)
    ):
        check()  # a stop signal ends the stage between images
        sharp = MaskCache.read(path)["sharp"]
        item = dataset[index]
        image = item["image"]
        side = int(image.shape[-1])
        points.append(truth.points(index) if truth else [])
        if sharp_of is not None:
            sharp = sharp_of(sharp, image.to(device), target)
        rgb = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        found = extract_regions(
            sharp,
            rgb,
            min_area=float(regions_cfg["min_area"]),
            proposals=bool(regions_cfg["proposals"]),
            proposal_mode=str(regions_cfg["proposal_mode"]),
            proposal_min_salient=float(regions_cfg["proposal_min_salient"]),
            dedup_overlap=float(regions_cfg["dedup_overlap"]),
            dedup_area_ratio=float(regions_cfg["dedup_area_ratio"]),
            max_regions=int(regions_cfg["max_regions"]),
        )
        if not found:
            continue
        masks = np.stack([r.mask for r in found])
        d = describe_regions(
            classifier,
            module,
            image.to(device),
            masks,
            target,
            float(mask_cfg["blur_kernel"]),
            float(mask_cfg["blur_sigma"]),
            int(mask_cfg["reference_size"]),
        )
        for r in found:
            cols["image_id"].append(img_no)
            cols["index"].append(int(index))
            cols["keys"].append(str(item["key"]))
            cols["kinds"].append(r.kind)
            cols["boxes"].append(r.box)
            cols["centers"].append(innermost_point(r.mask))
            if truth:
                cols["tags"].append(truth.tag(index, r.mask, tagging))
                cols["on_object"].append(truth.on_object(index, r.mask))
        cols["masks"].append(masks)
        cols["drops"].append(d["drop"])
        cols["descriptors"].append(d["descriptor"])
        cols["geometry"].append(d["geometry"])
    if not side and items:
        side = int(dataset[items[0][0]]["image"].shape[-1])

    def stacked(name: str, shape: tuple, dtype) -> np.ndarray:
        return np.concatenate(cols[name]).astype(dtype) if cols[name] else np.zeros(shape, dtype)

    return RegionSet(
        class_name=class_name,
        target=int(target),
        n_images=len(items),
        side=side,
        image_id=np.asarray(cols["image_id"], dtype=int),
        index=np.asarray(cols["index"], dtype=int),
        keys=cols["keys"],
        kinds=cols["kinds"],
        masks=stacked("masks", (0, side, side), bool),
        boxes=np.asarray(cols["boxes"], dtype=int).reshape(-1, 4),
        drops=stacked("drops", (0,), np.float32),
        descriptors=stacked("descriptors", (0, 0), np.float32),
        geometry=stacked("geometry", (0, 3), np.float32),
        centers=np.asarray(cols["centers"], dtype=np.float32).reshape(-1, 2),
        tags=cols["tags"] if truth else None,
        on_object=(
            np.asarray(cols["on_object"], bool) if truth and None not in cols["on_object"] else None
        ),
        points=points,
        image_indices=np.asarray([int(i) for i, _ in items], dtype=int),
    )
