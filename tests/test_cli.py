"""The `latentsync` command as a user runs it: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentsync.models.checkpoint import save_checkpoint


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "latentsync.cli", *args], capture_output=True, text=True, env=full_env, timeout=600
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latentsync: error:"), proc.stderr
    assert needle in lines[0], lines[0]


def test_init_then_info_check(tmp_path):
    out = tmp_path / "m"
    proc = run_cli("model", "init", "--config", "small", "--out", str(out), "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("model", "info", "--model", str(out), "--check")
    assert proc.returncode == 0, proc.stderr
    assert "guided step" in proc.stdout


def test_errors_are_one_line(tmp_path):
    assert_one_line_error(run_cli("model", "info", "--model", str(tmp_path / "nope")), "unknown model")
    assert_one_line_error(run_cli("model", "init", "--config", "bogus", "--out", str(tmp_path / "x")), "bogus")
    assert not (tmp_path / "x").exists()
    env = {"LATENTSYNC_HOME": str(tmp_path / "home")}
    assert_one_line_error(run_cli("model", "info", "--model", "1.5", env=env), "latentsync download --model 1.5")


def _fill_hub_cache(cache: Path, repo: str, files: dict[str, bytes]) -> None:
    """Lay files out as huggingface_hub's cache does, so an offline hf_hub_download finds them."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for name, data in files.items():
        target = root / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


@pytest.fixture()
def fake_hub(tmp_path):
    cache = tmp_path / "hub"
    unet = tmp_path / "unet.pt"
    save_checkpoint(unet, {"conv_in.weight": __import__("torch").zeros(1)}, global_step=7)
    _fill_hub_cache(
        cache,
        "ByteDance/LatentSync-1.6",
        {"latentsync_unet.pt": unet.read_bytes(), "whisper/tiny.pt": b"w", "stable_syncnet.pt": b"s"},
    )
    _fill_hub_cache(
        cache, "stabilityai/sd-vae-ft-mse", {"config.json": b"{}", "diffusion_pytorch_model.safetensors": b"v"}
    )
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "LATENTSYNC_HOME": str(tmp_path / "home")}


def test_download_from_prefilled_cache(fake_hub, tmp_path):
    proc = run_cli("download", "--model", "1.6", "--with-syncnet", env=fake_hub)
    assert proc.returncode == 0, proc.stderr
    root = Path(fake_hub["LATENTSYNC_HOME"]) / "models" / "1.6"
    for name in ["latentsync_unet.pt", "whisper/tiny.pt", "stable_syncnet.pt", "vae/config.json", "unet.yaml", "model.yaml"]:
        assert (root / name).is_file(), name
    assert "resolution: 512" in (root / "model.yaml").read_text()
    info = run_cli("model", "info", "--model", "1.6", env=fake_hub)
    assert info.returncode == 0 and str(root) in info.stdout, info.stderr


def test_download_offline_without_cache_fails_cleanly(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1", "LATENTSYNC_HOME": str(tmp_path / "h")}
    assert_one_line_error(run_cli("download", "--model", "1.5", env=env), "not in the hub cache")


def test_run_help_lists_the_bundled_demo_model(capsys):
    from latentsync.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "1.5, 1.6, demo (the small bundled model) or a model folder" in help_text
