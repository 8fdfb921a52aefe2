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
