"""The ``study`` config group (``conf/study/default.yaml``), checked: :class:`StudySettings`.

``python -m vislight.study serve|score RUN_DIR study.KEY=VALUE`` changes a setting; a value out of
its range, a wrong type or an unknown key stops the command with one line naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from omegaconf import DictConfig, OmegaConf

from vislight.config_ranges import check_group
from vislight.errors import ConfigError

# Names of methods (folder-safe: a baseline's name is part of a path) and of the answers file.
METHOD_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
ANSWERS_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}\.jsonl")
# The method name of the run's own summaries (summaries.json) in trials, answers and scores.
OURS = "vislight"


@dataclass(frozen=True)
class StudySettings:
    """The checked ``study`` group (see ``conf/study/default.yaml`` for each key's meaning)."""

    members: int = 4
    baselines: tuple[str, ...] = ("gradcam",)
    min_support: int | None = None
    max_trials: int | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    seed: int = 0
    confidence: float = 0.95
    relied_on_only: bool = True
    answers: str = "answers.jsonl"

    @classmethod
    def from_config(cls, node: DictConfig | Mapping | None) -> StudySettings:
        """The settings of a ``study`` node; :class:`ConfigError` names the first bad key."""
        values = dict(
            OmegaConf.to_container(node, resolve=True)
            if isinstance(node, DictConfig)
            else node or {}
        )
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                raise ConfigError(
                    f"study.{key} is not a setting of the study; its settings: {known}"
                )
        check_group("study", values)  # the ranges vislight/config_ranges.py declares
        if "confidence" in values:
            values["confidence"] = float(values["confidence"])
        if "baselines" in values:
            values["baselines"] = _baselines(values["baselines"])
        for key in ("host", "answers"):
            if key in values and not isinstance(values[key], str):
                raise ConfigError(f"study.{key}={values[key]!r} must be a string")
        if not values.get("host", "x").strip():
            raise ConfigError("study.host is empty: pass an address such as 127.0.0.1")
        if "answers" in values and not ANSWERS_NAME.fullmatch(values["answers"]):
            raise ConfigError(
                f"study.answers={values['answers']!r} must be a file name ending in .jsonl (letters, "
                "digits, '_', '-', '.'; no folder): the answers stay in RUN_DIR/study/"
            )
        if "relied_on_only" in values and not isinstance(values["relied_on_only"], bool):
            raise ConfigError(
                f"study.relied_on_only={values['relied_on_only']!r} must be true or false"
            )
        return cls(**values)


def _baselines(value) -> tuple[str, ...]:
    """``study.baselines``: a list of names (a single name or null also do)."""
    names = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple):
        raise ConfigError(
            f"study.baselines={value!r} must be a list of baseline names, e.g. [gradcam]"
        )
    for name in names:
        if not isinstance(name, str) or not METHOD_NAME.fullmatch(name) or name == OURS:
            raise ConfigError(
                f"study.baselines: {name!r} is not a baseline name (letters, digits, '_', '-'; "
                f"not {OURS!r}), e.g. gradcam, random, kmeans"
            )
    return tuple(dict.fromkeys(names))
