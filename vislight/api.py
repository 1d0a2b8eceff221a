"""The Python API: explain any classifier from a notebook, with the same pipeline as the CLI.

    import vislight
    result = vislight.explain(net, "path/to/images", input_size=224)   # any nn.Module
    # (a folder's classes are its folders in alphabetical order, or classes=[...] in output order)
    result = vislight.explain("efficientnet_lite0", images, labels)    # a zoo name, tensors
    result                      # inline in Jupyter: each class's summaries as member crops
    result.summaries["cat"][0].members[0].image   # (3, H, W) tensor in [0, 1]
    result.report()             # run folder's report/index.html (the CLI's report)

Every call writes the CLI's run-folder layout (``config.yaml``, ``metrics.json``, ``masks/``,
``summaries.json``, ``report/``) under ``output_dir``: rerunning it reuses the cached masks and
regions. ``overrides`` are Hydra overrides as on the command line (``masks.images_per_class=10``,
``experiment=...``). The CLI (``python -m vislight``) runs the same :func:`vislight.pipeline.execute`.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from torch import nn
from torch.utils.data import Dataset

from vislight import CONF_DIR
from vislight.data.datamodule import ClassificationDataModule
from vislight.errors import ConfigError
from vislight.models.classifier import Classifier
from vislight.models.probe import zero_forward
from vislight.report.render import render
from vislight.run_folder import RunFolder
from vislight.summaries.rle import rle_decode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Results as Python objects


@dataclass
class Member:
    """One region of one image in a summary."""

    index: int  # position of the image in the explained dataset
    key: str  # the image's stable content key
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, exclusive
    similarity: float  # to the summary's exemplar (1 for the exemplar)
    drop: float  # relative drop of the class probability when only this region is blurred
    tag: str | None  # the true part it covers, where ground truth exists
    mask_rle: dict = field(repr=False)
    dataset: Dataset = field(repr=False)

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool: the region."""
        return rle_decode(self.mask_rle)

    @property
    def image(self) -> torch.Tensor:
        """(3, H, W) float in [0, 1]: the whole image the region is in."""
        return self.dataset[self.index]["image"]

    def crop(self) -> np.ndarray:
        """(h, w, 3) uint8: the region with some context, the rest dimmed (as in the report)."""
        from vislight.report.html import region_crop, to_uint8

        return region_crop(to_uint8(self.image), self.mask, self.box)


@dataclass
class Summary:
    """A recurring part the classifier relies on for one class: its regions across images."""

    class_name: str
    tag: str | None  # the true part most members cover (ground truth only), else None
    purity: float | None  # share of members covering ``tag``
    faithful: bool | None  # blurring its regions hurts the class more than random regions
    support: int  # number of distinct images
    coherence: float  # mean similarity of the members to the exemplar
    members: list[Member]  # the exemplar first
    record: dict = field(repr=False)  # the summaries.json entry

    def crops(self, max_members: int = 8) -> list[tuple[Member, str]]:
        """The first members with their crops as base64 PNG (what the inline view shows)."""
        return [(m, _png_base64(m.crop())) for m in self.members[:max_members]]

    def _repr_html_(self) -> str:
        return render("inline.html.j2", blocks=[(None, [(self, self.crops())])], run_dir=None)


