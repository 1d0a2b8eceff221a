"""Any classifier plugs in: a user's own network by import or file path, any timm architecture,
vision transformers read as feature grids, the feature layer found automatically."""

from __future__ import annotations

import textwrap

import pytest
import torch
from helpers import small_cnn_cfg
from torch import nn

from vislight.models import build_classifier
from vislight.models.probe import FeatureHook, feature_grid, find_feature_layer
from vislight.models.registry import MissingWeightsError

NET_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class TwoStage(nn.Module):
        def __init__(self, num_classes=4, width=8):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
            self.body = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2 * width, num_classes)

        def forward(self, x):
            return self.fc(self.pool(self.body(self.stem(x))).flatten(1))

    def build_net(num_classes=4, width=8):
        return TwoStage(num_classes, width)

    def not_a_net():
        return 3

    def broken():
        raise RuntimeError("boom inside the user's factory")
    """
)


def model_cfg(**kw) -> dict:
    """A ``conf/model`` node (4 classes at 32 px) for the family and settings in ``kw``."""
    kw = {"name": "net", "kwargs": {}, "_target_": f"vislight.models.zoo.{kw.pop('family')}", **kw}
    return small_cnn_cfg(kw.pop("arch", None), num_classes=kw.pop("num_classes", 4), **kw)


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "user_nets.py"
    path.write_text(NET_FILE)
    return path


# --------------------------------------------------------------------------------------------
# Feature grids


def test_tokens_become_a_grid_without_the_class_token():
    b, side, c = 2, 3, 5
    patches = torch.arange(b * side * side * c, dtype=torch.float32).view(b, side * side, c)
    cls = torch.full((b, 1, c), -1.0)
    grid = feature_grid(torch.cat([cls, patches], 1))
    assert grid.shape == (b, c, side, side)
    # patch k (row-major) sits at (k // side, k % side)
    for k in range(side * side):
        assert torch.equal(grid[:, :, k // side, k % side], patches[:, k])
    maps = torch.rand(2, 4, 5, 6)
    assert feature_grid((maps, "aux")) is maps
    with pytest.raises(ValueError, match="model.feature_layer"):
        feature_grid(torch.rand(2, 10))


def test_feature_layer_is_the_last_spatial_one():
    from torchvision.models import resnet18

    assert find_feature_layer(resnet18(num_classes=3), 64) == "layer4"
    vit = build_classifier(model_cfg(family="timm", arch="vit_tiny_patch16_224",
                                     kwargs={"img_size": 32, "patch_size": 8, "depth": 2}))  # fmt: skip
    assert vit.feature_module() is vit.net.norm and vit.feature_layer == "norm"
    with FeatureHook(vit.feature_module()) as hook:
        logits = vit(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 4) and hook.output.shape == (2, 192, 4, 4)
    with pytest.raises(ValueError, match="no layer with a spatial output"):
        find_feature_layer(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)), 8)


# --------------------------------------------------------------------------------------------
# model=custom


def test_custom_network_from_a_file_with_its_weights(net_file, tmp_path):
    target = f"{net_file}:build_net"
    first = build_classifier(model_cfg(family="custom", target=target, kwargs={"width": 6}))
    assert first.feature_layer is None and first.feature_module() is first.net.body
    weights = tmp_path / "net.pth"
    torch.save({"state_dict": first.net.state_dict()}, weights)
    again = build_classifier(
        model_cfg(
            family="custom",
            target=target,
            kwargs={"width": 6},
            pretrained=True,
            weights_path=str(weights),
        )  # fmt: skip
    )
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(first.eval()(x), again.eval()(x))
    # the same class by dotted module path
    import sys

    sys.path.insert(0, str(net_file.parent))
    try:
        by_class = build_classifier(model_cfg(family="custom", target="user_nets.TwoStage"))
    finally:
        sys.path.remove(str(net_file.parent))
    assert by_class(x).shape == (3, 4)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"target": None}, "needs model.target"),
        ({"target": "no_such_pkg.nets:build"}, "cannot import 'no_such_pkg.nets'"),
        ({"target": "build_net"}, "needs a module and a name"),
        ({"target": "{file}:missing"}, "has no callable 'missing'"),
        ({"target": "{file}:not_a_net"}, "not a torch.nn.Module"),
        ({"target": "{file}:build_net", "kwargs": {"depth": 3}}, "does not take model.kwargs"),
        ({"target": "{file}:build_net", "pretrained": True}, "weights_path is not set"),
        ({"target": "{file}:build_net", "pretrained": True, "weights_path": "/no/net.pth"},
         "does not exist"),
    ],
)  # fmt: skip
def test_custom_network_errors_name_the_fix(net_file, extra, message):
    if extra.get("target"):
        extra = {**extra, "target": extra["target"].format(file=net_file)}
    with pytest.raises((ValueError, MissingWeightsError), match=message):
        build_classifier(model_cfg(family="custom", **extra))


# --------------------------------------------------------------------------------------------
# model=timm


def test_timm_checkpoint_with_another_head_keeps_its_backbone(tmp_path):
    from safetensors.torch import save_file

    source = build_classifier(model_cfg(family="timm", arch="resnet18", num_classes=7))
    weights = tmp_path / "resnet18.safetensors"
    save_file(source.net.state_dict(), str(weights))
    probe = build_classifier(
        model_cfg(family="timm", arch="resnet18", pretrained=True, weights_path=str(weights))
    )
    assert probe.net.fc.out_features == 4
    theirs, ours = source.net.state_dict(), probe.net.state_dict()
    backbone = [k for k in theirs if not k.startswith("fc.")]
    assert backbone and all(torch.equal(ours[k], theirs[k]) for k in backbone)
    with pytest.raises(ValueError, match="close names: .*resnet18"):
        build_classifier(model_cfg(family="timm", arch="resnet181"))
    with pytest.raises(ValueError, match="do not fit the architecture"):
        build_classifier(
            model_cfg(family="timm", arch="resnet34", pretrained=True, weights_path=str(weights))
        )


# --------------------------------------------------------------------------------------------
# End to end


def test_a_vision_transformer_runs_every_stage(tmp_path):
    """A one-block timm ViT, trained by vislight, masked and summarised like a CNN."""
    import json

    from helpers import TINY_PIPELINE, compose_job_config

    from vislight.pipeline import run

    cfg = compose_job_config(
        [*TINY_PIPELINE, "logger=none", "model=vit_tiny", "model.kwargs.depth=1",
         "model.kwargs.patch_size=8", "train.epochs=4", "masks.images_per_class=3",
         "masks.smooth.iterations=20", "masks.sharp.iterations=10",
         "stages=[classifier,evaluate,masks,summaries]"],
        tmp_path,
    )  # fmt: skip
    metrics = run(cfg)
    assert metrics["classifier"]["trained"] and metrics["model"] == "vit_tiny"
    assert metrics["feature_layer"] == "norm"  # found automatically: the last token sequence
    summaries = json.loads((tmp_path / "run" / "summaries.json").read_text())["classes"]
    regions = sum(v.get("regions", 0) for v in metrics["classes"].values())
    assert metrics["mask"]["masked"] > 0 and regions > 0
    assert set(summaries) <= set(metrics["classes"])


def test_a_bug_in_the_users_factory_is_not_reported_as_a_config_mistake(net_file):
    with pytest.raises(RuntimeError, match="boom inside"):
        build_classifier(model_cfg(family="custom", target=f"{net_file}:broken"))


def test_a_layer_applied_twice_is_not_the_feature_layer():
    class SharedActivation(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act = nn.Conv2d(3, 4, 3), nn.ReLU()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):  # the same ReLU after the conv and after the head
            return self.act(self.fc(self.act(self.conv(x)).mean((2, 3))))

    assert find_feature_layer(SharedActivation(), 16) == "conv"


def test_grad_cam_reads_a_vision_transformer(tmp_path):
    from vislight.summaries.baselines import gradcam

    vit = build_classifier(model_cfg(family="timm", arch="vit_tiny_patch16_224",
                                     kwargs={"img_size": 32, "patch_size": 8, "depth": 2}))  # fmt: skip
    cam = gradcam(vit.eval(), vit.feature_module(), torch.rand(3, 32, 32), 1)
    assert cam.shape == (32, 32) and cam.min() >= 0 and cam.max() <= 1


def test_a_new_random_head_is_not_explained_untrained(tmp_path):
    from helpers import compose_job_config
    from safetensors.torch import save_file

    from vislight.errors import ConfigError
    from vislight.pipeline import run

    seven = build_classifier(model_cfg(family="timm", arch="resnet18", num_classes=7))
    save_file(seven.net.state_dict(), str(tmp_path / "r18.safetensors"))
    cfg = compose_job_config(
        ["logger=none", "model=timm", "model.pretrained=true",
         f"model.weights_path={tmp_path / 'r18.safetensors'}", "stages=[classifier]"],
        tmp_path,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="train.trainable=head"):
        run(cfg)
