"""Training: the LightningModule learns; fit_or_load_classifier caches, reuses and resumes."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from helpers import compose_config, small_cnn_cfg
from omegaconf import open_dict
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from vislight.data.datamodule import SynthDataModule
from vislight.data.synth import WorldConfig
from vislight.models import build_classifier, load_state_dict_file
from vislight.pipeline import run
from vislight.run_folder import RunFolder
from vislight.training.fit import classifier_cache_key, fit_or_load_classifier
from vislight.training.module import ClassifierModule

TRAIN_CFG = {"lr": 3e-3, "weight_decay": 5e-4, "epochs": 2, "augment": True}


def _trainer(callbacks, max_epochs: int, root) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        default_root_dir=root,  # nothing lands in the project tree
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


class EpochLog(Callback):
    """Records the epoch-level training metrics and which epochs ran."""

    def __init__(self):
        self.metrics: list[dict] = []
        self.started: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.started.append(trainer.current_epoch)

    def on_train_epoch_end(self, trainer, pl_module):
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


class StopAfterFirstEpoch(Callback):
    """Plays the user pressing Ctrl-C once the first epoch (and its checkpoint) is done."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def _tiny_datamodule(num_classes=3, per_class=10, size=32, batch_size=10) -> SynthDataModule:
    world = WorldConfig(num_classes=num_classes, seed=0)
    return SynthDataModule(world, size, per_class, 2, 2, batch_size=batch_size)


def test_classifier_module_learns(tmp_path):
    pl.seed_everything(0, verbose=False)
    dm = SynthDataModule(WorldConfig(num_classes=6, seed=0), 32, 30, 5, 5, batch_size=32)
    clf = build_classifier(small_cnn_cfg("resnet_small", num_classes=6, input_size=32, width=16))
    log = EpochLog()
    _trainer([log], 4, tmp_path).fit(ClassifierModule(clf, lr=3e-3), datamodule=dm)
    losses = [m["train/loss"] for m in log.metrics]
    accs = [m["train/acc"] for m in log.metrics]
    assert len(losses) == 4 and "val/acc" in log.metrics[-1]
    assert losses[-1] < losses[0] - 0.1, losses
    assert accs[-1] > accs[0] + 0.15, accs
    assert accs[-1] > 0.4, accs  # chance is 1/6


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """An interrupted training (1 of 2 epochs, last.ckpt in the cache) then a resumed one."""
    root = tmp_path_factory.mktemp("resume")
    cache = root / "cache"
    dm = _tiny_datamodule()
    pl.seed_everything(0, verbose=False)
    first = build_classifier(small_cnn_cfg("resnet_small", num_classes=3, width=8))
    module = ClassifierModule(first, lr=TRAIN_CFG["lr"], weight_decay=TRAIN_CFG["weight_decay"])
    ckpt = ModelCheckpoint(dirpath=cache / "lightning", save_last=True, save_top_k=0)
    _trainer([ckpt, StopAfterFirstEpoch()], 2, root).fit(module, datamodule=dm)
    assert (cache / "lightning" / "last.ckpt").is_file()
    assert not (cache / "classifier.pt").exists()

    clf = build_classifier(small_cnn_cfg("resnet_small", num_classes=3, width=8))
    log = EpochLog()
    info = fit_or_load_classifier(
        clf,
        dm,
        TRAIN_CFG,
        cache,
        lambda cbs: _trainer(cbs + [log], 2, root),
        RunFolder(root / "out"),
    )
    return {"root": root, "cache": cache, "dm": dm, "clf": clf, "info": info, "log": log}


def test_interrupted_training_resumes(resumed):
    info, cache = resumed["info"], resumed["cache"]
    assert info["trained"] is True and info["reused"] is False
    assert info["resumed"] is True
    assert resumed["log"].started == [1], "the finished epoch was trained again"
    assert json.loads((cache / "meta.json").read_text())["epochs"] == 2
    assert not (cache / "lightning").exists(), "the Lightning checkpoint is left behind"
    assert (resumed["root"] / "out" / "classifier.ckpt").is_file()


class Killed(Exception):
    pass


