"""Static HTML report of a run: ``report/index.html`` (summaries) and ``report/masks.html`` (masks).

Each summary member is shown as the part it stands for: a square crop around its region (the
member's box plus a margin, the context dimmed, the region outlined in yellow, ``region_crop``).
Hovering a crop shows the whole image with the region outlined (``region_tile``), and clicking
it opens that image. Members are listed most typical first (by similarity to the exemplar, the
exemplar first). Per class, the summaries the model relies on come first; those whose deletion
hurts the class no more than random regions of the same shape (``faithfulness.faithful`` false)
are listed apart, in a collapsed "Not relied on" section.

Viewable from disk with no server: images are PNG files under ``report/tiles/`` and
``report/masks/``, referenced by relative paths; the only script is a few lines that count the
tiles that rendered. The pages are Jinja2 templates (``templates/index.html.j2`` and
``templates/masks.html.j2``, rendered by :mod:`vislight.report.render`) with autoescaping: every
user-provided string (class names, image keys, file names, config values) is HTML-escaped as it goes
into the page.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from vislight.io import atomic_write, write_text
from vislight.masks.cache import MaskCache, safe_name
from vislight.report.render import fmt, render
from vislight.run_folder import RunFolder
from vislight.summaries.rle import rle_decode
from vislight.summaries.stage import HEADLINE_MEASURES

TILE_PX = 224  # side of a member crop's PNG (twice its 112-px display size)
MIN_MARGIN = 16 / 224  # least margin around a member's box, as a fraction of the image side
NOT_RELIED_ON = (
    "Not relied on (deleting them hurts the class no more than random regions of the same shape)"
)


def to_uint8(image) -> np.ndarray:
    """(3, H, W) float tensor in [0, 1] -> (H, W, 3) uint8."""
    arr = image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return (arr * 255).round().astype(np.uint8)


def region_tile(image: np.ndarray, region: np.ndarray, dim: float = 0.35) -> np.ndarray:
    """The image with everything outside ``region`` dimmed and the region outlined in yellow."""
    out = image.astype(np.float32)
    out[~region] *= dim
    edge = region & ~ndimage.binary_erosion(region, iterations=1)
    out[edge] = (255, 230, 0)
    return out.round().astype(np.uint8)


def _span(lo: int, hi: int, side: int, size: int) -> tuple[int, int]:
    """``[start, end)`` of length ``side`` centred on ``[lo, hi)``, moved inside ``[0, size)``
    (and cut to ``size`` where ``side`` is longer)."""
    side = min(side, size)
    start = min(max((lo + hi - side) // 2, 0), size - side)
    return start, start + side


def region_crop(image: np.ndarray, region: np.ndarray, box, margin: float = 0.25) -> np.ndarray:
    """The part of the image around ``region``, drawn as ``region_tile`` draws the whole image.

    Args:
        image: (H, W, 3) uint8.
        region: (H, W) bool.
        box: ``(x0, y0, x1, y1)``, exclusive, the region's bounding box in pixels.
        margin: context on each side, as a fraction of the box's longer side; at least
            ``MIN_MARGIN`` of the image's longer side (16 px at 224 px).

    Returns:
        (h, w, 3) uint8: a square centred on the box, its side the box's longer side plus the
        margins. Where it would cross the image edge it is moved inside the image (so the part is
        not stretched when resized), and cut only where it is larger than the image.
    """
    height, width = region.shape
    x0, y0, x1, y1 = (int(v) for v in box)
    longest = max(x1 - x0, y1 - y0)
    pad = max(margin * longest, MIN_MARGIN * max(height, width))
    side = int(np.ceil(longest + 2 * pad))
    top, bottom = _span(y0, y1, side, height)
    left, right = _span(x0, x1, side, width)
    return region_tile(image[top:bottom, left:right], region[top:bottom, left:right])


def resize_tile(arr: np.ndarray, size: int) -> np.ndarray:
    """(h, w, 3) uint8 -> (size, size, 3) uint8; enlarged pixels stay sharp, like the outline."""
    smaller = max(arr.shape[:2]) <= size
    resample = Image.Resampling.NEAREST if smaller else Image.Resampling.BOX
    return np.asarray(Image.fromarray(arr).resize((size, size), resample))


def typical_first(summary: Mapping) -> list[dict]:
    """A summary's members by similarity to its exemplar, descending, the exemplar first."""
    return sorted(
        summary["members"],
        key=lambda m: (m["key"] != summary.get("exemplar"), -float(m["similarity"])),
    )


def is_relied_on(summary: Mapping) -> bool:
    """False where deleting the summary's regions hurts the class no more than random regions."""
    return (summary.get("faithfulness") or {}).get("faithful") is not False


def link_applications(run: RunFolder) -> Path:
    """Write ``report/applications.html``: the run's applications to new images (``apply/*/``,
    written by ``python -m vislight.apply``), linked from the report's index."""
    found = sorted(p.parent for p in run.root.glob("apply/*/index.html"))
    items = []
    for folder in found:
        facts = (
            json.loads((folder / "apply.json").read_text())
            if (folder / "apply.json").is_file()
            else {}
        )
        items.append({"name": folder.name, "href": f"../apply/{folder.name}/index.html",
                      "images": len(facts.get("images", []))})  # fmt: skip
    path = run.report / "applications.html"
    write_text(path, render("applications.html.j2", title="Summaries applied to new images",
                            applications=items, run=str(run.root)))  # fmt: skip
    return path


