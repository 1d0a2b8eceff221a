"""A finished run folder, opened again: its config, summaries, classifier and data.

``python -m vislight.apply`` and ``python -m vislight.study`` work on a run that ended: they read
its ``config.yaml`` and ``summaries.json``, rebuild the explained classifier (the run's own
``classifier.ckpt`` when vislight trained it, else the weights its config names) and the data its
config names, optionally with overrides (``data.root=...`` to point at new images).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vislight import CONF_DIR
from vislight.errors import ConfigError
from vislight.run_folder import RunFolder

# Config groups a run made before they existed gets from the packaged defaults.
ADDED_GROUPS = ("apply", "study")


def _with_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """``cfg`` with ``key=value`` overrides (values parsed as YAML); a key the config does not
    have is refused unless written ``+key=value``."""
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.lstrip("+"):
            raise ConfigError(
                f"override {item!r} is not key=value (e.g. data.root=/path/to/images)"
            )
        try:
            if not key.startswith("+") and OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
                hint = (
                    " (images of your own: apply.images=/path/to/photos)"
                    if key.startswith("data.")
                    else ""
                )
                raise ConfigError(
                    f"override {item!r}: the run's config has no key {key!r} (check the spelling, "
                    f"or add it with +{key}=...){hint}"
                )
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item.lstrip("+")]))
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {item!r}: {e}") from None
    return cfg


_MISSING = object()


@dataclass
class FinishedRun:
    """A run folder whose summaries stage finished (``summaries.json`` exists)."""

    run: RunFolder
    cfg: DictConfig
    run_cfg: DictConfig | None = None  # the config as the run saved it (before the overrides)

    @classmethod
    def open(cls, path: str | Path, overrides: Sequence[str] = ()) -> FinishedRun:
        """The run at ``path``, its config updated by ``overrides``; one clear error when ``path``
        is not a finished run folder."""
        run = RunFolder(Path(path).expanduser().resolve())
        if not run.root.is_dir():
            raise ConfigError(
                f"run folder {run.root} does not exist: pass the folder of a vislight run"
            )
        for needed in (run.config, run.summaries):
            if not needed.is_file():
                raise ConfigError(
                    f"{run.root} is not a finished vislight run: {needed.name} is missing (run "
                    "`python -m vislight` with the summaries stage first)"
                )
        cfg = OmegaConf.load(run.config)
        for group in ADDED_GROUPS:  # defaults of groups newer than the run
            defaults = CONF_DIR / group / "default.yaml"
            if group not in cfg and defaults.is_file():
                cfg[group] = OmegaConf.load(defaults)
        return cls(run, _with_overrides(cfg.copy(), overrides), cfg)

    @cached_property
    def summaries(self) -> dict:
        """The content of ``summaries.json``: ``{"classes": {class: [summary, ...]}}``."""
        return json.loads(self.run.summaries.read_text())

    def baseline_summaries(self, name: str) -> dict | None:
        """A baseline's summaries (same format), or None when the run did not keep them."""
        path = self.run.baseline_summaries(name)
        return json.loads(path.read_text()) if path.is_file() else None

    @cached_property
    def metrics(self) -> dict:
        return json.loads(self.run.metrics.read_text()) if self.run.metrics.is_file() else {}

    def model_config(self) -> dict:
        """The ``model`` node, with the ``_target_`` of runs made before configs named one."""
        model = OmegaConf.to_container(self.cfg.model, resolve=True)
        if not model.get("_target_") and model.get("family"):
            model["_target_"] = f"vislight.models.zoo.{model['family']}"
        return model

    def classifier(self, device: torch.device | str = "cpu"):
        """The explained classifier in eval mode: the run's ``classifier.ckpt`` when it has one."""
        from vislight.models.registry import build_classifier, load_state_dict_file

        model = self.model_config()
        if not model.get("_target_"):
            raise ConfigError(
                f"the model of {self.run.root} was given in memory (vislight.explain), so it "
                "cannot be rebuilt from its config: apply it from Python, result.apply(images)"
            )
        if model.get("num_classes") is None:
            model["num_classes"] = len(self.classes)
        classifier = build_classifier(model)
        if self.run.classifier.is_file():
            classifier.net.load_state_dict(load_state_dict_file(self.run.classifier))
        elif getattr(classifier.net, "vislight_new_head", None):
            raise ConfigError(
                f"{self.run.root} has no classifier.ckpt and its model's head is untrained: the "
                "run's classifier cannot be rebuilt"
            )
        return classifier.to(device).eval()

    def feature_layer(self, classifier: torch.nn.Module) -> torch.nn.Module:
        """The module of ``classifier`` whose output the run's region descriptors read."""
        return classifier.feature_module(
            self.metrics.get("feature_layer") or self.cfg.similarity.get("layer")
        )

    @property
    def blur(self) -> tuple[float, float, int]:
        """The run's mask blur ``(blur_kernel, blur_sigma, reference_size)`` (a deletion check
        blurs a region as the masks stage did)."""
        m = self.cfg.masks
        return float(m.blur_kernel), float(m.blur_sigma), int(m.reference_size)

    def _build_datamodule(self, data: DictConfig):
        from vislight.data.datamodule import build_datamodule

        model = self.model_config()
        dm = build_datamodule(
            OmegaConf.to_container(data, resolve=True),
            input_size=model["input_size"],
            resize_size=model.get("resize_size"),
        )
        dm.setup("test")
        return dm

    @cached_property
    def _datamodule(self):
        return self._build_datamodule(self.cfg.data)

    @cached_property
    def _run_datamodule(self):
        return self._build_datamodule((self.run_cfg or self.cfg).data)

    def datamodule(self):
        """The data the config names after the overrides, set up for its evaluated split."""
        return self._datamodule

    def run_datamodule(self):
        """The run's own evaluated data (the summaries' members index its ``test_set``)."""
        return self._run_datamodule

    @cached_property
    def classes(self) -> list[str]:
        """The classifier's class names, output by output (the run's evaluated data's classes)."""
        names = self.metrics.get("class_names") or list(self.metrics.get("classes", {}))
        if not names:
            raise ConfigError(
                f"{self.run.metrics} names no classes: the run did not finish its evaluate stage"
            )
        return list(names)
