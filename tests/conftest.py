"""Shared fixtures: the upstream reference data lives in ../shared/reference (read-only)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("LATENTSYNC_REFERENCE", REPO.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    # A missing reference must fail, not skip: these tests are the proof of checkpoint compatibility.
    assert REFERENCE.is_dir(), f"reference data not found at {REFERENCE} (set LATENTSYNC_REFERENCE)"
    return REFERENCE


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random model folder (tests/configs: 64 px U-Net with motion modules, tiny VAE), made once per session
    and shared by every test that runs the pipeline; tests that change weights change their own loaded copy."""
    from latentsync.models.create import create_model_dir

    configs = Path(__file__).parent / "configs"
    folder = tmp_path_factory.mktemp("model") / "tiny"
    return create_model_dir(configs / "unet_tiny.yaml", folder, vae=configs / "vae_tiny", seed=0).root
