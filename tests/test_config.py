"""The Hydra configs: every experiment and model composes and builds; validation names the key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import compose_config, shared_path
from omegaconf import open_dict
from PIL import Image

import vislight
from vislight.data.datamodule import (
    CubDataModule,
    FolderDataModule,
    SynthDataModule,
    build_datamodule,
)
from vislight.data.imagenet import resolve_classes
from vislight.models import Classifier, MissingWeightsError, build_classifier, zoo
from vislight.models.registry import FAMILIES, model_family
from vislight.pipeline import ConfigError, model_config, validate

EXPERIMENTS = sorted(p.stem for p in (vislight.CONF_DIR / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (vislight.CONF_DIR / "model").glob("*.yaml"))
TORCHVISION = [
    m
    for m in MODELS
    if yaml.safe_load((vislight.CONF_DIR / "model" / f"{m}.yaml").read_text()).get("_target_")
    == "vislight.models.zoo.torchvision"
]


def _uses_shared(cfg) -> bool:
    shared = str(shared_path())
    paths = [cfg.data.get("root"), cfg.model.get("weights_path")]
    return any(p and str(Path(p).resolve()).startswith(shared) for p in paths)


def test_config_groups_are_found():
    assert {"synth_summaries", "cifar_resnet_eval", "imagenet_examples_eval"} <= set(EXPERIMENTS)
    assert {"resnet_small", "cifar_resnet20", "efficientnet_lite0", "vgg16"} <= set(MODELS)
    assert {"alexnet", "vgg16", "resnet50", "googlenet", "inception_v3"} <= set(TORCHVISION)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_builds(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}"], tmp_path)
    assert cfg.task_name == experiment
    assert cfg.paths.output_dir == str(tmp_path / "run")
    if _uses_shared(cfg) and not shared_path().is_dir():
        pytest.skip(f"../shared is absent: {experiment} reads its data or weights from it")
    if cfg.data.kind == "imagenet":  # the user's ImageNet folder and weights: stand-ins
        with pytest.raises(ConfigError, match="data.root is not set"):
            validate(cfg)
        for c in resolve_classes(cfg.data.classes):
            (tmp_path / "imagenet" / c.synset).mkdir(parents=True)
        with open_dict(cfg):
            cfg.data.root = str(tmp_path / "imagenet")
            cfg.model.pretrained = False
    validate(cfg)
    model_cfg = model_config(cfg)
    dm = build_datamodule(
        cfg.data, input_size=model_cfg["input_size"], resize_size=model_cfg.get("resize_size")
    )
    assert dm.name == cfg.data.name
    if model_cfg["num_classes"] is None:
        dm.setup("test")
        model_cfg["num_classes"] = len(dm.classes)
    clf = build_classifier(model_cfg).eval()
    assert isinstance(clf, Classifier) and clf.name == cfg.model.name
    if isinstance(dm, SynthDataModule):
        assert clf.num_classes == cfg.data.num_classes == len(dm.classes)
        assert clf.input_size == cfg.data.image_size
    else:
        assert isinstance(dm, FolderDataModule | CubDataModule) and dm.input_size == clf.input_size
    clf.feature_module()  # the configured feature layer exists
    with torch.no_grad():
        logits = clf(torch.rand(2, 3, clf.input_size, clf.input_size))
    assert logits.shape == (2, clf.num_classes) and torch.isfinite(logits).all()


@pytest.mark.parametrize("model", MODELS)
def test_model_composes(model, tmp_path):
    cfg = compose_config([f"model={model}"], tmp_path)
    m = model_config(cfg)
    assert m["name"] == (f"timm-{m['arch']}" if model == "timm" else model)
    family = model_family(m)  # conf/model names its zoo entry as _target_
    assert family in FAMILIES and callable(getattr(zoo, family))
    assert isinstance(m["num_classes"], int) and m["num_classes"] >= 2
    assert isinstance(m["input_size"], int) and m["input_size"] >= 16
    assert len(m["mean"]) == len(m["std"]) == 3 and all(s > 0 for s in m["std"])
    # null: found automatically (the last spatial layer), for the families that take any network
    assert isinstance(m["feature_layer"], str) or family in ("timm", "custom")
    assert m["trusted_checkpoint"] is False
    # Models trained by vislight follow the dataset; pretrained ones keep their own head.
    assert cfg.train.enabled is (not m["pretrained"])
    if family in ("small_cnn", "timm", "custom"):
        assert m["num_classes"] == cfg.data.num_classes
        assert m["input_size"] == cfg.data.image_size
    if family in ("small_cnn", "timm"):
        clf = build_classifier(m)
        clf.feature_module()
    if family == "cifar_resnet":
        assert Path(m["weights_path"]).name.startswith(
            f"resnet{model.removeprefix('cifar_resnet')}-"
        )


def _torchvision_cfg(model: str, tmp_path: Path, *overrides: str) -> dict:
    return model_config(compose_config([f"model={model}", *overrides], tmp_path))


@pytest.mark.parametrize("model", TORCHVISION)
def test_torchvision_missing_weights_names_the_file(model, tmp_path, monkeypatch):
    torch_home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    with pytest.raises(MissingWeightsError) as err:
        build_classifier(_torchvision_cfg(model, tmp_path))
    msg = str(err.value)
    expected_dir = torch_home / "hub" / "checkpoints"
    assert str(expected_dir) in msg
    assert "model.weights_path" in msg
    assert ".pth" in msg and model.split("_")[0] in msg
    if model == "vgg16":
        assert str(expected_dir / "vgg16-397923af.pth") in msg


@pytest.mark.parametrize("model", TORCHVISION)
def test_torchvision_builds_without_pretrained_weights(model, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    clf = build_classifier(_torchvision_cfg(model, tmp_path, "model.pretrained=false")).eval()
    assert clf.num_classes == 1000
    clf.feature_module()
    with torch.no_grad():
        logits = clf(torch.rand(1, 3, 80, 80))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def _alexnet_state() -> dict:
    from torchvision.models import alexnet

    torch.manual_seed(1)
    return alexnet(num_classes=1000).state_dict()


def test_weights_path_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # empty cache: file must win
    state = _alexnet_state()
    plain = tmp_path / "alexnet.pth"
    torch.save(state, plain)
    # The layout of many published checkpoints: {"state_dict": ...} with DataParallel prefixes.
    wrapped = tmp_path / "alexnet_wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    for path in (plain, wrapped):
        clf = build_classifier(_torchvision_cfg("alexnet", tmp_path, f"model.weights_path={path}"))
        loaded = clf.net.state_dict()
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_weights_path_errors(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(MissingWeightsError, match=r"model\.weights_path") as err:
        build_classifier(_torchvision_cfg("alexnet", tmp_path, f"model.weights_path={missing}"))
    assert str(missing) in str(err.value)
    from torchvision.models import resnet18

    wrong = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), wrong)
    with pytest.raises(ValueError, match="do not fit"):
        build_classifier(_torchvision_cfg("alexnet", tmp_path, f"model.weights_path={wrong}"))


# --------------------------------------------------------------------------------------------
# pipeline.validate


def test_default_config_is_valid(tmp_path):
    validate(compose_config([], tmp_path))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["train.epochs=-1"], "train.epochs"),
        (["train.epochs=0"], "train.epochs"),
        (["train.epochs=2.5"], "train.epochs"),
        (["train.lr=0"], "train.lr"),
        (["data.batch_size=0"], "data.batch_size"),
        (["data.watermark.rate=1.5"], "data.watermark.rate"),
        (["data.num_classes=11"], "data.num_classes"),
        (["data.image_size=8"], "data.image_size"),
        (["data.test_per_class=0"], "data.test_per_class"),
        (["stages=[bogus]"], "stages"),
        (["masks.precision=fp8"], "masks.precision"),
        (["stages=[evaluate]"], "stages"),
        (["stages=[classifier,masks,summaries]"], "'masks' needs ['evaluate'] before it"),
        (["stages=[classifier,evaluate,report]"], "'report' needs ['summaries'] before it"),
        (["data=folder"], "data.root"),
        (["data=folder", "data.root=/nonexistent/images"], "data.root"),
        (["cluster.preference_factor=[1.0,-2.0]"], "cluster.preference_factor"),
        (["cluster.preference_factor=[]"], "cluster.preference_factor"),
    ],
)
def test_validate_names_the_bad_key(overrides, key, tmp_path):
    cfg = compose_config(overrides, tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert key in str(err.value)
    assert isinstance(err.value, ValueError)


# --------------------------------------------------------------------------------------------
# Folder data


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_folder_datamodule_records_skipped_files(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    _save(root / "cat" / "a.png", rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    _save(root / "cat" / "gray.jpg", np.full((30, 30), 90, np.uint8))
    _save(root / "cat" / "alpha.png", np.zeros((30, 30, 4), np.uint8))
    _save(root / "dog" / "b.jpg", rng.integers(0, 255, (60, 40, 3), dtype=np.uint8))
    _save(root / "dog" / "tiny.png", np.zeros((4, 30, 3), np.uint8))
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "dog" / "notes.txt").write_text("hello")
    dm = build_datamodule(
        {"kind": "folder", "root": str(root), "batch_size": 4, "num_workers": 0}, input_size=32
    )
    dm.setup("test")
    assert dm.classes == ["cat", "dog"]
    assert len(dm.test_set) == 4
    assert sorted(Path(s["file"]).name for s in dm.skipped) == [
        "broken.jpg",
        "notes.txt",
        "tiny.png",
    ]
    assert all(s["reason"] for s in dm.skipped)
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32)
    assert batch["label"].tolist() == [0, 0, 0, 1]
    assert float(batch["image"].min()) >= 0 and float(batch["image"].max()) <= 1
    with pytest.raises(FileNotFoundError, match="train.enabled=false"):
        dm.setup("fit")


def test_folder_datamodule_requires_a_root(tmp_path):
    with pytest.raises(ValueError, match=r"data\.root"):
        build_datamodule({"kind": "folder", "root": None})
    with pytest.raises(FileNotFoundError, match=r"data\.root"):
        build_datamodule({"kind": "folder", "root": str(tmp_path / "missing")}, input_size=32)
    with pytest.raises(ValueError, match=r"data\.kind"):
        build_datamodule({"kind": "parquet"})


def test_run_folder_is_shared_by_the_tasks_of_a_slurm_step(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert vislight.run_stamp()[:2] == "20"  # a time stamp
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: nothing to share
    assert vislight.run_stamp()[:2] == "20"
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert vislight.run_stamp() == "slurm-4242.0"
    cfg = compose_config(["paths.log_dir=/scratch/out"])
    assert cfg.paths.output_dir == "/scratch/out/runs/slurm-4242.0"
