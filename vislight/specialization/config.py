"""Checks of the specialisation settings (``conf/specialize``) and of the stages around them,
run before any work."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from vislight.errors import ConfigError


def validate_specialize(cfg: DictConfig) -> None:
    """``specialize.seeds`` and ``specialize.groups`` (when a stage uses them), the held-out split."""
    for key, ok, allowed in (
        (
            "specialize.seeds",
            lambda v: len(v) >= 1 and all(isinstance(x, int) for x in v),
            "a non-empty list of integers",
        ),
        (
            "specialize.layer",
            lambda v: (
                v is None
                or (isinstance(v, str) and v != "")
                or (len(v) >= 1 and all(isinstance(x, str) and x for x in v))
            ),
            "null, a layer name, or a non-empty list of layer names, e.g. [_blocks.8,_blocks.10]",
        ),
        (
            "specialize.groups",
            lambda v: v is None or all(not isinstance(g, str) and len(g) >= 2 for g in v),
            "null or a list of groups of >= 2 class names, e.g. [[a,b],[c,d]]",
        ),
    ):
        value = OmegaConf.select(cfg, key)
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"{key}={value!r} is invalid: it must be {allowed}")
    for key, allowed in (
        ("groups_split", ("val", "evaluated")),
        ("heads_split", ("train", "evaluated")),
    ):
        value = cfg.specialize.get(key, allowed[0])
        if value not in allowed:
            raise ConfigError(f"specialize.{key}={value!r} is invalid: use one of {list(allowed)}")
    if "specialize" in cfg.stages:
        validate_specialize_order(cfg)


# Held-out splits specialisation can measure on, per data kind. The heads train on `train` and the
# groups come from `val`, so only `test` is unseen (synth's `val` too when specialize.groups names
# the groups).
_HELDOUT_SPLITS = {"synth": ("test", "val"), "cub": ("test",)}


def validate_specialize_order(cfg: DictConfig) -> None:
    """The stages around `specialize`, the held-out split and the evaluated split agree."""
    stages = list(cfg.stages)
    order = [s for s in stages if s in ("groups", "masks", "summaries", "specialize")]
    if order != ["groups", "masks", "summaries", "specialize"]:
        raise ConfigError(
            f"stages={stages}: 'specialize' needs 'groups', 'masks' and 'summaries' before it, in "
            "that order (e.g. [classifier, evaluate, groups, masks, summaries, specialize, report])"
        )
    kind, heldout = cfg.data.kind, cfg.specialize.heldout_split
    if kind not in _HELDOUT_SPLITS:
        raise ConfigError(
            f"data.kind={kind!r} has no named held-out split: specialisation runs on data=synth or "
            "a CUB config (data=cub40)"
        )
    allowed = _HELDOUT_SPLITS[kind]
    uses_val = cfg.specialize.get("groups_split", "val") == "val" and not cfg.specialize.get(
        "groups"
    )
    if kind == "synth" and heldout == "val" and (uses_val or cfg.data.get("split") == "val"):
        allowed = ("test",)  # val chooses the groups, or the summaries come from it
    inner = {"train_b1": "train_b2", "train_b2": "train_b1"}
    if kind == "cub" and cfg.data.get("split") in inner:
        # choosing settings inside the held-in half: base on train_a, summaries and heads on one
        # half of train_b, accuracy on the other (the test split stays unseen)
        allowed = (*allowed, inner[cfg.data.split])
        if cfg.data.get("train_split") != "train_a":
            raise ConfigError(
                f"data.split={cfg.data.split} with data.train_split="
                f"{cfg.data.get('train_split')!r}: "
                "the halves of train_b are for choosing inside the held-in half; train the base "
                "model on the other half (data.train_split=train_a)"
            )
    if heldout not in allowed:
        raise ConfigError(
            f"specialize.heldout_split={heldout!r} is invalid: it must be one of {list(allowed)} "
            "(the heads train on train, the groups come from val unless specialize.groups names them)"
        )
    evaluated = cfg.data.get("split", "test")
    if evaluated in (heldout, "all"):
        raise ConfigError(
            f"specialize.heldout_split={heldout!r} is the split the summaries come from "
            f"(data.split={evaluated!r}): set data.split=train so the held-out split stays unseen"
        )
