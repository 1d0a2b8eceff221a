"""ImageNet-1k class table and synset-folder layout.

The table (``imagenet_classes.tsv``, shipped with the package) maps each ImageNet class index to
its WordNet synset id (the folder name in ``ILSVRC2012/train`` and in a ``val`` folder sorted into
synset folders) and a short name. Index order is the sorted synset ids, which is what an
ImageFolder over such a folder yields and what every ImageNet classifier was trained with.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from vislight.data.folder import require_folder

TABLE = Path(__file__).with_name("imagenet_classes.tsv")
SYNSET = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    synset: str
    name: str
    lemmas: str


@cache
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    """The 1000 ImageNet-1k classes in index order."""
    rows = []
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            index, synset, name, lemmas = line.split("\t")
            rows.append(ImageNetClass(int(index), synset, name, lemmas))
    assert [r.index for r in rows] == list(range(1000)), "corrupt imagenet_classes.tsv"
    return tuple(rows)


def resolve_classes(spec: Sequence[int | str]) -> list[ImageNetClass]:
    """ImageNet classes from indices (``15``), synset ids (``n01558993``) or names (``robin``).

    Raises ``ValueError`` naming every entry that matches no class.
    """
    table = imagenet_classes()
    by_synset = {c.synset: c for c in table}
    by_name = {c.name.lower(): c for c in table}
    out, unknown = [], []
    for s in spec:
        text = str(s).strip()
        if text.isdigit():
            if int(text) < len(table):
                out.append(table[int(text)])
            else:
                unknown.append(s)
        elif text in by_synset:
            out.append(by_synset[text])
        elif text.lower() in by_name:
            out.append(by_name[text.lower()])
        else:
            unknown.append(s)
    if unknown:
        raise ValueError(
            f"data.classes holds {unknown}, which are not ImageNet-1k classes: give indices 0-999, "
            "synset ids (n01558993) or names as in vislight/data/imagenet_classes.tsv"
        )
    return out


def check_synset_folder(root: str | Path, classes: Sequence[ImageNetClass]) -> None:
    """Fail early, with what to provide, when ``root`` is not a synset folder holding ``classes``."""
    root = require_folder(
        root,
        "data.root",
        "/path/to/ILSVRC2012/val (or .../train), a folder of synset folders such as n01558993/",
    )
    present = {p.name for p in root.iterdir() if p.is_dir()}
    if not any(SYNSET.match(n) for n in present):
        hint = (
            f" It holds {sorted(present & {'train', 'val'})}: point data.root at one of them."
            if present & {"train", "val"}
            else ""
        )
        raise FileNotFoundError(
            f"data.root={str(root)!r} holds no synset folders (n########/).{hint} ImageNet val "
            "images must be sorted into synset folders first (as for torchvision's ImageFolder)."
        )
    missing = [c for c in classes if c.synset not in present]
    if missing:
        listed = ", ".join(f"{c.index} {c.name} ({c.synset}/)" for c in missing[:10])
        raise FileNotFoundError(
            f"data.root={str(root)!r} lacks {len(missing)} of the {len(classes)} requested classes: "
            f"{listed}{' ...' if len(missing) > 10 else ''}. Provide those folders or restrict "
            "data.classes to the classes you have."
        )
