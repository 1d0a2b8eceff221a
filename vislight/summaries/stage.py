"""The ``summaries`` stage: for every class, regions of its masks -> similarity graph -> affinity
propagation -> pruned summaries, tagged against ground-truth parts where the dataset has them."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score
from tqdm.auto import tqdm

from vislight.clustering.affinity import affinity_propagation, shifted_similarities
from vislight.clustering.summaries import build_summaries
from vislight.evaluation.tagging import (
    BACKGROUND_TAG,
    class_tagging,
    part_reliance,
    summary_tag,
    tag_region,
)
from vislight.interrupt import check
from vislight.masks.cache import MaskCache
from vislight.regions.describe import blur_drops, describe_regions, random_placements
from vislight.regions.extract import extract_regions
from vislight.similarity.graph import similarity_graph
from vislight.summaries.baselines import BASELINES, kmeans_labels, sharp_source
from vislight.summaries.rle import rle_encode

log = logging.getLogger(__name__)

# The headline measures of a set of summaries, ours and each baseline's alike (metrics.json, the
# report's baselines table, the CUB studies).
HEADLINE_MEASURES = (
    "mean_summaries",
    "mean_purity",
    "background_share",
    "on_object_share",
    "faithful_fraction",
    "median_faithfulness_ratio",
)


def _cluster(graph, median_similarity: float, cluster_cfg: Mapping):
    shifted = shifted_similarities(graph)
    if shifted.nnz == 0:
        return np.full(graph.shape[0], -1), None
    # Shifted similarities are s - 1 <= 0; the preference is a multiple of their median over
    # all region pairs (estimated from a sample), as for dense affinity propagation.
    preference = float(cluster_cfg["preference_factor"]) * (median_similarity - 1.0)
    ap = affinity_propagation(
        shifted,
        preference,
        damping=float(cluster_cfg["damping"]),
        max_iter=int(cluster_cfg["max_iter"]),
        convergence_iter=int(cluster_cfg["convergence_iter"]),
    )
    return ap.labels, ap


def summarize_class(
    classifier: torch.nn.Module,
    dataset,
    class_name: str,
    target: int,
    items: Sequence[tuple[int, Path]],
    regions_cfg: Mapping,
    similarity_cfg: Mapping,
    cluster_cfg: Mapping,
    mask_cfg: Mapping,
    device: torch.device,
    sharp_of=None,
    kmeans_k: int | None = None,
) -> tuple[list[dict], dict]:
    """Summaries (JSON-ready) and metrics of one class from its cached masks ``items``.

    Baselines: ``sharp_of(our_sharp, image, target)`` replaces each mask before regions are cut;
    ``kmeans_k`` clusters with k-means (fixed K) instead of affinity propagation.
    """
    layer = classifier.feature_module(similarity_cfg.get("layer"))
    regions, image_id, drops, descs, geoms = [], [], [], [], []
    for img_no, (index, path) in enumerate(
        tqdm(items, desc=f"regions {class_name}", leave=False, mininterval=1.0)
    ):
        check()  # a stop signal ends the stage between images (summaries.json is written at the end)
        sharp = MaskCache.read(path)["sharp"]
        item = dataset[index]
        image = item["image"]
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
        d = describe_regions(
            classifier,
            layer,
            image.to(device),
            np.stack([r.mask for r in found]),
            target,
            float(mask_cfg["blur_kernel"]),
            float(mask_cfg["blur_sigma"]),
            int(mask_cfg["reference_size"]),
        )
        for r in found:
            regions.append(
                {"index": int(index), "key": str(item["key"]), "region": r, "target": target}
            )
            image_id.append(img_no)
        drops.append(d["drop"])
        descs.append(d["descriptor"])
        geoms.append(d["geometry"])
    metrics: dict = {"images": len(items), "regions": len(regions)}
    if len(regions) < 2:
        metrics["summaries"] = 0
        metrics.update(_part_metrics(classifier, dataset, items, target, [], cluster_cfg, device))
        return [], metrics
    image_id = np.asarray(image_id)
    drops, descs, geoms = np.concatenate(drops), np.concatenate(descs), np.concatenate(geoms)
    if similarity_cfg.get("center", True):
        # ReLU features are all positive, so raw cosines are all high: centre on the class's
        # mean region descriptor so that cosine separates parts.
        descs = descs - descs.mean(0, keepdims=True)
        descs /= np.linalg.norm(descs, axis=1, keepdims=True).clip(min=1e-8)
    side = int(dataset[items[0][0]]["image"].shape[-1])
    sim_kw = dict(
        k=int(similarity_cfg["k"]),
        w_xy=float(similarity_cfg["w_xy"]) * side,
        w_scale=float(similarity_cfg["w_scale"]),
        approx_above=int(similarity_cfg["approx_above"]),
        nprobe=int(similarity_cfg["nprobe"]),
    )
    graph, median = similarity_graph(
        descs, image_id, geoms, mode=str(similarity_cfg["mode"]), **sim_kw
    )
    if kmeans_k:
        labels, ap = kmeans_labels(descs, kmeans_k), None
    else:
        labels, ap = _cluster(graph, median, cluster_cfg)
    metrics["edges"] = int(graph.nnz)
    metrics["ap_clusters"] = int(len(ap.exemplars)) if ap is not None else 0
    metrics["ap_converged"] = bool(ap.converged) if ap is not None else False
    if similarity_cfg.get("compare_dense") and similarity_cfg["mode"] != "dense":
        dense_labels, _ = _cluster(
            *similarity_graph(descs, image_id, geoms, mode="dense", **sim_kw), cluster_cfg
        )
        metrics["ari_dense"] = float(adjusted_rand_score(dense_labels, labels))
    summaries, stats = build_summaries(
        labels,
        graph,
        image_id,
        min_support=int(cluster_cfg["min_support"]),
        min_support_fraction=float(cluster_cfg["min_support_fraction"]),
        coherence_ratio=float(cluster_cfg["coherence_ratio"]),
        outlier_ratio=float(cluster_cfg["outlier_ratio"]),
        n_images=len(items),
    )
    metrics.update(pruning=stats, summaries=len(summaries))
    has_parts = hasattr(dataset, "parts")
    has_keypoints = not has_parts and hasattr(dataset, "tag_region")
    part_cache: dict[int, np.ndarray] = {}
    out = []
    for s in summaries:
        members = []
        tags = []
        for m, sim in zip(s.members, s.similarity):
            info = regions[m]
            r = info["region"]
            member = {
                "key": info["key"],
                "index": info["index"],
                "bbox": list(r.box),
                "kind": r.kind,
                "area": r.area / r.mask.size,
                "drop": float(drops[m]),
                "similarity": float(sim),
                "mask_rle": rle_encode(r.mask),
            }
            if has_keypoints:
                member["tag"] = dataset.tag_region(
                    info["index"], r.mask, float(cluster_cfg.get("keypoint_margin", 0.04))
                )
                tags.append(member["tag"])
            if hasattr(dataset, "on_object"):
                member["on_object"] = dataset.on_object(info["index"], r.mask)
            if has_parts:
                if info["index"] not in part_cache:
                    part_cache[info["index"]] = dataset.parts(info["index"])
                member["tag"] = tag_region(
                    r.mask, part_cache[info["index"]], float(cluster_cfg["tag_min_share"])
                )
                tags.append(member["tag"])
            members.append(member)
        entry = {
            "exemplar": members[0]["key"],
            "support": s.support,
            "coherence": s.coherence,
            "mean_region_drop": float(np.mean([mm["drop"] for mm in members])),
            "faithfulness": _faithfulness(
                classifier,
                dataset,
                [regions[m] for m in s.members],
                [mm["drop"] for mm in members],
                target,
                mask_cfg,
                device,
                seed=len(out),
            ),
            "members": members,
        }
        if tags:
            entry["tag"], entry["purity"] = summary_tag(tags)
        if members and "on_object" in members[0]:
            entry["on_object_share"] = float(np.mean([mm["on_object"] for mm in members]))
        out.append(entry)
    placed = [m["on_object"] for e in out for m in e["members"] if "on_object" in m]
    if placed:
        metrics["on_object_share"] = float(np.mean(placed))
    metrics.update(_part_metrics(classifier, dataset, items, target, out, cluster_cfg, device))
    return out, metrics


def _faithfulness(
    classifier,
    dataset,
    regions: list[dict],
    drops: list[float],
    target: int,
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
    for info in regions:
        image = dataset[info["index"]]["image"].to(device)
        shapes = random_placements(np.repeat(info["region"].mask[None], draws, axis=0), rng)
        random.extend(
            blur_drops(
                classifier,
                image,
                shapes,
                info["target"],
                float(mask_cfg["blur_kernel"]),
                float(mask_cfg["blur_sigma"]),
                int(mask_cfg["reference_size"]),
            ).tolist()
        )
    ours, chance = float(np.mean(drops)), float(np.mean(random))
    # ratio is undefined when random regions do not lower the score; `faithful` is still decided
    return {
        "drop": ours,
        "random_drop": chance,
        "ratio": ours / chance if chance > 1e-6 else None,
        "faithful": ours > chance,
    }


def _part_metrics(
    classifier, dataset, items, target: int, summaries: list[dict], cluster_cfg: Mapping, device
) -> dict:
    """Needed parts (deletion drops) and tagging metrics of a class, where the dataset renders parts."""
    if not (hasattr(dataset, "parts") and hasattr(dataset, "class_parts")):
        if not any("tag" in e for e in summaries):
            return {}
        # tags without renderable parts (keypoints): no needed parts, no recall
        out = class_tagging([(e["tag"], e["purity"]) for e in summaries], [])
        out.pop("part_recall")
        return out
    indices = [i for i, _ in items]
    candidates = list(dataset.class_parts(target)) + ["watermark"]
    reliance = part_reliance(classifier, dataset, indices, target, candidates, device)
    needed = sorted(p for p, drop in reliance.items() if drop >= float(cluster_cfg["needed_drop"]))
    return {"part_drops": reliance, "needed_parts": needed} | class_tagging(
        [(e["tag"], e["purity"]) for e in summaries], needed
    )


def run_summaries(
    classifier: torch.nn.Module,
    dataset,
    mask_files: Mapping[str, Sequence[tuple[int, Path]]],
    targets: Mapping[str, int],
    cfg: Mapping,
    device: torch.device,
) -> tuple[dict, dict]:
    """All classes: returns ``(summaries_json, metrics)`` where metrics holds ``classes`` and the
    top-level ``mean_purity``, ``background_share``, ``part_recall``, ``mean_summaries``,
    faithfulness, ``on_object_share`` (keypoint datasets) and, when ``baselines.enabled``, the same
    numbers for each baseline under ``baselines.<name>``."""
    t0 = time.perf_counter()
    classes_out, class_metrics = _summarize_all(
        classifier, dataset, mask_files, targets, cfg, device
    )
    metrics = aggregate(classes_out, class_metrics)
    baselines_cfg = cfg.get("baselines") or {}
    if baselines_cfg.get("enabled"):
        metrics["baselines"] = {}
        for name in baselines_cfg["names"]:
            if name not in BASELINES:
                raise ValueError(f"baselines.names holds {name!r}; known: {list(BASELINES)}")
            kw = (
                {"kmeans_k": int(baselines_cfg["kmeans_k"])}
                if name == "kmeans"
                else {
                    "sharp_of": sharp_source(
                        name,
                        classifier,
                        classifier.feature_module(cfg["similarity"].get("layer")),
                        int(baselines_cfg.get("seed", 0)),
                    )
                }
            )
            b_out, b_metrics = _summarize_all(
                classifier, dataset, mask_files, targets, cfg, device, **kw
            )
            agg = aggregate(b_out, b_metrics)
            per_class = (
                "summaries",
                "purity",
                "background_share",
                "on_object_share",
                "found_parts",
            )
            agg["classes"] = {
                c: {k: v.get(k) for k in per_class if k in v} for c, v in agg["classes"].items()
            }
            metrics["baselines"][name] = agg
            log.info(
                "baseline %s: %s",
                name,
                {
                    k: agg.get(k)
                    for k in (
                        "mean_summaries",
                        "mean_purity",
                        "background_share",
                        "on_object_share",
                        "faithful_fraction",
                    )
                },
            )
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    return {"classes": classes_out}, metrics


def _summarize_all(
    classifier, dataset, mask_files, targets, cfg, device, **kw
) -> tuple[dict, dict]:
    classes_out, class_metrics = {}, {}
    for name, items in mask_files.items():
        summaries, m = summarize_class(
            classifier,
            dataset,
            name,
            targets[name],
            items,
            cfg["regions"],
            cfg["similarity"],
            cfg["cluster"],
            cfg["masks"],
            device,
            **kw,
        )
        classes_out[name] = summaries
        class_metrics[name] = m
        if not kw:
            log.info("summaries %s: %d regions -> %d summaries %s", name, m.get("regions", 0), m.get("summaries", 0),
                     [(s.get("tag"), round(s.get("purity", 0), 2), s["support"]) for s in summaries])  # fmt: skip
    return classes_out, class_metrics


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
    return metrics
