"""The ``summaries`` stage: for every class, ``collect_regions`` (a cached :class:`RegionSet`) ->
``cluster_regions`` (similarity graph, affinity propagation, pruning) -> JSON-ready summary records
tagged against ground-truth parts where the dataset has them, with the part-prototype literature's
measures (vislight/evaluation/part_measures.py) and bootstrap stability, for ours and each baseline."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from vislight.clustering.summaries import Summary
from vislight.data.parts import TaggingSettings, part_truth
from vislight.evaluation.part_measures import (
    distinctiveness,
    huang_consistency,
    keypoint_nmi_ari,
    pipnet_purity,
    summaries_per_part,
)
from vislight.evaluation.tagging import (
    BACKGROUND_TAG,
    class_tagging,
    part_reliance,
    summary_tag,
)
from vislight.masks.cache import safe_name
from vislight.models.classifier import Classifier
from vislight.regions.describe import blur_drops, random_placements
from vislight.summaries.baselines import BASELINES, sharp_source
from vislight.summaries.cluster import (
    Clustering,
    ap_labels,
    cluster_regions,
    member_labels,
    region_graph,
)
from vislight.summaries.regionset import RegionSet, collect_regions, region_key
from vislight.summaries.rle import rle_encode

log = logging.getLogger(__name__)

# The headline measures of a set of summaries, ours and each baseline's alike (metrics.json, the
# report's baselines table, the CUB studies).
HEADLINE_MEASURES = (
    "mean_summaries",
    "summaries_per_part",
    "mean_purity",
    "pipnet_purity",
    "consistency",
    "keypoint_nmi",
    "distinctiveness",
    "background_share",
    "on_object_share",
    "faithful_fraction",
    "median_faithfulness_ratio",
    "stability_count_std",
)


def class_regions(
    classifier: torch.nn.Module,
    dataset,
    class_name: str,
    target: int,
    items: Sequence[tuple[int, Path]],
    cfg: Mapping,
    device: torch.device,
    cache_dir: Path | None = None,
    source: str = "ours",
    sharp_of=None,
    tagging: TaggingSettings | None = None,
) -> RegionSet:
    """The class's RegionSet, read from ``cache_dir/<source>/<class>.npz`` when it was made under
    the same key, else collected (and cached). ``tagging``: ``cfg["tagging"]`` typed, when the
    caller built it already."""
    layer = cfg["similarity"].get("layer")
    tagging = tagging or TaggingSettings.from_cfg(cfg["tagging"])
    # the layer the descriptors really read (the model's, found automatically when unset)
    read = classifier.feature_layer_name(layer) if isinstance(classifier, Classifier) else layer
    key = region_key(
        items, cfg["regions"], read, cfg["masks"], source, tagging.keypoint_margin,
        tagging.tag_min_share,
    )  # fmt: skip
    path = Path(cache_dir) / source / f"{safe_name(class_name)}.npz" if cache_dir else None
    if path is not None and (cached := RegionSet.load(path, key)) is not None:
        return cached
    regions = collect_regions(
        classifier,
        dataset,
        class_name,
        target,
        items,
        cfg["regions"],
        layer,
        cfg["masks"],
        device,
        sharp_of=sharp_of,
        tagging=tagging,
    )
    if path is not None:
        regions.save(path, key)
    return regions


def summarize_class(
    classifier: torch.nn.Module,
    dataset,
    regions: RegionSet,
    cfg: Mapping,
    device: torch.device,
    kmeans_k: int | None = None,
    needed: Mapping | None = None,
    clustering: Clustering | None = None,
) -> tuple[list[dict], dict]:
    """Summaries (JSON-ready) and metrics of one class from its measured ``regions``.

    ``kmeans_k`` clusters with k-means (fixed K) instead of affinity propagation. ``needed``: the
    class's ``part_drops`` and ``needed_parts`` when already measured (synthetic world).
    ``clustering``: the regions' clustering when already made (else it is made here).
    """
    metrics: dict = {"images": regions.n_images, "regions": len(regions)}
    if len(regions) < 2:
        metrics["summaries"] = 0
        metrics.update(
            _part_metrics(classifier, dataset, regions, [], cfg["tagging"], device, needed)
        )
        return [], metrics
    if clustering is None:
        clustering = cluster_regions(regions, cfg["similarity"], cfg["cluster"], kmeans_k)
    metrics.update({k: v for k, v in clustering.stats.items() if k != "pruning"})
    compare_dense = cfg["similarity"].get("compare_dense") and cfg["similarity"]["mode"] != "dense"
    if compare_dense and not kmeans_k:
        dense_graph, median = region_graph(regions, cfg["similarity"], mode="dense")
        factor = clustering.stats["preference_factor"]
        dense_labels, _ = ap_labels(dense_graph, median, factor, cfg["cluster"])
        metrics["ari_dense"] = float(adjusted_rand_score(dense_labels, clustering.labels))
    metrics.update(pruning=clustering.stats["pruning"], summaries=len(clustering.summaries))
    out = summary_records(regions, clustering.summaries)
    for k, (entry, s) in enumerate(zip(out, clustering.summaries)):
        entry["faithfulness"] = _faithfulness(
            classifier, dataset, regions, s.members, cfg["masks"], device, seed=k
        )
    if regions.on_object is not None and out:
        metrics["on_object_share"] = float(
            np.mean([m["on_object"] for e in out for m in e["members"]])
        )
    metrics.update(literature_measures(regions, clustering.summaries, out))
    metrics.update(_part_metrics(classifier, dataset, regions, out, cfg["tagging"], device, needed))
    return out, metrics


def summary_records(regions: RegionSet, summaries: Sequence[Summary]) -> list[dict]:
    """JSON-ready records of a class's summaries (members most similar to the exemplar first), with
    their tag, purity, PIP-Net purity and Huang consistency where the dataset has ground truth.
    Needs no network: the faithfulness check is added by :func:`summarize_class`."""
    out = []
    for s in summaries:
        members = []
        for m, sim in zip(s.members, s.similarity):
            member = {
                "key": regions.keys[m],
                "index": int(regions.index[m]),
                "bbox": [int(v) for v in regions.boxes[m]],
                "kind": regions.kinds[m],
                "area": float(regions.masks[m].mean()),
                "drop": float(regions.drops[m]),
                "similarity": float(sim),
                "center": [float(v) for v in regions.centers[m]],
                "mask_rle": rle_encode(regions.masks[m]),
            }
            if regions.tags is not None:
                member["tag"] = regions.tags[m]
            if regions.on_object is not None:
                member["on_object"] = bool(regions.on_object[m])
            members.append(member)
        entry = {
            "exemplar": members[0]["key"],
            "support": s.support,
            "coherence": s.coherence,
            "mean_region_drop": float(np.mean([mm["drop"] for mm in members])),
            "members": members,
        }
        if regions.tags is not None:
            entry["tag"], entry["purity"] = summary_tag([mm["tag"] for mm in members])
        if regions.has_points:
            pts = [regions.points[int(regions.image_id[m])] for m in s.members]
            centers = [tuple(regions.centers[m]) for m in s.members]
            entry["pipnet_purity"] = pipnet_purity(centers, pts, regions.side)
            entry["consistent"] = huang_consistency(centers, pts, regions.side)
        if regions.on_object is not None:
            entry["on_object_share"] = float(np.mean([mm["on_object"] for mm in members]))
        out.append(entry)
    return out


def literature_measures(regions: RegionSet, summaries: list, records: list[dict]) -> dict:
    """summaries_per_part, distinctiveness, PIP-Net purity, Huang consistency and keypoint NMI/ARI
    of one class (vislight/evaluation/part_measures.py)."""
    out: dict = {}
    if regions.tags is not None:
        out["summaries_per_part"] = summaries_per_part([e["tag"] for e in records])
    member_of = member_labels(summaries, len(regions))
    members = np.flatnonzero(member_of >= 0)
    out["distinctiveness"] = distinctiveness(
        regions.image_id[members], member_of[members], regions.masks[members]
    )
    if regions.has_points:
        purities = [e["pipnet_purity"] for e in records if e.get("pipnet_purity") is not None]
        consistent = [e["consistent"] for e in records if e.get("consistent") is not None]
        out["pipnet_purity"] = float(np.mean(purities)) if purities else None
        out["consistency"] = float(np.mean(consistent)) if consistent else None
        out["keypoint_nmi"], out["keypoint_ari"] = keypoint_nmi_ari(
            regions.points,
            regions.image_id[members],
            member_of[members],
            regions.masks[members],
        )
    return out


def stability(
    regions: RegionSet,
    cfg: Mapping,
    resamples: int = 5,
    fraction: float = 0.8,
    seed: int = 0,
    kmeans_k: int | None = None,
    full: Clustering | None = None,
) -> dict:
    """Bootstrap stability of one class's summaries: re-cluster ``resamples`` random subsets of
    ``fraction`` of the images (without replacement). ``count_std``: std of the number of
    summaries; ``ari``: mean adjusted Rand index between the full run's summary labels and each
    resample's, over the regions that are members of a summary in both. ``full``: the clustering
    of all the regions when already made (else it is made here)."""
    if regions.n_images < 3:  # no subset of fewer images can differ from the whole
        return {"count_std": None, "counts": [], "ari": None}
    if full is None:
        full = cluster_regions(regions, cfg["similarity"], cfg["cluster"], kmeans_k)
    full_labels = member_labels(full.summaries, len(regions))
    rng = np.random.default_rng(seed)
    counts, aris = [], []
    n_keep = min(regions.n_images - 1, max(2, round(fraction * regions.n_images)))
    for _ in range(resamples):
        images = np.sort(rng.choice(regions.n_images, size=n_keep, replace=False))
        sub = regions.subset(images.tolist())
        kept = np.flatnonzero(np.isin(regions.image_id, images))  # same order as in `sub`
        if len(sub) < 2:
            counts.append(0)
            continue
        part = cluster_regions(sub, cfg["similarity"], cfg["cluster"], kmeans_k)
        counts.append(len(part.summaries))
        sub_labels = member_labels(part.summaries, len(sub))
        both = (full_labels[kept] >= 0) & (sub_labels >= 0)
        if both.sum() >= 2:
            aris.append(adjusted_rand_score(full_labels[kept][both], sub_labels[both]))
    return {
        "count_std": float(np.std(counts)),
        "counts": counts,
        "ari": float(np.mean(aris)) if aris else None,
    }


def _faithfulness(
    classifier,
    dataset,
    regions: RegionSet,
    members: Sequence[int],
    mask_cfg: Mapping,
    device,
    seed: int,
    draws: int = 3,
) -> dict:
    """Mean drop when a summary's member regions are blurred in their own images, against the
    same shapes blurred at random places of the same images (``draws`` placements each).
    ``ratio`` > 1: the summary's parts matter more than chance regions of equal area."""
    rng = np.random.default_rng(seed)
    random = []
    for m in members:
        image = dataset[int(regions.index[m])]["image"].to(device)
        shapes = random_placements(np.repeat(regions.masks[m][None], draws, axis=0), rng)
        random.extend(
            blur_drops(
                classifier,
                image,
                shapes,
                regions.target,
                float(mask_cfg["blur_kernel"]),
                float(mask_cfg["blur_sigma"]),
                int(mask_cfg["reference_size"]),
            ).tolist()
        )
    ours, chance = float(np.mean(regions.drops[list(members)])), float(np.mean(random))
    # ratio is undefined when random regions do not lower the score; `faithful` is still decided
    return {
        "drop": ours,
        "random_drop": chance,
        "ratio": ours / chance if chance > 1e-6 else None,
        "faithful": ours > chance,
    }


