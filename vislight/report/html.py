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
tiles that rendered. Every user-provided string (class names, image keys, file names, config
values) is HTML-escaped.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from vislight.io import atomic_write, write_text
from vislight.masks.cache import MaskCache, safe_name
from vislight.summaries.rle import rle_decode
from vislight.summaries.stage import HEADLINE_MEASURES

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ccc}
.meta{color:#555} .summary{border:1px solid #ddd;border-radius:6px;padding:.6em;margin:.8em 0}
.summary h3{margin:.1em 0 .4em 0;font-size:1em} .tiles{display:flex;flex-wrap:wrap;gap:4px}
img.tile,img.whole{width:112px;height:112px;image-rendering:pixelated;border:1px solid #999}
a.member img.whole,a.member:hover img.tile,a.member:focus img.tile{display:none}
a.member:hover img.whole,a.member:focus img.whole{display:inline}
details.unfaithful{margin:.8em 0} details.unfaithful>summary{cursor:pointer;color:#555}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
pre{background:#f6f6f6;padding:.6em;overflow:auto;max-height:30em}
"""

TILE_PX = 224  # side of a member crop's PNG (twice its 112-px display size)
MIN_MARGIN = 16 / 224  # least margin around a member's box, as a fraction of the image side
NOT_RELIED_ON = (
    "Not relied on (deleting them hurts the class no more than random regions of the same shape)"
)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _e(value)


def _to_uint8(image) -> np.ndarray:
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


def _resize(arr: np.ndarray, size: int) -> np.ndarray:
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


def mask_tile(image: np.ndarray, sharp: np.ndarray) -> np.ndarray:
    """The image with its salient pixels (mask < 0.5) tinted red."""
    out = image.astype(np.float32)
    sal = sharp < 0.5
    out[sal] = 0.45 * out[sal] + 0.55 * np.array([255, 0, 0], dtype=np.float32)
    return out.round().astype(np.uint8)


def _skipped_section(metrics: dict) -> str:
    """What the run left out and why: unusable input files, then images without a mask."""
    rows = [
        (s.get("file") or "", s.get("reason", ""))
        for s in metrics.get("skipped") or []
    ] + [
        (f"{s.get('class', '')} #{s['index']}" if "index" in s else s.get("class", ""), s.get("reason", ""))
        for s in (metrics.get("mask") or {}).get("skipped") or []
    ]  # fmt: skip
    if not rows:
        return "<h2>Skipped</h2><p class='meta'>nothing was skipped</p>"
    body = "".join(f"<tr><td>{_e(what)}</td><td>{_e(why)}</td></tr>" for what, why in rows)
    return (
        f"<h2 id='skipped'>Skipped ({len(rows)})</h2>"
        f"<table class='skipped'><tr><th>input</th><th>reason</th></tr>{body}</table>"
    )


def _specialization_section(metrics: dict) -> str:
    """Held-out accuracy of the base model, the specialised model and its controls per group."""
    spec = metrics.get("specialization")
    if not spec or not spec.get("groups"):
        return ""

    def cell(v) -> str:
        return f"{_fmt(v['mean'])} ± {_fmt(v['std'])}" if isinstance(v, dict) else _fmt(v)

    names = {
        "base": "base",
        "specialized": "specialised",
        "kmeans_control": "k-means control",
        "head_control": "head fine-tuning",
    }
    methods = tuple(names)
    head = "".join(f"<th>{names[m]}</th>" for m in methods)
    rows = [
        f"<tr><td>{_e(', '.join(g['classes']))}</td><td>{g.get('prototypes', '')}</td>"
        f"<td>{g.get('heldout_images', '')}</td>"
        + "".join(f"<td>{cell(g.get(m))}</td>" for m in methods)
        + "</tr>"
        for g in spec["groups"]
    ]
    total = spec.get("overall") or {}
    if "specialized" in total:
        rows.append(
            f"<tr><td><b>all groups</b></td><td></td><td>{total['heldout_images']}</td>"
            + "".join(f"<td><b>{cell(total.get(m))}</b></td>" for m in methods)
            + "</tr>"
        )
    return (
        f"<h2 id='specialization'>Specialisation (held-out {_e(spec.get('heldout_split'))} "
        f"accuracy within each group; mean ± std over seeds {_e(spec.get('seeds'))})</h2>"
        f"<table><tr><th>group</th><th>prototypes</th><th>images</th>{head}</tr>"
        + "".join(rows)
        + "</table>"
    )


def _save(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data))


def _summary_block(
    report: Path, stem: str, number: int, summary: Mapping, image_of, max_members: int
) -> tuple[str, list[np.ndarray]]:
    """The HTML of one summary and its member crops, (TILE_PX, TILE_PX, 3) uint8 each.

    Writes, per shown member ``j``, ``{stem}_m{j}.png`` (the crop) and ``{stem}_m{j}_full.png``
    (the whole image), ``stem`` relative to ``report``.
    """
    faith = summary.get("faithfulness") or {}
    head = [f"summary {number}"]
    if "tag" in summary:
        head.append(f"tag <b>{_e(summary['tag'])}</b> (purity {_fmt(summary.get('purity'), 2)})")
    head += [
        f"support {_e(summary['support'])}",
        f"coherence {_fmt(summary['coherence'])}",
        f"faithfulness {_fmt(faith.get('ratio'), 2)} (drop {_fmt(faith.get('drop'), 2)} vs random {_fmt(faith.get('random_drop'), 2)})",
    ]
    tiles = []
    crops = []
    for j, m in enumerate(typical_first(summary)[:max_members]):
        image, region = image_of(int(m["index"])), rle_decode(m["mask_rle"])
        crop_rel, full_rel = f"{stem}_m{j:03d}.png", f"{stem}_m{j:03d}_full.png"
        crops.append(_resize(region_crop(image, region, m["bbox"]), TILE_PX))
        _save(report / crop_rel, crops[-1])
        _save(report / full_rel, region_tile(image, region))
        caption = f"{m['key']} · sim {m['similarity']:.2f} · drop {m['drop']:.2f}" + (
            f" · {m['tag']}" if "tag" in m else ""
        )
        tiles.append(
            f"<a class='member' href='{_e(full_rel)}' title='{_e(caption + ' (hover or click: whole image)')}'>"
            f"<img class='tile' src='{_e(crop_rel)}' alt='{_e(caption)}'>"
            f"<img class='whole' src='{_e(full_rel)}' alt='{_e(caption + ' (whole image)')}'></a>"
        )
    block = f"<div class='summary'><h3>{' · '.join(head)}</h3><div class='tiles'>{''.join(tiles)}</div></div>"
    return block, crops


def write_report(
    output_dir: Path,
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
    report = Path(output_dir) / "report"
    report.mkdir(parents=True, exist_ok=True)
    classes = metrics.get("classes", {})
    title = f"vislight: {metrics.get('model')} on {metrics.get('dataset')}"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        "<p class='meta'>"
        f"accuracy {_fmt(metrics.get('accuracy'), 4)} · summaries per class {_fmt(metrics.get('mean_summaries'), 2)} · "
        f"mean purity {_fmt(metrics.get('mean_purity'))} · background share {_fmt(metrics.get('background_share'))} · "
        f"part recall {_fmt(metrics.get('part_recall'))} · mean faithfulness ratio {_fmt(metrics.get('mean_faithfulness_ratio'))}"
        " · <a href='masks.html'>per-image masks</a></p>",
        "<!-- vislight:comparison -->",  # vislight.compare links its comparison here
    ]
    baselines = metrics.get("baselines") or {}
    if baselines:
        keys = HEADLINE_MEASURES
        rows = [("vislight", metrics)] + list(baselines.items())
        parts.append(
            "<h2>Against baselines</h2><table><tr><th>method</th>"
            + "".join(f"<th>{_e(k)}</th>" for k in keys)
            + "</tr>"
        )
        for name, m in rows:
            parts.append(
                f"<tr><td>{_e(name)}</td>"
                + "".join(f"<td>{_fmt(m.get(k))}</td>" for k in keys)
                + "</tr>"
            )
        parts.append("</table>")
    image_cache: dict[int, np.ndarray] = {}
    mosaics: list[tuple[str, int, Path]] = []
    mask_pngs: list[Path] = []

    def image_of(index: int) -> np.ndarray:
        if index not in image_cache:
            image_cache[index] = _to_uint8(dataset[index]["image"])
        return image_cache[index]

    for class_name, class_summaries in summaries.get("classes", {}).items():
        cm = classes.get(class_name, {})
        folder = safe_name(class_name)
        parts.append(f"<h2>{_e(class_name)}</h2>")
        facts = [
            f"{len(class_summaries)} summaries",
            f"{cm.get('images', '–')} images",
            f"{cm.get('regions', '–')} regions",
        ]
        if cm.get("needed_parts") is not None:
            facts.append("needed parts: " + (_e(", ".join(cm["needed_parts"])) or "none"))
        if cm.get("found_parts") is not None:
            facts.append("parts found: " + (_e(", ".join(cm["found_parts"])) or "none"))
        # relied-on summaries first, each group by support; numbered in that order
        ordered = sorted(class_summaries, key=lambda s: (not is_relied_on(s), -s["support"]))
        unfaithful = sum(not is_relied_on(s) for s in ordered)
        if unfaithful:
            facts.append(f"{unfaithful} not relied on")
        parts.append(f"<p class='meta'>{' · '.join(facts)}</p>")
        blocks = []
        for k, s in enumerate(ordered):
            stem = f"tiles/{folder}/s{k:03d}"
            block, crops = _summary_block(report, stem, k + 1, s, image_of, max_members)
            blocks.append(block)
            if crops:
                mosaic = report / f"{stem}_mosaic.png"
                _save(mosaic, np.concatenate(crops, axis=1))
                mosaics.append((class_name, k + 1, mosaic))
        parts += blocks[: len(ordered) - unfaithful]
        if unfaithful:
            parts.append(
                f"<details class='unfaithful'><summary>{_e(NOT_RELIED_ON)}: {unfaithful} "
                f"{'summary' if unfaithful == 1 else 'summaries'}</summary>"
                + "".join(blocks[len(ordered) - unfaithful :])
                + "</details>"
            )
    parts.append(_specialization_section(metrics))
    parts.append(_skipped_section(metrics))
    parts.append(
        "<h2>Metrics</h2><pre>" + _e(json.dumps(metrics, indent=2, default=str)) + "</pre>"
    )
    parts.append("<h2>Config</h2><pre>" + _e(config_yaml) + "</pre>")
    # How many member images actually rendered (for people, and for the headless-browser test):
    # crops loaded, crops shown (not in a collapsed section), whole images loaded.
    parts.append(
        "<p class='meta'>member crops loaded: <span id='tiles-loaded'>?</span>, shown: "
        "<span id='tiles-shown'>?</span>; whole images loaded: <span id='whole-loaded'>?</span></p>"
        "<script>window.addEventListener('load',()=>{"
        "const ok=i=>i.complete&&i.naturalWidth>0,all=s=>[...document.querySelectorAll(s)],"
        "put=(id,n)=>{document.getElementById(id).textContent=String(n);};"
        "put('tiles-loaded',all('img.tile').filter(ok).length);"
        "const shown=i=>(i.checkVisibility?.()??true)&&i.getBoundingClientRect().width>0;"
        "put('tiles-shown',all('img.tile').filter(i=>ok(i)&&shown(i)).length);"
        "put('whole-loaded',all('img.whole').filter(ok).length);});</script></body></html>"
    )
    index_file = report / "index.html"
    write_text(index_file, "\n".join(parts))

    mparts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}: masks</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}: masks</h1><p><a href='index.html'>summaries</a></p>",
    ]
    for class_name, items in (mask_files or {}).items():
        folder = safe_name(class_name)
        mparts.append(f"<h2>{_e(class_name)}</h2><div class='tiles'>")
        for j, (image_index, path) in enumerate(items[:max_masks]):
            d = MaskCache.read(Path(path))
            rel = f"masks/{folder}/{j:04d}.png"
            _save(report / rel, mask_tile(image_of(int(image_index)), d["sharp"]))
            mask_pngs.append(report / rel)
            caption = f"{d.get('key', image_index)} · drop {d.get('drop', float('nan')):.2f} · area {d.get('area', float('nan')):.2f}"
            mparts.append(
                f"<img class='tile mask' src='{_e(rel)}' alt='{_e(caption)}' title='{_e(caption)}'>"
            )
        mparts.append("</div>")
    mparts.append("</body></html>")
    write_text(report / "masks.html", "\n".join(mparts))
    return {"index": index_file, "mosaics": mosaics, "masks": mask_pngs}
