"""Hydra callback: the run (or sweep) folder must be creatable and writable before anything runs.

Hydra creates ``hydra.run.dir`` (= ``paths.output_dir``) itself before it calls vislight; an
unwritable place would end with Hydra's traceback. This check runs first and ends the process with
one line naming the folder and the fix (exit 2).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def check_writable_folder(folder: str | Path, key: str) -> None:
    """Create ``folder`` (with its parents) and write a probe file in it; on failure print one line
    naming ``key``, the folder and the fix, and exit with code 2."""
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".vislight-probe-"):
            pass
    except OSError as e:
        reason = e.strerror or str(e)
        print(
            f"vislight: error: {key}={str(folder)!r} cannot be used as the run folder ({reason}): "
            f"pass {key}=DIR, a folder you can write to",
            file=sys.stderr,
        )
        sys.exit(2)


class OutputFolderCheck(Callback):
    """Checks ``hydra.run.dir`` (single runs) or ``hydra.sweep.dir`` (multiruns) up front."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_writable_folder(config.hydra.run.dir, "paths.output_dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_writable_folder(config.hydra.sweep.dir, "hydra.sweep.dir")
