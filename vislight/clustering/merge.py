"""Merging summaries that show the same part (affinity propagation over-splits a dominant part).

Affinity propagation chooses exemplars among regions; a part seen in many poses, scales or crops
gets several exemplars, each summarising a subset of the images (on the synthetic world: "ring"
four times, on CUB albatross: "head" six times). Two such summaries are one part when their members
are, on average, as similar to each other's as to their own: average-linkage agglomeration of the
summaries with

    ratio(A, B) = mean cos(a, b) over a in A, b in B  /  min(within(A), within(B)),

``within(X)`` = mean cos between two different members of X, on the *uncentred* L2-normalised
descriptors (centring on the class's mean region, right for the region graph, turns the views of a
dominant part into opposite directions). The closest pair is merged while its ratio >= ``min_ratio``.
A merged summary keeps the exemplar of its largest part and one member per image; each member keeps
its similarity to the exemplar of the summary it came from (the region graph's similarity; the
exemplar of an absorbed summary takes that summary's coherence).
"""

from __future__ import annotations

import numpy as np

from vislight.clustering.summaries import Summary


def _mean_within(gram: np.ndarray) -> float:
    n = len(gram)
    return float((gram.sum() - np.trace(gram)) / (n * (n - 1))) if n > 1 else 1.0


def merge_summaries(
    summaries: list[Summary],
    descriptors: np.ndarray,
    image_id: np.ndarray,
    min_ratio: float,
    masks: np.ndarray | None = None,
    max_side_by_side: int | None = None,
) -> tuple[list[Summary], int]:
    """Merge summaries of one part (module docstring).

    Args:
        summaries: a class's pruned summaries (members are region indices).
        descriptors: (N, C) L2-normalised region descriptors (uncentred): the merge criterion.
        image_id: (N,) image of each region.
        min_ratio: merge while the closest pair's ratio is at least this (> 1: never merge).

    Returns the summaries (merged ones rebuilt, order by support then coherence) and the number of
    merges made.
    """
    groups = [list(s.members) for s in summaries]
    merged_from = [[k] for k in range(len(summaries))]
    within = [_mean_within(descriptors[g] @ descriptors[g].T) for g in groups]
    merges = 0
    while len(groups) > 1:
        best, pair = -np.inf, None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                if (
                    max_side_by_side is not None
                    and _side_by_side(groups[a], groups[b], image_id, masks) > max_side_by_side
                ):
                    continue
                cross = float((descriptors[groups[a]] @ descriptors[groups[b]].T).mean())
                ratio = cross / max(min(within[a], within[b]), 1e-8)
                if ratio > best:
                    best, pair = ratio, (a, b)
        if best < min_ratio:
            break
        a, b = pair
        groups[a] += groups.pop(b)
        merged_from[a] += merged_from.pop(b)
        within.pop(b)
        within[a] = _mean_within(descriptors[groups[a]] @ descriptors[groups[a]].T)
        merges += 1
    out = []
    for sources in merged_from:
        if len(sources) == 1:
            out.append(summaries[sources[0]])
        else:
            out.append(_rebuild([summaries[k] for k in sources], image_id))
    out.sort(key=lambda s: (-s.support, -s.coherence))
    return out, merges


def _side_by_side(a: list[int], b: list[int], image_id: np.ndarray, masks: np.ndarray) -> int:
    """Images where a member of ``a`` and one of ``b`` are different places (IoU < 0.5)."""
    count = 0
    for img in set(image_id[a].tolist()) & set(image_id[b].tolist()):
        ra = [m for m in a if image_id[m] == img]
        rb = [m for m in b if image_id[m] == img]
        ious = [
            np.logical_and(masks[i], masks[j]).sum()
            / max(np.logical_or(masks[i], masks[j]).sum(), 1)
            for i in ra
            for j in rb
        ]
        count += max(ious) < 0.5
    return count


def _rebuild(parts: list[Summary], image_id: np.ndarray) -> Summary:
    """One summary from several: the exemplar of the largest, one member per image (the one most
    similar to the exemplar of the summary it came from), members keeping that similarity."""
    parts = sorted(parts, key=lambda s: (-s.support, -s.coherence))
    exemplar = parts[0].exemplar
    best: dict[int, tuple[float, int]] = {}
    for part in parts:
        for m, sim in zip(part.members, part.similarity):
            img = int(image_id[m])
            if m == exemplar:
                sim = np.inf  # the exemplar represents its image
            if img not in best or sim > best[img][0]:
                best[img] = (float(sim), int(m))
    kept = sorted(best.values(), key=lambda t: -t[0])
    members = [m for _, m in kept]
    sims = [1.0 if m == exemplar else s for s, m in kept]
    # an absorbed summary's exemplar has no similarity to the new exemplar in the graph's terms: it
    # takes its own summary's coherence (the mean similarity of that summary's members)
    absorbed = {p.exemplar: p.coherence for p in parts[1:]}
    sims = [absorbed.get(m, sim) for m, sim in zip(members, sims)]
    order = [0, *sorted(range(1, len(members)), key=lambda i: -sims[i])]
    members, sims = [members[i] for i in order], [sims[i] for i in order]
    coherence = float(np.mean(sims[1:])) if len(sims) > 1 else 1.0
    return Summary(exemplar, members, sims, len(members), coherence, extra={"merged": True})
