"""LightningDataModules: the synthetic world and image folders, both yielding the same batch dicts.

Batches are dicts with ``image`` (B, 3, H, W) float in [0, 1], ``label`` (B,), ``index`` (B,) and
``key`` (list of B str). ``build_datamodule(data_cfg, classifier)`` picks the module from
``data.kind`` (``synth`` | ``folder`` | ``csv`` | ``cub`` | ``imagenet``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from vislight.data.cub import CubPartsDataset
from vislight.data.folder import (
    DEFAULT_MAX_PIXELS,
    IMAGE_FOLDER_EXAMPLE,
    ImageListDataset,
    require_folder,
    scan_class_folders,
    scan_csv,
    set_max_pixels,
)
from vislight.data.imagenet import check_synset_folder, imagenet_classes, resolve_classes
from vislight.data.synth import WorldConfig, class_designs
from vislight.data.synth_dataset import SynthPartDataset
from vislight.errors import ConfigError


class ClassificationDataModule(pl.LightningDataModule):
    """Holds train/val/test datasets (test is the evaluated split) and makes their loaders."""

    def __init__(
        self,
        name: str,
        batch_size: int = 128,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
    ):
        super().__init__()
        self.name = name
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.classes: list[str] = []
        self.skipped: list[dict] = []

    def _loader(
        self,
        ds: Dataset | None,
        shuffle: bool,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        if ds is None:
            raise RuntimeError(f"dataset {self.name!r} has no such split (call setup() first)")
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=generator,
        )

    def split_set(self, split: str) -> Dataset:
        """The images of ``split``, whatever the evaluated split (datasets that have named splits)."""
        raise ValueError(
            f"data {self.name!r} has no named '{split}' split to hold out; specialisation runs on "
            "data with named splits (data=synth, a CUB config)"
        )

    def train_dataloader(self):
        # The shuffle order of every fit starts from seed 0 ...
        self._shuffle = torch.Generator().manual_seed(0)
        if getattr(self, "_shuffle_to_restore", None) is not None:
            # ... or, when Lightning resumes a training, from where the checkpointed epoch left it,
            # so the resumed epochs see the orders of an uninterrupted training.
            self._shuffle.set_state(self._shuffle_to_restore)
            self._shuffle_to_restore = None
        return self._loader(self.train_set, True, self.batch_size, self._shuffle)

    # Lightning stores a datamodule's state_dict in its checkpoints and loads it on resume,
    # before it asks for the train dataloader.
    def state_dict(self) -> dict:
        shuffle = getattr(self, "_shuffle", None)
        return {} if shuffle is None else {"shuffle_rng": shuffle.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._shuffle_to_restore = state.get("shuffle_rng")

    def val_dataloader(self):
        return self._loader(self.val_set, False, self.eval_batch_size)

    def test_dataloader(self):
        return self._loader(self.test_set, False, self.eval_batch_size)


class SynthDataModule(ClassificationDataModule):
    """The synthetic part world: deterministic train/val/test splits rendered from ``seed``."""

    def __init__(
        self,
        world: WorldConfig,
        image_size: int,
        train_per_class: int,
        val_per_class: int,
        test_per_class: int,
        cache: bool = True,
        split: str = "test",
        **kw,
    ):
        super().__init__(name="synth", **kw)
        if split not in ("train", "val", "test"):
            raise ValueError(f"data.split={split!r} is invalid: use train, val or test")
        self.world, self.image_size, self.cache, self.evaluated = (
            world,
            int(image_size),
            cache,
            split,
        )
        self.sizes = {
            "train": train_per_class * world.num_classes,
            "val": val_per_class * world.num_classes,
            "test": test_per_class * world.num_classes,
        }
        self.classes = [d.name for d in class_designs(world.num_classes)]

    def split(self, split: str) -> SynthPartDataset:
        return SynthPartDataset(
            self.world, split, self.sizes[split], self.image_size, cache=self.cache
        )

    def setup(self, stage: str | None = None):
        if stage in (None, "fit") and self.train_set is None:
            self.train_set, self.val_set = self.split("train"), self.split("val")
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self.split(self.evaluated)

    def split_set(self, split: str) -> Dataset:
        """The images of ``split`` (train, val or test), whatever the evaluated split."""
        return self.split(split)


class FolderDataModule(ClassificationDataModule):
    """Images on disk: ``root/<split>/<class>/*`` when split folders exist, else ``root/<class>/*``
    (then every image is in the evaluated split and training needs split folders), or a CSV."""

    def __init__(
        self,
        root: str,
        input_size: int,
        resize_size: int | None,
        classes=None,
        labels_csv=None,
        csv_columns=None,
        label_map=None,
        label_names=None,
        max_per_class=None,
        name="folder",
        **kw,
    ):
        super().__init__(name=name, **kw)
        self.max_per_class = int(max_per_class) if max_per_class else None
        self.root = Path(root).expanduser()
        self.input_size, self.resize_size = input_size, resize_size
        self.class_filter = list(classes) if classes else None
        self.labels_csv, self.csv_columns = labels_csv, dict(csv_columns or {})
        self.label_map = dict(label_map) if label_map else None
        self.label_names = dict(label_names) if label_names else None
        require_folder(self.root, "data.root", IMAGE_FOLDER_EXAMPLE)

    def _dataset(self, root: Path) -> ImageListDataset:
        if self.labels_csv:
            items, classes, skipped = scan_csv(
                root,
                self.labels_csv,
                self.csv_columns.get("file", "file"),
                self.csv_columns.get("label", "label"),
                self.csv_columns.get("name"),
            )
        else:
            items, classes, skipped = scan_class_folders(
                root, self.class_filter, self.label_map, self.label_names, self.max_per_class
            )
        ds = ImageListDataset(items, classes, self.input_size, self.resize_size)
        self.classes = classes
        self.skipped += skipped + ds.skipped
        listed = set() if self.labels_csv else {path.parent for path, _ in items}
        readable = {path.parent for path, _ in ds.items}
        for folder in sorted(listed - readable):
            self.skipped.append(
                {"file": str(folder), "reason": "class folder holds no readable image"}
            )
        if len(ds) == 0:
            raise FileNotFoundError(f"no readable image under {root}; skipped: {self.skipped[:5]}")
        return ds

    def setup(self, stage: str | None = None):
        has_splits = (
            (self.root / "train").is_dir() and (self.root / "test").is_dir() and not self.labels_csv
        )
        if stage in (None, "fit") and self.train_set is None:
            if not has_splits:
                raise FileNotFoundError(
                    f"training needs {self.root}/train/<class>/ and {self.root}/test/<class>/ folders; "
                    "for a pretrained model set train.enabled=false"
                )
            self.train_set = self._dataset(self.root / "train")
            val_root = self.root / "val"
            self.val_set = (
                self._dataset(val_root)
                if val_root.is_dir()
                else Subset(self.train_set, range(0, len(self.train_set), 10))
            )
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._dataset(self.root / "test" if has_splits else self.root)


def check_data_root(cfg: Mapping) -> None:
    """Data read from files (``data.kind`` folder, csv, cub, imagenet) needs an existing
    ``data.root`` (for ImageNet: the synset folder of every requested class); raises
    :class:`~vislight.errors.ConfigError` naming the key and an example."""
    kind = cfg.get("kind")
    if kind not in ("folder", "csv", "cub", "imagenet"):
        return
    root = cfg.get("root")
    if not root:
        example = (
            "/path/to/ILSVRC2012/val (a folder of ImageNet synset folders n01440764/ ...)"
            if kind == "imagenet"
            else IMAGE_FOLDER_EXAMPLE
        )
        raise ConfigError(f"data.root is not set: pass data.root={example}")
    try:
        if kind == "imagenet":
            check_synset_folder(root, resolve_classes(cfg.get("classes") or range(1000)))
        else:
            require_folder(root, "data.root", IMAGE_FOLDER_EXAMPLE)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None


def _loader_kw(cfg: Mapping) -> dict:
    return {
        "batch_size": cfg.get("batch_size", 128),
        "num_workers": cfg.get("num_workers", 0),
        "eval_batch_size": cfg.get("eval_batch_size"),
    }


def synth_data(input_size: int | None = None, resize_size: int | None = None, **cfg):
    """``data=synth``: the embedded synthetic part world (``conf/data/synth.yaml``)."""
    wm = cfg.get("watermark") or {}
    world = WorldConfig(
        num_classes=int(cfg["num_classes"]),
        seed=int(cfg["seed"]),
        max_rotation_deg=float(cfg.get("max_rotation_deg", 15.0)),
        scale_range=tuple(cfg.get("scale_range", (0.85, 1.1))),
        max_shift=float(cfg.get("max_shift", 0.09)),
        distractors=tuple(cfg.get("distractors", (3, 6))),
        noise_std=float(cfg.get("noise_std", 6.0)),
        watermark_class=wm.get("class_index") if wm.get("enabled", False) else None,
        watermark_rate=float(wm.get("rate", 0.0)) if wm.get("enabled", False) else 0.0,
        watermark_size=float(wm.get("size", 0.1)),
    )
    return SynthDataModule(
        world,
        image_size=int(cfg["image_size"]),
        train_per_class=int(cfg["train_per_class"]),
        val_per_class=int(cfg["val_per_class"]),
        test_per_class=int(cfg["test_per_class"]),
        cache=bool(cfg.get("cache", True)),
        split=str(cfg.get("split", "test")),
        **_loader_kw(cfg),
    )


def folder_data(input_size: int | None = None, resize_size: int | None = None, **cfg):
    """``data=folder`` (``root/<class>/<image>``) or a CSV of labels (``kind: csv``)."""
    set_max_pixels(cfg.get("max_pixels", DEFAULT_MAX_PIXELS))
    if not cfg.get("root"):
        raise ValueError("data.root is not set: pass data.root=/path/to/images")
    csv = cfg.get("kind") == "csv"
    return FolderDataModule(
        root=cfg["root"],
        input_size=input_size or int(cfg.get("image_size", 224)),
        resize_size=resize_size,
        classes=cfg.get("classes"),
        labels_csv=cfg.get("labels_csv") if csv else None,
        csv_columns=cfg.get("csv_columns"),
        label_map=cfg.get("label_map"),
        label_names=cfg.get("label_names"),
        name=cfg.get("name", cfg.get("kind", "folder")),
        **_loader_kw(cfg),
    )


def imagenet_data(input_size: int | None = None, resize_size: int | None = None, **cfg):
    """``data=imagenet``: an ImageNet synset folder, labels = ImageNet indices."""
    set_max_pixels(cfg.get("max_pixels", DEFAULT_MAX_PIXELS))
    if not cfg.get("root"):
        raise ValueError("data.root is not set: pass data.root=/path/to/ILSVRC2012/val")
    wanted = resolve_classes(cfg.get("classes") or range(1000))
    check_synset_folder(cfg["root"], wanted)
    return FolderDataModule(
        root=cfg["root"],
        input_size=input_size or 224,
        resize_size=resize_size,
        classes=[c.synset for c in wanted],
        label_map={c.synset: c.index for c in wanted},
        label_names={c.index: c.name for c in imagenet_classes()},
        max_per_class=cfg.get("max_per_class"),
        name=cfg.get("name", "imagenet"),
        **_loader_kw(cfg),
    )


def cub_data(input_size: int | None = None, resize_size: int | None = None, **cfg):
    """``data=cub_parts`` / ``cub40``: CUB-200-2011 with its part keypoints and bird boxes."""
    set_max_pixels(cfg.get("max_pixels", DEFAULT_MAX_PIXELS))
    if not cfg.get("root"):
        raise ValueError("data.root is not set: pass data.root=/path/to/CUB_200_2011")
    return CubDataModule(
        root=cfg["root"],
        classes=list(cfg["classes"]),
        input_size=input_size or 224,
        resize_size=resize_size,
        label_map=cfg.get("label_map"),
        label_names=cfg.get("label_names"),
        split=cfg.get("split", "test"),
        name=cfg.get("name", "cub"),
        train_split=cfg.get("train_split", "train"),
        half_seed=int(cfg.get("half_seed", 0)),
        **_loader_kw(cfg),
    )


# The entry of each data kind (conf/data names it as _target_; a plain mapping may give the kind).
DATA_ENTRIES = {"synth": synth_data, "folder": folder_data, "csv": folder_data,
                "imagenet": imagenet_data, "cub": cub_data}  # fmt: skip


def build_datamodule(
    cfg: Mapping, input_size: int | None = None, resize_size: int | None = None
) -> ClassificationDataModule:
    """The datamodule of a ``conf/data`` node: Hydra's ``instantiate`` calls the entry its
    ``_target_`` names (one of :data:`DATA_ENTRIES`, or a user's own) with the node and the
    classifier's input size; a node without ``_target_`` is built by its ``kind``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    cfg = dict(cfg)
    if not cfg.get("_target_"):
        kind = cfg.get("kind")
        if kind not in DATA_ENTRIES:
            raise ValueError(f"data.kind={kind!r} is unknown; use one of {sorted(DATA_ENTRIES)}")
        return DATA_ENTRIES[kind](input_size, resize_size, **cfg)
    try:
        return instantiate(cfg, input_size=input_size, resize_size=resize_size, _convert_="all")
    except InstantiationException as e:  # the entry's own error, without Hydra's wrapping
        if e.__cause__ is not None:  # a config mistake (ValueError) or a bug, as raised there
            raise e.__cause__ from None
        raise ValueError(f"data._target_={cfg['_target_']!r}: {e}") from e


class CubDataModule(ClassificationDataModule):
    """CUB birds with part locations: the evaluated split is ``split`` (official train/test)."""

    def __init__(
        self,
        root,
        classes,
        input_size,
        resize_size,
        label_map,
        label_names,
        split,
        name="cub",
        train_split="train",
        half_seed=0,
        **kw,
    ):
        super().__init__(name=name, **kw)
        self.input_size, self.resize_size = input_size, resize_size
        self.kw = dict(
            root=root,
            classes=classes,
            input_size=input_size,
            resize_size=resize_size,
            label_map=label_map,
            label_names=label_names,
            half_seed=half_seed,
        )
        if train_split not in ("train", "train_a", "train_b"):
            raise ValueError(
                f"data.train_split={train_split!r} is invalid: use train, train_a or train_b"
            )
        self.split, self.train_split = split, train_split

    def setup(self, stage: str | None = None):
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = CubPartsDataset(split=self.train_split, **self.kw)
            self.val_set = Subset(self.train_set, range(0, len(self.train_set), 10))
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = CubPartsDataset(split=self.split, **self.kw)
            self.classes = self.test_set.classes

    def split_set(self, split: str) -> Dataset:
        """The images of ``split`` (train, test, all, train_a, train_b, train_b1, train_b2),
        whatever the evaluated split."""
        return CubPartsDataset(split=split, **self.kw)
