"""The run folder's layout: every artifact path of a run, in one place.

``paths.output_dir`` (default ``outputs/runs/<time>``) holds:

===============================  ==============================================================
``config.yaml``                  the composed config, resolved
``metrics.json``                 every stage's numbers (rewritten atomically after each stage)
``classifier.ckpt``              the explained weights, when vislight trained them
``masks/<class>/<key>.npz``      one crisp mask per explained image (cached, resumable)
``summaries.json``               the summaries per class, members with boxes and RLE masks
``summaries/regions/<source>/``  each class's measured regions (a cached ``RegionSet``)
``summaries/baselines/<b>.json``  each baseline's summaries, in ``summaries.json``'s format
``apply/<name>/``                 the summaries located in new images (``python -m vislight.apply``)
``study/``                        the user-study kit's trials, crops and answers (``vislight.study``)
``report/index.html``            the HTML report (``report/masks.html``: per-image masks)
``wandb/``                       the offline W&B run, when W&B is on
===============================  ==============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (nothing is created until a stage writes)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def classifier(self) -> Path:
        return self.root / "classifier.ckpt"

    @property
    def masks(self) -> Path:
        return self.root / "masks"

    @property
    def summaries(self) -> Path:
        return self.root / "summaries.json"

    @property
    def regions(self) -> Path:
        """``summaries/regions``: one subfolder per mask source (``ours``, ``gradcam``, ...)."""
        return self.root / "summaries" / "regions"

    def baseline_summaries(self, name: str) -> Path:
        """``summaries/baselines/<name>.json``: a baseline's summaries (``gradcam``, ...)."""
        return self.root / "summaries" / "baselines" / f"{name}.json"

    def applied(self, name: str) -> Path:
        """``apply/<name>``: one application of the summaries to new images."""
        return self.root / "apply" / name

    @property
    def study(self) -> Path:
        """``study``: the user study's trials, crops and answers."""
        return self.root / "study"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def report_index(self) -> Path:
        return self.report / "index.html"

    @property
    def report_masks(self) -> Path:
        return self.report / "masks.html"

    @staticmethod
    def find_runs(folder: Path) -> list[RunFolder]:
        """The run folders under ``folder`` (those with a ``metrics.json``), by path."""
        return [
            RunFolder(p.parent)
            for p in sorted(Path(folder).rglob("metrics.json"))
            if "wandb" not in p.parts
        ]
