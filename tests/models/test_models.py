"""The classifier zoo: pretrained weights classify real images; checkpoints load safely."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_config, require_shared, small_cnn_cfg

from vislight.data.datamodule import build_datamodule
from vislight.data.folder import ImageListDataset, scan_class_folders
from vislight.evaluation.accuracy import evaluate_accuracy
from vislight.models import build_classifier, load_state_dict_file
from vislight.models.small_cnns import SMALL_CNNS
from vislight.pipeline import model_config

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_cifar_resnet_shared_weights_fit(depth, tmp_path):
    require_shared("weights", "cifar10_resnet")
    cfg = compose_config([f"model=cifar_resnet{depth}"], tmp_path)
    clf = build_classifier(model_config(cfg)).eval()  # strict: no missing / unexpected keys
    state = load_state_dict_file(cfg.model.weights_path)
    assert torch.equal(clf.net.linear.weight, state["linear.weight"])
    with torch.no_grad():
        assert clf(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_resnet20_classifies_cifar10(tmp_path):
    require_shared("data", "cifar10_test")
    require_shared("weights", "cifar10_resnet")
    cfg = compose_config(["experiment=cifar_resnet_eval"], tmp_path)
    clf = build_classifier(model_config(cfg))
    items, classes, skipped = scan_class_folders(cfg.data.root)
    assert classes == CIFAR10 and not skipped
    first5 = [[p for p, label in items if label == c][:5] for c in range(10)]
    subset = [(p, c) for c in range(10) for p in first5[c]]
    ds = ImageListDataset(subset, classes, clf.input_size, clf.resize_size)
    assert len(ds) == 50
    loader = torch.utils.data.DataLoader(ds, batch_size=50)
    result = evaluate_accuracy(clf, loader, torch.device("cpu"), classes)
    assert result["images"] == 50
    assert result["accuracy"] >= 0.6, result


def test_efficientnet_lite0_classifies_imagenet_examples(tmp_path):
    require_shared("data", "imagenet_examples")
    cfg = compose_config(["experiment=imagenet_examples_eval"], tmp_path)
    assert cfg.data.kind == "csv"
    model_cfg = model_config(cfg)
    clf = build_classifier(model_cfg)
    assert (clf.input_size, clf.resize_size) == (224, 256)
    dm = build_datamodule(cfg.data, input_size=clf.input_size, resize_size=clf.resize_size)
    dm.setup("test")
    assert len(dm.test_set) == 22 and not dm.skipped
    assert dm.classes[281] == "tabby" and dm.classes[15] == "robin"
    result = evaluate_accuracy(clf, dm.test_dataloader(), torch.device("cpu"), dm.classes)
    assert result["images"] == 22
    assert result["correct"] >= 14, result


def test_efficientnet_lite0_with_a_new_head_keeps_the_backbone_and_reloads_its_own_head(tmp_path):
    """num_classes=40 (CUB): ImageNet backbone, random 40-way head; a saved trained classifier
    (40-way head included) loads back through model.weights_path with its head."""
    cfg = compose_config(["model=efficientnet_lite0", "model.num_classes=40"], tmp_path)
    imagenet = build_classifier(
        model_config(compose_config(["model=efficientnet_lite0"], tmp_path))
    )
    clf = build_classifier(model_config(cfg))
    assert clf.net._fc.weight.shape == (40, 1280)
    assert torch.equal(clf.net._conv_stem.weight, imagenet.net._conv_stem.weight)
    with torch.no_grad():
        clf.net._fc.weight.mul_(3.0)  # "trained"
    torch.save(clf.net.state_dict(), tmp_path / "classifier.pt")
    again = build_classifier({**model_config(cfg), "weights_path": str(tmp_path / "classifier.pt")})
    assert torch.equal(again.net._fc.weight, clf.net._fc.weight)


# --------------------------------------------------------------------------------------------
# torchvision: the same logits as torchvision's own pretrained pipeline


def _reference(arch: str, state: dict):
    """The network as ``torchvision.models.<arch>(weights=DEFAULT)`` builds it (minus download)."""
    from torchvision import models

    kwargs = {"transform_input": True} if arch in ("googlenet", "inception_v3") else {}
    if arch in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    net = models.get_model(arch, weights=None, **kwargs)
    net.load_state_dict(state)
    return net.eval()


def _realistic_state(arch: str) -> dict:
    """Random weights whose BatchNorm statistics are calibrated, so activations do not vanish."""
    from torchvision.models import get_model

    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if arch != "alexnet" else {}
    net = get_model(arch, weights=None, **kwargs)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(4, 3, 96, 96))
    return net.eval().state_dict()


@pytest.mark.parametrize(
    ("model", "side"),
    [
        ("alexnet", 96),
        ("googlenet", 96),
        ("inception_v3", 96),
    ],
)
def test_torchvision_weights_see_torchvision_preprocessing(model, side, tmp_path, monkeypatch):
    """With a weights file, vislight's classifier on [0, 1] images must compute what torchvision's
    pretrained model computes on ImageNet-normalised images (its documented transforms)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    state = _realistic_state(model)
    path = tmp_path / f"{model}.pth"
    torch.save(state, path)
    clf = build_classifier(
        model_config(compose_config([f"model={model}", f"model.weights_path={path}"], tmp_path))
    ).eval()
    x = torch.rand(2, 3, side, side)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = clf(x)
        theirs = _reference(model, state)((x - mean) / std)
    tol = 1e-4 * float(theirs.abs().max())
    # The random net does look at its input: two images differ far beyond the tolerance.
    assert float((theirs[0] - theirs[1]).abs().max()) > 100 * tol
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=tol)


