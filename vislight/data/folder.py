"""Image-folder datasets: ``root/<class>/<image>`` or a CSV of ``file,label`` rows.

Images are decoded once while scanning (so unreadable files are found before any heavy work),
EXIF-rotated, converted to RGB, resized (shorter side to ``resize_size``) and centre-cropped to
``input_size``. Files that cannot be used are skipped and recorded in :attr:`skipped` with the
reason, never silently dropped.
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
# Pillow's own decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``), the default of data.max_pixels.
DEFAULT_MAX_PIXELS = 89_478_485


def set_max_pixels(max_pixels: int | None) -> None:
    """Pillow's decompression-bomb limit for this process (``data.max_pixels``; None = no limit).
    Images with more pixels are refused before they are decoded."""
    Image.MAX_IMAGE_PIXELS = None if max_pixels is None else int(max_pixels)


# What data.root should be for image folders (the fix named by the errors).
IMAGE_FOLDER_EXAMPLE = "/path/to/images (a folder of class folders)"


def require_folder(root: str | Path, key: str, expected: str) -> Path:
    """``root`` as a Path when it is a folder; else one clear error naming ``key`` and what to pass."""
    path = Path(root).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        problem = "is a file, not a folder"
    elif path.is_symlink():
        problem = "is a broken symbolic link"
    else:
        problem = "does not exist"
    raise FileNotFoundError(f"{key}={str(root)!r} {problem}: pass {key}={expected}")


def load_rgb(path: Path) -> Image.Image:
    """Decode ``path`` fully as an upright RGB image; raises ``ValueError`` with the reason.

    Every decoding failure becomes that ValueError (the caller records a skip), decompression bombs
    included: images above Pillow's pixel limit (:func:`set_max_pixels`) are refused unread."""
    try:
        with warnings.catch_warnings():
            # Pillow warns between the limit and twice the limit and raises above: refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                if im.mode in ("RGBA", "LA", "P"):
                    rgba = im.convert("RGBA")
                    canvas = Image.new("RGB", rgba.size, (255, 255, 255))
                    canvas.paste(rgba, mask=rgba.getchannel("A"))
                    return canvas
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    im = im.point(lambda v: v / 256).convert("L")
                return im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(
            f"too many pixels, a possible decompression bomb ({e}); raise data.max_pixels "
            f"(now {Image.MAX_IMAGE_PIXELS}) to accept it"
        ) from None
    except UnidentifiedImageError:
        raise ValueError("not a readable image") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"corrupt image ({e})") from None
    except Exception as e:  # any other decoder failure: this file is skipped, the run goes on
        raise ValueError(f"could not be decoded ({type(e).__name__}: {e})") from None


def preprocess(im: Image.Image, input_size: int, resize_size: int | None) -> torch.Tensor:
    """Resize the shorter side to ``resize_size`` (default: ``input_size``), centre-crop: (3, S, S) in [0, 1]."""
    im = TF.resize(im, resize_size or input_size, antialias=True)
    im = TF.center_crop(im, input_size)
    return TF.to_tensor(im)


def content_key(path: Path) -> str:
    """A key for an image file: its stem plus a hash of its bytes."""
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:10]
    return f"{path.parent.name}-{path.stem}-{digest}"