class KillAtSecondEpoch(Callback):
    """Plays a SIGKILL: the run dies once the first epoch's checkpoint is on disk."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise Killed


def test_a_resumed_training_learns_the_uninterrupted_weights(tmp_path):
    """Shuffle order and augmentation resume where they stopped: bit-identical weights."""
    cfg = {**TRAIN_CFG, "epochs": 3}

    def train(cache, *extra, seed=0):
        pl.seed_everything(0, verbose=False)  # same initial weights
        clf = build_classifier(small_cnn_cfg("resnet_small", num_classes=3, width=8))
        torch.manual_seed(seed)  # a fresh process: the global RNG is anywhere
        dm = _tiny_datamodule(per_class=12, batch_size=4)
        factory = lambda cbs: _trainer([*cbs, *extra], 3, tmp_path)  # noqa: E731
        fit_or_load_classifier(clf, dm, cfg, cache, factory, RunFolder(tmp_path / "out"))
        return clf.net.state_dict()

    reference = train(tmp_path / "ref")
    with pytest.raises(Killed):
        train(tmp_path / "cut", KillAtSecondEpoch())
    assert (tmp_path / "cut" / "lightning" / "last.ckpt").is_file()
    resumed = train(tmp_path / "cut", seed=12345)
    assert not (tmp_path / "cut" / "lightning").exists()
    for k, v in reference.items():
        assert torch.equal(v, resumed[k]), k


def test_cache_hit_reloads_identical_weights(resumed, tmp_path):
    trained = {k: v.clone() for k, v in resumed["clf"].net.state_dict().items()}
    torch.manual_seed(123)
    fresh = build_classifier(small_cnn_cfg("resnet_small", num_classes=3, width=8))
    assert not all(torch.equal(fresh.net.state_dict()[k], v) for k, v in trained.items())

    def no_training(callbacks):
        raise AssertionError("a cache hit must not build a Trainer")

    info = fit_or_load_classifier(
        fresh, resumed["dm"], TRAIN_CFG, resumed["cache"], no_training, RunFolder(tmp_path / "out")
    )
    assert info["reused"] is True and info["trained"] is False
    assert info["val_acc"] == resumed["info"]["val_acc"]
    state = fresh.net.state_dict()
    assert state.keys() == trained.keys()
    assert all(torch.equal(state[k], trained[k]) for k in trained)
    copied = load_state_dict_file(tmp_path / "out" / "classifier.ckpt")
    assert all(torch.equal(copied[k], trained[k]) for k in trained)


def test_force_retrains(resumed, tmp_path):
    clf = build_classifier(small_cnn_cfg("resnet_small", num_classes=3, width=8))

    def forced() -> tuple[dict, EpochLog]:
        log = EpochLog()
        info = fit_or_load_classifier(
            clf,
            resumed["dm"],
            {**TRAIN_CFG, "epochs": 1, "force": True},
            tmp_path / "cache",
            lambda cbs: _trainer(cbs + [log], 1, tmp_path),
            RunFolder(tmp_path / "out"),
        )
        return info, log

    info, log = forced()
    assert info["trained"] is True and info["resumed"] is False and log.started == [0]
    # A stale half-finished training is not resumed when force is set.
    (tmp_path / "cache" / "lightning").mkdir()
    (tmp_path / "cache" / "lightning" / "last.ckpt").write_bytes(b"stale")
    info, log = forced()
    assert info["trained"] is True and info["resumed"] is False and log.started == [0]


# --------------------------------------------------------------------------------------------
# The cache key


def _key(**changes) -> str:
    model = small_cnn_cfg("resnet_small", num_classes=6, input_size=32)
    data = {"kind": "synth", "seed": 0, "num_classes": 6, "train_per_class": 30, "batch_size": 64}
    data.update({"num_workers": 0, "eval_batch_size": 256, "test_per_class": 10})
    train = {**TRAIN_CFG, "cache_dir": "/a", "force": False, "enabled": True}
    seed = 0
    for dotted, value in changes.items():
        group, key = dotted.split("__")
        if group == "seed":
            seed = value
        else:
            {"model": model, "data": data, "train": train}[group][key] = value
    return classifier_cache_key(model, data, train, seed)


def test_cache_key_tracks_what_changes_the_weights():
    base = _key()
    assert base == _key()
    for change in (
        {"train__epochs": 3},
        {"train__lr": 1e-3},
        {"data__seed": 1},
        {"data__train_per_class": 31},
        {"data__batch_size": 32},
        {"model__width": 8},
        {"model__arch": "vgg_small"},
        {"seed__": 1},
    ):
        assert _key(**change) != base, change
    for change in (
        {"data__num_workers": 4},
        {"data__eval_batch_size": 16},
        {"data__test_per_class": 200},
        {"train__cache_dir": "/b"},
        {"train__force": True},
        {"model__feature_layer": "layer2"},
        {"model__trusted_checkpoint": True},
    ):
        assert _key(**change) == base, change


def _tiny_job(tmp_path, *overrides):
    cfg = compose_config(
        [
            "logger=none",
            "stages=[classifier]",
            "model=tiny_cnn",
            "trainer=cpu",
            "trainer.enable_progress_bar=false",
            "data.num_classes=3",
            "data.image_size=16",
            "data.train_per_class=4",
            "data.val_per_class=1",
            "data.test_per_class=2",
            "train.epochs=2",
            *overrides,
        ],
        tmp_path,
    )
    with open_dict(cfg):
        del cfg["hydra"]  # what @hydra.main hands to the task function
    return cfg


def test_trainer_settings_that_change_training_are_not_reused(tmp_path):
    short = run(_tiny_job(tmp_path, "trainer.max_epochs=1"), tmp_path / "short")
    assert short["classifier"]["trained"] is True
    full = run(_tiny_job(tmp_path), tmp_path / "full")
    assert full["classifier"]["reused"] is False


# --------------------------------------------------------------------------------------------
# train.trainable=head: a linear probe


class ModeLog(Callback):
    """Records, at every training step, which modules of the classifier are in training mode."""

    def __init__(self):
        self.training: list[set[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        clf = pl_module.classifier
        self.training.append({n for n, m in clf.named_modules() if m.training})


def _train_tiny(trainable: str, root, callbacks=()):
    """A resnet_small (BatchNorm) trained 2 epochs of 3 steps: (classifier, state before, after)."""
    pl.seed_everything(0, verbose=False)
    clf = build_classifier(small_cnn_cfg("resnet_small", num_classes=3, width=8))
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    module = ClassifierModule(clf, lr=3e-2, trainable=trainable)
    _trainer(list(callbacks), 2, root).fit(module, datamodule=_tiny_datamodule())
    return clf, before, clf.state_dict()


def test_trainable_head_trains_only_the_head_with_frozen_batchnorm(tmp_path):
    log = ModeLog()
    clf, before, after = _train_tiny("head", tmp_path, [log])
    head = {f"net.{n}" for n, m in clf.net.named_modules() if m is clf.head()}
    assert head == {"net.fc"}
    head_keys = {k for k in before if k.rsplit(".", 1)[0] in head}
    assert head_keys == {"net.fc.weight", "net.fc.bias"}
    stats = [
        k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    assert len(stats) >= 3 * 5, "no BatchNorm: the test would prove nothing"
    for k in before.keys() - head_keys:  # backbone weights and BatchNorm statistics
        assert torch.equal(before[k], after[k]), f"{k} changed in a linear probe"
    for k in head_keys:
        assert not torch.equal(before[k], after[k]), f"the head's {k} never learned"
    # The whole classifier (backbone BatchNorm included) is in eval mode at every training step.
    assert len(log.training) == 6, log.training
    assert all(not modes for modes in log.training), log.training
    assert {n for n, p in clf.named_parameters() if p.requires_grad} == head_keys

    # trainable=all, same seed and data: the backbone and its statistics move too.
    log = ModeLog()
    _, before, after = _train_tiny("all", tmp_path / "all", [log])
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert head_keys < changed
    assert any(k.endswith("running_mean") for k in changed), changed
    assert any(k.startswith("net.stem.0") for k in changed), changed
    assert all("net.stem.1" in modes for modes in log.training)

    with pytest.raises(ValueError, match=r"train\.trainable"):
        ClassifierModule(
            build_classifier(small_cnn_cfg("resnet_small", num_classes=3)), trainable="backbone"
        )