def _part_metrics(
    classifier,
    dataset,
    regions: RegionSet,
    summaries: list[dict],
    tagging_cfg: Mapping,
    device,
    needed: Mapping | None = None,
) -> dict:
    """Needed parts (deletion drops) and tagging metrics of a class, where the dataset renders parts."""
    truth = part_truth(dataset)
    class_parts = truth.class_parts(regions.target) if truth else None
    if class_parts is None:
        if not any("tag" in e for e in summaries):
            return {}
        # tags without renderable parts (keypoints): no needed parts, no recall
        out = class_tagging([(e["tag"], e["purity"]) for e in summaries], [])
        out.pop("part_recall")
        return out
    if needed and "needed_parts" in needed:
        reliance, parts = needed.get("part_drops", {}), list(needed["needed_parts"])
    else:
        candidates = list(class_parts) + ["watermark"]
        reliance = part_reliance(
            classifier, dataset, regions.image_indices.tolist(), regions.target, candidates, device
        )
        parts = sorted(p for p, d in reliance.items() if d >= float(tagging_cfg["needed_drop"]))
    return {"part_drops": reliance, "needed_parts": parts} | class_tagging(
        [(e["tag"], e["purity"]) for e in summaries], parts
    )


# Per-class numbers kept for each baseline in metrics.json (ours keep all).
BASELINE_CLASS_KEYS = (
    "summaries",
    "purity",
    "background_share",
    "on_object_share",
    "found_parts",
    "summaries_per_part",
    "distinctiveness",
    "pipnet_purity",
    "consistency",
    "keypoint_nmi",
    "keypoint_ari",
    "stability",
)


