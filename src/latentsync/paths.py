"""Where packaged data lives and where user data goes."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "configs"
ASSET_DIR = PACKAGE_DIR / "assets"
MASK_PATH = ASSET_DIR / "mask.png"
DEMO_MODEL_DIR = ASSET_DIR / "demo-model"  # the small model trained by scripts/train_demo.sh (docs/demo-model.md)


def cache_home() -> Path:
    """Root for downloaded models and converted weights: $LATENTSYNC_HOME, else ~/.cache/latentsync."""
    env = os.environ.get("LATENTSYNC_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "latentsync"
