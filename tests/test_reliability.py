"""Reliability: messy image folders, determinism, validation before heavy work, no shell commands.

Bounded memory on 2,000 images is a slow test (``make test-all``). Kills at random points are
tested after training; a kill inside training resumes, but not yet bit-identically (issue 9).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    SUBPROCESS_ENV,
    TINY_PIPELINE,
    compose_config,
    kill_when,
    popen_vislight,
    run_vislight,
)
from PIL import Image

import vislight
from vislight.data.datamodule import build_datamodule
from vislight.data.folder import load_rgb
from vislight.masks.cache import MaskCache
from vislight.pipeline import ConfigError, validate

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def make_messy_folder(root: Path) -> dict[str, str]:
    """Every kind of awkward input under ``root/<class>/``; returns file name -> expected outcome
    ("ok" or the start of the recorded skip reason)."""
    good, bad = root / "good", root / "bad"
    for d in (good, bad, root / "empty", root / "unreadable"):
        d.mkdir(parents=True)
    expect = {}
    _rgb(40, 30, 1).save(good / "plain.jpg", quality=95)
    expect["plain.jpg"] = "ok"
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:12, :, 3] = 255  # top half opaque red, bottom half transparent (-> white)
    Image.fromarray(rgba, "RGBA").save(good / "alpha.png")
    expect["alpha.png"] = "ok"
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(good / "sixteen_bit.png")
    expect["sixteen_bit.png"] = "ok"
    Image.fromarray(np.full((20, 20), 90, np.uint8), "L").save(good / "gray.jpg")
    expect["gray.jpg"] = "ok"
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(good / "cmyk.jpg")  # red in CMYK
    expect["cmyk.jpg"] = "ok"
    _rgb(10000, 10, 2).save(good / "strip.png")
    expect["strip.png"] = "ok"
    rotated = Image.new("RGB", (40, 20), BLUE)
    rotated.paste(Image.new("RGB", (20, 20), RED), (0, 0))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise: the red half ends on top
    rotated.save(good / "exif_rotated.jpg", exif=exif, quality=95)
    expect["exif_rotated.jpg"] = "ok"
    _rgb(16, 16, 3).save(good / "ünïcødé 鳥 'q\".png")
    expect["ünïcødé 鳥 'q\".png"] = "ok"
    buf = good / "tmp.jpg"
    _rgb(64, 64, 4).save(buf, quality=95)
    (bad / "truncated.jpg").write_bytes(buf.read_bytes()[: buf.stat().st_size // 2])
    buf.unlink()
    expect["truncated.jpg"] = "corrupt image"
    (bad / "zero.jpg").write_bytes(b"")
    expect["zero.jpg"] = "not a readable image"
    (bad / "text.jpg").write_text("this is not a JPEG")
    expect["text.jpg"] = "not a readable image"
    Image.new("RGB", (1, 1), RED).save(bad / "one_pixel.png")
    expect["one_pixel.png"] = "too small"
    (bad / "notes.txt").write_text("hello")
    expect["notes.txt"] = "not an image file extension"
    (bad / "labels.csv").write_text("a,b\n")
    expect["labels.csv"] = "not an image file extension"
    _rgb(30, 30, 5).save(bad / "fine.png")  # the bad class still has one usable image
    expect["fine.png"] = "ok"
    (root / "unreadable" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    expect["broken.jpg"] = "not a readable image"
    expect["empty"] = "class folder holds no image files"
    expect["unreadable"] = "class folder holds no readable image"
    return expect


def test_every_awkward_file_is_decoded_or_skipped_with_a_reason(tmp_path):
    root = tmp_path / "messy"
    expect = make_messy_folder(root)
    dm = build_datamodule(
        {"kind": "folder", "root": str(root), "batch_size": 4, "num_workers": 0}, input_size=32
    )
    dm.setup("test")
    decoded = {Path(p).name for p, _ in dm.test_set.items}
    skipped = {Path(s["file"]).name: s["reason"] for s in dm.skipped}
    for name, outcome in expect.items():
        if outcome == "ok":
            assert name in decoded and name not in skipped, name
        else:
            assert skipped.get(name, "").startswith(outcome), (name, skipped.get(name))
    assert len(decoded) + sum(o != "ok" for o in expect.values()) == len(expect)
    # decoded correctly, not just without an error
    good = root / "good"
    assert load_rgb(good / "exif_rotated.jpg").size == (20, 40)
    top, bottom = np.asarray(load_rgb(good / "exif_rotated.jpg"))[[2, -3], 10]
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]
    alpha = np.asarray(load_rgb(good / "alpha.png"))
    assert tuple(alpha[2, 2]) == (200, 0, 0) and tuple(alpha[-2, 2]) == (255, 255, 255)
    assert tuple(np.asarray(load_rgb(good / "sixteen_bit.png"))[5, 5]) == (156, 156, 156)
    cmyk = np.asarray(load_rgb(good / "cmyk.jpg"))[10, 10]
    assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60
    for batch in dm.test_dataloader():
        assert batch["image"].shape[1:] == (3, 32, 32)


def test_a_run_on_a_messy_folder_completes_and_reports_what_it_skipped(tmp_path):
    root = tmp_path / "messy"
    expect = make_messy_folder(root)
    out = tmp_path / "run"
    proc = run_vislight(
        "data=folder",
        f"data.root={root}",
        "data.num_workers=0",
        "model=small_cnn",
        "model.input_size=32",
        "train.enabled=false",  # a random (seeded) network: this test is about the inputs
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
        "masks.smooth.iterations=6",
        "masks.sharp.iterations=4",
        "logger=none",
        f"paths.output_dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    recorded = {Path(s["file"]).name for s in metrics["skipped"]}
    assert recorded == {n for n, o in expect.items() if o != "ok"}
    html = (out / "report" / "index.html").read_text()
    assert f"Skipped ({len(metrics['skipped']) + len(metrics['mask']['skipped'])})" in html
    assert "truncated.jpg" in html and "class folder holds no readable image" in html


def test_same_config_and_seed_give_byte_identical_summaries(tmp_path):
    outs = []
    for name in ("a", "b"):  # separate caches: training is repeated too
        outs.append(tmp_path / name)
        proc = run_vislight(
            *TINY_PIPELINE,
            "logger=none",
            f"paths.output_dir={outs[-1]}",
            f"train.cache_dir={tmp_path / name / 'cache'}",
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
    first, second = ((o / "summaries.json").read_bytes() for o in outs)
    assert json.loads(first)["classes"] and first == second


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("cluster.outlier_ratio=1.5", "cluster.outlier_ratio"),
        ("cluster.tag_min_share=-0.1", "cluster.tag_min_share"),
        ("cluster.damping=1.0", "cluster.damping"),
        ("cluster.min_support=0", "cluster.min_support"),
        ("similarity.k=0", "similarity.k"),
        ("similarity.mode=exact", "similarity.mode"),
        ("masks.sharp.iterations=-5", "masks.sharp.iterations"),
    ],
)
def test_invalid_values_name_the_key_value_and_what_is_allowed(override, key):
    with pytest.raises(ConfigError) as err:
        validate(compose_config([override]))
    message = str(err.value)
    assert message.startswith(f"{key}=") and override.split("=", 1)[1] in message
    assert "must" in message or "use one of" in message


def test_unknown_classes_and_models_stop_before_heavy_work(tmp_path):
    proc = run_vislight(
        *TINY_PIPELINE,
        "masks.classes=[disc_bar,zebra]",
        "logger=none",
        f"paths.output_dir={tmp_path / 'run'}",
        f"train.cache_dir={tmp_path / 'cache'}",
    )
    assert proc.returncode == 2
    assert "masks.classes=['disc_bar', 'zebra'] lists ['zebra']" in proc.stderr
    assert "test accuracy" not in proc.stderr  # stopped before evaluating
    proc = run_vislight("model=bogus", f"paths.output_dir={tmp_path / 'run2'}")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == "In 'config': Could not find 'model/bogus'"
    assert "resnet_small" in proc.stderr  # the available options follow


def test_no_shell_command_is_built_anywhere_in_the_package():
    """Config strings never reach a shell: the package runs no subprocess at all."""
    banned = {("os", "system"), ("os", "popen"), ("subprocess", "*")}
    for path in Path(vislight.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names]
                module = getattr(node, "module", None) or ""
                assert "subprocess" not in names and module != "subprocess", path
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                pair = (node.value.id, node.attr)
                assert pair not in banned and (pair[0], "*") not in banned, (path, pair)


def _peak_rss_mb(*overrides: str) -> float:
    """Peak RSS (MB) of one ``python -m vislight`` run in a fresh process."""
    code = (
        "import resource, runpy, sys\n"
        "sys.argv = ['vislight', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('vislight', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *overrides],
        cwd=vislight.PROJECT_ROOT,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    kb = next(line for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KB"))
    return int(kb.split()[1]) / 1024


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """One class of 2,000 synthetic images: masks stream to disk, so the peak RSS stays within a
    small margin of the 500-image run (measured: 1017 MB vs 1037 MB, 735 vs 3049 regions)."""
    peaks = {}
    for n in (500, 2000):
        peaks[n] = _peak_rss_mb(
            "logger=none",
            "trainer.enable_progress_bar=false",
            f"data.test_per_class={n}",
            "data.cache=false",  # rendered images are not kept in memory either
            "masks.classes=[disc_bar]",
            f"masks.images_per_class={n}",
            "masks.batch_size=64",
            "masks.smooth.iterations=20",  # memory does not depend on the iterations
            "masks.sharp.iterations=10",
            "stages=[classifier,evaluate,masks,summaries]",
            f"paths.output_dir={tmp_path / str(n)}",
        )
        masks = list((tmp_path / str(n) / "masks").rglob("*.npz"))
        assert len(masks) == n
    print(f"peak RSS: 500 images {peaks[500]:.0f} MB, 2000 images {peaks[2000]:.0f} MB")
    assert peaks[2000] - peaks[500] < 300, peaks


def test_runs_killed_after_training_resume_to_the_same_summaries(tmp_path):
    """SIGKILL at 5 seeded random moments (three points of the masks stage, summaries, report;
    the classifier is already trained and cached):
    every rerun completes, reuses the finished masks, reads no partial file and writes the
    uninterrupted run's summaries.json byte for byte."""
    cache = tmp_path / "cache"

    def args(out: Path) -> list[str]:
        return [
            *TINY_PIPELINE,
            "masks.batch_size=3",  # masks land on disk a few at a time: kills fall between
            "logger=none",
            f"paths.output_dir={out}",
            f"train.cache_dir={cache}",
        ]

    ref = run_vislight(*args(tmp_path / "ref"))  # trains and caches the classifier
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = (tmp_path / "ref" / "summaries.json").read_bytes()
    rng = np.random.default_rng(7)
    total = len(list((tmp_path / "ref").glob("masks/*/*.npz")))

    def in_stage(stage: str, min_masks: int = 0):
        def trigger(out: Path, log: Path) -> bool:
            text = log.read_text(errors="replace") if log.exists() else ""
            return f"stage {stage}" in text and len(list(out.glob("masks/*/*.npz"))) >= min_masks

        return trigger

    points = {  # the classifier and evaluate stages take milliseconds here: kills land in masks
        "masks, none finished": in_stage("masks"),
        "masks, a few finished": in_stage("masks", 2),
        "masks, half finished": in_stage("masks", total // 2),
        "summaries": in_stage("summaries"),
        "report": in_stage("report"),
    }
    killed_in, partial = [], []
    for k, (where, trigger) in enumerate(points.items()):
        out, log = tmp_path / f"kill{k}", tmp_path / f"kill{k}.log"
        proc = popen_vislight(args(out), log)
        if kill_when(proc, lambda t=trigger, o=out, g=log: t(o, g), float(rng.uniform(0, 0.2))):
            killed_in.append(where)
        finished = sorted(out.glob("masks/*/*.npz"))
        if 0 < len(finished) < total:
            partial.append(len(finished))
        for p in out.rglob("*"):
            if p.is_file() and p.name.endswith(".tmp"):
                continue  # a write cut short by the kill: never read, replaced by the rerun
            if p.suffix == ".npz":
                MaskCache.read(p)  # complete
            elif p.suffix == ".json":
                json.loads(p.read_text())  # complete
        rerun = run_vislight(*args(out))
        assert rerun.returncode == 0, (where, rerun.stderr[-3000:])
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["classifier"]["reused"] is True
        assert metrics["mask"]["reused"] == len(finished), where
        assert (out / "summaries.json").read_bytes() == reference, where
        assert (out / "report" / "index.html").is_file()
    assert len(killed_in) >= 4, killed_in  # the short report stage may finish first
    assert partial and max(partial) < total, (partial, total)  # some kills cut the masks short


def test_a_run_killed_while_training_resumes_to_the_same_summaries(tmp_path):
    """SIGKILL after the first training epoch: the rerun resumes from Lightning's last.ckpt (shuffle
    order and augmentation RNG included), learns the uninterrupted run's weights bit for bit and
    writes its summaries.json byte for byte."""
    tiny = [
        o for o in TINY_PIPELINE if not o.startswith(("train.epochs=", "data.train_per_class="))
    ]
    # ~0.4 s an epoch: the kill lands well before the last one
    args = [*tiny, "data.train_per_class=400", "train.epochs=15", "logger=none"]

    def run_args(name: str) -> list[str]:
        return [*args, f"paths.output_dir={tmp_path / name}", f"train.cache_dir={tmp_path / name}c"]

    ref = run_vislight(*run_args("ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    cache = tmp_path / "runc"
    proc = popen_vislight(run_args("run"), tmp_path / "kill.log")
    assert kill_when(proc, lambda: any(cache.rglob("last.ckpt")), 0.0)
    assert not list(cache.rglob("classifier.pt"))
    rerun = run_vislight(*run_args("run"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["classifier"]["trained"] and metrics["classifier"]["resumed"]
    assert list(cache.rglob("classifier.pt")) and not list(cache.rglob("last.ckpt"))
    weights = [(tmp_path / n / "classifier.ckpt").read_bytes() for n in ("ref", "run")]
    assert weights[0] == weights[1], "the resumed training learned other weights"
    summaries = [(tmp_path / n / "summaries.json").read_bytes() for n in ("ref", "run")]
    assert summaries[0] == summaries[1]
