"""The run's loggers (``conf/logger``): built from the config, fed the final metrics and, for W&B,
the report's media (summary mosaics, example masks, a table of the summaries)."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig


def log_media(loggers: list, summaries: dict, report: dict, max_masks: int = 16) -> None:
    """W&B media: summary mosaics and example masks as images, and a table of the summaries."""
    from pytorch_lightning.loggers import WandbLogger

    for lg in loggers:
        if not isinstance(lg, WandbLogger):
            continue
        if report["mosaics"]:
            lg.log_image(
                "summaries/mosaics",
                images=[str(p) for _, _, p in report["mosaics"]],
                caption=[f"{c} #{k}" for c, k, _ in report["mosaics"]],
            )
        if report["masks"]:
            lg.log_image("masks/examples", images=[str(p) for p in report["masks"][:max_masks]])
        columns = [
            "class",
            "summary",
            "tag",
            "purity",
            "support",
            "coherence",
            "faithfulness_ratio",
            "mean_region_drop",
        ]
        rows = [
            [
                c,
                k + 1,
                s.get("tag"),
                s.get("purity"),
                s["support"],
                s["coherence"],
                (s.get("faithfulness") or {}).get("ratio"),
                s["mean_region_drop"],
            ]
            for c, ss in summaries.get("classes", {}).items()
            for k, s in enumerate(ss)
        ]
        lg.log_table("summaries/table", columns=columns, data=rows)


def make_loggers(cfg: DictConfig) -> list:
    return [
        instantiate(c)
        for c in (cfg.get("logger") or {}).values()
        if c is not None and "_target_" in c
    ]


def log_metrics(loggers: list, metrics: dict) -> None:
    flat = {
        f"metrics/{k}": v
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    for k, v in metrics.get("timings", {}).items():
        flat[f"timings/{k}"] = v
    overall = (metrics.get("specialization") or {}).get("overall") or {}
    for k, v in overall.items():  # held-out accuracy of base, specialised and controls
        if isinstance(v, dict) and "mean" in v:
            flat[f"specialization/{k}"] = v["mean"]
        elif k == "base":
            flat["specialization/base"] = v
    for lg in loggers:
        lg.log_metrics(flat)