@dataclass
class Explanation:
    """What :func:`explain` returns: the summaries per class, the metrics and the run folder."""

    run_dir: Path
    summaries: dict[str, list[Summary]]
    metrics: dict
    dataset: Dataset = field(repr=False)
    classifier: nn.Module | None = field(default=None, repr=False)

    def apply(
        self,
        images: str | Path | torch.Tensor | Dataset,
        labels: Sequence[int] | torch.Tensor | None = None,
        name: str = "new_images",
        overrides: Sequence[str] = (),
    ) -> dict:
        """Locate these summaries in new images (as ``python -m vislight.apply``): per image, the
        summaries of its predicted class found there, their boxes, p-values and deletion checks,
        and the atypical flag. ``images``: a folder of class folders, an (N, 3, H, W) tensor in
        [0, 1] or a dataset; ``labels`` (optional) class indices of the model's outputs.
        Returns the content of ``apply/<name>/apply.json`` (also written, with HTML pages)."""
        from vislight.apply.run import apply_run

        overrides = [f"apply.name={name}", *overrides]
        memory = None
        if isinstance(images, (str, Path)):  # any folder, whatever data the run explained
            overrides.append(f"apply.images={Path(images).expanduser().resolve()}")
        else:
            side = int(self.dataset[0]["image"].shape[-1])
            memory = InMemoryImages(images, labels, side, unlabelled=True)
            outputs = len(self.metrics.get("class_names") or self.metrics.get("classes") or [])
            if outputs and max(memory.labels) >= outputs:
                raise ValueError(
                    f"labels go up to {max(memory.labels)} but the run has {outputs} classes: "
                    "give class indices of the model's outputs (or no labels)"
                )
        return apply_run(
            self.run_dir, overrides, classifier=self.classifier, images=memory,
            run_images=self.dataset,
        )  # fmt: skip

    def report(self) -> Path:
        """The run's HTML report (``report/index.html``), written by the ``report`` stage."""
        path = RunFolder(self.run_dir).report_index
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} was not written: call explain(..., report=True) to write the report"
            )
        return path

    def __repr__(self) -> str:
        counts = {c: len(s) for c, s in self.summaries.items()}
        return f"Explanation({self.run_dir}, summaries per class {counts})"

    def _repr_html_(self) -> str:
        blocks = [(name, [(s, s.crops()) for s in ss]) for name, ss in self.summaries.items()]
        return render("inline.html.j2", blocks=blocks, run_dir=str(self.run_dir))


def _png_base64(arr: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def summaries_from_records(records: Mapping, dataset: Dataset) -> dict[str, list[Summary]]:
    """The content of ``summaries.json`` as :class:`Summary` objects over ``dataset``."""
    out: dict[str, list[Summary]] = {}
    for name, entries in records["classes"].items():
        out[name] = [
            Summary(
                class_name=name,
                tag=e.get("tag"),
                purity=e.get("purity"),
                faithful=e.get("faithful"),
                support=int(e["support"]),
                coherence=float(e["coherence"]),
                members=[
                    Member(
                        index=int(m["index"]),
                        key=str(m["key"]),
                        box=tuple(int(v) for v in m["bbox"]),
                        similarity=float(m["similarity"]),
                        drop=float(m["drop"]),
                        tag=m.get("tag"),
                        mask_rle=m["mask_rle"],
                        dataset=dataset,
                    )
                    for m in e["members"]
                ],
                record=e,
            )
            for e in entries
        ]
    return out


# --------------------------------------------------------------------------------------------
# Images given in memory


class InMemoryImages(Dataset):
    """Images and labels given in memory, as the pipeline's datasets serve them.

    Items: ``image`` (3, S, S) float in [0, 1] (resized so that the shorter side is S, then
    centre-cropped), ``label``, ``index``, ``key`` (a hash of the image's pixels).
    """

    def __init__(self, source, labels, input_size: int, unlabelled: bool = False):
        from torchvision.transforms.v2 import functional as TF

        self.input_size = int(input_size)
        images, targets = [], []
        n = len(source)
        if labels is not None and len(labels) != n:
            raise ValueError(f"{n} images but {len(labels)} labels: give one label per image")
        for i in range(n):
            item = source[i]
            if isinstance(item, Mapping):
                image, label = item["image"], item.get("label")
            elif isinstance(item, (tuple, list)):
                image, label = item[0], item[1] if len(item) > 1 else None
            else:
                image, label = item, None
            if labels is not None:
                label = labels[i]
            if label is None and unlabelled:  # applying summaries needs no label
                label = -1
            if label is None:
                raise ValueError(f"image {i} has no label: pass labels=[...] (class indices)")
            if not torch.is_tensor(image) and not isinstance(image, np.ndarray):
                raise ValueError(
                    f"image {i} is a {type(image).__name__}: give (3, H, W) tensors in [0, 1] "
                    "(torchvision.transforms.functional.to_tensor converts a PIL image), or a "
                    "folder of image files"
                )
            image = torch.as_tensor(image).detach().to("cpu", torch.float32)
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"image {i} has shape {tuple(image.shape)}: images must be (3, H, W) RGB "
                    "tensors in [0, 1]"
                )
            if image.min() < 0 or image.max() > 1:
                raise ValueError(
                    f"image {i} has values in [{image.min():.2f}, {image.max():.2f}]: give "
                    "unnormalised images in [0, 1] (pass mean/std for the network's normalisation)"
                )
            if tuple(image.shape[1:]) != (self.input_size, self.input_size):
                image = TF.center_crop(
                    TF.resize(image, self.input_size, antialias=True), [self.input_size] * 2
                )
            images.append(image.contiguous())
            targets.append(int(label.item() if torch.is_tensor(label) else label))
        if not images:
            raise ValueError("no images given: pass a non-empty tensor, dataset or folder")
        self.images, self.labels = images, targets
        self.keys = [  # stable per image content (mask files are named by it)
            f"img-{i:06d}-{hashlib.sha1(im.numpy().tobytes()).hexdigest()[:10]}"
            for i, im in enumerate(images)
        ]

    def __len__(self) -> int:
        return len(self.images)

    def targets(self) -> list[int]:
        return list(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": self.labels[index], "index": index,
                "key": self.keys[index]}  # fmt: skip


