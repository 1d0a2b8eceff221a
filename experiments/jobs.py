"""What the study scripts share: the ``python -m vislight`` command line they run, their
command-line arguments, running one study with its command, machine and wall time, and a result's
provenance (commit, the mask schedule a run used, the first line of its Markdown)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from vislight.run_folder import RunFolder

ROOT = Path(__file__).resolve().parents[1]


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


def study_args(script: str, studies: Sequence[str]) -> tuple[str, list[str]] | None:
    """``(study, extra overrides)`` from ``sys.argv``, or None after printing the usage."""
    if len(sys.argv) < 2 or sys.argv[1] not in studies:
        print(f"usage: python experiments/{script} {{{','.join(studies)}}} [overrides]")
        return None
    return sys.argv[1], sys.argv[2:]


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    threads = torch.get_num_threads()
    used = "" if threads == os.cpu_count() else f" ({threads} torch thread{'s' * (threads > 1)})"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores{used}, torch {torch.__version__}"


def run_job(run_dir: Path, overrides: Sequence[str]) -> tuple[dict, float]:
    """Run one ``python -m vislight`` job into ``run_dir``; returns its metrics.json and wall
    seconds."""
    t0 = time.perf_counter()
    subprocess.run(
        vislight_command(f"paths.output_dir={run_dir}", *overrides), check=True, cwd=ROOT
    )
    wall = time.perf_counter() - t0
    return json.loads(RunFolder(run_dir).metrics.read_text()), wall


def run_study(cmd: list[str]) -> tuple[int, dict]:
    """Print and run ``cmd`` from the project root; returns its exit status and the facts a
    result records: ``command`` (as typed, paths relative), ``machine``, ``wall_seconds``, ``date``."""
    shown = " ".join(["python", *cmd[1:]]).replace(str(ROOT) + "/", "")
    print(shown, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    return proc.returncode, {
        "command": shown,
        "machine": machine(),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def commit() -> str:
    """The checked-out commit (short hash) a result is computed at."""
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def schedule_of(run_dir: Path) -> str:
    """The mask schedule a run used, from its config.yaml."""
    from omegaconf import OmegaConf

    from vislight.masks.optimize import MaskConfig  # imports torch: only when asked

    return MaskConfig.from_cfg(OmegaConf.load(RunFolder(run_dir).config).masks).describe()


def provenance_line(facts: dict) -> str:
    """A result's first line: its command, commit, machine, wall time and date, then its mask
    schedule where ``facts`` names one (``mask_schedule``)."""
    line = (
        f"`{facts['command']}` at {facts['commit']} on {facts['machine']}, "
        f"{facts['wall_seconds']:.0f} s ({facts['date']})."
    )
    return line + (f" Masks: {facts['mask_schedule']}." if facts.get("mask_schedule") else "")


def write_md_keeping_notes(path: Path, lines: Sequence[str]) -> None:
    """Write ``lines`` to the Markdown result ``path``, then the "## Notes" section written by
    hand in the previous version of the file (an empty one the first time)."""
    old = path.read_text() if path.is_file() else ""
    notes = old.split("## Notes", 1)[1] if "## Notes" in old else "\n"
    body = "\n".join(lines).rstrip()
    path.write_text((body + "\n\n## Notes" + notes).rstrip() + "\n")