class ImageListDataset(Dataset):
    """A list of ``(path, label)`` pairs, checked up front.

    Items are dicts like the synthetic world's: ``image`` (3, S, S) float in [0, 1], ``label``,
    ``index`` (position in this dataset), ``key`` (stable content key), plus ``path``.
    """

    reads_files = True  # every item is decoded from its file (see vislight.data.decoded)

    def __init__(
        self,
        items: list[tuple[Path, int]],
        classes: list[str],
        input_size: int,
        resize_size: int | None = None,
        min_side: int = 8,
    ):
        self.classes = list(classes)
        self.input_size, self.resize_size = int(input_size), resize_size
        self.items: list[tuple[Path, int]] = []
        self.skipped: list[dict] = []
        for path, label in items:
            try:
                im = load_rgb(path)
                if min(im.size) < min_side:
                    raise ValueError(
                        f"too small ({im.size[0]}x{im.size[1]} px, need >= {min_side} px)"
                    )
            except ValueError as e:
                self.skipped.append({"file": str(path), "reason": str(e)})
                continue
            self.items.append((path, label))

    def __len__(self) -> int:
        return len(self.items)

    def targets(self) -> list[int]:
        return [label for _, label in self.items]

    def __getitem__(self, index: int) -> dict:
        path, label = self.items[index]
        return {
            "image": preprocess(load_rgb(path), self.input_size, self.resize_size),
            "label": label,
            "index": index,
            "key": content_key(path),
            "path": str(path),
        }


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image file (None when it is a regular file)."""
    if path.is_file():
        return None
    if path.is_symlink() and not path.exists():
        return f"broken symbolic link (its target {str(path.readlink())!r} does not exist)"
    if path.is_dir():
        return "a folder inside a class folder (sub-folders are not read)"
    return "missing" if not path.exists() else "not a regular file"


def scan_class_folders(
    root: Path,
    classes: list[str] | None = None,
    label_map: Mapping[str, int] | None = None,
    label_names: Mapping[int, str] | None = None,
    max_per_class: int | None = None,
) -> tuple[list[tuple[Path, int]], list[str], list[dict]]:
    """``root/<class>/<file>`` -> (items, class names in label order, skipped entries).

    Labels are folder positions in ``classes`` (alphabetical by default), or ``label_map[folder]``
    when given (e.g. CUB albatross folders -> ImageNet index 146, named by ``label_names``).
    ``max_per_class`` keeps the first image files of each folder in name order.
    """
    if label_map:
        classes = list(classes or label_map)
        unmapped = [c for c in classes if c not in label_map]
        if unmapped:
            raise ValueError(f"data.label_map has no label for the class folders {unmapped}")
    root = require_folder(root, "data.root", IMAGE_FOLDER_EXAMPLE)
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    if classes is None:
        classes = found
    missing = [c for c in classes if c not in found]
    if missing:
        raise FileNotFoundError(
            f"data.classes lists {missing}, which have no folder under {root}; found: {found[:20]}"
        )
    if not classes:
        raise FileNotFoundError(
            f"data.root={str(root)!r} holds no class folders (expected root/<class>/<image>)"
        )
    items, skipped = [], []
    for position, name in enumerate(classes):
        label = int(label_map[name]) if label_map else position
        n_before = len(items)
        for p in sorted((root / name).iterdir()):
            if max_per_class and len(items) - n_before >= max_per_class:
                break
            unusable = _not_a_file(p)
            if unusable:
                skipped.append({"file": str(p), "reason": unusable})
            elif p.suffix.lower() in IMAGE_EXTENSIONS:
                items.append((p, label))
            else:
                skipped.append(
                    {
                        "file": str(p),
                        "reason": f"not an image file extension ({p.suffix or 'none'})",
                    }
                )
        if len(items) == n_before:
            skipped.append(
                {"file": str(root / name), "reason": "class folder holds no image files"}
            )
    if label_map:
        names = {int(k): str(v) for k, v in (label_names or {}).items()}
        for folder, label in label_map.items():
            names.setdefault(int(label), folder)
        return items, [names.get(i, str(i)) for i in range(max(names) + 1)], skipped
    return items, list(classes), skipped


def scan_csv(
    root: Path, labels_csv: str, file_column: str, label_column: str, name_column: str | None
) -> tuple[list[tuple[Path, int]], list[str], list[dict]]:
    """A CSV of ``file,label[,name]`` rows (files relative to ``root``); labels are integer class ids."""
    root = Path(root)
    table = root / labels_csv
    if not table.is_file():
        raise FileNotFoundError(
            f"data.labels_csv: {table} does not exist (expected a CSV with columns {file_column},{label_column})"
        )
    items, skipped, names = [], [], {}
    with open(table, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            p = root / row[file_column]
            unusable = _not_a_file(p)
            if unusable:
                skipped.append({"file": str(p), "reason": f"listed in the CSV but {unusable}"})
                continue
            label = int(row[label_column])
            items.append((p, label))
            if name_column:
                names[label] = row[name_column]
    n = max(names, default=-1) + 1
    classes = [names.get(i, str(i)) for i in range(n)]
    return items, classes, skipped