class InMemoryDataModule(ClassificationDataModule):
    """The evaluated images given in memory (no train split: the classifier is explained as is)."""

    def __init__(self, dataset: InMemoryImages, classes: Sequence[str], name: str = "images"):
        super().__init__(name, batch_size=64)
        self.test_set, self.classes = dataset, list(classes)

    def setup(self, stage: str | None = None) -> None:
        if stage == "fit":
            raise ConfigError(
                "images given in memory have no train split: explain a trained network, or give "
                "a data config (overrides=['data=folder', 'data.root=...']) to train one"
            )


# --------------------------------------------------------------------------------------------
# explain()


def _output_count(net: nn.Module, input_size: int) -> int:
    out = zero_forward(net, input_size)
    if not torch.is_tensor(out) or out.dim() != 2:
        raise ValueError(
            f"the model returns {type(out).__name__}"
            + (f" of shape {tuple(out.shape)}" if torch.is_tensor(out) else "")
            + ": it must return (B, num_classes) logits"
        )
    return int(out.shape[1])


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The CLI's config (``conf/config.yaml``) with ``overrides``; without an ``experiment=``
    override the synthetic-world experiment defaults are left out."""
    overrides = list(overrides)
    if not any(o.split("=")[0].lstrip("+~") == "experiment" for o in overrides):
        overrides = ["~experiment", *overrides]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def explain(
    model: nn.Module | str,
    images: str | Path | torch.Tensor | Dataset | None = None,
    labels: Sequence[int] | torch.Tensor | None = None,
    *,
    classes: Sequence[str] | None = None,
    input_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    feature_layer: str | None = None,
    output_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    report: bool = True,
) -> Explanation:
    """Explain ``model`` class by class with visual summaries.

    Args:
        model: any ``nn.Module`` taking normalised (B, 3, S, S) images and returning (B, K)
            logits, a :class:`~vislight.models.classifier.Classifier`, or a zoo name
            (``conf/model/<name>.yaml``, e.g. ``"efficientnet_lite0"``).
        images: a folder of class folders (``root/<class>/<image>``), an (N, 3, H, W) tensor in
            [0, 1], a dataset of ``(image, label)`` pairs or ``{"image", "label"}`` dicts, or None
            for the data config in ``overrides`` (e.g. ``["data=synth"]``).
        labels: (N,) class indices (outputs of the model) for a tensor or unlabelled dataset.
        classes: names of the model's outputs, by index; default: the dataset's ``classes`` or
            the indices as strings. For a folder: its class folders in the model's output order
            (default: alphabetical order).
        input_size: side of the model's square input (an ``nn.Module`` on a folder needs it;
            tensors default to their own side).
        mean, std: the model's input normalisation (an ``nn.Module`` only; images stay in [0, 1]).
        feature_layer: module name whose features describe regions; None finds the last spatial
            layer (for a vision transformer, its token grid).
        output_dir: the run folder (default: ``outputs/runs/<time>`` as the CLI).
        overrides: Hydra overrides as on the command line (``masks.images_per_class=10``).
        report: write the HTML report too.

    Returns:
        :class:`Explanation`: ``summaries`` per class as Python objects, ``metrics`` (as
        ``metrics.json``), ``run_dir``; shown inline in Jupyter.
    """
    from vislight.pipeline import execute

    overrides = list(overrides)
    if isinstance(model, str):
        overrides.append(f"model={model}")
    if isinstance(images, (str, Path)):
        overrides.append("data=folder")
    cfg = compose_config(overrides)
    side = input_size or (int(images.shape[-1]) if torch.is_tensor(images) else None)
    with open_dict(cfg):  # set, not parsed as overrides: any folder or class name is fine
        if isinstance(images, (str, Path)):
            cfg.data.root = str(Path(images).expanduser().resolve())
            if classes:  # the folders in the model's output order
                cfg.data.classes = list(classes)
        elif images is not None:  # in memory: the model's input size follows the images
            cfg.data = {"kind": "memory", "name": "images", "batch_size": 64, "num_workers": 0,
                        "image_size": side or 224,
                        "num_classes": len(classes) if classes else None}  # fmt: skip
        if not report:
            cfg.stages = [s for s in cfg.stages if s != "report"]
        # one run folder: the default name is a time stamp, read once here
        cfg.paths.output_dir = str(
            Path(output_dir).expanduser().resolve() if output_dir else cfg.paths.output_dir
        )

    classifier = None
    if isinstance(model, nn.Module):
        if isinstance(model, Classifier):
            classifier = model
        else:
            if side is None:
                raise ValueError(
                    "explain(nn.Module, ...) needs input_size= (the model's input side)"
                )
            classifier = Classifier(
                model, name=type(model).__name__, num_classes=_output_count(model, side),
                input_size=side, mean=mean, std=std, feature_layer=feature_layer,
            )  # fmt: skip
        with open_dict(cfg):
            cfg.model = {
                "name": classifier.name, "num_classes": classifier.num_classes,
                "input_size": classifier.input_size, "resize_size": classifier.resize_size,
                "mean": classifier.mean.flatten().tolist(), "std": classifier.std.flatten().tolist(),
                "weights_path": None, "trusted_checkpoint": False, "pretrained": True,
                "feature_layer": classifier.feature_layer,
            }  # fmt: skip
    elif not isinstance(model, str):
        raise TypeError(f"model must be an nn.Module or a zoo name, not {type(model).__name__}")

    datamodule = None
    if images is not None and not isinstance(images, (str, Path)):
        side = int(cfg.model.input_size)
        dataset = InMemoryImages(images, labels, side)
        names = list(classes or getattr(images, "classes", None) or [])
        if not names:
            outputs = classifier.num_classes if classifier else int(cfg.model.num_classes or 0)
            names = [str(i) for i in range(max(outputs, max(dataset.labels) + 1))]
        if max(dataset.labels) >= len(names):
            raise ValueError(
                f"labels go up to {max(dataset.labels)} but classes names {len(names)}: give one "
                "name per model output"
            )
        datamodule = InMemoryDataModule(dataset, names)
    ctx = execute(cfg, None, classifier=classifier, datamodule=datamodule)
    dataset = ctx.datamodule.test_set
    return Explanation(
        run_dir=ctx.run.root,
        summaries=summaries_from_records(ctx.summaries or {"classes": {}}, dataset),
        metrics=ctx.metrics,
        dataset=dataset,
        classifier=ctx.classifier,
    )
