"""The trials of the intruder-detection study, built once per run: ``study/trials.json`` + crops.

For each method (``vislight``: the run's ``summaries.json``; each baseline of ``study.baselines``
the run kept under ``summaries/baselines/``) and each class with at least two *eligible* summaries
(at least ``study.members`` members and ``study.min_support`` support; relied on when
``study.relied_on_only``), every eligible summary gives one trial: its ``k`` most typical members
plus one intruder, a member of another eligible summary of the same class and method, taken from an
image that has no member in the trial's summary where one exists (else from an image not among the
shown members; else any). The ``k + 1`` choices are shuffled with ``study.seed``.

``study/trials.json`` (the server's copy: it holds the answers, never sent to a participant)::

    {"format": 1, "fingerprint": sha256 of the summaries and the trial settings,
     "members": k, "seed": int, "settings": {"members", "min_support", "relied_on_only", "seed"},
     "methods": [names], "notes": [why a baseline is missing, ...],
     "trials": [{"id": 12 hex digits (opaque: says nothing of the method or the answer),
                 "method", "class", "summary": number (the report's numbering, from 1),
                 "tag": the summary's automatic tag or null,
                 "choices": [{"crop": "<id>_<position>.png", "key", "index", "summary",
                              "bbox"}] (k + 1, in the order shown),
                 "intruder": position of the intruder in choices}]}

Crops are ``study/crops/<id>_<position>.png``, ``TILE_PX`` square (the member's region in its
image, the context dimmed, as the report draws members). Both are reused while the fingerprint is
unchanged; a changed run (other summaries, baselines or settings) rebuilds them unless answers to
the old trials exist.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from vislight.errors import ConfigError
from vislight.io import write_json
from vislight.study.settings import OURS, StudySettings

FORMAT = 1
TRIALS_FILE = "trials.json"
CROPS_DIR = "crops"


def eligible(class_summaries: list, settings: StudySettings) -> list[tuple[int, dict]]:
    """``(number, summary)`` of the summaries of one class a trial can show, numbered as the report
    numbers them (relied on first, then by support; from 1)."""
    from vislight.report.html import ordered_summaries

    k, least = settings.members, settings.min_support or 0
    return [
        (number, s)
        for number, s, relied_on in ordered_summaries(class_summaries)
        if len(s["members"]) >= k
        and int(s["support"]) >= least
        and (relied_on or not settings.relied_on_only)
    ]


def trial_settings(settings: StudySettings) -> dict:
    """The settings that choose the trials (``trials.json``'s ``settings``)."""
    keys = ("members", "min_support", "relied_on_only", "seed")
    return {key: getattr(settings, key) for key in keys}


def fingerprint(methods: Mapping[str, Mapping], settings: StudySettings) -> str:
    """sha256 (hex) of everything the trials depend on: the summaries of every method and the
    settings that choose members, intruders and positions."""
    content = {"format": FORMAT, "methods": methods, "settings": trial_settings(settings)}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _intruder(rng: random.Random, summary: dict, shown: list[dict], others: list) -> tuple:
    """``(number, member)`` of the intruder: a member of one of ``others`` (``(number, summary)``,
    at least one), from an image without a member in ``summary`` where possible, else from an
    image not among ``shown``, else any."""
    own = {m["key"] for m in summary["members"]}
    seen = {m["key"] for m in shown}
    order = others[:]
    rng.shuffle(order)
    for avoid in (own, seen, set()):
        for number, other in order:
            candidates = [m for m in other["members"] if m["key"] not in avoid]
            if candidates:
                return number, rng.choice(candidates)
    raise AssertionError("unreachable: eligible summaries have members")


def build_trials(
    methods: Mapping[str, Mapping], settings: StudySettings, fp: str = ""
) -> list[dict]:
    """The trials (format of ``trials.json``'s ``trials``) of ``methods``: ``{method: content of a
    summaries file}``; deterministic given the summaries, the settings and ``fp`` (the ids)."""
    from vislight.report.html import typical_first

    k, trials = settings.members, []
    for method, content in methods.items():
        for class_name, class_summaries in content["classes"].items():
            shown_summaries = eligible(class_summaries, settings)
            if len(shown_summaries) < 2:
                continue
            for number, summary in shown_summaries:
                name = f"{fp}:{settings.seed}:{method}:{class_name}:{number}"
                rng = random.Random(name)
                shown = typical_first(summary)[:k]
                others = [(n, s) for n, s in shown_summaries if n != number]
                intruder_number, intruder = _intruder(rng, summary, shown, others)
                choices = [(number, m) for m in shown] + [(intruder_number, intruder)]
                positions = list(range(k + 1))
                rng.shuffle(positions)  # choices[i] goes to positions[i]
                trial_id = hashlib.sha256(name.encode()).hexdigest()[:12]
                placed: list = [None] * (k + 1)
                for (n, m), pos in zip(choices, positions):
                    placed[pos] = {
                        "crop": f"{trial_id}_{pos}.png",
                        "key": m["key"],
                        "index": int(m["index"]),
                        "summary": n,
                        "bbox": [int(v) for v in m["bbox"]],
                        "mask_rle": m["mask_rle"],
                    }
                trials.append({
                    "id": trial_id,
                    "method": method,
                    "class": class_name,
                    "summary": number,
                    "tag": summary.get("tag"),
                    "choices": placed,
                    "intruder": positions[-1],
                })  # fmt: skip
    return trials


def write_crops(crops: Path, trials: list[dict], image_of: Callable[[int], np.ndarray]) -> None:
    """Write every choice's crop under ``crops`` (``image_of(index)``: (H, W, 3) uint8 image of the
    run's evaluated data) and remove crops no trial uses."""
    from vislight.report.html import TILE_PX, region_crop, resize_tile, save_png
    from vislight.summaries.rle import rle_decode

    images: dict[int, np.ndarray] = {}
    wanted = set()
    for trial in trials:
        for choice in trial["choices"]:
            index = choice["index"]
            if index not in images:
                images[index] = image_of(index)
            region = rle_decode(choice["mask_rle"])
            if region.shape != images[index].shape[:2]:
                raise ConfigError(
                    f"member {choice['key']} has a {region.shape} mask but image {index} of the "
                    f"run's data is {images[index].shape[:2]}: the data changed since the run "
                    "(pass the run's data settings as overrides)"
                )
            crop = resize_tile(region_crop(images[index], region, choice["bbox"]), TILE_PX)
            save_png(crops / choice["crop"], crop)
            wanted.add(choice["crop"])
    for stale in crops.glob("*.png"):
        if stale.name not in wanted:
            stale.unlink(missing_ok=True)


def load_trials(study: Path) -> dict | None:
    """The content of ``study/trials.json``, or None when absent or unreadable."""
    try:
        doc = json.loads((study / TRIALS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def method_summaries(run, settings: StudySettings) -> tuple[dict[str, dict], list[str]]:
    """``({method: summaries content}, notes)`` of a :class:`~vislight.finished_run.FinishedRun`:
    its own summaries, then each baseline of ``study.baselines`` the run kept (notes say which it
    lacks)."""
    methods, notes = {OURS: run.summaries}, []
    for name in settings.baselines:
        content = run.baseline_summaries(name)
        if content is None:
            notes.append(
                f"baseline {name!r} left out: the run has no summaries/baselines/{name}.json (run "
                "with baselines.enabled=true to keep it)"
            )
        else:
            methods[name] = content
    return methods, notes


def prepare(run, settings: StudySettings, image_of=None, answers_exist: bool = False) -> dict:
    """The study's trials for a :class:`~vislight.finished_run.FinishedRun`: ``study/trials.json``
    when it matches the run and the settings and its crops exist, else built and written (crops
    first, then trials.json). ``image_of(index)``: (H, W, 3) uint8; by default the run's data.
    ``answers_exist``: answers were recorded (then a changed run is an error, not a rebuild)."""
    study = run.run.study
    methods, notes = method_summaries(run, settings)
    fp = fingerprint(methods, settings)
    doc = load_trials(study)
    if doc and doc["fingerprint"] == fp:
        if all(
            (study / CROPS_DIR / c["crop"]).is_file() for t in doc["trials"] for c in t["choices"]
        ):
            return doc
    elif doc and answers_exist:
        before, now = doc.get("settings", {}), trial_settings(settings)
        changed = [
            f"study.{k}={before.get(k)} (now {v})" for k, v in now.items() if before.get(k) != v
        ]
        raise ConfigError(
            f"{study / TRIALS_FILE} was built "
            + (f"with {', '.join(changed)}" if changed else "from other summaries")
            + f" and {settings.answers} holds answers to its trials: pass the same settings, or "
            "start a new study with study.answers=NEW.jsonl after moving trials.json away"
        )
    trials = build_trials(methods, settings, fp)
    if not trials:
        raise ConfigError(
            f"no trial to show: no class of {run.run.root} has two summaries with at least "
            f"study.members={settings.members} members"
            + (" that the model relies on" if settings.relied_on_only else "")
            + " (lower study.members, or set study.relied_on_only=false)"
        )
    write_crops(study / CROPS_DIR, trials, image_of or _run_images(run))
    doc = {
        "format": FORMAT,
        "fingerprint": fp,
        "members": settings.members,
        "seed": settings.seed,
        "settings": trial_settings(settings),
        "methods": list(methods),
        "notes": notes,
        "trials": [
            {
                **t,
                "choices": [{k: v for k, v in c.items() if k != "mask_rle"} for c in t["choices"]],
            }
            for t in trials
        ],
    }
    write_json(study / TRIALS_FILE, doc)
    return doc


def _run_images(run) -> Callable[[int], np.ndarray]:
    """``image_of(index)``: (H, W, 3) uint8 of the run's evaluated images."""
    from vislight.report.html import to_uint8

    dataset = run.datamodule().test_set

    def image_of(index: int) -> np.ndarray:
        if not 0 <= index < len(dataset):
            raise ConfigError(
                f"a summary member is image {index} but the run's data has {len(dataset)} images: "
                "the data changed since the run (pass the run's data settings as overrides)"
            )
        return to_uint8(dataset[index]["image"])

    return image_of
