"""The ``specialize`` stage: for each group of confused classes, train the summary-prototype head
and its two controls over several seeds and measure them on a held-out split.

Data roles (nothing held out is used for summaries, training or choices):

* groups come from the base model's soft confusion on ``specialize.groups_split`` (``groups``
  stage): ``val``, or ``evaluated`` (the evaluated split, ``data.split``);
* summaries (hence prototypes) come from the evaluated split, which specialisation experiments set
  to ``train`` (or, cross-fitting, to the half of the train split the base model did not train on);
* the heads train on the ``specialize.heads_split`` images of the group's classes (``train``, or
  ``evaluated`` when cross-fitting), for a fixed budget;
* accuracy is measured on ``specialize.heldout_split`` (``test``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from vislight.interrupt import StopCallback
from vislight.models.probe import dataset_probabilities
from vislight.specialization.features import collect_features
from vislight.specialization.groups import confused_groups, soft_confusion
from vislight.specialization.module import SpecializationModule
from vislight.specialization.prototypes import (
    kmeans_prototypes,
    prototype_evidence,
    summary_prototypes,
)

log = logging.getLogger(__name__)
METHODS = ("specialized", "kmeans_control", "head_control")


class _Rows(Dataset):
    def __init__(self, **columns: torch.Tensor):
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.columns.items()}


def _indices_of(dataset, classes: Sequence[int]) -> list[int]:
    wanted = set(classes)
    return [i for i, y in enumerate(dataset.targets()) if y in wanted]


def choose_groups(
    classifier: torch.nn.Module,
    dataset,
    num_classes: int,
    num_groups: int,
    group_size: int,
    device: torch.device,
) -> tuple[list[list[int]], np.ndarray]:
    """The ``num_groups`` groups of ``group_size`` classes the classifier confuses most on
    ``dataset`` (soft confusion). Returns ``(groups, confusion)``."""
    probs, labels = dataset_probabilities(classifier, dataset, device)
    conf = soft_confusion(probs.numpy(), labels.numpy(), num_classes)
    return confused_groups(conf, num_groups, group_size), conf


def _fit(train: dict, num_prototypes: int, g: int, head, train_head: bool, cfg: Mapping, seed: int):
    pl.seed_everything(seed, verbose=False)
    module = SpecializationModule(
        num_prototypes,
        g,
        head[0],
        head[1],
        train_head=train_head,
        lr=float(cfg["lr"]),
        weight_decay=float(cfg["weight_decay"]),
        init_std=float(cfg["init_std"]),
    )
    loader = DataLoader(
        _Rows(**train),
        batch_size=int(cfg["batch_size"]),
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    trainer = pl.Trainer(
        max_epochs=int(cfg["epochs"]),
        accelerator="cpu",  # (N, K) tensors: the GPU would only add transfers
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        callbacks=[StopCallback()],
    )
    trainer.fit(module, loader)
    return module.eval()


def layer_names(layer) -> list[str | None]:
    """``specialize.layer`` as a list: null (the model's feature layer), a name, or a list."""
    if layer is None or isinstance(layer, str):
        return [layer]
    names = [str(n) for n in layer]
    if not names:
        raise ValueError("specialize.layer=[] names no layer: give a layer name, a list, or null")
    return names


def _evidence(maps: torch.Tensor, protos: torch.Tensor, mean: torch.Tensor, ref=None):
    """Prototype evidence standardised with the train images' statistics ``ref`` (mu, sigma)."""
    e = prototype_evidence(maps, protos, mean)
    if ref is None:
        ref = (e.mean(0), e.std(0).clamp(min=1e-6))
    return (e - ref[0]) / ref[1], ref


@torch.no_grad()
def _accuracy(module: SpecializationModule, rows: dict) -> float:
    return float((module(rows).argmax(1) == rows["label"]).float().mean())


def specialize_group(
    classifier: torch.nn.Module,
    group: Sequence[int],
    class_names: Sequence[str],
    summaries: Mapping[str, list],
    summary_set,
    train_set,
    heldout_set,
    cfg: Mapping,
    device: torch.device,
) -> dict:
    """Base model, specialised model and both controls on one group (see the module docstring).

    Returns the group's JSON-ready result: classes, prototype count, image counts, ``base`` and
    ``base_all_classes`` held-out accuracy, and per method the accuracy of every seed with mean
    and std.
    """
    group = list(group)
    names = [class_names[c] for c in group]
    remap = {c: k for k, c in enumerate(group)}
    batch = int(cfg["feature_batch_size"])
    members = sorted(
        {m["index"] for c in names for s in summaries.get(c, []) for m in s["members"]}
    )
    records = [s for c in names for s in summaries.get(c, [])]
    modules = [classifier.feature_module(n) for n in layer_names(cfg.get("layer"))]
    train, held = (
        collect_features(classifier, ds, _indices_of(ds, group), modules, device, batch,
                         f"{desc} features {names}")
        for ds, desc in ((train_set, "train"), (heldout_set, "held-out"))
    )  # fmt: skip
    for f in (train, held):
        f["label"] = torch.tensor([remap[int(y)] for y in f["labels"]])
    member_maps = (
        collect_features(classifier, summary_set, members, modules, device, batch,
                         "summary regions")["maps"]
        if members else [torch.zeros(0)] * len(modules)
    )  # fmt: skip
    layers = []  # per layer with prototypes: train maps, held-out maps, train mean, prototypes
    for train_maps, held_maps, at_members in zip(train["maps"], held["maps"], member_maps):
        mean = train_maps.mean((0, 2, 3))
        maps_of = {i: at_members[k] for k, i in enumerate(members)}
        protos = summary_prototypes(records, maps_of, mean)
        if len(protos):
            layers.append((train_maps, held_maps, mean, protos))
    protos = [p for *_, p in layers]
    head = classifier.head()
    head_init = (head.weight[group].detach().cpu(), head.bias[group].detach().cpu())
    result: dict = {
        "classes": names,
        "prototypes": sum(len(p) for p in protos),
        "train_images": len(train["label"]),
        "heldout_images": len(held["label"]),
        "base": float((held["logits"][:, group].argmax(1) == held["label"]).float().mean()),
        "base_all_classes": float(
            (held["logits"].argmax(1) == torch.tensor(group)[held["label"]]).float().mean()
        ),
    }
    if not layers:
        result["note"] = "no summaries for these classes: nothing to specialise on"
        log.warning("specialize %s: no summaries, group skipped", names)
        return result
    runs: dict[str, list[float]] = {m: [] for m in METHODS}
    train_head = bool(cfg["train_head"])
    base = {"pooled": train["pooled"], "label": train["label"]}
    base_held = {"pooled": held["pooled"], "label": held["label"]}
    n_protos = result["prototypes"]
    for seed in cfg["seeds"]:
        seed = int(seed)
        # the control: as many k-means centroids per layer as that layer has summary prototypes
        control = [kmeans_prototypes(tm, mean, len(p), seed) for tm, _, mean, p in layers]
        for method, chosen in (("specialized", protos), ("kmeans_control", control)):
            e_train, e_held = [], []
            for (train_maps, held_maps, mean, _), p in zip(layers, chosen):
                e, ref = _evidence(train_maps, p, mean)
                e_train.append(e)
                e_held.append(_evidence(held_maps, p, mean, ref)[0])
            module = _fit({**base, "evidence": torch.cat(e_train, 1)}, n_protos, len(group),
                          head_init, train_head, cfg, seed)  # fmt: skip
            runs[method].append(_accuracy(module, {**base_held, "evidence": torch.cat(e_held, 1)}))
        module = _fit(base, 0, len(group), head_init, True, cfg, seed)
        runs["head_control"].append(_accuracy(module, base_held))
    for method, accs in runs.items():
        result[method] = {"runs": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs))}
    log.info(
        "specialize %s (%d prototypes, %d held-out images): base %.3f, specialised %.3f±%.3f, "
        "k-means control %.3f±%.3f, head fine-tuning %.3f±%.3f",
        names, n_protos, result["heldout_images"], result["base"],
        *(v for m in METHODS for v in (result[m]["mean"], result[m]["std"])),
    )  # fmt: skip
    return result


