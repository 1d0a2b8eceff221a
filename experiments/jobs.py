"""What the study scripts share: the ``python -m vislight`` command line they run."""

from __future__ import annotations

import sys


def vislight_command(*overrides: str, multirun: bool = False) -> list[str]:
    """``python -m vislight [-m]`` with W&B and progress bars off, then ``overrides``."""
    return [
        sys.executable,
        "-m",
        "vislight",
        *(["-m"] if multirun else []),
        "logger=none",
        "trainer.enable_progress_bar=false",
        *overrides,
    ]