# --------------------------------------------------------------------------------------------
# Checkpoint loading


class NotATensor:
    """A custom object: unpickling it runs arbitrary code, so weights_only loading must refuse it."""

    def __init__(self):
        self.note = "arbitrary"


def test_untrusted_pickle_is_refused(tmp_path):
    state = {"w": torch.ones(2)}
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state, "extra": NotATensor()}, path)
    with pytest.raises(ValueError, match=r"model\.trusted_checkpoint") as err:
        load_state_dict_file(path)
    assert str(path) in str(err.value)
    loaded = load_state_dict_file(path, trusted=True)
    assert loaded.keys() == {"w"} and torch.equal(loaded["w"], state["w"])


def test_checkpoint_shapes_are_checked(tmp_path):
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.ones(3), tensor_file)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_state_dict_file(tensor_file)
    plain = tmp_path / "plain.pth"
    torch.save({"module.a": torch.zeros(1), "b": torch.ones(1)}, plain)
    assert set(load_state_dict_file(plain)) == {"a", "b"}


# --------------------------------------------------------------------------------------------
# The small CNN zoo


@pytest.mark.parametrize("arch", sorted(SMALL_CNNS))
@pytest.mark.parametrize(("num_classes", "side"), [(6, 32), (2, 64), (10, 16)])
def test_small_cnns_give_logits(arch, num_classes, side):
    clf = build_classifier(small_cnn_cfg(arch, num_classes=num_classes, input_size=side)).eval()
    x = torch.rand(3, 3, side, side)
    with torch.no_grad():
        logits = clf(x)
    assert logits.shape == (3, num_classes) and torch.isfinite(logits).all()
    # Images are independent: the logits of one image do not depend on the rest of the batch.
    with torch.no_grad():
        assert torch.allclose(clf(x[1:2]), logits[1:2], atol=1e-5)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_small_cnn_width_and_weights_path(tmp_path):
    narrow = build_classifier(small_cnn_cfg("resnet_small", width=8))
    wide = build_classifier(small_cnn_cfg("resnet_small", width=16))
    assert _params(narrow) < _params(wide)
    path = tmp_path / "w.pth"
    torch.save(wide.net.state_dict(), path)
    again = build_classifier(small_cnn_cfg("resnet_small", width=16, weights_path=str(path)))
    ours, theirs = again.net.state_dict(), wide.net.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    with pytest.raises(ValueError, match="do not fit"):  # another architecture's weights
        build_classifier(small_cnn_cfg("vgg_small", width=16, weights_path=str(path)))
