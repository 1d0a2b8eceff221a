"""vislight: visual summaries of image classifiers."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("vislight_root"):
        OmegaConf.register_new_resolver("vislight_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("not"):
        OmegaConf.register_new_resolver("not", lambda x: not x)


_register_resolvers()