def ordered_summaries(class_summaries) -> list[tuple[int, dict, bool]]:
    """``(number, summary, relied on)`` in the report's order: the summaries the model relies on
    first, each group by support; numbered from 1 in that order (the numbers every page uses)."""
    ordered = sorted(class_summaries, key=lambda s: (not is_relied_on(s), -s["support"]))
    return [(k + 1, s, is_relied_on(s)) for k, s in enumerate(ordered)]


def mask_tile(image: np.ndarray, sharp: np.ndarray) -> np.ndarray:
    """The image with its salient pixels (mask < 0.5) tinted red."""
    out = image.astype(np.float32)
    sal = sharp < 0.5
    out[sal] = 0.45 * out[sal] + 0.55 * np.array([255, 0, 0], dtype=np.float32)
    return out.round().astype(np.uint8)


def _skipped_section(metrics: Mapping) -> list[tuple[str, str]]:
    """What the run left out and why, ``(input, reason)`` rows of the Skipped section: unusable
    input files, then images without a mask."""
    return [
        (s.get("file") or "", s.get("reason", ""))
        for s in metrics.get("skipped") or []
    ] + [
        (f"{s.get('class', '')} #{s['index']}" if "index" in s else s.get("class", ""), s.get("reason", ""))
        for s in (metrics.get("mask") or {}).get("skipped") or []
    ]  # fmt: skip


SPECIALIZATION_METHODS = {
    "base": "base",
    "specialized": "specialised",
    "kmeans_control": "k-means control",
    "head_control": "head fine-tuning",
}


def _specialization_section(metrics: Mapping) -> dict | None:
    """The Specialisation section: held-out accuracy of the base model, the specialised model and
    its controls per group (``None``: no section)."""
    spec = metrics.get("specialization")
    if not spec or not spec.get("groups"):
        return None

    def cell(v) -> str:
        return f"{fmt(v['mean'])} ± {fmt(v['std'])}" if isinstance(v, dict) else fmt(v)

    def cells(row: Mapping) -> list[str]:
        return [cell(row.get(m)) for m in SPECIALIZATION_METHODS]

    total = spec.get("overall") or {}
    return {
        "split": spec.get("heldout_split"),
        "seeds": spec.get("seeds"),
        "columns": list(SPECIALIZATION_METHODS.values()),
        "groups": [
            {
                "classes": ", ".join(g["classes"]),
                "prototypes": g.get("prototypes", ""),
                "images": g.get("heldout_images", ""),
                "cells": cells(g),
            }
            for g in spec["groups"]
        ],
        "total": (
            {"images": total["heldout_images"], "cells": cells(total)}
            if "specialized" in total
            else None
        ),
        # specialised minus each other method, paired over (group, seed) and over the groups
        "paired": [
            {
                "other": SPECIALIZATION_METHODS.get(other, other),
                "pairs": t.get("pairs"),
                "difference": f"{t['mean_difference']:+.4f}",
                "wins": f"{t.get('wins')} / {t.get('losses')}",
                "p": [fmt(t.get(k)) for k in ("t_test_p", "wilcoxon_p")],
                "groups": t.get("groups", ""),
                "group_p": [fmt(t.get(k)) for k in ("group_t_test_p", "group_wilcoxon_p")],
            }
            for other, t in (total.get("paired") or {}).items()
            if t.get("mean_difference") is not None
        ],
    }


