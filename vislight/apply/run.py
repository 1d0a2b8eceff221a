"""``apply_run``: a finished run's summaries located in new images, written to ``apply/<name>/``.

Writes ``apply.json`` (per image: predicted class, every summary of the explained class located
with its box, match score, p-values and deletion check, the image's strategy and the atypical flag;
per class: the share of images where each summary was found and the atypical share),
``index.html`` and one page per class (each image with its found summaries outlined and tagged),
and links the application from the run's report.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from vislight.apply.core import (
    ApplySettings,
    apply_images,
    calibrate_on_images,
    load_prototypes,
)
from vislight.devices import resolve_device
from vislight.errors import ConfigError
from vislight.finished_run import FinishedRun
from vislight.interrupt import check
from vislight.io import write_json, write_text
from vislight.masks.cache import safe_name
from vislight.report.html import save_png, to_uint8
from vislight.report.render import render

log = logging.getLogger(__name__)

SHOWN_PX = 224  # least side of an image drawn in a class page
COLORS = (
    (255, 230, 0),
    (0, 200, 255),
    (255, 80, 200),
    (120, 255, 80),
    (255, 140, 0),
    (170, 120, 255),
)


def _targets(settings: ApplySettings, items: Sequence[dict], data_classes, run_classes) -> list:
    """The class index to explain per item: None (predicted) or the item's label in the run's
    classes (``apply.target=label``)."""
    if settings.target == "predicted":
        return [None] * len(items)
    out = []
    for item in items:
        label = int(item.get("label", -1))
        name = data_classes[label] if data_classes and label >= 0 else None
        if name not in run_classes:
            raise ConfigError(
                f"apply.target=label but image {item.get('key')!r} is labelled {name!r}, not a "
                "class of the run; use apply.target=predicted"
            )
        out.append(run_classes.index(name))
    return out


def image_folder(root: str, classes: Sequence[str], model: dict):
    """The images under ``root`` as the run's model reads them: files directly in ``root``
    unlabelled, files in ``root/<class>/`` labelled when ``<class>`` is one of ``classes``."""
    from vislight.data.folder import IMAGE_EXTENSIONS, ImageListDataset, require_folder

    folder = require_folder(root, "apply.images", "/path/to/photos (a folder of image files)")
    items = []
    for path in sorted(folder.iterdir()):
        inside = sorted(path.iterdir()) if path.is_dir() else [path]
        label = classes.index(path.name) if path.is_dir() and path.name in classes else -1
        items += [
            (p, label) for p in inside if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        ]
    if not items:
        raise ConfigError(
            f"apply.images={root!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)}), "
            "directly or one folder down"
        )
    return ImageListDataset(items, list(classes), model["input_size"], model.get("resize_size"))


def _draw(image: np.ndarray, located: Sequence[dict]) -> np.ndarray:
    """(H, W, 3) uint8 with each found summary's box outlined and numbered."""
    scale = max(1, int(np.ceil(SHOWN_PX / max(image.shape[:2]))))
    pil = Image.fromarray(image).resize(
        (image.shape[1] * scale, image.shape[0] * scale), Image.Resampling.NEAREST
    )
    draw = ImageDraw.Draw(pil)
    for s in located:
        if not s["found"]:
            continue
        color = COLORS[(s["number"] - 1) % len(COLORS)]
        x0, y0, x1, y1 = (v * scale for v in s["box"])
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=max(2, scale // 2))
        draw.text((x0 + 3, y0 + 2), f"#{s['number']} {s['tag'] or ''}".strip(), fill=color)
    return np.asarray(pil)


def apply_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    classifier: torch.nn.Module | None = None,
    images=None,
    run_images=None,
) -> dict:
    """Locate the summaries of the run in ``run_dir`` in the images its data config names after
    ``overrides`` (e.g. ``data.root=...``, ``apply.name=...``); returns the content of
    ``apply.json``. ``classifier``: the run's model when it is in memory, ``images`` a dataset of
    ``{"image", "label", "index", "key"}`` items labelled with the run's class indices (label -1:
    unknown) instead of the data config, ``run_images`` the run's own evaluated images when its
    data config cannot rebuild them (all three from the Python API, ``Explanation.apply``)."""
    t0 = time.perf_counter()
    fr = FinishedRun.open(run_dir, overrides)
    settings = ApplySettings.from_cfg(OmegaConf.to_container(fr.cfg.apply, resolve=True))
    device = resolve_device(str(fr.cfg.get("device", "auto")))
    classifier = (classifier or fr.classifier(device)).to(device).eval()
    outputs = int(getattr(classifier, "num_classes", None) or len(fr.classes))
    # outputs the run's data does not name (e.g. ImageNet classes of a CUB run) go by their index
    classes = [*fr.classes, *map(str, range(len(fr.classes), outputs))]
    layer = fr.feature_layer(classifier)
    own = run_images if run_images is not None else fr.run_datamodule().test_set
    prototypes = calibrate_on_images(
        classifier, layer, load_prototypes(fr, classes), lambda i: own[i]["image"], device,
        settings.batch_size,
    )  # fmt: skip
    if images is None and settings.images:
        images = image_folder(settings.images, classes, fr.model_config())
        data_classes, skipped = classes, images.skipped
        dataset = images
    elif images is None:
        dm = fr.datamodule()
        dataset, data_classes, skipped = dm.test_set, dm.classes, getattr(dm, "skipped", [])
    else:
        dataset, data_classes, skipped = images, classes, []
    if len(dataset) == 0:
        raise ConfigError(
            "no readable image to apply the summaries to: check apply.images or data.root"
            + (f" (skipped: {skipped[:3]})" if skipped else "")
        )
    out_dir = fr.run.applied(settings.name)
    per_label: dict = defaultdict(int)
    entries, shown = [], defaultdict(int)
    index_range = range(len(dataset))
    batch: list[dict] = []

    def flush() -> None:
        if not batch:
            return
        x = torch.stack([b["image"] for b in batch]).to(device)
        results = apply_images(
            classifier, layer, prototypes, x, _targets(settings, batch, data_classes, classes),
            settings, fr.blur, ids=[int(b["index"]) for b in batch],
        )  # fmt: skip
        for item, r in zip(batch, results):
            known = int(item.get("label", -1)) >= 0 and data_classes
            label = data_classes[int(item["label"])] if known else None
            entry = {
                "key": str(item.get("key", item["index"])),
                "index": int(item["index"]),
                "label": label,
                **r,
                "predicted": classes[r["predicted"]],
                "target": classes[r["target"]],
            }
            name = entry["target"]
            if settings.max_shown_per_class is None or shown[name] < settings.max_shown_per_class:
                rel = f"images/{safe_name(name)}/{shown[name]:04d}.png"
                save_png(out_dir / rel, _draw(to_uint8(item["image"]), r["summaries"]))
                entry["png"] = rel
                shown[name] += 1
            entries.append(entry)
        batch.clear()

    for i in tqdm(index_range, desc="apply", mininterval=1.0):
        check()  # a stop signal ends the run between images (apply.json is written at the end)
        item = dataset[i]
        key = int(item.get("label", -1))
        cap = settings.max_images_per_class
        if cap is not None and per_label[key] >= cap:
            continue
        per_label[key] += 1
        batch.append(item)
        if len(batch) >= settings.batch_size:
            flush()
    flush()
    result = {
        "run": str(fr.run.root),
        "name": settings.name,
        "data": OmegaConf.to_container(fr.cfg.data, resolve=True),
        "settings": asdict(settings),
        "images": entries,
        "classes": class_summary(entries),
        "skipped": skipped,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(out_dir / "apply.json", result)
    write_pages(fr, out_dir, result)
    log.info("applied %s to %d images: %s", fr.run.root, len(entries), out_dir)
    return result


def class_summary(images: Sequence[dict]) -> dict:
    """Per explained class: images, atypical share, and the share of images where each summary
    (by number) was found."""
    by_class: dict = defaultdict(list)
    for e in images:
        by_class[e["target"]].append(e)
    out = {}
    for name, entries in sorted(by_class.items()):
        flags = [e["atypical"] for e in entries if e["atypical"] is not None]
        numbers = sorted({s["number"] for e in entries for s in e["summaries"]})
        out[name] = {
            "images": len(entries),
            "atypical": int(sum(flags)),
            "atypical_share": float(np.mean(flags)) if flags else None,
            "found_share": {
                str(n): float(
                    np.mean(
                        [
                            any(s["number"] == n and s["found"] for s in e["summaries"])
                            for e in entries
                        ]
                    )
                )
                for n in numbers
            },  # fmt: skip
            "tags": {str(s["number"]): s["tag"] for e in entries for s in e["summaries"]},
        }
    return out


def write_pages(fr: FinishedRun, out_dir: Path, result: dict) -> None:
    """``index.html`` and a page per class under ``out_dir``; the run's report links them."""
    pages = []
    for name, facts in result["classes"].items():
        page = f"{safe_name(name)}.html"
        entries = [e for e in result["images"] if e["target"] == name and "png" in e]
        write_text(
            out_dir / page,
            render("apply_class.html.j2", title=f"{name}: summaries found in new images",
                   class_name=name, facts=facts, images=entries, settings=result["settings"]),
        )  # fmt: skip
        pages.append({"name": name, "page": page, **facts})
    write_text(
        out_dir / "index.html",
        render("apply_index.html.j2", title=f"vislight: {result['name']}", result=result, classes=pages),
    )  # fmt: skip
    if fr.run.report_index.is_file():  # a run without a report stage has nothing to link from
        from vislight.report.html import link_applications

        link_applications(fr.run)