def summarize_groups(groups: Sequence[Mapping], seeds: Sequence[int]) -> dict:
    """Over the groups, weighted by held-out images: base accuracy, and per method the mean
    accuracy of each seed, then mean and std over seeds; ``beats_all`` says whether the
    specialised model beats the base and both controls by more than the seed std."""
    done = [g for g in groups if "specialized" in g]
    if not done:
        return {"groups": len(groups), "specialized_groups": 0}
    w = np.array([g["heldout_images"] for g in done], dtype=float)
    w /= w.sum()
    out: dict = {
        "groups": len(groups),
        "specialized_groups": len(done),
        "heldout_images": int(sum(g["heldout_images"] for g in done)),
        "base": float(sum(wi * g["base"] for wi, g in zip(w, done))),
    }
    for m in METHODS:
        per_seed = [
            float(sum(wi * g[m]["runs"][s] for wi, g in zip(w, done))) for s in range(len(seeds))
        ]
        out[m] = {
            "runs": per_seed,
            "mean": float(np.mean(per_seed)),
            "std": float(np.std(per_seed)),
        }
    spec = out["specialized"]
    margin = spec["std"]
    out["beats_all"] = bool(
        spec["mean"] - out["base"] > margin
        and all(spec["mean"] - out[m]["mean"] > max(margin, out[m]["std"]) for m in METHODS[1:])
    )
    out["paired"] = paired_tests(done, len(seeds))
    return out


def paired_tests(groups: Sequence[Mapping], n_seeds: int) -> dict:
    """Specialised vs the base model and each control. Over every (group, seed) pair: the mean
    accuracy difference, wins / losses, and the one-sided p-values of a paired t test and of the
    Wilcoxon signed-rank test (H1: specialised is more accurate). The seeds of one group share its
    images (and the base model has one accuracy per group), so the pairs are not independent: the
    same tests over the groups' seed-mean differences (``group_*``, n = groups) are the
    conservative ones."""
    from scipy import stats

    def one_sided(diff: np.ndarray) -> tuple[float | None, float | None]:
        nonzero = diff[diff != 0]
        t = stats.ttest_1samp(diff, 0.0, alternative="greater").pvalue
        return (
            float(t) if len(diff) > 1 and diff.std() > 0 else None,
            float(stats.wilcoxon(nonzero, alternative="greater").pvalue) if len(nonzero) else None,
        )

    out = {}
    for other in ("base", *METHODS[1:]):
        per_group = np.array([
            [g["specialized"]["runs"][s] - (g[other] if other == "base" else g[other]["runs"][s])
             for s in range(n_seeds)]
            for g in groups
        ])  # fmt: skip
        diff = per_group.ravel()
        t_p, w_p = one_sided(diff)
        gt_p, gw_p = one_sided(per_group.mean(1))
        out[other] = {
            "pairs": int(len(diff)),
            "mean_difference": float(diff.mean()),
            "wins": int((diff > 0).sum()),
            "losses": int((diff < 0).sum()),
            "t_test_p": t_p,
            "wilcoxon_p": w_p,
            "groups": len(groups),
            "group_t_test_p": gt_p,
            "group_wilcoxon_p": gw_p,
        }
    return out
