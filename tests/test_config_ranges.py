"""Every numeric config value has a declared range (vislight/config_ranges.py), every committed
config lies inside it, and a value outside it is refused with one line naming the key."""

from __future__ import annotations

import copy

import pytest
from helpers import compose_config
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

import vislight
from vislight.__main__ import run_or_exit
from vislight.config_ranges import (
    RANGES,
    Range,
    check_ranges,
    declared_key,
    numeric_values,
    range_for,
)
from vislight.errors import ConfigError

# Declared keys that no committed config holds (normally none: every RANGES key must occur). The
# list form of cluster.preference_factor (the factors scanned) is a user's override only.
PENDING: set[str] = {"cluster.preference_factor[]"}

# Config groups whose options are composed one at a time over the defaults (hydra/ is Hydra's own
# node, which the ranges leave out). Every option composes alone: `data=X` or `model=X` overrides
# the default experiment's `override /data` / `override /model`, and hparams_search=synth_purity
# only changes the hydra node and `objective`.
GROUPS = sorted(
    p.name for p in vislight.CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "local")
)


def _all_overrides() -> list[tuple[str, ...]]:
    configs: list[tuple[str, ...]] = [()]
    for group in GROUPS:  # experiment/ included: every experiment=NAME
        for option in sorted((vislight.CONF_DIR / group).glob("*.yaml")):
            configs.append((f"{group}={option.stem}",))
    return configs


OVERRIDES = _all_overrides()


def _name(overrides: tuple[str, ...]) -> str:
    return " ".join(overrides) or "default"


@pytest.fixture(scope="module")
def configs() -> dict[tuple[str, ...], DictConfig]:
    """Every composed config (composed once), by its overrides."""
    return {ov: compose_config(ov) for ov in OVERRIDES}


@pytest.fixture(scope="module")
def bare(configs) -> dict[tuple[str, ...], DictConfig]:
    """The configs without their hydra node and with interpolations resolved: cheap to copy and
    to check for the many violation cases (the value set is the first one checked either way)."""
    out = {}
    for ov, cfg in configs.items():
        out[ov] = copy.deepcopy(cfg)
        with open_dict(out[ov]):
            del out[ov]["hydra"]
        OmegaConf.resolve(out[ov])
    return out


@pytest.fixture(scope="module")
def values(configs) -> dict[tuple[str, ...], dict[str, object]]:
    return {ov: numeric_values(cfg) for ov, cfg in configs.items()}


def test_every_numeric_key_has_a_range(values):
    missing: dict[str, str] = {}
    for ov, found in values.items():
        for key, value in found.items():
            if range_for(key) is None:
                missing.setdefault(key, f"{key}={value!r} ({_name(ov)})")
    assert not missing, (
        "numeric config keys without a declared range in vislight/config_ranges.py RANGES:\n"
        + "\n".join(sorted(missing.values()))
    )


def test_every_declared_key_occurs(values):
    seen = {declared_key(key) for found in values.values() for key in found}
    absent = set(RANGES) - seen
    assert absent <= PENDING, (
        f"RANGES keys that no composed config holds: {sorted(absent - PENDING)}"
    )


def test_hydra_node_is_left_out(configs):
    cfg = configs[()]
    assert "hydra" in cfg
    assert not any(key.startswith("hydra") for key in numeric_values(cfg))


@pytest.mark.parametrize("overrides", OVERRIDES, ids=_name)
def test_committed_configs_are_in_range(configs, overrides):
    check_ranges(configs[overrides])


def _violations(r: Range) -> list[object]:
    """Values outside ``r``, of every kind it admits (a bool and NaN always are)."""
    out: list[object] = []
    if r.lower is not None:
        out.append(r.lower if r.lower_open else r.lower - 1)
    if r.upper is not None:
        out.append(r.upper if r.upper_open else r.upper + 1)
    if r.integer:  # a non-integer between the bounds
        out.append((r.lower if r.lower is not None else 0) + 0.5)
    if not r.strings:
        out.append("x")
    if not r.nullable:
        out.append(None)
    out += [True, float("nan")]
    return out


CASES = [(key, value) for key, r in RANGES.items() for value in _violations(r)]


def _holder(values, key: str) -> tuple[str, ...]:
    """Overrides of a config in which ``key`` occurs (the default for a pending key)."""
    for ov, found in values.items():
        for k in found:
            if declared_key(k) == key:
                return ov
    assert key in PENDING, f"{key} occurs in no composed config"
    return ()


