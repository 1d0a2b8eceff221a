"""vislight installed as a library: the built wheel carries its configs, and `python -m vislight`
and the API example run from an empty folder with it (no checkout on the path)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import SUBPROCESS_ENV

import vislight

ROOT = vislight.PROJECT_ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (its dependencies come from this environment's
    site-packages through a .pth file, so nothing is downloaded); returns its python."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "dist"), str(ROOT)],
        check=True, cwd=tmp, capture_output=True,
    )  # fmt: skip
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' scratch folder
    (wheel,) = (tmp / "dist").glob("vislight-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    python = tmp / "venv" / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, cwd=tmp
    )
    return python


def _run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), *args], cwd=cwd, env={**SUBPROCESS_ENV, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_the_wheel_runs_from_an_empty_folder(installed, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    where = _run(installed, "-c", "import vislight; print(vislight.__file__)", cwd=empty)
    assert where.returncode == 0 and str(installed.parents[1]) in where.stdout, where
    # the configs come with the package, a user's own config folder joins them on Hydra's search
    # path, and runs go under the current folder
    (empty / "my_conf" / "model").mkdir(parents=True)
    (empty / "my_conf" / "model" / "mine.yaml").write_text(
        "defaults:\n  - custom\n  - _self_\nname: mine\ntarget: nets.py:SmallNet\n"
    )
    mine = _run(
        installed, "-m", "vislight", f"hydra.searchpath=[file://{empty / 'my_conf'}]",
        "model=mine", "--cfg", "job", "--resolve", cwd=empty,
    )  # fmt: skip
    assert mine.returncode == 0, mine.stderr[-2000:]
    assert "name: mine" in mine.stdout and "_target_: vislight.models.zoo.custom" in mine.stdout
    assert f"log_dir: {empty}/outputs" in mine.stdout
    # the API example, copied out of the checkout
    for name in ("explain_your_model.py", "nets.py"):
        shutil.copy(ROOT / "examples" / name, empty / name)
    example = _run(installed, "explain_your_model.py", "--out", "out", cwd=empty)
    assert example.returncode == 0, example.stderr[-3000:]
    assert (empty / "out" / "run" / "summaries.json").is_file()
    assert (empty / "out" / "run" / "report" / "index.html").is_file()