def save_png(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` as a PNG atomically (encoded first, then a temporary file and a rename)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data))


def _summary_block(
    report: Path, stem: str, number: int, summary: Mapping, image_of, max_members: int
) -> tuple[dict, list[np.ndarray]]:
    """What the page shows of one summary (for the ``summary_block`` macro of ``index.html.j2``)
    and its member crops, (TILE_PX, TILE_PX, 3) uint8 each.

    Writes, per shown member ``j``, ``{stem}_m{j}.png`` (the crop) and ``{stem}_m{j}_full.png``
    (the whole image), ``stem`` relative to ``report``.
    """
    faith = summary.get("faithfulness") or {}
    block = {
        "number": number,
        "support": summary["support"],
        "coherence": summary["coherence"],
        "ratio": faith.get("ratio"),
        "drop": faith.get("drop"),
        "random_drop": faith.get("random_drop"),
        "members": [],
    }
    if "tag" in summary:
        block["tag"] = summary["tag"]
        block["purity"] = summary.get("purity")
    crops = []
    for j, m in enumerate(typical_first(summary)[:max_members]):
        image, region = image_of(int(m["index"])), rle_decode(m["mask_rle"])
        crop_rel, full_rel = f"{stem}_m{j:03d}.png", f"{stem}_m{j:03d}_full.png"
        crops.append(resize_tile(region_crop(image, region, m["bbox"]), TILE_PX))
        save_png(report / crop_rel, crops[-1])
        save_png(report / full_rel, region_tile(image, region))
        caption = f"{m['key']} · sim {m['similarity']:.2f} · drop {m['drop']:.2f}" + (
            f" · {m['tag']}" if "tag" in m else ""
        )
        block["members"].append({"crop": crop_rel, "full": full_rel, "caption": caption})
    return block, crops


def write_report(
    run: RunFolder,
    dataset,
    summaries: Mapping,
    metrics: Mapping,
    config_yaml: str,
    mask_files: Mapping[str, list[tuple[int, Path]]] | None = None,
    max_members: int = 12,
    max_masks: int = 24,
) -> dict:
    """Write ``report/index.html`` and ``report/masks.html``.

    Returns ``{"index": path, "mosaics": [(class, summary number, png path)], "masks": [png paths]}``
    (the mosaic of a summary is its member crops side by side, for W&B).

    Args:
        dataset: the evaluated dataset (``dataset[index]["image"]``) to draw members from.
        summaries: the content of ``summaries.json``.
        metrics: the content of ``metrics.json``.
        mask_files: per class, ``(index, mask file)`` of the explained images (masks view).
    """
    report = run.report
    report.mkdir(parents=True, exist_ok=True)
    classes = metrics.get("classes", {})
    title = f"vislight: {metrics.get('model')} on {metrics.get('dataset')}"
    headline = [  # (label, value, decimals)
        ("accuracy", metrics.get("accuracy"), 4),
        ("summaries per class", metrics.get("mean_summaries"), 2),
        ("mean purity", metrics.get("mean_purity"), 3),
        ("background share", metrics.get("background_share"), 3),
        ("part recall", metrics.get("part_recall"), 3),
        ("mean faithfulness ratio", metrics.get("mean_faithfulness_ratio"), 3),
    ]
    baselines = None
    if metrics.get("baselines"):
        baselines = {
            "columns": HEADLINE_MEASURES,
            "rows": [
                (name, [m.get(k) for k in HEADLINE_MEASURES])
                for name, m in [("vislight", metrics), *metrics["baselines"].items()]
            ],
        }
    image_cache: dict[int, np.ndarray] = {}
    mosaics: list[tuple[str, int, Path]] = []
    mask_pngs: list[Path] = []

    def image_of(index: int) -> np.ndarray:
        if index not in image_cache:
            image_cache[index] = to_uint8(dataset[index]["image"])
        return image_cache[index]

    sections = []
    for class_name, class_summaries in summaries.get("classes", {}).items():
        cm = classes.get(class_name, {})
        folder = safe_name(class_name)
        facts = [
            f"{len(class_summaries)} summaries",
            f"{cm.get('images', '–')} images",
            f"{cm.get('regions', '–')} regions",
        ]
        if cm.get("needed_parts") is not None:
            facts.append("needed parts: " + (", ".join(cm["needed_parts"]) or "none"))
        if cm.get("found_parts") is not None:
            facts.append("parts found: " + (", ".join(cm["found_parts"]) or "none"))
        ordered = ordered_summaries(class_summaries)
        unfaithful = sum(not relied for _, _, relied in ordered)
        if unfaithful:
            facts.append(f"{unfaithful} not relied on")
        blocks = []
        for number, s, _ in ordered:
            stem = f"tiles/{folder}/s{number - 1:03d}"
            block, crops = _summary_block(report, stem, number, s, image_of, max_members)
            blocks.append(block)
            if crops:
                mosaic = report / f"{stem}_mosaic.png"
                save_png(mosaic, np.concatenate(crops, axis=1))
                mosaics.append((class_name, number, mosaic))
        relied = len(ordered) - unfaithful
        sections.append(
            {
                "name": class_name,
                "facts": facts,
                "relied": blocks[:relied],
                "apart": blocks[relied:],
            }
        )
    index_file = run.report_index
    page = render(
        "index.html.j2",
        title=title,
        headline=headline,
        baselines=baselines,
        classes=sections,
        not_relied_on=NOT_RELIED_ON,
        specialization=_specialization_section(metrics),
        skipped=_skipped_section(metrics),
        metrics_json=json.dumps(metrics, indent=2, default=str),
        config_yaml=config_yaml,
    )
    write_text(index_file, page)
    link_applications(run)

    mask_sections = []
    for class_name, items in (mask_files or {}).items():
        folder = safe_name(class_name)
        tiles = []
        for j, (image_index, path) in enumerate(items[:max_masks]):
            d = MaskCache.read(Path(path))
            rel = f"masks/{folder}/{j:04d}.png"
            save_png(report / rel, mask_tile(image_of(int(image_index)), d["sharp"]))
            mask_pngs.append(report / rel)
            caption = f"{d.get('key', image_index)} · drop {d.get('drop', float('nan')):.2f} · area {d.get('area', float('nan')):.2f}"
            tiles.append({"src": rel, "caption": caption})
        mask_sections.append({"name": class_name, "tiles": tiles})
    write_text(run.report_masks, render("masks.html.j2", title=title, classes=mask_sections))
    return {"index": index_file, "mosaics": mosaics, "masks": mask_pngs}