def run_summaries(
    classifier: torch.nn.Module,
    dataset,
    mask_files: Mapping[str, Sequence[tuple[int, Path]]],
    targets: Mapping[str, int],
    cfg: Mapping,
    device: torch.device,
    cache_dir: Path | None = None,
    tagging: TaggingSettings | None = None,
    baseline_summaries: dict | None = None,
) -> tuple[dict, dict]:
    """All classes: returns ``(summaries_json, metrics)`` where metrics holds ``classes`` and the
    top-level measures of :func:`aggregate` and, when ``baselines.enabled``, the same numbers for
    each baseline under ``baselines.<name>``. ``cache_dir``: where each class's RegionSet is
    cached (``<source>/<class>.npz``), so a re-run with other clustering settings skips the network.
    ``baseline_summaries``: a dict filled with each baseline's summaries, in the format of
    ``summaries_json`` (the user study shows them beside ours)."""
    t0 = time.perf_counter()
    baselines_cfg = cfg.get("baselines") or {}
    names = list(baselines_cfg.get("names") or []) if baselines_cfg.get("enabled") else []
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"baselines.names holds {unknown}; known: {list(BASELINES)}")
    tagging = tagging or TaggingSettings.from_cfg(cfg["tagging"])
    ours: dict[str, RegionSet] = {}
    classes_out, class_metrics = {}, {}
    for name, items in mask_files.items():
        ours[name] = class_regions(
            classifier, dataset, name, targets[name], items, cfg, device, cache_dir, tagging=tagging
        )
        classes_out[name], class_metrics[name] = _summarize_source(
            classifier, dataset, ours[name], cfg, device
        )
        m = class_metrics[name]
        log.info("summaries %s: %d regions -> %d summaries %s", name, m.get("regions", 0), m.get("summaries", 0),
                 [(s.get("tag"), round(s.get("purity", 0), 2), s["support"]) for s in classes_out[name]])  # fmt: skip
    metrics = aggregate(classes_out, class_metrics)
    if names:
        metrics["baselines"] = {}
    layer = classifier.feature_module(cfg["similarity"].get("layer")) if names else None
    seed = int(baselines_cfg.get("seed", 0))
    for baseline in names:
        b_out, b_metrics = {}, {}
        if baseline != "kmeans":
            sharp_of = sharp_source(baseline, classifier, layer, seed)
            source = f"{baseline}-seed{seed}" if baseline == "random" else baseline
        for name, items in mask_files.items():
            if baseline == "kmeans":
                regions, kw = ours[name], {"kmeans_k": int(baselines_cfg["kmeans_k"])}
            else:
                regions = class_regions(classifier, dataset, name, targets[name], items, cfg,
                                        device, cache_dir, source=source, sharp_of=sharp_of,
                                        tagging=tagging)  # fmt: skip
                kw = {}
            # the parts a class needs do not depend on the method: ours were measured already
            known = {k: class_metrics[name][k] for k in ("part_drops", "needed_parts") if k in class_metrics[name]}  # fmt: skip
            b_out[name], b_metrics[name] = _summarize_source(
                classifier, dataset, regions, cfg, device, needed=known, **kw
            )
        if baseline_summaries is not None:
            baseline_summaries[baseline] = {"classes": b_out}
        agg = aggregate(b_out, b_metrics)
        agg["classes"] = {
            c: {k: v.get(k) for k in BASELINE_CLASS_KEYS if k in v}
            for c, v in agg["classes"].items()
        }
        metrics["baselines"][baseline] = agg
        log.info("baseline %s: %s", baseline, {k: agg.get(k) for k in HEADLINE_MEASURES})
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    return {"classes": classes_out}, metrics