@pytest.mark.parametrize(("key", "value"), CASES, ids=[f"{k}={v!r}" for k, v in CASES])
def test_out_of_range_value_stops_the_run_with_exit_2_and_one_line(
    bare, values, key, value, capsys
):
    assert not RANGES[key].contains(value)
    cfg = copy.deepcopy(bare[_holder(values, key)])
    if key.endswith(".*"):  # mapping keys may be ints or hold dots: set the first value directly
        node = OmegaConf.select(cfg, key[:-2])
        first = next(iter(node))
        with open_dict(node):
            node[first] = value
        named = f"{key[:-2]}.{first}"
    else:
        named = f"{key[:-2]}[0]" if key.endswith("[]") else key
        if key.endswith("[]") and not isinstance(OmegaConf.select(cfg, key[:-2]), ListConfig):
            OmegaConf.update(cfg, key[:-2], [value], force_add=True)  # one number -> a list
        else:
            OmegaConf.update(cfg, named, value, force_add=True)
    with pytest.raises(SystemExit) as stop:  # what `python -m vislight` does with it
        run_or_exit(cfg)
    lines = capsys.readouterr().err.splitlines()
    assert stop.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"vislight: error: {named}=") and "must" in lines[0], lines


def test_example_from_the_issue(configs):
    cfg = copy.deepcopy(configs[()])
    OmegaConf.update(cfg, "regions.min_area", 2)
    with pytest.raises(ConfigError) as err:
        check_ranges(cfg)
    assert str(err.value) == "regions.min_area=2 is out of range: it must be a number in (0, 1)"


def test_undeclared_and_absent_keys_are_not_errors(configs):
    cfg = copy.deepcopy(configs[()])
    OmegaConf.update(cfg, "brand_new.value", -5, force_add=True)
    with open_dict(cfg):
        del cfg.data["image_size"]
    check_ranges(cfg)
    assert numeric_values(cfg)["brand_new.value"] == -5


def test_nullable_null_is_visible_and_passes(configs):
    cfg = copy.deepcopy(configs[()])
    OmegaConf.update(cfg, "data.max_pixels", None, force_add=True)
    assert numeric_values(cfg)["data.max_pixels"] is None
    check_ranges(cfg)


def test_numeric_values_resolves_and_skips_unresolvable():
    cfg = OmegaConf.create(
        {
            "a": 1,
            "b": "${a}",
            "c": [0.5, "s", True, None],
            "bad": "${oc.env:VISLIGHT_SURELY_UNSET_VARIABLE}",
            "hydra": {"n": 3},
            "m": {1: 2},
        }
    )
    assert numeric_values(cfg) == {"a": 1, "b": 1, "c[0]": 0.5, "m.1": 2}


def test_range_for_maps_indices_and_mappings():
    assert range_for("data.scale_range[1]") is RANGES["data.scale_range[]"]
    assert range_for("data.label_map.001.Black_footed_Albatross") is RANGES["data.label_map.*"]
    assert range_for("data.label_map") is None
    assert range_for("no.such.key") is None
    assert declared_key("specialize.seeds[2]") == "specialize.seeds[]"


def test_range_text():
    assert Range(1, integer=True).text() == "an integer >= 1"
    assert Range(0, 1, lower_open=True, upper_open=True).text() == "a number in (0, 1)"
    assert Range(0.5, 1, upper_open=True).text() == "a number in [0.5, 1)"
    assert Range(1, integer=True, nullable=True).text() == "null or an integer >= 1"
    assert Range(0, lower_open=True).text() == "a number > 0"
    assert Range(upper=3, upper_open=True).text() == "a number < 3"
    assert Range().text() == "a number"
    assert Range(2, 10, integer=True).text() == "an integer in [2, 10]"
    assert Range(1, integer=True, strings=True).text() == "an integer >= 1 or a string"
    assert Range(0, 2**32 - 1, integer=True).text() == "an integer in [0, 4294967295]"


def test_range_contains():
    open_unit = Range(0, 1, lower_open=True, upper_open=True)
    assert open_unit.contains(0.5) and open_unit.contains(1e-9)
    assert not any(open_unit.contains(v) for v in (0, 1, 0.0, 1.0, 2, -0.1))
    closed = Range(0, 1)
    assert closed.contains(0) and closed.contains(1) and closed.contains(0.25)
    assert not closed.contains(1.01) and not closed.contains(-1)
    half_open = Range(0.5, 1, upper_open=True)
    assert half_open.contains(0.5) and half_open.contains(0.99)
    assert not half_open.contains(1) and not half_open.contains(0.49)
    count = Range(1, integer=True)
    assert count.contains(1) and count.contains(10**9)
    assert not any(count.contains(v) for v in (0, 1.0, 1.5, "3", None, True, [1]))
    # bools are never numbers, even where 0/1 would be in range; non-finite floats never pass
    assert not closed.contains(True) and not closed.contains(False)
    assert not Range().contains(float("nan")) and not Range(0).contains(float("inf"))
    assert Range().contains(-3) and not Range().contains("x") and not Range().contains(None)
    nullable = Range(1, integer=True, nullable=True)
    assert nullable.contains(None) and nullable.contains(5) and not nullable.contains(0)
    strings = Range(1, integer=True, strings=True)
    assert strings.contains("auto") and strings.contains(2) and not strings.contains(0)
    assert not strings.contains(None)
