"""Checkpoint loading: upstream's tolerance (drop what belongs to another config, load non-strict), reported."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentsync.errors import CheckpointError
from latentsync.models.checkpoint import save_checkpoint
from latentsync.models.unet import UNet3DConditionModel, UNetConfig, load_unet, load_unet_weights

LOGGER = "latentsync.models.unet.loading"


@pytest.fixture(scope="module")
def reference(reference_dir: Path) -> tuple[UNetConfig, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    cfg = UNetConfig.from_dict(json.loads((reference_dir / "unet-small.config.json").read_text())["model"])
    weights = load_file(reference_dir / "unet-small.weights.safetensors")
    return cfg, weights, load_file(reference_dir / "unet-small.io.safetensors")


def _fresh(cfg: UNetConfig) -> UNet3DConditionModel:
    return UNet3DConditionModel(cfg).eval()


@torch.no_grad()
def _run(model: UNet3DConditionModel, io: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(io["sample"], io["timestep"], io["encoder_hidden_states"])


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_roundtrip_is_exact_and_clean(reference, tmp_path: Path, suffix: str, caplog) -> None:
    cfg, weights, io = reference
    model = _fresh(cfg)
    load_unet_weights(model, weights)
    path = save_checkpoint(tmp_path / f"latentsync_unet{suffix}", model.state_dict(), global_step=1234)
    if suffix == ".pt":  # the official layout: {"state_dict": ..., "global_step": ...}, no key prefix
        raw = torch.load(path, weights_only=True)
        assert set(raw) == {"state_dict", "global_step"} and set(raw["state_dict"]) == set(weights)

    fresh = _fresh(cfg)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        report = load_unet_weights(fresh, path)
    assert report.clean and report.global_step == 1234
    assert not report.missing and not report.unexpected and not report.dropped
    assert not caplog.records
    assert torch.equal(_run(fresh, io), _run(model, io))


def test_other_input_channels_are_dropped_and_reported(reference, caplog) -> None:
    cfg, weights, _ = reference
    state = dict(weights)
    state["conv_in.weight"] = torch.randn(32, 9, 3, 3)  # an inpainting-style 9-channel stem
    state["conv_out.weight"] = torch.randn(8, 32, 3, 3)
    state["conv_out.bias"] = torch.randn(8)
    k_key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    state[k_key] = torch.randn(32, 768)  # Whisper-small width
    model = _fresh(cfg)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = load_unet_weights(model, state)
    assert set(report.dropped) == {"conv_in.weight", "conv_in.bias", "conv_out.weight", "conv_out.bias", k_key}
    assert "9 input channels" in report.dropped["conv_in.weight"]
    assert "8 output channels" in report.dropped["conv_out.bias"]
    assert "768" in report.dropped[k_key]
    assert set(report.missing) == set(report.dropped) and not report.unexpected
    assert torch.count_nonzero(model.conv_in.weight) == 0  # left at its (zero) constructor value, as upstream
    text = caplog.text
    assert "conv_in.weight" in text and "9 input channels" in text and k_key in text and "missing" in text


def test_unknown_and_missing_keys_are_reported(reference, caplog) -> None:
    cfg, weights, _ = reference
    state = dict(weights)
    del state["conv_norm_out.bias"]
    state["module.extra.weight"] = torch.zeros(3)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = load_unet_weights(_fresh(cfg), state)
    assert report.missing == ["conv_norm_out.bias"] and report.unexpected == ["module.extra.weight"]
    assert not report.clean and not report.dropped
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("module.extra.weight" in m for m in warnings) and any("conv_norm_out.bias" in m for m in warnings)


def test_many_missing_keys_are_summarised(reference, caplog) -> None:
    cfg, weights, _ = reference
    state = {k: v for k, v in weights.items() if ".motion_modules." not in k}  # a stage-1 checkpoint
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = load_unet_weights(_fresh(cfg), state)
    assert len(report.missing_weights) > 100
    (message,) = [r.getMessage() for r in caplog.records]
    assert f"{len(report.missing_weights)} keys" in message and "up_blocks.1.motion_modules.*" in message
    assert len(message) < 1000


def test_missing_position_tables_are_harmless(reference, caplog) -> None:
    cfg, weights, io = reference
    full = _fresh(cfg)
    load_unet_weights(full, weights)
    state = {k: v for k, v in weights.items() if not k.endswith("pos_encoder.pe")}
    model = _fresh(cfg)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        report = load_unet_weights(model, state)
    assert report.missing and not report.missing_weights
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert (_run(model, io) - _run(full, io)).abs().max() <= 1e-6


def test_shape_mismatch_is_a_one_line_checkpoint_error(reference) -> None:
    cfg, weights, _ = reference
    state = dict(weights)
    state["mid_block.resnets.0.conv1.weight"] = torch.zeros(32, 32, 1, 1)
    with pytest.raises(CheckpointError) as err:
        load_unet_weights(_fresh(cfg), state)
    message = str(err.value)
    assert "mid_block.resnets.0.conv1.weight" in message and "[32, 32, 1, 1]" in message
    assert "[32, 32, 3, 3]" in message and "\n" not in message


@pytest.mark.parametrize("content", [b"", b"definitely not a torch file", b"PK\x03\x04 truncated zip"])
def test_corrupt_or_missing_file_is_checkpoint_error(reference, tmp_path: Path, content: bytes) -> None:
    cfg, _, _ = reference
    path = tmp_path / "latentsync_unet.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_unet_weights(_fresh(cfg), path)
    broken = tmp_path / "latentsync_unet.safetensors"
    broken.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_unet_weights(_fresh(cfg), broken)
    with pytest.raises(CheckpointError, match="not found"):
        load_unet_weights(_fresh(cfg), tmp_path / "absent.pt")


def test_load_unet_builds_loads_and_casts(reference, reference_dir: Path) -> None:
    _, _, io = reference
    config = reference_dir / "unet-small.config.json"  # JSON is yaml: an upstream-style {"model": ...} file
    model, unet_yaml = load_unet(config, reference_dir / "unet-small.weights.safetensors")
    assert not model.training and unet_yaml["model"]["block_out_channels"] == [32, 32, 32, 32]
    assert (_run(model, io) - io["output"]).abs().max() <= 1e-4
    half, _ = load_unet(config, reference_dir / "unet-small.weights.safetensors", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and _run(half, io).dtype == torch.bfloat16