def _summarize_source(
    classifier, dataset, regions: RegionSet, cfg: Mapping, device, needed=None, kmeans_k=None
) -> tuple[list[dict], dict]:
    """Summaries, metrics and bootstrap stability of one class's regions (clustered once)."""
    clustering = (
        cluster_regions(regions, cfg["similarity"], cfg["cluster"], kmeans_k)
        if len(regions) >= 2
        else None
    )
    summaries, metrics = summarize_class(
        classifier, dataset, regions, cfg, device, kmeans_k, needed, clustering
    )
    resamples = int(cfg["cluster"].get("stability_resamples", 0))
    if resamples and clustering is not None:
        metrics["stability"] = stability(
            regions,
            cfg,
            resamples=resamples,
            fraction=float(cfg["cluster"].get("stability_fraction", 0.8)),
            kmeans_k=kmeans_k,
            full=clustering,
        )
    return summaries, metrics


def aggregate(classes_out: Mapping[str, list[dict]], class_metrics: dict) -> dict:
    """Top-level summary metrics over all classes."""
    all_summaries = [s for ss in classes_out.values() for s in ss]
    tagged = [s for s in all_summaries if s.get("tag") not in (None, BACKGROUND_TAG)]
    needed_pairs = [(c, p) for c, m in class_metrics.items() for p in m.get("needed_parts", [])]
    found = {(c, p) for c, m in class_metrics.items() for p in m.get("found_parts", [])}
    metrics = {
        "classes": class_metrics,
        "mean_summaries": float(np.mean([m.get("summaries", 0) for m in class_metrics.values()]))
        if class_metrics
        else 0.0,
        "mean_purity": float(np.mean([s["purity"] for s in tagged])) if tagged else None,
        "background_share": (
            sum(s.get("tag") == BACKGROUND_TAG for s in all_summaries) / len(all_summaries)
        )
        if all_summaries and "tag" in all_summaries[0]
        else None,
        "part_recall": (sum(pair in found for pair in needed_pairs) / len(needed_pairs))
        if needed_pairs
        else None,
    }
    placed = [m["on_object"] for s in all_summaries for m in s["members"] if "on_object" in m]
    if placed:
        metrics["on_object_share"] = float(np.mean(placed))
    ratios = [
        s["faithfulness"]["ratio"] for s in all_summaries if s["faithfulness"]["ratio"] is not None
    ]
    metrics["mean_faithfulness_ratio"] = float(np.mean(ratios)) if ratios else None
    # ratios explode when random regions change nothing: the median is the robust summary
    metrics["median_faithfulness_ratio"] = float(np.median(ratios)) if ratios else None
    # share of summaries whose members matter more than random regions of equal shape (ratio > 1,
    # counting those whose random drop is <= 0 by the sign of their own drop)
    faithful = [s["faithfulness"]["faithful"] for s in all_summaries]
    metrics["faithful_fraction"] = float(np.mean(faithful)) if faithful else None
    aris = [m["ari_dense"] for m in class_metrics.values() if "ari_dense" in m]
    if aris:
        metrics["ari_dense_vs_faiss"] = float(np.mean(aris))

    def class_mean(values) -> float | None:
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    per_class = class_metrics.values()
    # means over classes (per-class numbers), as the part-discovery papers report them
    for key in ("summaries_per_part", "distinctiveness", "keypoint_nmi", "keypoint_ari"):
        metrics[key] = class_mean(m.get(key) for m in per_class)
    # means over all summaries (per-prototype numbers), as PIP-Net and Huang et al. report them
    metrics["pipnet_purity"] = class_mean(s.get("pipnet_purity") for s in all_summaries)
    metrics["consistency"] = class_mean(s.get("consistent") for s in all_summaries)
    metrics["stability_count_std"] = class_mean(m.get("stability", {}).get("count_std") for m in per_class)  # fmt: skip
    metrics["stability_ari"] = class_mean(m.get("stability", {}).get("ari") for m in per_class)
    return metrics
